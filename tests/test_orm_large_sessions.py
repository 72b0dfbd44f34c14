"""Sessions at real sizes: kvmodel.orm.session and _planner under limits="embedded".

A session of 10,000 new objects with a unique and a multi-value index commits
atomically on SQLite and memory under embedded limits; under Deno's limits the
error names limits="embedded" where the engine can lift them (not on etcd,
KV Connect or Deno's file), beside bulk_save.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import kvmodel as km
from kvmodel import aio
from kvmodel.limits import EngineLimits
from kvmodel.orm._planner import Tracked, plan_commit
from kvmodel.orm.model import model_info
from kvmodel.testing import KvStore

LIFTING = {"memory", "sqlite"}


class Post(km.Model, prefix="posts"):
    id: str = km.field(primary_key=True)
    slug: str
    body: str = ""
    tags: list[str] = km.field(factory=list)

    by_slug = km.Unique("slug")
    by_tag = km.Index("tags", each=True)


def posts(n: int, start: int = 0, body: str = "") -> list[Post]:
    return [
        Post(id=f"p{i:06d}", slug=f"s{i}", body=body, tags=[f"t{i % 7}", f"u{i % 5}", "all"])
        for i in range(start, start + n)
    ]


def engine_name(request: pytest.FixtureRequest) -> str:
    name: str = request.node.callspec.params["kv_store"]
    return name


@pytest.mark.parametrize("where", ["sqlite", "memory"])
def test_a_session_of_10000_new_objects_commits_atomically(tmp_path: Path, where: str) -> None:
    """10,000 posts with a unique slug and three tags each commit in ONE commit; indexes clean."""
    path = None if where == "memory" else tmp_path / "a.db"
    with km.open_kv(path, limits="embedded") as kv:
        with km.Session(kv) as s:
            s.add_all(posts(10_000))
            plan = s.plan()
            assert len(plan.checks) == 20_000
            assert len(plan.mutations) == 50_000
        assert km.check_indexes(kv, Post).ok
        assert sum(1 for _ in kv.list(prefix=("posts",))) == 10_000
        assert Post.by_tag.count(kv, "all") == 10_000
        assert Post.by_slug.get(kv, "s9999").id == "p009999"  # type: ignore[union-attr]


def test_a_large_session_writes_nothing_when_one_object_conflicts(tmp_path: Path) -> None:
    """One taken unique value among 10,000 new posts: UniqueViolationError and nothing written."""
    with km.open_kv(tmp_path / "a.db", limits="embedded") as kv:
        with km.Session(kv) as s:
            s.add(Post(id="old", slug="s5000"))
        s = km.Session(kv)
        s.add_all(posts(10_000))
        with pytest.raises(km.UniqueViolationError, match="s5000"):
            s.commit()
        assert [e.key for e in kv.list(prefix=("posts",))] == [("posts", "old")]
        assert km.check_indexes(kv, Post).ok


def test_too_large_a_session_names_embedded_where_it_lifts(
    kv_store: KvStore, request: pytest.FixtureRequest
) -> None:
    """Under Deno's limits, 60 new posts fail; the error names bulk_save, and limits='embedded'
    only on engines that can lift them."""
    kv = kv_store.open()
    s = km.Session(kv)
    s.add_all(posts(60))
    with pytest.raises(km.LimitExceededError) as info:
        s.commit()
    message = str(info.value)
    assert "km.bulk_save" in message
    assert ("limits='embedded'" in message) == (engine_name(request) in LIFTING), message
    assert kv.get(("posts", "p000000")).versionstamp is None


def test_the_size_blame_names_the_first_object_past_the_limit(tmp_path: Path) -> None:
    """A session too large in bytes names the first post past the limit, and suggests embedded."""
    big = "x" * 50_000
    with km.open_kv(tmp_path / "a.db") as kv:
        s = km.Session(kv)
        s.add_all(posts(30, body=big))
        with pytest.raises(km.LimitExceededError) as info:
            s.commit()
        message = str(info.value)
        assert "total mutation size" in message
        assert "limits='embedded'" in message
        named = next(p for p in posts(30) if f"Post({p.id!r})" in message)
        k = int(named.id[1:])
    # The posts before the named one fit one commit; with it they do not.
    with km.open_kv() as kv:
        with km.Session(kv) as s:
            s.add_all(posts(k, body=big))
        s = km.Session(kv)
        s.add_all(posts(k + 1, start=100, body=big))
        with pytest.raises(km.LimitExceededError):
            s.commit()
    with km.open_kv(limits="embedded") as kv, km.Session(kv) as s:
        s.add_all(posts(30, body=big))


def test_one_object_too_large_for_denos_limits_fits_embedded() -> None:
    """A post with 1200 tags needs 1202 mutations: the error names embedded, which holds it."""
    post = Post(id="p", slug="s", tags=[f"t{i}" for i in range(1200)])
    with km.open_kv() as kv:
        s = km.Session(kv)
        s.add(post)
        with pytest.raises(km.LimitExceededError, match="alone needs 1202") as info:
            s.commit()
        assert "limits='embedded'" in str(info.value)
        report = km.bulk_save(kv, [Post(id="p", slug="s", tags=post.tags)])
        assert report.saved == 0
        assert "limits='embedded'" in report.conflicts[0][1]
    with km.open_kv(limits="embedded") as kv:
        assert km.bulk_save(kv, [post]).saved == 1
        assert Post.by_tag.count(kv, "t1199") == 1


def test_the_planner_names_embedded_only_given_a_capacity_that_holds_it() -> None:
    """plan_commit advises limits='embedded' only when the capacity it is given can hold it."""
    info = model_info(Post)
    tracked = [Tracked(p, info, (p.id,), None, None) for p in posts(60)]
    for capacity, advised in (
        (None, False),
        (EngineLimits(), False),
        (EngineLimits.embedded(), True),
    ):
        with pytest.raises(km.LimitExceededError) as exc:
            plan_commit(tracked, [], EngineLimits(), capacity)
        assert ("limits='embedded'" in str(exc.value)) == advised


def test_an_async_session_commits_a_large_session_under_embedded(tmp_path: Path) -> None:
    """AsyncSession on aio.open_kv(limits="embedded") commits 3,000 posts in one commit."""

    async def main() -> None:
        async with aio.open_kv(tmp_path / "a.db", limits="embedded") as kv:
            async with aio.AsyncSession(kv) as s:
                for p in posts(3000):
                    s.add(p)
            assert km.check_indexes(kv.sync, Post).ok
            assert await Post.by_tag.count(kv, "all") == 3000

    asyncio.run(main())
