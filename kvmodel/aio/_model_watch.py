"""The async typed watch: ``async for order in Order.watch(async_kv, pk)``.

The twin of :mod:`kvmodel.orm.watch` over :class:`AsyncKv`: the waiting is
:class:`AsyncWatchIterator`'s (a thread per wait, never the event loop), the
decoding is the sync module's (``ModelInfo.load``, with upgrades and
``DecodeError``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from kvmodel.aio._kv import AsyncKv, AsyncWatchIterator
from kvmodel.orm._catalog import attach
from kvmodel.orm.watch import decode_entries

if TYPE_CHECKING:
    from kvmodel.orm.model import Model, ModelInfo

__all__ = ["AsyncModelWatch", "AsyncModelWatchMany"]

M = TypeVar("M", bound="Model")


class _AsyncModelWatchBase:
    """What the single and the many-key async watches share."""

    __slots__ = ("_attached", "_info", "_inner", "_kv")

    def __init__(self, info: ModelInfo, kv: AsyncKv, keys: list[tuple[Any, ...]]) -> None:
        self._info = info
        self._kv = kv
        # Created now so that a bad key or too many keys raise at the call, as kv.watch does.
        self._inner: AsyncWatchIterator = kv.watch(keys)
        self._attached = False

    async def _next_objects(self) -> list[Any]:
        if not self._attached:
            # The first use of a model with a Kv may read its stored description.
            await self._kv.run(attach, self._kv.sync, self._info)
            self._attached = True
        return decode_entries(self._info, await self._inner.__anext__())

    async def close(self) -> None:
        """Ends the watch."""
        await self._inner.close()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._inner.close()


class AsyncModelWatch(_AsyncModelWatchBase, AsyncIterator["M | None"], Generic[M]):
    """The items of ``Model.watch(async_kv, *pk)``, with ``async for`` (see ``ModelWatch``)."""

    __slots__ = ()

    def __aiter__(self) -> AsyncModelWatch[M]:
        return self

    async def __anext__(self) -> M | None:
        found: M | None = (await self._next_objects())[0]
        return found

    async def __aenter__(self) -> AsyncModelWatch[M]:
        return self


class AsyncModelWatchMany(_AsyncModelWatchBase, AsyncIterator[list["M | None"]], Generic[M]):
    """The items of ``Model.watch_many(async_kv, pks)``: one object (or None) per key."""

    __slots__ = ()

    def __aiter__(self) -> AsyncModelWatchMany[M]:
        return self

    async def __anext__(self) -> list[M | None]:
        return await self._next_objects()

    async def __aenter__(self) -> AsyncModelWatchMany[M]:
        return self
