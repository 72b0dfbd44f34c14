"""Index queries: :class:`Page`, and the find/count/get behind the index accessors.

A query lists index entries, then reads the documents they point at (in
``get_many`` groups of 10) and keeps only the documents whose current indexed
values are those of the entry. Index entries and documents are always written
in the same commit, so a mismatch only means a writer committed between the two
reads; such an entry is dropped rather than returning a document at a position
it no longer has. Every returned document therefore matches the query as of the
moment it was read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from kvmodel.limits import MAX_GET_MANY_KEYS
from kvmodel.orm._convert import Key, KeyPart, to_key_part
from kvmodel.orm.session import Session

if TYPE_CHECKING:
    from kvmodel._kv import Kv
    from kvmodel.orm.index import IndexBase, Unique
    from kvmodel.orm.model import Model

__all__ = ["Page", "count", "find", "unique_get"]

M = TypeVar("M", bound="Model")

# A unique lookup re-reads when a writer moved the value between its two reads.
_UNIQUE_GET_ATTEMPTS = 5


class Page(Sequence[M], Generic[M]):
    """One page of query results: a sequence of objects and the cursor to resume.

    ``cursor`` is "" when the listing is exhausted; otherwise pass it back as
    ``cursor=`` to get the next page.
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

    def __iter__(self) -> Iterator[M]:
        return iter(self.items)

    def __repr__(self) -> str:
        return f"Page({self.items!r}, cursor={self.cursor!r})"


def as_session(source: Session | Kv) -> Session:
    """The session to load through: the one given, or a fresh one over a Kv."""
    if isinstance(source, Session):
        return source
    if hasattr(source, "atomic") and hasattr(source, "get_many"):
        return Session(source)
    raise TypeError(f"Expected a km.Session or a km.Kv, not {source!r}.")


def _selector(
    index: IndexBase[Any], values: tuple[Any, ...], start: Any, end: Any
) -> tuple[dict[str, Any], tuple[KeyPart, ...]]:
    """The ``kv.list`` selector for a query, and the equality parts."""
    ranged = start is not None or end is not None
    parts = index.key_parts(values, room=1 if ranged else 0)
    base: Key = (index.key_prefix, *parts)
    if not ranged:
        return {"prefix": base}, parts
    field = f"The range bound for {index.qualname}.{index.fields[len(parts)]}"
    lo = None if start is None else (*base, to_key_part(start, field))
    hi = None if end is None else (*base, to_key_part(end, field))
    if lo is not None and hi is not None:
        return {"start": lo, "end": hi}, parts
    if lo is not None:
        return {"prefix": base, "start": lo}, parts
    return {"prefix": base, "end": hi}, parts


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
) -> Page[M]:
    """See :meth:`kvmodel.Index.find`."""
    session = as_session(source)
    info = index.info
    if index.unique and len(values) == len(index.fields) and start is None and end is None:
        # A full unique value is one key, which a prefix listing would exclude.
        if cursor:
            return Page([], "")
        found = unique_get(index, session, values)  # type: ignore[arg-type]
        return Page([found] if found is not None else [], "")
    selector, _ = _selector(index, values, start, end)
    it = session.kv.list(**selector, limit=limit, reverse=reverse, cursor=cursor)
    n = len(index.fields)
    wanted: list[tuple[Key, tuple[KeyPart, ...]]] = []
    for entry in it:
        key = entry.key
        value: Any = entry.value
        pk = tuple(value) if index.unique else key[1 + n :]
        wanted.append(((info.prefix, *pk), key[1 : 1 + n]))
    items: list[M] = []
    kv = session.kv
    for lo in range(0, len(wanted), MAX_GET_MANY_KEYS):
        chunk = wanted[lo : lo + MAX_GET_MANY_KEYS]
        docs = kv.get_many([k for k, _ in chunk])
        for (pkey, parts), doc in zip(chunk, docs, strict=True):
            form: Any = doc.value
            if doc.versionstamp is None or index.values_of(form) != parts:
                continue  # a writer moved it after the index read: not at this position
            obj = session._load(info, pkey, doc.value, doc.versionstamp)
            if obj is not None:
                items.append(obj)
    return Page(items, it.cursor)


def count(
    index: IndexBase[Any],
    source: Session | Kv,
    values: tuple[Any, ...],
    *,
    start: Any = None,
    end: Any = None,
) -> int:
    """See :meth:`kvmodel.Index.count`: the number of matching index entries."""
    session = as_session(source)
    if index.unique and len(values) == len(index.fields) and start is None and end is None:
        key = (index.key_prefix, *index.key_parts(values))
        return 0 if session.kv.get(key).versionstamp is None else 1
    selector, _ = _selector(index, values, start, end)
    return sum(1 for _ in session.kv.list(**selector, batch_size=1000))


def unique_get(index: Unique[M], source: Session | Kv, values: tuple[Any, ...]) -> M | None:
    """See :meth:`kvmodel.Unique.get`."""
    session = as_session(source)
    info = index.info
    if len(values) != len(index.fields):
        from kvmodel.errors import InvalidArgumentError

        raise InvalidArgumentError(
            f"{index.qualname} needs one value per field {index.fields!r}; got {values!r}."
        )
    parts = index.key_parts(values)
    key = (index.key_prefix, *parts)
    kv = session.kv
    for _ in range(_UNIQUE_GET_ATTEMPTS):
        entry = kv.get(key)
        if entry.versionstamp is None:
            return None
        owner: Any = entry.value
        pkey: Key = (info.prefix, *owner)
        doc = kv.get(pkey)
        form: Any = doc.value
        if doc.versionstamp is not None and index.values_of(form) == parts:
            return session._load(info, pkey, doc.value, doc.versionstamp)  # type: ignore[no-any-return]
        # The value moved between the two reads: read the entry again.
    return None
