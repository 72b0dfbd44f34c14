"""Conformance tests of ``kvmodel.aio``: AsyncKv, its atomic builder, list, watch and queue.

Every test runs on each engine through the ``kv_store`` fixture. The tests are
plain sync functions that drive a coroutine with ``asyncio.run`` (no asyncio
pytest plugin is needed), and every coroutine runs under a timeout so a broken
engine fails the test instead of hanging it. Stores with a ``path`` are opened
with ``await aio.open_kv(path)``, the others by wrapping ``kv_store.open()``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from kvmodel import (
    Entry,
    InvalidArgumentError,
    Kv,
    KvClosedError,
    KvU64,
    LimitExceededError,
    aio,
)
from kvmodel.testing import KvStore
from kvmodel.testing.conformance_queue import (
    JOIN_TIMEOUT,
    WAIT_TIMEOUT,
    require_queue_delivery,
)

__all__: list[str] = []

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = WAIT_TIMEOUT) -> T:
    """Runs a test coroutine to completion on a fresh event loop, within ``timeout``."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def open_async(kv_store: KvStore) -> aio.AsyncKv:
    """An AsyncKv on the store: ``aio.open_kv(path)`` when it has one, else a wrapped Kv."""
    if kv_store.path is not None:
        return await aio.open_kv(kv_store.path)
    return aio.AsyncKv(kv_store.open())


async def _listen(
    kv: aio.AsyncKv, handler: Callable[[Any], Awaitable[object]], *, concurrency: int = 1
) -> asyncio.Task[None]:
    """Starts ``kv.listen_queue(handler)`` as a task and lets it begin waiting."""
    require_queue_delivery(kv.sync)
    task = asyncio.create_task(kv.listen_queue(handler, concurrency=concurrency))
    await asyncio.sleep(0)
    return task


async def _close_and_join(kv: aio.AsyncKv, task: asyncio.Task[None]) -> None:
    """Awaits kv.close() and then the listener task, which must end within JOIN_TIMEOUT."""
    await kv.close()
    try:
        await asyncio.wait_for(task, JOIN_TIMEOUT)
    except TimeoutError:
        pytest.fail("AsyncKv.listen_queue did not return after `await kv.close()`")


async def _wait(event: asyncio.Event, what: str) -> None:
    try:
        await asyncio.wait_for(event.wait(), WAIT_TIMEOUT)
    except TimeoutError:
        pytest.fail(f"{what} did not happen within {WAIT_TIMEOUT} s")


# ---------------------------------------------------------------------------
# Opening and closing


def test_open_kv_in_memory_with_async_with() -> None:
    """``async with await aio.open_kv()`` gives a working AsyncKv and closes it on exit."""

    async def main() -> None:
        async with await aio.open_kv() as kv:
            assert isinstance(kv, aio.AsyncKv)
            assert (await kv.set(("a",), 1)).ok
            assert (await kv.get(("a",))).value == 1
        assert kv.closed
        with pytest.raises(KvClosedError):
            await kv.get(("a",))

    run(main())


def test_open_kv_on_the_store(kv_store: KvStore) -> None:
    """An AsyncKv on the store reads what a sync Kv wrote, and the other way round."""
    sync = kv_store.open()
    sync.set(("from", "sync"), 1)

    async def main() -> None:
        async with await open_async(kv_store) as kv:
            assert (await kv.get(("from", "sync"))).value == 1
            await kv.set(("from", "async"), 2)
            # Read before the AsyncKv closes: a shared engine closes with it.
            assert sync.get(("from", "async")).value == 2

    run(main())


def test_open_kv_rejects_an_unknown_option() -> None:
    """aio.open_kv refuses an option the engine does not take, like kvmodel.open_kv."""

    async def main() -> None:
        with pytest.raises(InvalidArgumentError):
            await aio.open_kv(None, no_such_option=1)

    run(main())


def test_closed_async_kv_raises(kv_store: KvStore) -> None:
    """After ``await kv.close()`` every call raises KvClosedError; closing twice is harmless."""

    async def main() -> None:
        kv = await open_async(kv_store)
        await kv.close()
        await kv.close()
        with pytest.raises(KvClosedError):
            await kv.set(("a",), 1)
        with pytest.raises(KvClosedError):
            await kv.enqueue("m")
        with pytest.raises(KvClosedError):
            kv.list(prefix=())
        with pytest.raises(KvClosedError):
            kv.watch([("a",)])
        with pytest.raises(KvClosedError):
            await kv.listen_queue(_noop)

    run(main())


async def _noop(value: Any) -> None:
    return None


# ---------------------------------------------------------------------------
# Reads and writes


