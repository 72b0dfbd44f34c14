"""AsyncKv: the Kv API as coroutines, running the sync implementation off the event loop.

Every method calls the same :class:`kvmodel.Kv` method, so the semantics live
in one place. Quick engine calls run on one worker thread per Kv (SQLite and
etcd block on I/O); the in-memory engine never blocks, so its calls run
inline. Waits that can last (a watch, a queue listener) use threads of their
own so they never hold up other calls.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from kvmodel._atomic import AtomicBuilder
from kvmodel._kv import Kv
from kvmodel._kv import open_kv as _open_sync
from kvmodel._list import ListState
from kvmodel._queue import POLL_INTERVAL, LeaseKeeper, QueueDelivery, settle, takes_delivery
from kvmodel._records import CommitResult, Entry
from kvmodel._values import decode_value
from kvmodel._watch import WatchIterator
from kvmodel.engines.base import Engine, QueueMessage
from kvmodel.engines.memory import MemoryEngine
from kvmodel.errors import InvalidArgumentError, KvError
from kvmodel.limits import EngineLimits

__all__ = [
    "AsyncAtomicOperation",
    "AsyncKv",
    "AsyncListIterator",
    "AsyncWatchIterator",
    "OpeningKv",
    "open_kv",
]

P = ParamSpec("P")
T = TypeVar("T")
logger = logging.getLogger("kvmodel.queue")
ASYNC_WORKERS = 32
"""Worker threads of an AsyncKv (started as needed): concurrent calls in flight."""


class AsyncKv:
    """The asyncio twin of :class:`kvmodel.Kv`; open it with ``await kvmodel.aio.open_kv()``.

    It wraps a sync :class:`kvmodel.Kv`, or an engine: ``AsyncKv(engine,
    limits="embedded")`` is ``AsyncKv(Kv(engine, limits="embedded"))``.
    """

    def __init__(self, kv: Kv | Engine, *, limits: str | EngineLimits | None = None) -> None:
        if not isinstance(kv, Kv):
            kv = Kv(kv, limits=limits)
        elif limits is not None:
            raise InvalidArgumentError(
                "AsyncKv(kv, limits=...) takes limits only with an engine; a Kv keeps "
                "the limits it was opened with: pass them to Kv(engine, limits=...)."
            )
        self._kv = kv
        self._inline = isinstance(kv.engine, MemoryEngine)
        # Several workers, so commits of concurrent tasks reach the engine side
        # by side and SQLite can serve them with one transaction (group commit);
        # one task's calls still run in the order it awaits them.
        self._executor: ThreadPoolExecutor | None = (
            None
            if self._inline
            else ThreadPoolExecutor(ASYNC_WORKERS, thread_name_prefix="kvmodel-aio")
        )

    @property
    def sync(self) -> Kv:
        """The sync Kv underneath (same data, same engine)."""
        return self._kv

    @property
    def limits(self) -> EngineLimits:
        """The limits this Kv enforces (see :attr:`kvmodel.Kv.limits`)."""
        return self._kv.limits

    @property
    def closed(self) -> bool:
        """True once the Kv is closed."""
        return self._kv.closed

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs a blocking call of the sync Kv on this Kv's worker (inline in memory)."""
        self._kv._check_open()
        if self._executor is None:
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def get(self, key: Sequence[Any], *, consistency: str = "strong") -> Entry[Any]:
        """See :meth:`kvmodel.Kv.get`."""
        return await self.run(self._kv.get, key, consistency=consistency)

    async def get_many(
        self, keys: Sequence[Sequence[Any]], *, consistency: str = "strong"
    ) -> list[Entry[Any]]:
        """See :meth:`kvmodel.Kv.get_many`."""
        return await self.run(self._kv.get_many, keys, consistency=consistency)

    async def set(
        self, key: Sequence[Any], value: object, *, expire_in: object = None
    ) -> CommitResult:
        """See :meth:`kvmodel.Kv.set`."""
        return await self.run(self._kv.set, key, value, expire_in=expire_in)

    async def delete(self, key: Sequence[Any]) -> None:
        """See :meth:`kvmodel.Kv.delete`."""
        await self.run(self._kv.delete, key)

    async def enqueue(
        self,
        value: object,
        *,
        delay: object = 0,
        keys_if_undelivered: Iterable[Sequence[Any]] = (),
        backoff_schedule: Sequence[object] | None = None,
    ) -> CommitResult:
        """See :meth:`kvmodel.Kv.enqueue`."""
        return (
            await self.atomic()
            .enqueue(
                value,
                delay=delay,
                keys_if_undelivered=keys_if_undelivered,
                backoff_schedule=backoff_schedule,
            )
            .commit()
        )

    def list(
        self,
        prefix: Sequence[Any] | None = None,
        *,
        start: Sequence[Any] | None = None,
        end: Sequence[Any] | None = None,
        limit: int | None = None,
        reverse: bool = False,
        cursor: str | None = None,
        batch_size: int | None = None,
        consistency: str = "strong",
    ) -> AsyncListIterator:
        """See :meth:`kvmodel.Kv.list`; iterate with ``async for``."""
        self._kv._check_open()
        state = self._kv.list_state(
            prefix, start, end, limit, reverse, cursor, batch_size, consistency
        )
        return AsyncListIterator(self, state, cursor)

    def atomic(self) -> AsyncAtomicOperation:
        """See :meth:`kvmodel.Kv.atomic`; the builder is sync, ``commit`` is awaited."""
        self._kv._check_open()
        return AsyncAtomicOperation(self)

    def watch(self, keys: Sequence[Sequence[Any]], *, raw: bool = False) -> AsyncWatchIterator:
        """See :meth:`kvmodel.Kv.watch`; iterate with ``async for``."""
        return AsyncWatchIterator(self._kv.watch(keys, raw=raw))

    async def listen_queue(
        self,
        handler: Callable[[Any], Awaitable[object]]
        | Callable[[Any, QueueDelivery], Awaitable[object]],
        *,
        concurrency: int = 1,
    ) -> None:
        """Awaits ``handler(value)`` for each queued value until the Kv closes.

        Semantics as :meth:`kvmodel.Kv.listen_queue`, a second positional
        parameter included (it gets a :class:`kvmodel.QueueDelivery`); up to
        ``concurrency`` handlers run at once as tasks on this event loop.
        """
        if not inspect.iscoroutinefunction(handler) and not callable(handler):
            raise InvalidArgumentError(f"listen_queue needs a coroutine function, not {handler!r}.")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidArgumentError(f"concurrency must be a positive int, not {concurrency!r}.")
        self._kv._check_open()
        engine = self._kv.engine
        keeper = LeaseKeeper(max(engine.lease_timeout / 3, 0.05))
        with_delivery = takes_delivery(handler)
        slots = asyncio.Semaphore(concurrency)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while not self._kv.closed:
                await slots.acquire()
                try:
                    message = await asyncio.to_thread(engine.dequeue_next_message, POLL_INTERVAL)
                except KvError:
                    slots.release()
                    if self._kv.closed:
                        break
                    raise
                if message is None:
                    slots.release()
                    continue
                task = asyncio.create_task(
                    self._deliver(message, handler, with_delivery, keeper, slots)
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            keeper.stop()

    async def _deliver(
        self,
        message: QueueMessage,
        handler: Callable[..., Awaitable[object]],
        with_delivery: bool,
        keeper: LeaseKeeper,
        slots: asyncio.Semaphore,
    ) -> None:
        keeper.add(message)
        success = False
        try:
            value = decode_value(message.payload, message.encoding)
            if with_delivery:
                result = handler(value, QueueDelivery(message.id, message.attempt))
            else:
                result = handler(value)
            if inspect.isawaitable(result):
                await result
            success = True
        except Exception:
            logger.exception("Queue handler %r failed on attempt %d.", handler, message.attempt)
        finally:
            keeper.remove(message)
            slots.release()
        await asyncio.to_thread(settle, message, success)

    async def close(self) -> None:
        """Closes the Kv; watches and listeners end."""
        self._kv.close()
        if self._executor is not None:
            # Joined, as Kv.close joins its threads: no kvmodel thread outlives
            # close(), so a test may check for leaks and a process may fork.
            await asyncio.to_thread(self._executor.shutdown, wait=True)

    async def __aenter__(self) -> AsyncKv:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<kvmodel.aio.AsyncKv {self._kv!r}>"


class AsyncAtomicOperation(AtomicBuilder):
    """The builder of :class:`kvmodel.AtomicOperation` with an awaitable ``commit``."""

    __slots__ = ("_async_kv",)

    def __init__(self, kv: AsyncKv) -> None:
        super().__init__(kv.sync)
        self._async_kv = kv

    async def commit(self) -> CommitResult:
        """See :meth:`kvmodel.AtomicOperation.commit`."""
        write = self.build()
        return await self._async_kv.run(self._core.commit_write, write, self._check_keys)


class AsyncListIterator(AsyncIterator[Entry[Any]]):
    """The entries of an ``AsyncKv.list`` call; ``.cursor`` resumes it."""

    def __init__(self, kv: AsyncKv, state: ListState, cursor: str | None) -> None:
        from kvmodel._list import ListIterator

        self._kv = kv
        # The sync iterator holds the paging and cursor logic; only its fetch is async here.
        self._inner = ListIterator(state, self._fetch_prefetched, cursor)
        self._prefetched: list[Any] | None = None
        self._state = state

    def _fetch_prefetched(self, read: Any, consistency: Any) -> Any:
        batch, self._prefetched = self._prefetched, None
        return batch

    @property
    def cursor(self) -> str:
        """See :attr:`kvmodel.ListIterator.cursor`."""
        return self._inner.cursor

    def __aiter__(self) -> AsyncListIterator:
        return self

    async def __anext__(self) -> Entry[Any]:
        if self._inner.needs_fetch():
            read = self._state.next_read()
            self._prefetched = await self._kv.run(
                self._kv.sync.read_range, read, self._state.consistency
            )
        try:
            return next(self._inner)
        except StopIteration:
            raise StopAsyncIteration from None


class _Ended:
    """The marker of a watch that ended."""


# How long one thread waits for a change before handing back to the event loop.
_WATCH_POLL_SECONDS = 1.0


_ENDED = _Ended()


class AsyncWatchIterator(AsyncIterator[list[Entry[Any]]]):
    """The async form of :class:`kvmodel.WatchIterator`; ends when the Kv closes."""

    def __init__(self, inner: WatchIterator) -> None:
        self._inner = inner
        self._pending: asyncio.Future[list[Entry[Any]] | _Ended | None] | None = None

    def __aiter__(self) -> AsyncWatchIterator:
        return self

    def _poll_or_end(self) -> list[Entry[Any]] | _Ended | None:
        # StopIteration cannot cross into a Future, so the thread returns a marker.
        try:
            return self._inner.poll(_WATCH_POLL_SECONDS)
        except StopIteration:
            return _ENDED

    async def __anext__(self) -> list[Entry[Any]]:
        while True:
            # The wait runs in a thread and is shielded: if the awaiting task is
            # cancelled, the poll finishes within _WATCH_POLL_SECONDS and its
            # result waits for the next __anext__, so no change is lost and no
            # thread blocks for long.
            if self._pending is None:
                self._pending = asyncio.ensure_future(asyncio.to_thread(self._poll_or_end))
            entries = await asyncio.shield(self._pending)
            self._pending = None
            if isinstance(entries, _Ended):
                raise StopAsyncIteration
            if entries is not None:
                return entries

    async def close(self) -> None:
        """Ends the watch."""
        self._inner.close()

    async def __aenter__(self) -> AsyncWatchIterator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._inner.close()


class OpeningKv(Awaitable[AsyncKv]):
    """What :func:`open_kv` returns: await it, or use it in ``async with``.

    ``kv = await aio.open_kv(path)`` and ``async with aio.open_kv(path) as kv:``
    both work (the second closes the Kv on exit), as does
    ``async with await aio.open_kv(path) as kv:``.
    """

    __slots__ = ("_kv", "_options", "_path")

    def __init__(self, path: str | os.PathLike[str] | None, options: dict[str, Any]) -> None:
        self._path = path
        self._options = options
        self._kv: AsyncKv | None = None

    async def _open(self) -> AsyncKv:
        if self._path is None or self._path == ":memory:":
            return AsyncKv(_open_sync(self._path, **self._options))
        return AsyncKv(await asyncio.to_thread(_open_sync, self._path, **self._options))

    def __await__(self) -> Generator[Any, None, AsyncKv]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncKv:
        self._kv = await self._open()
        return self._kv

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._kv is not None:
            await self._kv.close()

    def __getattr__(self, name: str) -> Any:
        # The usual slip: kv = aio.open_kv(...) without await, then kv.set(...).
        raise AttributeError(
            f"aio.open_kv(...) must be awaited before use: write "
            f"`kv = await aio.open_kv(...)` (or `async with aio.open_kv(...) as kv`), "
            f"then kv.{name}."
        )


def open_kv(path: str | os.PathLike[str] | None = None, **options: Any) -> OpeningKv:
    """Opens an AsyncKv; arguments as :func:`kvmodel.open_kv`. Await it or ``async with`` it."""
    return OpeningKv(path, options)
