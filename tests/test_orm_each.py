"""Tests of multi-value indexes (Index/Unique with each=True, kvmodel.orm.index): one entry
per element, exact element diffs, uniqueness across elements, on every engine, and a
hypothesis run against a reference model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kvmodel as km
from kvmodel import Kv


class Post(km.Model, prefix="posts_each"):
    id: str = km.field(primary_key=True)
    tags: list[str] = km.field(factory=list)
    n: int = 0
    by_tag = km.Index("tags", "n", each=True)


class Account(km.Model, prefix="accounts_each"):
    id: str = km.field(primary_key=True)
    emails: set[str] = km.field(factory=set)
    by_email = km.Unique("emails", each=True)


def _ids(page: km.Page[Post]) -> list[str]:
    return [p.id for p in page]


def test_one_entry_per_element_and_exact_diffs(kv: Kv) -> None:
    """find by any element; changing the list writes only the elements that changed."""
    with km.Session(kv) as s:
        s.add(Post(id="a", tags=["python", "kv"], n=1))
        s.add(Post(id="b", tags=["python", "python"], n=2))  # a repeat is one entry
        s.add(Post(id="c", n=3))
    assert _ids(Post.by_tag.find(kv, "python")) == ["a", "b"]
    assert _ids(Post.by_tag.find(kv, "python", start=2)) == ["b"]
    assert Post.by_tag.count(kv, "kv") == 1
    assert [e.key for e in kv.list(prefix=("posts_each_by_tag",))] == [
        ("posts_each_by_tag", "kv", 1, "a"),
        ("posts_each_by_tag", "python", 1, "a"),
        ("posts_each_by_tag", "python", 2, "b"),
    ]
    kept = kv.get(("posts_each_by_tag", "python", 1, "a")).versionstamp
    s = km.Session(kv)
    a = s.get(Post, "a")
    assert a is not None
    a.tags = ["python", "db"]
    plan = s.plan()
    assert sorted(m.key for m in plan.mutations if m.key[0] == "posts_each_by_tag") == [
        ("posts_each_by_tag", "db", 1, "a"),
        ("posts_each_by_tag", "kv", 1, "a"),
    ]
    s.commit()
    assert kv.get(("posts_each_by_tag", "python", 1, "a")).versionstamp == kept
    assert _ids(Post.by_tag.find(kv, "db")) == ["a"]
    assert Post.by_tag.find(kv, "kv").items == []
    assert km.check_indexes(kv, Post).ok
    with km.Session(kv) as s:
        s.delete(s.get(Post, "a"))  # type: ignore[arg-type]
    assert _ids(Post.by_tag.find(kv, "python")) == ["b"]
    assert km.check_indexes(kv, Post).ok


def test_a_unique_each_index_is_unique_across_all_elements(kv: Kv) -> None:
    """No two documents share an element; one document may list it once or twice."""
    with km.Session(kv) as s:
        s.add(Account(id="u1", emails={"a@x", "b@x"}))
    assert Account.by_email.get(kv, "b@x").id == "u1"  # type: ignore[union-attr]
    s = km.Session(kv)
    s.add(Account(id="u2", emails={"c@x", "b@x"}))
    with pytest.raises(km.UniqueViolationError, match="b@x"):
        s.commit()
    s2 = km.Session(kv)
    s2.add_all([Account(id="u3", emails={"d@x"}), Account(id="u4", emails={"d@x"})])
    with pytest.raises(km.UniqueViolationError):
        s2.commit()
    with km.Session(kv) as s:  # moving an address between accounts in one commit works
        u1 = s.get(Account, "u1")
        assert u1 is not None
        u1.emails = {"a@x"}
        s.add(Account(id="u5", emails={"b@x"}))
    assert Account.by_email.get(kv, "b@x").id == "u5"  # type: ignore[union-attr]
    assert km.check_indexes(kv, Account).ok


def test_each_needs_a_collection_and_a_collection_needs_each() -> None:
    """A plain index on a list field, or each=True on a scalar field, is a definition error."""
    with pytest.raises(km.ModelDefinitionError, match="each=True"):

        class Bad(km.Model, prefix="bad_each"):
            id: str = km.field(primary_key=True)
            tags: list[str] = km.field(factory=list)
            by_tag = km.Index("tags")

    with pytest.raises(km.ModelDefinitionError, match="list, set"):

        class Bad2(km.Model, prefix="bad_each2"):
            id: str = km.field(primary_key=True)
            tag: str = ""
            by_tag = km.Index("tag", each=True)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["p0", "p1", "p2", "p3"]),
            st.one_of(st.none(), st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=4)),
        ),
        max_size=25,
    )
)
def test_each_index_matches_a_reference_model(steps: list[tuple[str, list[str] | None]]) -> None:
    """After any sequence of saves and deletes, find(tag) equals the reference answer."""
    kv = km.open_kv()
    reference: dict[str, set[str]] = {}
    for post_id, tags in steps:
        with km.Session(kv) as s:
            post = s.get(Post, post_id)
            if tags is None:
                if post is not None:
                    s.delete(post)
                reference.pop(post_id, None)
            elif post is None:
                s.add(Post(id=post_id, tags=tags))
                reference[post_id] = set(tags)
            else:
                post.tags = tags
                reference[post_id] = set(tags)
    for tag in "abcd":
        want = sorted(p for p, tags in reference.items() if tag in tags)
        assert sorted(_ids(Post.by_tag.find(kv, tag))) == want
    assert km.check_indexes(kv, Post).ok
    kv.close()
