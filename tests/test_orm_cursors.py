"""A page's cursor resumes its own query only: given to another query it is refused.

Cursors are positions relative to a query's key range, so a cursor of
``Post.by_author.find`` read by ``Post.by_tag.find`` named a position in the
wrong range and returned that query's entries from there, a wrong result.
Each page cursor now carries a fingerprint of its query.
"""

from __future__ import annotations

import asyncio

import pytest

import kvmodel as km
from kvmodel import Kv, aio


class Post(km.Model, prefix="posts"):
    id: int = km.field(primary_key=True)
    author: str
    tag: str
    slug: str = ""
    by_author = km.Index("author")
    by_tag = km.Index("tag")
    by_slug = km.Unique("slug")


def _seed(kv: Kv) -> None:
    with km.Session(kv) as s:
        s.add_all(Post(id=i, author=f"a{i % 2}", tag=f"t{i % 3}", slug=f"s{i}") for i in range(30))


def _refused(call: object) -> str:
    with pytest.raises(km.InvalidArgumentError) as info:
        call()  # type: ignore[operator]
    return str(info.value)


def test_a_cursor_of_one_index_is_refused_by_another(kv: Kv) -> None:
    _seed(kv)
    page = Post.by_author.find(kv, "a0", limit=3)
    assert page.cursor
    message = _refused(lambda: Post.by_tag.find(kv, "t0", limit=3, cursor=page.cursor))
    assert "was not made by this query" in message and "Post.by_tag" in message


def test_a_cursor_is_refused_by_the_same_index_with_other_values_or_bounds(kv: Kv) -> None:
    _seed(kv)
    cursor = Post.by_author.find(kv, "a0", limit=3).cursor
    _refused(lambda: Post.by_author.find(kv, "a1", limit=3, cursor=cursor))
    _refused(lambda: Post.by_author.find(kv, "a0", limit=3, reverse=True, cursor=cursor))
    ranged = Post.by_tag.find(kv, start="t0", end="t2", limit=3).cursor
    _refused(lambda: Post.by_tag.find(kv, start="t0", end="t3", limit=3, cursor=ranged))


def test_listing_cursors_and_find_cursors_do_not_mix(kv: Kv) -> None:
    _seed(kv)
    listed = Post.all(kv, limit=4).cursor
    found = Post.by_tag.find(kv, "t1", limit=4).cursor
    _refused(lambda: Post.by_tag.find(kv, "t1", limit=4, cursor=listed))
    _refused(lambda: Post.all(kv, limit=4, cursor=found))
    _refused(lambda: Post.all(kv, start=5, limit=4, cursor=listed))
    # A kv.list cursor is not a page cursor either.
    it = kv.list(prefix=("posts",), limit=2)
    list(it)
    _refused(lambda: Post.all(kv, limit=4, cursor=it.cursor))
    _refused(lambda: Post.by_slug.find(kv, "s1", cursor=found))


def test_each_query_still_resumes_with_its_own_cursor(kv: Kv) -> None:
    _seed(kv)
    seen: list[int] = []
    page = Post.by_tag.find(kv, "t2", limit=4)
    seen += [p.id for p in page]
    while page.has_more:
        page = Post.by_tag.find(kv, "t2", limit=4, cursor=page.cursor)
        seen += [p.id for p in page]
    assert seen == [i for i in range(30) if i % 3 == 2]
    with km.Session(kv) as s:
        first = s.all(Post, limit=7)
        rest = s.all(Post, cursor=first.cursor)
    assert [p.id for p in first] + [p.id for p in rest] == list(range(30))


def test_the_async_twins_refuse_foreign_cursors_too(tmp_path: object) -> None:
    async def main() -> None:
        async with aio.open_kv() as akv:
            async with aio.AsyncSession(akv) as s:
                s.add_all(Post(id=i, author="a", tag="t", slug=f"s{i}") for i in range(5))
            cursor = (await Post.by_author.find(akv, "a", limit=2)).cursor
            with pytest.raises(km.InvalidArgumentError):
                await Post.by_tag.find(akv, "t", limit=2, cursor=cursor)

    asyncio.run(main())
