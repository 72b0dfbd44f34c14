"""Typed watch: ``Order.watch(kv, pk)`` and ``Order.watch_many(kv, pks)``.

A thin layer over ``kv.watch``: the stream of changed entries becomes a stream
of model objects. Every document goes through :meth:`ModelInfo.load`, so an
older model version is upgraded on the way and a document that does not fit
raises :class:`kvmodel.DecodeError` naming its key and field. Objects are
detached (no session tracks them): changing one writes nothing. Each item
holds fresh objects, so a consumer may keep or change the ones it was given.

The async twins (``Order.watch(async_kv, pk)``) live in ``kvmodel.aio``; this
module hands over to them lazily, so the object mapper never imports asyncio.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from kvmodel._records import Entry
from kvmodel._text import brief_repr
from kvmodel._watch import WatchIterator
from kvmodel.errors import InvalidArgumentError, KvTypeError
from kvmodel.orm._catalog import attach
from kvmodel.orm.model import model_info

if TYPE_CHECKING:
    from kvmodel._kv import Kv
    from kvmodel.aio._model_watch import AsyncModelWatch, AsyncModelWatchMany
    from kvmodel.orm.model import Model, ModelInfo

__all__ = ["ModelWatch", "ModelWatchMany", "decode_entries", "pk_tuples", "watch", "watch_many"]

M = TypeVar("M", bound="Model")


def pk_tuples(info: ModelInfo, pks: Iterable[Any]) -> list[tuple[Any, ...]]:
    """The primary key tuples of ``watch_many``'s ``pks``: a value, or a tuple per object.

    Raises:
        InvalidArgumentError: ``pks`` is a str or bytes, or not iterable.
    """
    if isinstance(pks, str | bytes) or not isinstance(pks, Iterable):
        raise InvalidArgumentError(
            f"watch_many takes a list of primary keys, not {brief_repr(pks, 80)}; "
            f"to watch one {info.name}, use {info.name}.watch(kv, pk)."
        )
    # A primary key field is never a tuple (key parts are scalars), so a tuple
    # is always a whole compound key.
    return [pk if isinstance(pk, tuple) else (pk,) for pk in pks]


def decode_entries(info: ModelInfo, entries: list[Entry[Any]]) -> list[Any]:
    """The detached objects of watched documents (None for a missing one).

    Raises:
        DecodeError: a document does not fit the model (names key and field).
    """
    return [None if e.versionstamp is None else _detached(info, e) for e in entries]


def _detached(info: ModelInfo, entry: Entry[Any]) -> Any:
    """A detached object that remembers what it was read as, so a session can merge it."""
    obj = info.load(entry.value, entry.key)[0]
    object.__setattr__(obj, "_km_state", (entry.key, entry.value, entry.versionstamp))
    return obj


def _sync_kv(kv: object) -> Kv | None:
    """``kv`` itself when it is a sync Kv, else None (an AsyncKv, or a mistake)."""
    from kvmodel._kv import Kv

    return kv if isinstance(kv, Kv) else None


def _is_async_kv(kv: object) -> bool:
    # Imported only when the Kv is not a sync one, so sync users never load asyncio.
    from kvmodel.aio._kv import AsyncKv

    return isinstance(kv, AsyncKv)


def _not_a_kv(kv: object, what: str) -> KvTypeError:
    return KvTypeError(
        f"{what} watches a km.Kv or a kvmodel.aio.AsyncKv, not {brief_repr(kv, 80)}; "
        "a session cannot be watched (watched objects are always detached)."
    )


class ModelWatch(Iterator["M | None"], Generic[M]):
    """The items of ``Model.watch(kv, *pk)``: the object now and after each change.

    Each item is a fresh detached object, or None while the document does not
    exist (it was never written, was deleted or expired). Intermediate states
    may coalesce, as with ``kv.watch``. Iteration ends when :meth:`close` is
    called (also on leaving a ``with`` block) or the Kv closes.
    """

    __slots__ = ("_info", "_inner")

    def __init__(self, info: ModelInfo, inner: WatchIterator) -> None:
        self._info = info
        self._inner = inner

    def __iter__(self) -> ModelWatch[M]:
        return self

    def __next__(self) -> M | None:
        found: M | None = decode_entries(self._info, next(self._inner))[0]
        return found

    def close(self) -> None:
        """Ends the watch; a ``next`` blocked in another thread returns."""
        self._inner.close()

    def __enter__(self) -> ModelWatch[M]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._inner.close()


class ModelWatchMany(Iterator[list["M | None"]], Generic[M]):
    """The items of ``Model.watch_many(kv, pks)``: a list with one object (or None) per key.

    An item is emitted now and whenever one of the documents changes; the list
    is in the order of the keys given.
    """

    __slots__ = ("_info", "_inner")

    def __init__(self, info: ModelInfo, inner: WatchIterator) -> None:
        self._info = info
        self._inner = inner

    def __iter__(self) -> ModelWatchMany[M]:
        return self

    def __next__(self) -> list[M | None]:
        return decode_entries(self._info, next(self._inner))

    def close(self) -> None:
        """Ends the watch; a ``next`` blocked in another thread returns."""
        self._inner.close()

    def __enter__(self) -> ModelWatchMany[M]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._inner.close()


def watch(model: type[M], kv: object, pk: tuple[Any, ...]) -> ModelWatch[M] | AsyncModelWatch[M]:
    """See :meth:`kvmodel.Model.watch`."""
    info = model_info(model)
    sync = _sync_kv(kv)
    if sync is not None:
        key = info.key_for(pk)
        attach(sync, info)
        return ModelWatch(info, sync.watch([key]))
    if _is_async_kv(kv):
        from kvmodel.aio._model_watch import AsyncModelWatch

        return AsyncModelWatch(info, kv, [info.key_for(pk)])  # type: ignore[arg-type]
    raise _not_a_kv(kv, f"{info.name}.watch")


def watch_many(
    model: type[M], kv: object, pks: Iterable[Any]
) -> ModelWatchMany[M] | AsyncModelWatchMany[M]:
    """See :meth:`kvmodel.Model.watch_many`."""
    info = model_info(model)
    keys = [info.key_for(pk) for pk in pk_tuples(info, pks)]
    sync = _sync_kv(kv)
    if sync is not None:
        attach(sync, info)
        return ModelWatchMany(info, sync.watch(keys))
    if _is_async_kv(kv):
        from kvmodel.aio._model_watch import AsyncModelWatchMany

        return AsyncModelWatchMany(info, kv, keys)  # type: ignore[arg-type]
    raise _not_a_kv(kv, f"{info.name}.watch_many")
