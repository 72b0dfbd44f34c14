"""Tests of listing by primary key prefix (Model.all, Session.all), Page.has_more and
Index.first/exists (kvmodel.orm.query), on every engine and through kvmodel.aio."""

from __future__ import annotations

import asyncio

import pytest

import kvmodel as km
from kvmodel import Kv, aio


class Comment(km.Model, prefix="comments"):
    post_id: str = km.field(primary_key=True)
    n: int = km.field(primary_key=True)
    author: str = ""
    by_author = km.Index("author", "n")


def _seed(kv: Kv) -> None:
    with km.Session(kv) as s:
        for post in ("p1", "p2", "p3"):
            for n in range(5):
                s.add(Comment(post_id=post, n=n, author=f"a{n % 2}"))


def _ids(page: km.Page[Comment]) -> list[tuple[str, int]]:
    return [(c.post_id, c.n) for c in page]


def test_all_under_a_key_prefix_with_ranges_and_paging(kv: Kv) -> None:
    """Comment.all(kv, "p2") lists that post's comments; start/end/reverse/limit/cursor
    work on the next key field."""
    _seed(kv)
    assert _ids(Comment.all(kv, "p2")) == [("p2", n) for n in range(5)]
    assert _ids(Comment.all(kv, "p2", start=1, end=3)) == [("p2", 1), ("p2", 2)]
    assert _ids(Comment.all(kv, "p2", start=3)) == [("p2", 3), ("p2", 4)]
    assert _ids(Comment.all(kv, "p2", end=1)) == [("p2", 0)]
    assert _ids(Comment.all(kv, "p2", reverse=True, limit=2)) == [("p2", 4), ("p2", 3)]
    assert len(Comment.all(kv)) == 15
    pages, cursor = [], None
    while True:
        page = Comment.all(kv, "p3", limit=2, cursor=cursor)
        pages.append(_ids(page))
        if not page.has_more:
            break
        cursor = page.cursor
    assert pages == [[("p3", 0), ("p3", 1)], [("p3", 2), ("p3", 3)], [("p3", 4)]]
    with km.Session(kv) as s:
        listed = s.all(Comment, "p1", start=4)
        assert _ids(listed) == [("p1", 4)]
        assert s.get(Comment, "p1", 4) is listed[0]  # joined the identity map
    assert _ids(Comment.all(kv, "p2", start=2.0, end=4)) == [("p2", 2), ("p2", 3)]


def test_bad_prefix_listings_are_errors(kv: Kv) -> None:
    """A whole key, a wrong kind of value or a range past the last field is refused."""
    with pytest.raises(km.InvalidArgumentError, match=r"Session\.get"):
        Comment.all(kv, "p1", 2)
    with pytest.raises(km.InvalidArgumentError, match="int"):
        Comment.all(kv, "p1", start="x")
    with pytest.raises(km.InvalidArgumentError):
        Comment.all(kv, 5)
    with pytest.raises(km.InvalidArgumentError):
        Comment.all(kv, "p1", limit=0)


def test_has_more_is_exact_at_the_end(kv: Kv) -> None:
    """A page that ends exactly at the last entry says there is no more."""
    _seed(kv)
    page = Comment.all(kv, "p1", limit=5)
    assert len(page) == 5 and not page.has_more and page.cursor == ""
    page = Comment.by_author.find(kv, "a0", limit=3)
    assert len(page) == 3 and page.has_more
    rest = Comment.by_author.find(kv, "a0", limit=6, cursor=page.cursor)
    assert len(rest) == 6 and not rest.has_more
    assert Comment.by_author.find(kv, "zz", limit=3).has_more is False


def test_first_and_exists(kv: Kv) -> None:
    """first() returns the first match (or the last with reverse), exists() whether any."""
    _seed(kv)
    first = Comment.by_author.first(kv, "a1")
    assert first is not None and (first.post_id, first.n) == ("p1", 1)
    last = Comment.by_author.first(kv, "a1", reverse=True)
    assert last is not None and last.n == 3
    assert Comment.by_author.first(kv, "a1", start=2) is not None
    assert Comment.by_author.first(kv, "nobody") is None
    assert Comment.by_author.exists(kv, "a0")
    assert not Comment.by_author.exists(kv, "a0", start=5)


def test_the_async_twins_await(tmp_path: object) -> None:
    """Model.all, first and exists accept an AsyncKv and an AsyncSession."""

    async def main() -> None:
        akv = await aio.open_kv()
        async with aio.AsyncSession(akv) as s:
            s.add_all([Comment(post_id="q", n=n, author="x") for n in range(3)])
        page = await Comment.all(akv, "q", limit=2)
        assert [c.n for c in page] == [0, 1] and page.has_more
        first = await Comment.by_author.first(akv, "x", reverse=True)
        assert first is not None and first.n == 2
        assert await Comment.by_author.exists(akv, "x")
        async with aio.AsyncSession(akv) as s:
            listed = await Comment.all(s, "q")
            assert await s.get(Comment, "q", 0) is listed[0]
        await akv.close()

    asyncio.run(main())
