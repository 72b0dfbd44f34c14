"""Facade-level behaviour of kvmodel.Kv and kvmodel.aio that does not depend on the engine."""

from __future__ import annotations

import asyncio

import pytest

import kvmodel as km
from kvmodel import aio


def test_entry_unpacks_into_key_value_and_versionstamp() -> None:
    """`key, value, versionstamp = entry` works."""
    with km.open_kv() as kv:
        stamp = kv.set(("a",), 1).versionstamp
        key, value, versionstamp = kv.get(("a",))
        assert (key, value, versionstamp) == (("a",), 1, stamp)


def test_get_many_accepts_any_iterable_of_keys() -> None:
    """A generator of keys is read like a list."""
    with km.open_kv() as kv:
        kv.set(("a",), 1)
        entries = kv.get_many(k for k in [("a",), ("b",)])
        assert [e.value for e in entries] == [1, None]


def test_error_messages_shorten_huge_keys() -> None:
    """A 3000-character key is cut in the middle of the message, not printed whole."""
    with km.open_kv() as kv, pytest.raises(km.LimitExceededError) as info:
        kv.set(("x" * 3000,), 1)
    assert len(str(info.value)) < 400
    assert "characters" in str(info.value)


def test_open_kv_names_the_options_it_takes() -> None:
    """An unknown option is an InvalidArgumentError listing the accepted ones."""
    with pytest.raises(km.InvalidArgumentError, match="lease_timeout"):
        km.open_kv(None, lease=3)


def test_watch_of_a_single_key_says_to_pass_a_list() -> None:
    """watch(("a",)) explains that watch takes a list of keys."""
    with km.open_kv() as kv, pytest.raises(km.InvalidArgumentError, match=r"\[\('a',\)\]"):
        kv.watch(("a",))


def test_queue_limits_speak_in_days() -> None:
    """A delay beyond 30 days is reported in days, and is a LimitExceededError."""
    with km.open_kv() as kv, pytest.raises(km.LimitExceededError, match="31 days"):
        kv.enqueue(1, delay=31 * 86400)


def test_aio_open_kv_is_awaitable_and_an_async_context_manager() -> None:
    """Both `await aio.open_kv()` and `async with aio.open_kv()` give an AsyncKv."""

    async def main() -> None:
        kv = await aio.open_kv()
        await kv.set(("a",), 1)
        await kv.close()
        async with aio.open_kv() as kv2:
            assert (await kv2.get(("a",))).value is None
        assert kv2.closed
        async with await aio.open_kv() as kv3:
            assert not kv3.closed

    asyncio.run(main())


def test_async_list_cursor_follows_deno_after_the_last_entry() -> None:
    """The async iterator's cursor names the last entry after it is yielded; "" once exhausted."""

    async def main() -> list[str]:
        async with aio.open_kv() as kv:
            for letter in "abcde":
                await kv.set(("a", letter), letter)
            it = kv.list(prefix=("a",), batch_size=2)  # batches of 2, 2 and 1
            cursors = []
            async for _ in it:
                cursors.append(it.cursor)
            cursors.append(it.cursor)
            return cursors

    assert asyncio.run(main()) == ["AmEA", "AmIA", "AmMA", "AmQA", "AmUA", ""]


def test_aio_open_kv_without_await_explains_itself() -> None:
    """Using the result of open_kv without await says to await it."""
    with pytest.raises(AttributeError, match="must be awaited"):
        aio.open_kv().set  # noqa: B018


def test_a_cancelled_async_watch_loses_no_change() -> None:
    """Cancelling a task waiting on an async watch neither ends the watch nor drops a change."""

    async def main() -> None:
        async with aio.open_kv() as kv:
            watch = kv.watch([("k",)])
            assert [e.value for e in await anext(watch)] == [None]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(anext(watch), 0.05)
            await kv.set(("k",), 1)
            entries = await asyncio.wait_for(anext(watch), 5)
            assert [e.value for e in entries] == [1]

    asyncio.run(main())
