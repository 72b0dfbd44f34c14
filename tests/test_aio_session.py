"""Tests of kvmodel.aio.AsyncSession and aio.transaction on every engine."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

import kvmodel as km
from kvmodel import aio
from kvmodel.testing import KvStore
from kvmodel.testing.conformance_queue import require_queue_delivery

T = TypeVar("T")


def utcnow_ms() -> datetime:
    """The current UTC time to the millisecond: every engine stores it exactly, the Deno
    file's V8 values included (a JavaScript Date holds milliseconds)."""
    now = km.utcnow()
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class Account(km.Model, prefix="aio_accounts"):
    id: str = km.field(primary_key=True, factory=km.new_id)
    email: str
    team: str
    balance: int = 0
    opened_at: datetime = km.field(factory=utcnow_ms)

    by_email = km.Unique("email")
    by_team = km.Index("team", "opened_at")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


def test_async_session_adds_reads_updates_and_deletes(kv_store: KvStore) -> None:
    """add/commit, get (identity map), dirty tracking and delete work awaited."""

    async def main() -> None:
        kv = aio.AsyncKv(kv_store.open())
        async with aio.AsyncSession(kv) as s:
            s.add(Account(id="a1", email="a@x", team="t"))
        async with aio.AsyncSession(kv) as s:
            a = await s.get(Account, "a1")
            assert a is not None and await s.get(Account, "a1") is a
            a.balance = 10
        async with aio.AsyncSession(kv) as s:
            (a,) = await s.get_many(Account, ["a1"])
            assert a is not None and a.balance == 10
            s.delete(a)
        async with aio.AsyncSession(kv) as s:
            assert await s.get(Account, "a1") is None
            assert (await s.all(Account)).items == []
        assert km.check_indexes(kv.sync, Account).ok
        await kv.close()

    run(main())


def test_async_session_finds_through_indexes_with_pages(kv_store: KvStore) -> None:
    """find pages through an index newest first; a unique value is enforced."""

    async def main() -> None:
        kv = aio.AsyncKv(kv_store.open())
        t0 = datetime(2026, 1, 1, tzinfo=UTC)
        async with aio.AsyncSession(kv) as s:
            for i in range(5):
                s.add(
                    Account(
                        id=f"a{i}", email=f"{i}@x", team="red", opened_at=t0 + timedelta(minutes=i)
                    )
                )
        async with aio.AsyncSession(kv) as s:
            page = await s.find(Account.by_team, "red", limit=3, reverse=True)
            assert [a.id for a in page] == ["a4", "a3", "a2"]
            rest = await s.find(Account.by_team, "red", limit=3, reverse=True, cursor=page.cursor)
            assert [a.id for a in rest] == ["a1", "a0"]
        s = aio.AsyncSession(kv)
        s.add(Account(id="dup", email="0@x", team="blue"))
        with pytest.raises(km.UniqueViolationError):
            await s.commit()
        await kv.close()

    run(main())


def test_async_session_rolls_back_on_error_and_enqueues_on_commit(kv_store: KvStore) -> None:
    """An exception discards the changes; enqueue joins the commit."""
    require_queue_delivery(kv_store)

    async def main() -> None:
        kv = aio.AsyncKv(kv_store.open())
        with pytest.raises(RuntimeError):
            async with aio.AsyncSession(kv) as s:
                s.add(Account(id="x", email="x@x", team="t"))
                raise RuntimeError("boom")
        assert await aio.AsyncSession(kv).get(Account, "x") is None
        got: list[Any] = []

        async def handler(value: Any) -> None:
            got.append(value)
            await kv.close()

        async with aio.AsyncSession(kv) as s:
            s.add(Account(id="y", email="y@x", team="t"))
            s.enqueue({"welcome": "y"})
        await kv.listen_queue(handler)
        assert got == [{"welcome": "y"}]

    run(main())


def test_async_transaction_retries_conflicts_to_an_exact_total(kv_store: KvStore) -> None:
    """Concurrent aio.transaction increments all land."""

    async def main() -> None:
        kv = aio.AsyncKv(kv_store.open())
        async with aio.AsyncSession(kv) as s:
            s.add(Account(id="c", email="c@x", team="t"))

        async def bump(s: aio.AsyncSession) -> int:
            a = await s.get(Account, "c")
            assert a is not None
            await asyncio.sleep(0)  # let the others read the same version
            a.balance += 1
            return a.balance

        await asyncio.gather(*(aio.transaction(kv, bump, retries=50) for _ in range(10)))
        final = await aio.AsyncSession(kv).get(Account, "c")
        assert final is not None and final.balance == 10
        await kv.close()

    run(main())


def test_async_session_needs_an_async_kv() -> None:
    """Passing a sync Kv is a clear error."""
    with km.open_kv() as kv, pytest.raises(km.InvalidArgumentError):
        aio.AsyncSession(kv)  # type: ignore[arg-type]
