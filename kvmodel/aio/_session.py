"""AsyncSession: the unit of work with awaited reads and commits.

It wraps a :class:`kvmodel.Session` on the AsyncKv's sync Kv and runs every
call that touches the engine through :meth:`AsyncKv.run`, so planning,
identity map and dirty tracking are the sync session's, not a copy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from kvmodel._records import CommitResult
from kvmodel.aio._kv import AsyncKv
from kvmodel.errors import ConflictError, InvalidArgumentError, UniqueViolationError
from kvmodel.orm._transaction import check_retries, retry_delay
from kvmodel.orm.index import IndexBase
from kvmodel.orm.model import Model
from kvmodel.orm.query import Page
from kvmodel.orm.refs import Ref
from kvmodel.orm.session import Session

__all__ = ["AsyncSession", "transaction"]

M = TypeVar("M", bound=Model)
T = TypeVar("T")


class AsyncSession:
    """The asyncio twin of :class:`kvmodel.Session`; ``async with`` commits on a clean exit.

    Tracking calls (``add``, ``add_all``, ``delete``, ``enqueue``) are plain
    methods; reads, ``commit`` and ``rollback`` are awaited.
    """

    __slots__ = ("_kv", "_session")

    def __init__(self, kv: AsyncKv) -> None:
        if not isinstance(kv, AsyncKv):
            raise InvalidArgumentError(
                f"AsyncSession needs a kvmodel.aio.AsyncKv, not {kv!r}; "
                "use kvmodel.Session with a sync Kv."
            )
        self._kv = kv
        self._session = Session(kv.sync)

    @property
    def kv(self) -> AsyncKv:
        """The AsyncKv this session works through."""
        return self._kv

    @property
    def sync(self) -> Session:
        """The sync Session underneath (same identity map)."""
        return self._session

    def add(self, obj: Model, *, expire_in: object = None) -> None:
        """See :meth:`kvmodel.Session.add`."""
        self._session.add(obj, expire_in=expire_in)

    def add_all(self, objs: Iterable[Model]) -> None:
        """See :meth:`kvmodel.Session.add_all`."""
        self._session.add_all(objs)

    def delete(self, obj: Model) -> None:
        """See :meth:`kvmodel.Session.delete`."""
        self._session.delete(obj)

    def merge(self, obj: M) -> M:
        """See :meth:`kvmodel.Session.merge`."""
        return self._session.merge(obj)

    async def put(self, obj: Model, *, expire_in: object = None) -> None:
        """See :meth:`kvmodel.Session.put` (it reads the current document)."""
        await self._kv.run(self._session.put, obj, expire_in=expire_in)

    def close(self) -> None:
        """See :meth:`kvmodel.Session.close`."""
        self._session.close()

    @property
    def closed(self) -> bool:
        """See :attr:`kvmodel.Session.closed`."""
        return self._session.closed

    def enqueue(
        self,
        value: object,
        *,
        delay: object = 0,
        keys_if_undelivered: Iterable[Sequence[Any]] = (),
        backoff_schedule: Sequence[object] | None = None,
    ) -> None:
        """See :meth:`kvmodel.Session.enqueue`: the message joins the next commit."""
        self._session.enqueue(
            value,
            delay=delay,
            keys_if_undelivered=keys_if_undelivered,
            backoff_schedule=backoff_schedule,
        )

    async def get(self, model: type[M], *pk: Any) -> M | None:
        """See :meth:`kvmodel.Session.get`."""
        return await self._kv.run(self._session.get, model, *pk)

    async def get_many(self, model: type[M], pks: Iterable[Any]) -> list[M | None]:
        """See :meth:`kvmodel.Session.get_many`."""
        return await self._kv.run(self._session.get_many, model, list(pks))

    async def load(self, ref: Ref[M] | None) -> M | None:
        """See :meth:`kvmodel.Session.load`."""
        return await self._kv.run(self._session.load, ref)

    async def load_refs(self, objs: Iterable[Model], *fields: str) -> int:
        """See :meth:`kvmodel.Session.load_refs`."""
        return await self._kv.run(self._session.load_refs, list(objs), *fields)

    async def refresh(self, obj: Model) -> None:
        """See :meth:`kvmodel.Session.refresh`."""
        await self._kv.run(self._session.refresh, obj)

    async def all(
        self,
        model: type[M],
        *pk: Any,
        start: Any = None,
        end: Any = None,
        limit: int | None = None,
        reverse: bool = False,
        cursor: str | None = None,
    ) -> Page[M]:
        """See :meth:`kvmodel.Session.all`."""
        return await self._kv.run(
            self._session.all,
            model,
            *pk,
            start=start,
            end=end,
            limit=limit,
            reverse=reverse,
            cursor=cursor,
        )

    async def find(
        self,
        index: IndexBase[M],
        *values: Any,
        start: Any = None,
        end: Any = None,
        limit: int | None = None,
        reverse: bool = False,
        cursor: str | None = None,
        **named: Any,
    ) -> Page[M]:
        """See :meth:`kvmodel.Session.find`."""
        session = self._session
        return await self._kv.run(
            lambda: session.find(
                index,
                *values,
                start=start,
                end=end,
                limit=limit,
                reverse=reverse,
                cursor=cursor,
                **named,
            )
        )

    async def commit(self) -> CommitResult | None:
        """See :meth:`kvmodel.Session.commit`."""
        return await self._kv.run(self._session.commit)

    async def rollback(self) -> None:
        """See :meth:`kvmodel.Session.rollback`."""
        self._session.rollback()

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session.closed:
            return
        try:
            if exc_type is None:
                await self.commit()
            else:
                await self.rollback()
        finally:
            self._session.close()

    def __repr__(self) -> str:
        return f"<kvmodel.aio.AsyncSession over {self._session!r}>"


async def transaction(
    kv: AsyncKv,
    fn: Callable[[AsyncSession], Awaitable[T]],
    retries: int = 10,
    *,
    base_delay: float = 0.005,
    max_delay: float = 0.5,
) -> T:
    """Awaits ``fn(session)`` and commits, rerunning it on conflict (see kvmodel.transaction)."""
    check_retries(retries)
    attempt = 0
    while True:
        session = AsyncSession(kv)
        try:
            result = await fn(session)
            await session.commit()
            return result
        except UniqueViolationError:
            raise
        except ConflictError:
            if attempt >= retries:
                raise
        await asyncio.sleep(retry_delay(attempt, base_delay, max_delay))
        attempt += 1