def test_awaited_reads_and_writes(kv_store: KvStore) -> None:
    """get, get_many, set (with expiry), delete and atomic().commit() behave as the sync API."""

    async def main() -> None:
        async with await open_async(kv_store) as kv:
            result = await kv.set(("a",), {"x": 1})
            assert result.ok and result.versionstamp is not None
            assert await kv.get(("a",)) == Entry(("a",), {"x": 1}, result.versionstamp)
            await kv.set(("b",), b"raw", expire_in=3600)
            many = await kv.get_many([("a",), ("b",), ("c",)])
            assert [e.value for e in many] == [{"x": 1}, b"raw", None]
            await kv.delete(("b",))
            assert (await kv.get(("b",))).versionstamp is None
            entry = await kv.get(("a",))
            op = kv.atomic().check(entry).set(("a",), 2).sum(("n",), KvU64(3))
            assert isinstance(op, aio.AsyncAtomicOperation)
            committed = await op.commit()
            assert committed.ok
            stale = await kv.atomic().check(entry).set(("a",), 3).commit()
            assert not stale.ok and stale.versionstamp is None
            assert [e.value for e in await kv.get_many([("a",), ("n",)])] == [2, KvU64(3)]
            with pytest.raises(LimitExceededError):
                await kv.get_many([("k", i) for i in range(11)])

    run(main())


def _populate(kv: Kv) -> None:
    op = kv.atomic()
    for i in range(25):
        op.set(("items", i), i * i)
    op.set(("other",), 0)
    op.commit()


LIST_CASES: dict[str, dict[str, Any]] = {
    "prefix": {"prefix": ("items",)},
    "reverse": {"prefix": ("items",), "reverse": True},
    "limit": {"prefix": ("items",), "limit": 7},
    "limit reverse": {"prefix": ("items",), "limit": 7, "reverse": True},
    "small batches": {"prefix": ("items",), "batch_size": 4},
    "start end": {"start": ("items", 3), "end": ("items", 11)},
    "prefix start reverse": {"prefix": ("items",), "start": ("items", 20), "reverse": True},
    "everything": {"prefix": ()},
}


@pytest.mark.parametrize("options", LIST_CASES.values(), ids=list(LIST_CASES))
def test_async_list_matches_the_sync_list(kv_store: KvStore, options: dict[str, Any]) -> None:
    """``async for`` over AsyncKv.list yields the same entries and cursor as Kv.list."""
    sync = kv_store.open()
    _populate(sync)
    listing = sync.list(**options)
    expected = list(listing)
    expected_cursor = listing.cursor

    async def main() -> None:
        async with await open_async(kv_store) as kv:
            it = kv.list(**options)
            assert isinstance(it, aio.AsyncListIterator)
            got = [entry async for entry in it]
            assert got == expected
            assert it.cursor == expected_cursor

    run(main())


def test_async_list_pages_with_cursors(kv_store: KvStore) -> None:
    """Paging with limit and cursor visits every entry once, forwards and backwards."""
    sync = kv_store.open()
    _populate(sync)
    expected = [(e.key, e.value) for e in sync.list(prefix=("items",))]

    async def pages(kv: aio.AsyncKv, reverse: bool) -> list[Any]:
        seen: list[Any] = []
        cursor = None
        while True:
            it = kv.list(prefix=("items",), limit=6, cursor=cursor, reverse=reverse)
            page = [(e.key, e.value) async for e in it]
            seen.extend(page)
            sync_it = sync.list(prefix=("items",), limit=6, cursor=cursor, reverse=reverse)
            assert page == [(e.key, e.value) for e in sync_it]
            assert it.cursor == sync_it.cursor
            if len(page) < 6:
                return seen
            cursor = it.cursor

    async def main() -> None:
        async with await open_async(kv_store) as kv:
            assert await pages(kv, reverse=False) == expected
            assert await pages(kv, reverse=True) == expected[::-1]
            with pytest.raises(InvalidArgumentError):
                kv.list(prefix=("items",), cursor="not base64 !")

    run(main())


# ---------------------------------------------------------------------------
# Watch


def test_async_watch_yields_changes_and_ends_on_close(kv_store: KvStore) -> None:
    """``async for`` over AsyncKv.watch sees each write and ends when the Kv is closed."""

    async def main() -> None:
        kv = await open_async(kv_store)
        items: list[list[Any]] = []
        first = asyncio.Event()
        changed = asyncio.Event()

        async def watcher() -> None:
            async for entries in kv.watch([("w",), ("v",)]):
                items.append([e.value for e in entries])
                first.set()
                if entries[0].value == "two":
                    changed.set()

        task = asyncio.create_task(watcher())
        try:
            await _wait(first, "the first watch item")
            await kv.set(("w",), "one")
            await kv.set(("unrelated",), 0)
            await kv.set(("w",), "two")
            await _wait(changed, "the watch item of the second write")
        finally:
            await kv.close()
        try:
            await asyncio.wait_for(task, JOIN_TIMEOUT)
        except TimeoutError:
            pytest.fail("`async for` over AsyncKv.watch did not end after `await kv.close()`")
        assert items[0] == [None, None]
        assert items[-1] == ["two", None]
        assert all(item[0] in (None, "one", "two") for item in items)

    run(main())


