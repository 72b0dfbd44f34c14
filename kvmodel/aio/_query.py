"""AsyncQuery: :class:`kvmodel.Query` with awaited reads, for an AsyncKv or an AsyncSession.

It wraps a sync query on the source's sync Kv or Session and runs each reading
call through :meth:`AsyncKv.run` (as the index accessors do), so planning and
loading are the sync query's, not a copy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from kvmodel.aio._kv import AsyncKv
from kvmodel.orm.conditions import Condition
from kvmodel.orm.queries import Query, make_query
from kvmodel.orm.query import Page, async_source

if TYPE_CHECKING:
    from kvmodel.orm.model import Model

__all__ = ["AsyncQuery"]

M = TypeVar("M", bound="Model")

_ITER_PAGE = 100


class AsyncQuery(Generic[M]):
    """The asyncio twin of :class:`kvmodel.Query`: builders are plain, reads are awaited.

    ``async for obj in query`` reads page after page.
    """

    __slots__ = ("_kv", "_query")

    def __init__(self, kv: AsyncKv, query: Query[M]) -> None:
        self._kv = kv
        self._query = query

    @property
    def sync(self) -> Query[M]:
        """The sync query underneath."""
        return self._query

    def where(self, *conditions: Condition, **equalities: Any) -> AsyncQuery[M]:
        """See :meth:`kvmodel.Query.where`."""
        return AsyncQuery(self._kv, self._query.where(*conditions, **equalities))

    def order_by(self, field: str) -> AsyncQuery[M]:
        """See :meth:`kvmodel.Query.order_by`."""
        return AsyncQuery(self._kv, self._query.order_by(field))

    def limit(self, n: int) -> AsyncQuery[M]:
        """See :meth:`kvmodel.Query.limit`."""
        return AsyncQuery(self._kv, self._query.limit(n))

    async def page(self, *, limit: int | None = None, cursor: str | None = None) -> Page[M]:
        """See :meth:`kvmodel.Query.page`."""
        return await self._kv.run(lambda: self._query.page(limit=limit, cursor=cursor))

    async def __aiter__(self) -> AsyncIterator[M]:
        remaining = self._query._limit
        cursor: str | None = None
        while True:
            size = _ITER_PAGE if remaining is None else min(_ITER_PAGE, remaining)
            page = await self.page(limit=size, cursor=cursor)
            for obj in page:
                yield obj
            if remaining is not None:
                remaining -= len(page)
            if not page.has_more or remaining == 0:
                return
            cursor = page.cursor

    async def first(self) -> M | None:
        """See :meth:`kvmodel.Query.first`."""
        return await self._kv.run(self._query.first)

    async def exists(self) -> bool:
        """See :meth:`kvmodel.Query.exists`."""
        return await self._kv.run(self._query.exists)

    async def count(self) -> int:
        """See :meth:`kvmodel.Query.count`."""
        return await self._kv.run(self._query.count)

    async def delete(self) -> int:
        """See :meth:`kvmodel.Query.delete` (with an AsyncSession: committed with it)."""
        return await self._kv.run(self._query.delete)

    async def explain(self) -> str:
        """See :meth:`kvmodel.Query.explain` (planning reads the index states)."""
        return await self._kv.run(self._query.explain)

    def __repr__(self) -> str:
        return f"<AsyncQuery {self._query._bound.text}>"


def make_async_query(
    model: type[M],
    source: object,
    conditions: tuple[Condition, ...],
    equalities: dict[str, Any],
    *,
    allow_scan: bool,
    max_scan: int | None,
) -> AsyncQuery[M]:
    """What :meth:`kvmodel.Model.query` builds for an AsyncKv or an AsyncSession."""
    kv, sync = async_source(source)
    query = make_query(
        model, sync, conditions, equalities, allow_scan=allow_scan, max_scan=max_scan
    )
    return AsyncQuery(kv, query)
