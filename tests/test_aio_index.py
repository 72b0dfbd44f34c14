"""Tests of kvmodel.orm.query's async sources: Index.find, Index.count and Unique.get
on an AsyncKv or an AsyncSession, on every engine."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

import kvmodel as km
from kvmodel import aio

T = TypeVar("T")


class Member(km.Model, prefix="aio_index_members"):
    id: str = km.field(primary_key=True)
    email: str
    team: str
    rank: int = 0

    by_email = km.Unique("email")
    by_team = km.Index("team", "rank")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


async def seed(kv: aio.AsyncKv) -> None:
    async with aio.AsyncSession(kv) as s:
        for i in range(5):
            s.add(Member(id=f"m{i}", email=f"m{i}@x", team="red" if i % 2 else "blue", rank=i))


def test_find_count_and_get_on_an_async_kv_give_detached_objects(kv: km.Kv) -> None:
    """On an AsyncKv the three queries are awaited and give what the sync Kv gives."""

    async def main() -> None:
        akv = aio.AsyncKv(kv)
        await seed(akv)
        page = await Member.by_team.find(akv, "blue", limit=2)
        assert [m.id for m in page] == ["m0", "m2"]
        rest = await Member.by_team.find(akv, "blue", cursor=page.cursor)
        assert [m.id for m in rest] == ["m4"]
        ranged = await Member.by_team.find(akv, "red", start=2, end=4, reverse=True)
        assert [m.id for m in ranged] == ["m3"]
        assert await Member.by_team.count(akv, "red") == 2
        assert await Member.by_team.count(akv, "blue", start=1) == 2
        assert await Member.by_email.get(akv, "m3@x") == Member(
            id="m3", email="m3@x", team="red", rank=3
        )
        assert await Member.by_email.get(akv, "nobody@x") is None
        assert await Member.by_email.count(akv, "m1@x") == 1
        assert [m.id for m in await Member.by_email.find(akv, "m1@x")] == ["m1"]

    run(main())


def test_queries_on_an_async_session_join_its_identity_map(kv: km.Kv) -> None:
    """On an AsyncSession the results are the session's objects, and changes commit."""

    async def main() -> None:
        akv = aio.AsyncKv(kv)
        await seed(akv)
        async with aio.AsyncSession(akv) as s:
            found = await Member.by_email.get(s, "m2@x")
            assert found is not None
            assert found is await s.get(Member, "m2")
            (same,) = [m for m in await Member.by_team.find(s, "blue") if m.id == "m2"]
            assert same is found
            found.team = "green"
        assert await Member.by_team.count(akv, "green") == 1
        assert await Member.by_team.count(akv, "blue") == 2

    run(main())


def test_sync_sources_still_answer_directly(kv: km.Kv) -> None:
    """A Session or a Kv gets its results at once, not an awaitable."""
    with km.Session(kv) as s:
        s.add(Member(id="m1", email="m1@x", team="red"))
    page = Member.by_team.find(kv, "red")
    assert not inspect.isawaitable(page)
    assert [m.id for m in page] == ["m1"]
    assert Member.by_team.count(kv, "red") == 1
    assert Member.by_email.get(kv, "m1@x") is not None


def test_a_source_that_is_neither_sync_nor_async_is_refused_at_the_call() -> None:
    """Anything else raises KvTypeError naming all four accepted sources."""
    for call in (
        lambda: Member.by_team.find("kv", "red"),  # type: ignore[call-overload]
        lambda: Member.by_team.count(None, "red"),  # type: ignore[call-overload]
        lambda: Member.by_email.get(42, "m1@x"),  # type: ignore[call-overload]
    ):
        with pytest.raises(km.KvTypeError, match=r"AsyncSession or a kvmodel\.aio\.AsyncKv"):
            call()


def test_bad_query_values_raise_when_awaited(kv: km.Kv) -> None:
    """Argument errors of an async query surface at the await, as the sync query's would."""

    async def main() -> None:
        akv = aio.AsyncKv(kv)
        with pytest.raises(km.InvalidArgumentError):
            await Member.by_email.get(akv, "a", "b")
        with pytest.raises(km.InvalidArgumentError):
            await Member.by_team.find(akv, None)

    run(main())
