"""Tests of Session.merge, Session.put and Session.close (kvmodel.orm.session): attaching
detached objects, upserts, and closed sessions, on every engine."""

from __future__ import annotations

import pytest

import kvmodel as km
from kvmodel import Kv


class Post(km.Model, prefix="posts"):
    id: str = km.field(primary_key=True)
    title: str
    slug: str = ""
    by_slug = km.Unique("slug")


def _seed(kv: Kv) -> None:
    with km.Session(kv) as s:
        s.add(Post(id="p1", title="One", slug="one"))


def test_merge_saves_a_detached_object_from_a_query_on_a_kv(kv: Kv) -> None:
    """An object read through a Kv, changed and merged, is written with its index diff."""
    _seed(kv)
    [post] = Post.by_slug.find(kv, "one")
    post.slug = "first"
    with km.Session(kv) as s:
        assert s.merge(post) is post
    assert kv.get(("posts", "p1")).value["slug"] == "first"
    assert Post.by_slug.get(kv, "first").id == "p1"  # type: ignore[union-attr]
    assert Post.by_slug.get(kv, "one") is None
    assert km.check_indexes(kv, Post).ok


def test_merge_is_checked_against_the_versionstamp_it_was_read_with(kv: Kv) -> None:
    """A document changed since the detached object was read makes the commit conflict."""
    _seed(kv)
    stale = Post.by_slug.get(kv, "one")
    assert stale is not None
    with km.Session(kv) as s:
        s.get(Post, "p1").title = "Changed"  # type: ignore[union-attr]
    stale.title = "Mine"
    s = km.Session(kv)
    s.merge(stale)
    with pytest.raises(km.ConflictError, match="changed or deleted since it was read"):
        s.commit()
    assert kv.get(("posts", "p1")).value["title"] == "Changed"


def test_an_object_from_a_closed_session_can_be_merged(kv: Kv) -> None:
    """Leaving a with block detaches the objects, which another session may then merge."""
    with km.Session(kv) as s:
        post = Post(id="p2", title="Two", slug="two")
        s.add(post)
    assert s.closed
    post.title = "Deux"
    with km.Session(kv) as s2:
        s2.merge(post)
    assert kv.get(("posts", "p2")).value["title"] == "Deux"
    with km.Session(kv) as s3:  # and again: the commit refreshed its versionstamp
        s3.merge(post).title = "Zwei"
    assert kv.get(("posts", "p2")).value["title"] == "Zwei"


def test_add_of_a_stored_object_says_to_merge_or_put(kv: Kv) -> None:
    """add() of an object read before gets advice instead of a failing commit."""
    _seed(kv)
    post = Post.by_slug.get(kv, "one")
    with pytest.raises(km.InvalidArgumentError, match=r"merge\(obj\).*put\(obj\)"):
        km.Session(kv).add(post)  # type: ignore[arg-type]
    with pytest.raises(km.InvalidArgumentError, match="never read"):
        km.Session(kv).merge(Post(id="new", title="x"))


def test_an_object_tracked_by_another_session_is_refused(kv: Kv) -> None:
    """add, merge and put of an object a live session tracks raise a clear error."""
    _seed(kv)
    first = km.Session(kv)
    post = first.get(Post, "p1")
    assert post is not None
    second = km.Session(kv)
    for call in (second.add, second.merge, second.put):
        with pytest.raises(km.InvalidArgumentError, match="tracked by another session"):
            call(post)
    fresh = Post(id="p9", title="Nine")
    first.add(fresh)
    with pytest.raises(km.InvalidArgumentError, match="tracked by another session"):
        second.add(fresh)
    first.close()
    second.merge(post).title = "Taken over"
    second.commit()
    assert kv.get(("posts", "p1")).value["title"] == "Taken over"


def test_put_writes_whether_or_not_the_document_exists(kv: Kv) -> None:
    """put creates a missing document and replaces an existing one with an exact index diff,
    keeping fields the model does not declare."""
    with km.Session(kv) as s:
        s.put(Post(id="p3", title="Three", slug="three"))
    kv.set(("posts", "p3"), {**kv.get(("posts", "p3")).value, "legacy": 1})
    with km.Session(kv) as s:
        s.put(Post(id="p3", title="Trois", slug="trois"))
    assert kv.get(("posts", "p3")).value == {
        "id": "p3",
        "title": "Trois",
        "slug": "trois",
        "legacy": 1,
    }
    assert Post.by_slug.get(kv, "three") is None
    assert Post.by_slug.get(kv, "trois").title == "Trois"  # type: ignore[union-attr]
    assert km.check_indexes(kv, Post).ok
    s = km.Session(kv)
    s.put(Post(id="p4", title="Four", slug="trois"))
    with pytest.raises(km.UniqueViolationError):
        s.commit()


def test_a_closed_session_refuses_every_call(kv: Kv) -> None:
    """After close() every call raises KvClosedError; closing again is fine."""
    s = km.Session(kv)
    post = Post(id="p5", title="Five")
    s.add(post)
    s.close()
    s.close()
    calls = [
        lambda: s.get(Post, "p5"),
        lambda: s.get_many(Post, ["p5"]),
        lambda: s.add(Post(id="p6", title="Six")),
        lambda: s.merge(post),
        lambda: s.put(post),
        lambda: s.delete(post),
        lambda: s.all(Post),
        lambda: s.find(Post.by_slug, "x"),
        lambda: s.enqueue("x"),
        lambda: s.commit(),
        lambda: s.rollback(),
        lambda: s.refresh(post),
    ]
    for call in calls:
        with pytest.raises(km.KvClosedError):
            call()
    assert kv.get(("posts", "p5")).versionstamp is None  # closing dropped the pending add


def test_an_object_from_a_typed_watch_can_be_merged(kv: Kv) -> None:
    """Objects a watch yields remember what they were read as, like query results."""
    _seed(kv)
    watch = Post.watch(kv, "p1")
    post = next(iter(watch))
    watch.close()
    assert post is not None
    post.title = "Watched"
    with km.Session(kv) as s:
        s.merge(post)
    assert kv.get(("posts", "p1")).value["title"] == "Watched"


class Tagged(km.Model, prefix="tagged"):
    id: str = km.field(primary_key=True)
    tags: list[str] = km.field(factory=list)
    by_tag = km.Index("tags", each=True)


def test_one_object_too_large_for_a_commit_gets_advice_that_applies(kv: Kv) -> None:
    """No batching helps one object with too many index entries; the message says so."""
    s = km.Session(kv)
    s.add(Tagged(id="t", tags=[f"tag{i}" for i in range(1200)]))
    with pytest.raises(km.LimitExceededError, match=r"alone needs .*each=True"):
        s.commit()