def test_async_watch_as_a_context_manager(kv_store: KvStore) -> None:
    """``async with kv.watch(...)`` closes the watch on exit; the Kv stays open."""

    async def main() -> None:
        async with await open_async(kv_store) as kv:
            await kv.set(("w",), 1)
            async with kv.watch([("w",)]) as watch:
                assert isinstance(watch, aio.AsyncWatchIterator)
                first = await anext(watch)
                assert [e.value for e in first] == [1]
                await kv.set(("w",), 2)
                second = await anext(watch)
                assert [e.value for e in second] == [2]
            try:
                with pytest.raises(StopAsyncIteration):
                    await asyncio.wait_for(anext(watch), JOIN_TIMEOUT)
            except TimeoutError:
                pytest.fail("anext() on a closed AsyncWatchIterator blocked instead of ending")
            assert (await kv.get(("w",))).value == 2
            with pytest.raises(LimitExceededError):
                kv.watch([("k", i) for i in range(11)])

    run(main())


# ---------------------------------------------------------------------------
# Queue


@pytest.mark.parametrize("concurrency", [1, 4])
def test_async_listen_queue_delivers_and_ends_on_close(kv_store: KvStore, concurrency: int) -> None:
    """A coroutine handler receives every message once; listen_queue ends after close()."""
    total = 40

    async def main() -> None:
        kv = await open_async(kv_store)
        got: list[Any] = []
        done = asyncio.Event()

        async def handler(value: Any) -> None:
            await asyncio.sleep(0)
            got.append(value)
            if len(got) == total:
                done.set()

        task = await _listen(kv, handler, concurrency=concurrency)
        for i in range(total // 2):
            await kv.enqueue(i)
        op = kv.atomic()
        for i in range(total // 2, total):
            op.enqueue(i)
        await op.commit()
        await _wait(done, "delivery of every message")
        await _close_and_join(kv, task)
        if concurrency == 1:
            assert got == list(range(total))
        else:
            assert sorted(got) == list(range(total))

    run(main())


def test_async_listen_queue_runs_handlers_concurrently(kv_store: KvStore) -> None:
    """With concurrency=4, four coroutine handlers are in flight at once (a barrier)."""

    async def main() -> None:
        kv = await open_async(kv_store)
        barrier = asyncio.Barrier(4)
        got: list[Any] = []
        done = asyncio.Event()

        async def handler(value: Any) -> None:
            await asyncio.wait_for(barrier.wait(), WAIT_TIMEOUT)
            got.append(value)
            if len(got) == 4:
                done.set()

        for i in range(4):
            await kv.enqueue(i)
        task = await _listen(kv, handler, concurrency=4)
        await _wait(done, "four handlers meeting at the barrier")
        await _close_and_join(kv, task)
        assert sorted(got) == [0, 1, 2, 3]

    run(main())


def test_async_listen_queue_ends_on_close_while_idle(kv_store: KvStore) -> None:
    """An idle listen_queue returns promptly after ``await kv.close()``; the loop stays free."""

    async def main() -> None:
        kv = await open_async(kv_store)
        task = await _listen(kv, _noop)
        # The listener must not block the event loop while it waits.
        for i in range(5):
            await kv.set(("tick",), i)
        assert not task.done()
        loop = asyncio.get_running_loop()
        closed_at = loop.time()
        await _close_and_join(kv, task)
        assert loop.time() - closed_at < 2.0

    run(main())


def test_async_failing_handler_is_retried_logged_and_dead_lettered(
    kv_store: KvStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A raising coroutine handler is retried per the schedule, logged, then dead-lettered."""
    caplog.set_level(logging.ERROR, logger="kvmodel.queue")

    async def main() -> None:
        kv = await open_async(kv_store)
        attempts: list[Any] = []
        sentinel = asyncio.Event()

        async def handler(value: Any) -> None:
            attempts.append(value)
            if value == "sentinel":
                sentinel.set()
                return
            raise RuntimeError("async handler failure")

        task = await _listen(kv, handler)
        await kv.enqueue("job", keys_if_undelivered=[("dead",)], backoff_schedule=[0.01, 0.01])
        async with kv.watch([("dead",)]) as watch:
            async for entries in watch:
                if entries[0].value is not None:
                    break
        await kv.enqueue("sentinel")
        await _wait(sentinel, "delivery of the sentinel")
        assert (await kv.get(("dead",))).value == "job"
        await _close_and_join(kv, task)
        assert attempts == ["job", "job", "job", "sentinel"]

    run(main())
    failures = [r for r in caplog.records if r.name == "kvmodel.queue" and r.exc_info is not None]
    assert len(failures) == 3


def test_async_queue_arguments_are_validated(kv_store: KvStore) -> None:
    """Bad concurrency or queue options raise InvalidArgumentError, as in the sync API."""

    async def main() -> None:
        async with await open_async(kv_store) as kv:
            for concurrency in (0, -2, True, 1.5):
                with pytest.raises(InvalidArgumentError):
                    await kv.listen_queue(_noop, concurrency=concurrency)  # type: ignore[arg-type]
            with pytest.raises(InvalidArgumentError):
                await kv.enqueue("m", backoff_schedule=[1] * 6)
            with pytest.raises(InvalidArgumentError):
                await kv.enqueue("m", delay=-1)

    run(main())


__all__ += [name for name in dir() if name.startswith("test_")]
