"""Index queries: :class:`Page`, and the find/count/get behind the index accessors.

Every index entry holds its document's encoded primary key, and the engine reads
a batch of entries together with the documents they point at in one snapshot
(``Kv.read_linked``). Index entries and documents are always written in the same
commit, so within a snapshot every entry agrees with its document: a returned
document matches the query as of the moment its batch was read, and is never
returned at a position it no longer has. Only writes that bypass the object
mapper can break that agreement; an entry whose document is missing is
skipped, and ``check_indexes`` reports the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from kvmodel._options import positive_int
from kvmodel._text import brief_repr
from kvmodel.engines.base import Consistency, ReadRange
from kvmodel.errors import InvalidArgumentError, KvTypeError
from kvmodel.orm._catalog import attach, require_ready
from kvmodel.orm._convert import Key, KeyPart
from kvmodel.orm.model import model_info
from kvmodel.orm.session import Session, load_documents

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from kvmodel._kv import Kv
    from kvmodel._list import ListState
    from kvmodel.aio._kv import AsyncKv
    from kvmodel.aio._session import AsyncSession
    from kvmodel.engines.base import RawEntry
    from kvmodel.orm.index import IndexBase, Unique
    from kvmodel.orm.model import Model, ModelInfo

__all__ = ["Page", "count", "find", "unique_get"]

M = TypeVar("M", bound="Model")
T = TypeVar("T")


class Page(Sequence[M], Generic[M]):
    """One page of query results: a sequence of objects and the cursor to resume.

    ``cursor`` is "" when no further page exists; otherwise pass it back as
    ``cursor=`` to get the next page, which then holds at least one entry.
    (A page reads one entry past its ``limit`` to know; unlike
    ``ListIterator.cursor``, which follows Deno.) ``has_more`` says the same as
    a bool.
    """

    __slots__ = ("cursor", "items")

    def __init__(self, items: list[M], cursor: str) -> None:
        self.items = items
        self.cursor = cursor

    @overload
    def __getitem__(self, i: int) -> M: ...
    @overload
    def __getitem__(self, i: slice) -> list[M]: ...
    def __getitem__(self, i: int | slice) -> M | list[M]:
        return self.items[i]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def has_more(self) -> bool:
        """True when another page exists (its first entry was seen past the limit)."""
        return bool(self.cursor)

    def __iter__(self) -> Iterator[M]:
        return iter(self.items)

    def __repr__(self) -> str:
        return f"Page({self.items!r}, cursor={self.cursor!r})"


def _sync_source(source: object) -> tuple[Kv, Session | None] | None:
    """The Kv and session of a sync source, or None when ``source`` is not one."""
    if isinstance(source, Session):
        return source.kv, source
    if hasattr(source, "atomic") and hasattr(source, "read_linked"):
        return source, None  # type: ignore[return-value]
    return None


def _not_a_source(source: object) -> KvTypeError:
    return KvTypeError(
        f"Index queries read from a km.Session, a km.Kv, a kvmodel.aio.AsyncSession or "
        f"a kvmodel.aio.AsyncKv, not {brief_repr(source, 80)}."
    )


def resolve_source(source: Session | Kv) -> tuple[Kv, Session | None]:
    """The Kv to read and the session to load into (None: detached objects from a Kv).

    Raises:
        KvTypeError: ``source`` is neither a Session nor a Kv.
    """
    found = _sync_source(source)
    if found is None:
        raise _not_a_source(source)
    return found


def run_async(source: object, query: Callable[[Session | Kv], T]) -> Coroutine[Any, Any, T]:
    """Runs the sync ``query(sync_source)`` for an async source; await the result.

    ``source`` is an ``AsyncKv`` (detached objects) or an ``AsyncSession``
    (objects join its identity map). The query runs through ``AsyncKv.run``, on
    the Kv's worker thread as every other call of that Kv, so the sync query
    code is the only copy. ``kvmodel.aio`` is imported here, not at module
    import: the object mapper sits below it and must not need asyncio.

    Raises:
        KvTypeError: ``source`` is not a query source at all.
    """
    kv, sync = async_source(source)
    return kv.run(query, sync)


def async_source(source: object) -> tuple[AsyncKv, Session | Kv]:
    """The AsyncKv of an async source and the sync source its calls run on.

    Raises:
        KvTypeError: ``source`` is neither an ``AsyncKv`` nor an ``AsyncSession``.
    """
    from kvmodel.aio._kv import AsyncKv
    from kvmodel.aio._session import AsyncSession

    if isinstance(source, AsyncSession):
        return source.kv, source.sync
    if isinstance(source, AsyncKv):
        return source, source.sync
    raise _not_a_source(source)


def _selector(
    index: IndexBase[Any], values: tuple[Any, ...], start: Any, end: Any
) -> tuple[dict[str, Any], tuple[KeyPart, ...]]:
    """The ``kv.list`` selector for a query, and the equality parts."""
    ranged = start is not None or end is not None
    parts = index.key_parts(values, room=1 if ranged else 0)
    base: Key = (index.key_prefix, *parts)
    if not ranged:
        return {"prefix": base}, parts
    at = len(parts)
    lo = None if start is None else (*base, index._bound_part(at, start))
    hi = None if end is None else (*base, index._bound_part(at, end))
    if lo is not None and hi is not None:
        return {"start": lo, "end": hi}, parts
    if lo is not None:
        return {"prefix": base, "start": lo}, parts
    return {"prefix": base, "end": hi}, parts


# Entries per engine read when a listing has no limit. An index page brings
# its documents along, so a batch of it holds that many documents as well.
_FIND_BATCH = 100
_LIST_BATCH = 500


@overload
def find(
    index: IndexBase[M],
    source: Session | Kv,
    values: tuple[Any, ...],
    *,
    start: Any = None,
    end: Any = None,
    limit: int | None = None,
    reverse: bool = False,
    cursor: str | None = None,
) -> Page[M]: ...
@overload
def find(
    index: IndexBase[M],
    source: AsyncSession | AsyncKv,
    values: tuple[Any, ...],
    *,
    start: Any = None,
    end: Any = None,
    limit: int | None = None,
    reverse: bool = False,
    cursor: str | None = None,
) -> Awaitable[Page[M]]: ...
def find(
    index: IndexBase[M],
    source: Session | Kv | AsyncSession | AsyncKv,
    values: tuple[Any, ...],
    *,
    start: Any = None,
    end: Any = None,
    limit: int | None = None,
    reverse: bool = False,
    cursor: str | None = None,
) -> Page[M] | Awaitable[Page[M]]:
    """See :meth:`kvmodel.Index.find`; awaitable for an async source."""
    resolved = _sync_source(source)
    if resolved is None:
        return run_async(
            source,
            lambda sync: find(
                index,
                sync,
                values,
                start=start,
                end=end,
                limit=limit,
                reverse=reverse,
                cursor=cursor,
            ),
        )
    kv, session = resolved
    require_ready(kv, index)
    what = f"{index.info.name}.{index.name}.find"
    if index.unique and len(values) == len(index.fields) and start is None and end is None:
        # A full unique value is one key, which a prefix listing would exclude.
        codec = _query_cursor(what, (index.key_prefix, *index.key_parts(values)), reverse)
        if codec.unwrap(cursor):
            return Page([], "")
        sync_source = kv if session is None else session
        found = unique_get(cast("Unique[M]", index), sync_source, values)
        return Page([found] if found is not None else [], "")
    selector, _ = _selector(index, values, start, end)
    codec = _query_cursor(
        what, (selector.get("prefix"), selector.get("start"), selector.get("end")), reverse
    )
    cursor = codec.unwrap(cursor)
    state = kv.list_state(
        selector.get("prefix"),
        selector.get("start"),
        selector.get("end"),
        _peek_limit(limit),
        reverse,
        cursor,
        None if limit is not None else _FIND_BATCH,
        "strong",
    )

    def fetch(read: ReadRange) -> list[tuple[RawEntry, RawEntry | None]]:
        return kv.read_linked(read, Consistency.STRONG)

    return _collect(index.info, state, fetch, session, cursor, limit, codec)


def _peek_limit(limit: int | None) -> int | None:
    """A page reads one entry past its limit, to know whether another page exists.

    Raises:
        InvalidArgumentError: ``limit`` is not a positive int.
    """
    if limit is None:
        return None
    return positive_int("limit", limit) + 1


@overload
def list_documents(
    source: Session | Kv,
    model: type[M],
    pk_values: tuple[Any, ...],
    *,
    start: Any = None,
    end: Any = None,
    limit: int | None = None,
    reverse: bool = False,
    cursor: str | None = None,
) -> Page[M]: ...
@overload
def list_documents(
    source: AsyncSession | AsyncKv,
    model: type[M],
    pk_values: tuple[Any, ...],
    *,
    start: Any = None,
    end: Any = None,
    limit: int | None = None,
    reverse: bool = False,
    cursor: str | None = None,
) -> Awaitable[Page[M]]: ...
def list_documents(
    source: Session | Kv | AsyncSession | AsyncKv,
    model: type[M],
    pk_values: tuple[Any, ...],
    *,
    start: Any = None,
    end: Any = None,
    limit: int | None = None,
    reverse: bool = False,
    cursor: str | None = None,
) -> Page[M] | Awaitable[Page[M]]:
    """See :meth:`kvmodel.Model.all`: documents in primary key order, under a key prefix.

    ``pk_values`` are the first primary key fields' values; ``start``/``end``
    bound the next primary key field to ``[start, end)``.
    """
    resolved = _sync_source(source)
    if resolved is None:
        return run_async(
            source,
            lambda sync: list_documents(
                sync,
                model,
                pk_values,
                start=start,
                end=end,
                limit=limit,
                reverse=reverse,
                cursor=cursor,
            ),
        )
    kv, session = resolved
    info = model_info(model)
    attach(kv, info)
    ranged = start is not None or end is not None
    room = 1 if ranged else 0
    if len(pk_values) + room > len(info.pk_fields) or (
        len(pk_values) == len(info.pk_fields) and len(pk_values) > 0
    ):
        raise InvalidArgumentError(
            f"{info.name} has the primary key fields {info.pk_fields!r}; list under at most "
            f"{len(info.pk_fields) - 1} of them{' and a range on the next' if ranged else ''}, "
            f"not {brief_repr(pk_values)}. Use Session.get for one document."
        )
    parts = info.pk_prefix_parts(pk_values)
    base = (info.prefix, *parts)
    lo = None if start is None else (*base, info.pk_part_at(len(parts), start))
    hi = None if end is None else (*base, info.pk_part_at(len(parts), end))
    batch_size = None if limit is not None else _LIST_BATCH
    codec = _query_cursor(f"{info.name}.all", (base, lo, hi), reverse)
    cursor = codec.unwrap(cursor)
    state = kv.list_state(
        None if lo is not None and hi is not None else base,
        lo,
        hi,
        _peek_limit(limit),
        reverse,
        cursor,
        batch_size,
        "strong",
    )

    def fetch(read: ReadRange) -> list[tuple[RawEntry, RawEntry | None]]:
        return [(doc, doc) for doc in kv.read_range(read, Consistency.STRONG)]

    return _collect(info, state, fetch, session, cursor, limit, codec)


def _query_cursor(what: str, parts: tuple[Any, ...], reverse: bool) -> _QueryCursor:
    """The cursor codec of one query: ``what`` names it, ``parts`` are its key bounds."""
    digest = hashlib.blake2b(repr((what, parts, reverse)).encode(), digest_size=6).hexdigest()
    return _QueryCursor(what, digest)


class _QueryCursor:
    """Tags a page's cursor with a fingerprint of its query, and checks it on the way back.

    A page's cursor is Deno's cursor for its last key, relative to the query's
    key range; given to another query it would name a position in a different
    range and silently return that query's entries from there. The cursor a
    page hands out is ``<Deno cursor>.<fingerprint>`` ("." is outside the
    cursor's base64url alphabet), and a cursor whose fingerprint is not this
    query's is refused.
    """

    __slots__ = ("digest", "what")

    def __init__(self, what: str, digest: str) -> None:
        self.what = what
        self.digest = digest

    def wrap(self, cursor: str) -> str:
        return f"{cursor}.{self.digest}" if cursor else ""

    def unwrap(self, cursor: str | None) -> str | None:
        """The listing cursor inside a page cursor of this query (None and "" pass through).

        Raises:
            InvalidArgumentError: the cursor was made by another query, or is
                not a page cursor at all.
        """
        if not cursor:
            return cursor
        if not isinstance(cursor, str):
            raise InvalidArgumentError(f"cursor must be a str, not {brief_repr(cursor)}.")
        inner, dot, digest = cursor.rpartition(".")
        if not dot or digest != self.digest:
            raise InvalidArgumentError(
                f"The cursor {brief_repr(cursor, 60)} was not made by this query "
                f"({self.what} with these values and bounds); a cursor resumes only the "
                "query whose Page gave it (the same index or listing, values, start, end "
                "and order)."
            )
        return inner


def _collect(
    info: ModelInfo,
    state: ListState,
    fetch: Callable[[ReadRange], list[tuple[RawEntry, RawEntry | None]]],
    session: Session | None,
    cursor: str | None,
    limit: int | None,
    codec: _QueryCursor,
) -> Page[Any]:
    """Reads a listing batch by batch: ``fetch`` gives each ``(listed entry, document)``.

    The listing asks for one entry past ``limit``; seeing it means another
    page exists, and the page's cursor then stops at its last entry.
    """
    items: list[Any] = []
    last: bytes | None = None
    listed = 0
    while not state.stopped():
        read = state.next_read()
        batch = fetch(read)
        state.advance(read, len(batch), batch[-1][0].key if batch else b"")
        if limit is not None and listed + len(batch) > limit:
            batch = batch[: limit - listed]
            if batch:
                last = batch[-1][0].key
            load_documents(info, [doc for _, doc in batch], items, session)
            assert last is not None  # limit >= 1, so the page holds an entry
            return Page(items, codec.wrap(state.cursor_for(last)))
        if batch:
            last = batch[-1][0].key
        listed += len(batch)
        load_documents(info, [doc for _, doc in batch], items, session)
    if limit is not None:
        return Page(items, "")  # the entry past the limit was not there
    return Page(items, codec.wrap(state.cursor_after(last, cursor)))


@overload
def count(
    index: IndexBase[Any],
    source: Session | Kv,
    values: tuple[Any, ...],
    *,
    start: Any = None,
    end: Any = None,
) -> int: ...
@overload
def count(
    index: IndexBase[Any],
    source: AsyncSession | AsyncKv,
    values: tuple[Any, ...],
    *,
    start: Any = None,
    end: Any = None,
) -> Awaitable[int]: ...
def count(
    index: IndexBase[Any],
    source: Session | Kv | AsyncSession | AsyncKv,
    values: tuple[Any, ...],
    *,
    start: Any = None,
    end: Any = None,
) -> int | Awaitable[int]:
    """See :meth:`kvmodel.Index.count`: the number of matching index entries."""
    resolved = _sync_source(source)
    if resolved is None:
        return run_async(source, lambda sync: count(index, sync, values, start=start, end=end))
    kv, _ = resolved
    require_ready(kv, index)
    if index.unique and len(values) == len(index.fields) and start is None and end is None:
        key = (index.key_prefix, *index.key_parts(values))
        return 0 if kv.get(key).versionstamp is None else 1
    selector, _ = _selector(index, values, start, end)
    return sum(1 for _ in kv.list(**selector, batch_size=1000))


@overload
def unique_get(index: Unique[M], source: Session | Kv, values: tuple[Any, ...]) -> M | None: ...
@overload
def unique_get(
    index: Unique[M], source: AsyncSession | AsyncKv, values: tuple[Any, ...]
) -> Awaitable[M | None]: ...
def unique_get(
    index: Unique[M], source: Session | Kv | AsyncSession | AsyncKv, values: tuple[Any, ...]
) -> M | Awaitable[M | None] | None:
    """See :meth:`kvmodel.Unique.get`: the entry and its document, read in one snapshot."""
    resolved = _sync_source(source)
    if resolved is None:
        return run_async(source, lambda sync: unique_get(index, sync, values))
    kv, session = resolved
    require_ready(kv, index)
    if len(values) != len(index.fields):
        raise InvalidArgumentError(
            f"{index.qualname} needs one value per field {index.fields!r}; got {values!r}."
        )
    key = kv.read_key((index.key_prefix, *index.key_parts(values)))
    batch = kv.read_linked(ReadRange(key, key + b"\x00", 1), Consistency.STRONG)
    found: list[M] = []
    load_documents(index.info, [doc for _, doc in batch], found, session)
    return found[0] if found else None


def first(
    index: IndexBase[M],
    source: Session | Kv | AsyncSession | AsyncKv,
    values: tuple[Any, ...],
    *,
    start: Any = None,
    end: Any = None,
    reverse: bool = False,
) -> M | Awaitable[M | None] | None:
    """See :meth:`kvmodel.Index.first`; awaitable for an async source."""
    resolved = _sync_source(source)
    if resolved is None:
        return run_async(
            source,
            lambda sync: _first(index, sync, values, start=start, end=end, reverse=reverse),
        )
    return _first(
        index, cast("Session | Kv", source), values, start=start, end=end, reverse=reverse
    )


def _first(
    index: IndexBase[M],
    source: Session | Kv,
    values: tuple[Any, ...],
    *,
    start: Any,
    end: Any,
    reverse: bool,
) -> M | None:
    page = find(index, source, values, start=start, end=end, limit=1, reverse=reverse)
    return page[0] if page else None


def exists(
    index: IndexBase[Any],
    source: Session | Kv | AsyncSession | AsyncKv,
    values: tuple[Any, ...],
    *,
    start: Any = None,
    end: Any = None,
) -> bool | Awaitable[bool]:
    """See :meth:`kvmodel.Index.exists`; awaitable for an async source."""
    resolved = _sync_source(source)
    if resolved is None:
        return run_async(
            source,
            lambda sync: (
                _first(index, sync, values, start=start, end=end, reverse=False) is not None
            ),
        )
    sync = cast("Session | Kv", source)
    return _first(index, sync, values, start=start, end=end, reverse=False) is not None
