"""Tests of kvmodel.orm.refs: reference fields, their loading, indexes and on_delete, on
every engine; the declarations' errors; a hypothesis run of cascades against a reference
model."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kvmodel as km
from kvmodel import Kv, aio
from kvmodel.engines.memory import MemoryEngine


class User(km.Model, prefix="ref_users"):
    id: str = km.field(primary_key=True)
    name: str = ""


class Post(km.Model, prefix="ref_posts"):
    id: str = km.field(primary_key=True)
    author: km.Ref[User] = km.field(on_delete="cascade")
    editor: km.Ref[User] | None = km.field(default=None, on_delete="nullify")
    title: str = ""
    by_author = km.Index("author")
    by_editor = km.Index("editor")


class Comment(km.Model, prefix="ref_comments"):
    id: str = km.field(primary_key=True)
    post: km.Ref[Post] = km.field(on_delete="cascade")
    text: str = ""
    by_post = km.Index("post")


class Badge(km.Model, prefix="ref_badges"):
    id: str = km.field(primary_key=True)
    owner: km.Ref[User] = km.field(on_delete="restrict")
    by_owner = km.Index("owner")


class Node(km.Model, prefix="ref_nodes"):
    """A tree (or a cycle) of nodes: a model that refers to itself."""

    id: str = km.field(primary_key=True)
    parent: km.Ref[Node] | None = km.field(default=None, on_delete="cascade")
    by_parent = km.Index("parent")


class Early(km.Model, prefix="ref_early"):
    """Refers to a model defined after it, by name."""

    id: int = km.field(primary_key=True)
    late: km.Ref[Late] | None = km.field(default=None, on_delete="cascade")
    by_late = km.Index("late")


class Late(km.Model, prefix="ref_late"):
    id: int = km.field(primary_key=True)
    early: km.Ref[Early] | None = km.field(default=None, on_delete="cascade")
    by_early = km.Index("early")


class Thread(km.Model, prefix="ref_threads"):
    """A target with a compound primary key."""

    forum: str = km.field(primary_key=True)
    n: int = km.field(primary_key=True)


class Reply(km.Model, prefix="ref_replies"):
    id: str = km.field(primary_key=True)
    thread: km.Ref[Thread] = km.field(on_delete="cascade")
    by_thread = km.Index("thread")


class Link(km.Model, prefix="ref_links"):
    """A plain reference: no on_delete, no index needed, may dangle."""

    id: str = km.field(primary_key=True)
    to: km.Ref[User] | None = None


def everything(kv: Kv) -> dict[Any, Any]:
    return {e.key: e.value for e in kv.list(prefix=())}


def blog(kv: Kv, comments: int = 2) -> None:
    with km.Session(kv) as s:
        ada, bob = User(id="ada"), User(id="bob")
        p1 = Post(id="p1", author=km.Ref(ada), editor=km.Ref(bob))
        p2 = Post(id="p2", author=km.Ref(bob), editor=km.Ref(ada))
        s.add_all([ada, bob, p1, p2])
        s.add(Comment(id="x", post=km.Ref(p2)))
    for start in range(0, comments, 40):  # within every engine's commit limits
        with km.Session(kv) as s:
            end = min(start + 40, comments)
            s.add_all(Comment(id=f"c{i:03}", post=km.Ref(Post, "p1")) for i in range(start, end))


# -- values, storage, indexes -------------------------------------------------------


def test_a_reference_is_stored_as_the_target_key_and_indexed(kv: Kv) -> None:
    """The document holds the target's primary key; the index entry's part is that key."""
    blog(kv)
    stored = everything(kv)
    assert stored[("ref_posts", "p1")]["author"] == "ada"
    assert stored[("ref_posts", "p1")]["editor"] == "bob"
    assert ("ref_posts_by_author", "ada", "p1") in stored
    ada = km.Session(kv).get(User, "ada")
    assert ada is not None
    for value in (ada, km.Ref(User, "ada"), "ada"):
        assert [p.id for p in Post.by_author.find(kv, value)] == ["p1"]
    assert Post.by_editor.count(kv, "ada") == 1


def test_refs_read_back_as_equal_hashable_values(kv: Kv) -> None:
    """A loaded reference is a Ref equal to one built from the target or its key."""
    blog(kv)
    post = km.Session(kv).get(Post, "p1")
    assert post is not None
    assert post.author == km.Ref(User, "ada") == km.Ref(User(id="ada"))
    assert post.author.key == ("ref_users", "ada") and post.author.model is User
    assert {post.author, km.Ref(User, "ada")} == {km.Ref(User, "ada")}
    assert repr(post.author) == "Ref(User, 'ada')"
    with pytest.raises(AttributeError):
        post.author.pk = ("bob",)


def test_a_target_object_or_its_key_is_converted_at_commit(kv: Kv) -> None:
    """Untyped code may give the target itself or its key; the commit stores the Ref."""
    with km.Session(kv) as s:
        ada = User(id="ada")
        a = Post(id="a", author=ada)  # type: ignore[arg-type]
        b = Post(id="b", author="ada")  # type: ignore[arg-type]
        s.add_all([ada, a, b])
    assert a.author == b.author == km.Ref(User, "ada")
    assert [p.id for p in Post.by_author.find(kv, "ada")] == ["a", "b"]


@pytest.mark.parametrize(
    ("value", "why"),
    [(5, "not a str"), (km.Ref(Post, "p1"), "refers to a Post"), (Post, "Post")],
)
def test_a_value_that_is_not_a_key_of_the_target_is_a_validation_error(
    kv: Kv, value: object, why: str
) -> None:
    """A wrong value is refused before anything is written, naming model and field."""
    s = km.Session(kv)
    s.add_all([User(id="ada"), Post(id="p", author=value)])  # type: ignore[arg-type]
    with pytest.raises(km.ValidationError, match=r"Post\('p'\)\.author must be a km.Ref") as info:
        s.commit()
    assert why in str(info.value)
    assert info.value.field == "author"
    assert everything(kv) == {}


def test_a_reference_to_a_missing_target_is_refused(kv: Kv) -> None:
    """An on_delete reference must name an existing target; nothing is written."""
    s = km.Session(kv)
    s.add(Post(id="p", author=km.Ref(User, "ghost")))
    with pytest.raises(km.ReferentialIntegrityError, match="does not exist") as info:
        s.commit()
    assert (info.value.key, info.value.field) == (("ref_posts", "p"), "author")
    assert info.value.target == ("ref_users", "ghost")
    assert everything(kv) == {}


def test_a_plain_reference_may_dangle(kv: Kv) -> None:
    """Without on_delete a reference is not checked: it may name a missing target."""
    with km.Session(kv) as s:
        s.add(Link(id="l", to=km.Ref(User, "nobody")))
    s = km.Session(kv)
    link = s.get(Link, "l")
    assert link is not None and s.load(link.to) is None


def test_bad_query_values_for_a_reference_index(kv: Kv) -> None:
    """A query value that is no key of the target raises, naming the index field."""
    with pytest.raises(km.InvalidArgumentError, match=r"Post.by_author.author refers to User"):
        Post.by_author.find(kv, 7)
    with pytest.raises(km.InvalidArgumentError, match="refers to a Post"):
        Post.by_author.find(kv, km.Ref(Post, "p1"))


def test_a_compound_key_target(kv: Kv) -> None:
    """A reference to a compound key is stored as a list and indexed in key order."""
    with km.Session(kv) as s:
        threads = [Thread(forum="f", n=n) for n in (2, 10)]
        s.add_all(threads)
        s.add_all(Reply(id=f"r{n}", thread=km.Ref(t)) for n, t in enumerate(threads))
    assert everything(kv)[("ref_replies", "r0")]["thread"] == ["f", 2]
    assert [r.id for r in Reply.by_thread.find(kv, ("f", 10))] == ["r1"]
    assert [r.id for r in Reply.by_thread.find(kv, km.Ref(Thread, "f", 2))] == ["r0"]
    with pytest.raises(km.InvalidArgumentError, match="give a tuple of 2 values"):
        Reply.by_thread.find(kv, "f")
    with km.Session(kv) as s:
        s.delete(s.get(Thread, "f", 2))  # type: ignore[arg-type]
    assert [r.id for r in Reply.all(kv)] == ["r1"]


# -- loading ------------------------------------------------------------------------


def test_load_goes_through_the_identity_map(kv: Kv) -> None:
    """session.load(ref) is session.get of the target: the same object, None if missing."""
    blog(kv)
    s = km.Session(kv)
    post = s.get(Post, "p1")
    assert post is not None
    ada = s.load(post.author)
    assert ada is s.get(User, "ada") and ada is not None and ada.id == "ada"
    assert s.load(None) is None
    assert s.load(km.Ref(User, "nobody")) is None
    with pytest.raises(km.InvalidArgumentError, match=r"session\.load takes a km\.Ref"):
        s.load("ada")  # type: ignore[arg-type]


def test_load_refs_reads_the_targets_of_a_page_in_batches(
    kv: Kv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eager loading reads ten targets per get_many; loads then need no read."""
    with km.Session(kv) as s:
        users = [User(id=f"u{i:02}") for i in range(25)]
        s.add_all(users)
        s.add_all(Post(id=f"p{i:02}", author=km.Ref(u)) for i, u in enumerate(users))
        s.add_all(Post(id=f"q{i:02}", author=km.Ref(u)) for i, u in enumerate(users[:5]))
    s = km.Session(kv)
    page = Post.all(s)
    assert len(page) == 30
    calls: list[int] = []
    get_many = kv.get_many

    def counting(keys: Any, **options: Any) -> Any:
        calls.append(len(keys))
        return get_many(keys, **options)

    monkeypatch.setattr(kv, "get_many", counting)
    assert s.load_refs(page, "author", "editor") == 25
    assert calls == [10, 10, 5]
    monkeypatch.setattr(kv, "get", None)  # any further read would fail
    assert [s.load(p.author).id for p in page][:3] == ["u00", "u01", "u02"]  # type: ignore[union-attr]
    assert s.load_refs(page, "author") == 0  # all in the identity map
    with pytest.raises(km.InvalidArgumentError, match="Post has no reference field 'title'"):
        s.load_refs(page, "title")


def test_async_twins(tmp_path: Any) -> None:
    """AsyncSession.load, load_refs and an on_delete commit work as the sync ones."""

    async def main() -> None:
        async with await aio.open_kv(str(tmp_path / "a.db")) as kv:
            async with aio.AsyncSession(kv) as s:
                ada = User(id="ada")
                s.add_all([ada, Post(id="p", author=km.Ref(ada))])
            s = aio.AsyncSession(kv)
            post = await s.get(Post, "p")
            assert post is not None
            assert await s.load_refs([post], "author") == 1
            loaded = await s.load(post.author)
            assert loaded is not None and loaded.id == "ada"
            s.delete(loaded)
            await s.commit()
            assert await s.get(Post, "p") is None

    asyncio.run(main())


# -- on_delete ----------------------------------------------------------------------


def test_cascade_deletes_a_post_with_its_comments_in_one_commit(kv: Kv) -> None:
    """Deleting a user deletes their posts and those posts' comments (50), atomically."""
    n = 50 if kv.limits.max_operations is None else 30  # etcd: its own max-txn-ops
    blog(kv, comments=n)
    s = km.Session(kv)
    ada = s.get(User, "ada")
    assert ada is not None
    s.delete(ada)
    result = s.commit()
    assert result is not None and result.ok
    left = everything(kv)
    assert ("ref_posts", "p1") not in left
    assert not [k for k in left if k[0] == "ref_comments" and k[1] != "x"]
    assert not [k for k in left if k[0] == "ref_comments_by_post" and k[1] == "p1"]
    # The guards of the deleted targets go with them; p2 (bob's) lost its editor.
    assert ("kvmodel_refs", "ref_users", "ada") not in left
    assert ("kvmodel_refs", "ref_posts", "p1") not in left
    assert left[("ref_posts", "p2")]["editor"] is None
    assert not Post.by_editor.exists(kv, "ada")
    assert s.get(Comment, "c000") is None and s.get(Comment, "x") is not None


def test_a_cascade_too_large_for_one_commit_says_what_to_do(kv: Kv) -> None:
    """120 comments do not fit Deno's limits: a LimitExceededError, nothing changed."""
    blog(kv, comments=120)
    before = everything(kv)
    s = km.Session(kv)
    ada = s.get(User, "ada")
    assert ada is not None
    s.delete(ada)
    with pytest.raises(km.LimitExceededError, match="cascades to 121 more objects") as info:
        s.commit()
    assert "limits='embedded'" in str(info.value)
    assert everything(kv) == before
    post = s.get(Post, "p1")
    assert post is not None and post in s  # the cascade was undone in the session
    p2 = s.get(Post, "p2")
    assert p2 is not None and p2.editor == km.Ref(User, "ada")


def test_restrict_refuses_the_delete_naming_the_referrer(kv: Kv) -> None:
    """A badge refers to its owner with restrict: deleting the owner writes nothing."""
    blog(kv)
    with km.Session(kv) as s:
        s.add(Badge(id="b1", owner=km.Ref(User, "ada")))
    before = everything(kv)
    s = km.Session(kv)
    ada = s.get(User, "ada")
    assert ada is not None
    s.delete(ada)
    with pytest.raises(km.ReferentialIntegrityError) as info:
        s.commit()
    message = str(info.value)
    assert "User('ada') cannot be deleted: Badge('b1') refers to it through Badge.owner" in message
    assert (info.value.model, info.value.field) == ("Badge", "owner")
    assert info.value.key == ("ref_badges", "b1")
    assert everything(kv) == before
    post = s.get(Post, "p1")
    assert post is not None and post in s
    # Deleting the badge in the same commit lets the user go.
    badge = s.get(Badge, "b1")
    assert badge is not None
    s.delete(badge)
    s.commit()
    assert km.Session(kv).get(User, "ada") is None


def test_nullify_writes_the_referrer_with_its_index_diff(kv: Kv) -> None:
    """Deleting an editor sets Post.editor to None and removes the by_editor entry."""
    blog(kv)
    s = km.Session(kv)
    bob = s.get(User, "bob")
    assert bob is not None
    # bob is p2's author too: cascade wins there; p1 keeps ada and loses its editor.
    s.delete(bob)
    s.commit()
    p1 = km.Session(kv).get(Post, "p1")
    assert p1 is not None and p1.editor is None and p1.author == km.Ref(User, "ada")
    assert Post.by_editor.count(kv, "bob") == 0
    assert km.Session(kv).get(Post, "p2") is None


def test_the_session_own_referrers_follow_on_delete(kv: Kv) -> None:
    """A new post of a deleted user is not written; a new badge blocks the delete."""
    blog(kv)
    s = km.Session(kv)
    ada = s.get(User, "ada")
    assert ada is not None
    fresh = Post(id="fresh", author=km.Ref(ada))
    s.add(fresh)
    s.delete(ada)
    s.commit()
    assert km.Session(kv).get(Post, "fresh") is None and fresh not in s
    s = km.Session(kv)
    bob = s.get(User, "bob")
    assert bob is not None
    s.add(Badge(id="b", owner=km.Ref(bob)))
    s.delete(bob)
    with pytest.raises(km.ReferentialIntegrityError, match="Badge\\('b'\\) refers to it"):
        s.commit()


def test_a_referrer_pointed_elsewhere_in_the_session_is_kept(kv: Kv) -> None:
    """Only the current value counts: a post moved to bob survives ada's delete."""
    blog(kv)
    s = km.Session(kv)
    p1, ada, bob = s.get(Post, "p1"), s.get(User, "ada"), s.get(User, "bob")
    assert p1 is not None and ada is not None and bob is not None
    p1.author = km.Ref(bob)
    p1.editor = None
    s.delete(ada)
    s.commit()
    assert [p.id for p in Post.by_author.find(kv, "bob")] == ["p1", "p2"]
    assert km.Session(kv).get(User, "ada") is None


def test_cascades_through_cycles_end(kv: Kv) -> None:
    """Self references (a tree with a cycle) and two models referring to each other."""
    with km.Session(kv) as s:
        root = Node(id="root")
        a = Node(id="a", parent=km.Ref(root))
        b = Node(id="b", parent=km.Ref(a))
        s.add_all([root, a, b, Node(id="other")])
    with km.Session(kv) as s:
        loaded = s.get(Node, "root")
        assert loaded is not None
        loaded.parent = km.Ref(Node, "b")  # root -> b -> a -> root
    with km.Session(kv) as s:
        s.delete(s.get(Node, "a"))  # type: ignore[arg-type]
    assert [n.id for n in Node.all(kv)] == ["other"]
    with km.Session(kv) as s:
        e, late = Early(id=1), Late(id=1)
        e.late, late.early = km.Ref(late), km.Ref(e)
        s.add_all([e, late])
    with km.Session(kv) as s:
        s.delete(s.get(Late, 1))  # type: ignore[arg-type]
    left = everything(kv)
    assert not [k for k in left if k[0].startswith(("ref_early", "ref_late"))]
    assert not [k for k in left if k[0] == "kvmodel_refs" and k[1] in ("ref_early", "ref_late")]


# -- concurrent writers -------------------------------------------------------------


def test_a_referrer_added_during_a_delete_makes_the_delete_conflict(
    kv_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A post committed between the delete's read of referrers and its commit: conflict."""
    kv1, kv2 = kv_store.open(), kv_store.open()
    blog(kv1)
    s1 = km.Session(kv1)
    ada = s1.get(User, "ada")
    assert ada is not None
    s1.delete(ada)
    commit_plan = km.Session._commit_plan

    def in_between(self: km.Session, plan: Any) -> Any:
        if self is s1:
            with km.Session(kv2) as s2:
                s2.add(Post(id="late", author=km.Ref(User, "ada")))
        return commit_plan(self, plan)

    monkeypatch.setattr(km.Session, "_commit_plan", in_between)
    with pytest.raises(km.ConflictError):
        s1.commit()
    monkeypatch.setattr(km.Session, "_commit_plan", commit_plan)
    assert km.Session(kv1).get(Post, "late") is not None
    # Retried (as km.transaction does), the delete sees the new post and cascades to it.
    km.transaction(kv1, lambda s: s.delete(s.get(User, "ada")))  # type: ignore[arg-type]
    assert km.Session(kv1).get(Post, "late") is None


def test_a_referrer_saved_against_a_target_deleted_meanwhile_conflicts(
    kv_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A post whose author is deleted between its check and its commit is not written."""
    kv1, kv2 = kv_store.open(), kv_store.open()
    blog(kv1)
    s1 = km.Session(kv1)
    s1.add(Post(id="late", author=km.Ref(User, "ada")))
    commit_plan = km.Session._commit_plan

    def in_between(self: km.Session, plan: Any) -> Any:
        if self is s1:
            with km.Session(kv2) as s2:
                s2.delete(s2.get(User, "ada"))  # type: ignore[arg-type]
        return commit_plan(self, plan)

    monkeypatch.setattr(km.Session, "_commit_plan", in_between)
    with pytest.raises(km.ConflictError):
        s1.commit()
    assert km.Session(kv1).get(Post, "late") is None
    assert not Post.by_author.exists(kv1, "ada")


# -- declarations -------------------------------------------------------------------


def test_on_delete_needs_an_index_on_the_field() -> None:
    """The error names the index to declare."""
    with pytest.raises(km.ModelDefinitionError, match=r"by_owner = km.Index\('owner'\)"):

        class Pet(km.Model, prefix="ref_pets"):
            id: str = km.field(primary_key=True)
            owner: km.Ref[User] = km.field(on_delete="cascade")


def test_nullify_needs_an_optional_field() -> None:
    with pytest.raises(km.ModelDefinitionError, match="must be Optional"):

        class Pet(km.Model, prefix="ref_pets2"):
            id: str = km.field(primary_key=True)
            owner: km.Ref[User] = km.field(on_delete="nullify")
            by_owner = km.Index("owner")


@pytest.mark.parametrize(
    ("annotation", "on_delete", "match"),
    [
        ("str", "cascade", "is not a reference"),
        ("km.Ref[User]", "sometimes", "use one of 'cascade', 'restrict', 'nullify'"),
        ("km.Ref", None, "bare km.Ref"),
        ("km.Ref[int]", None, "not a km.Model class"),
    ],
)
def test_bad_reference_declarations(annotation: str, on_delete: str | None, match: str) -> None:
    namespace: dict[str, Any] = dict(globals())  # the class resolves in this module
    source = (
        "class Pet(km.Model, prefix='ref_pets3'):\n"
        "    id: str = km.field(primary_key=True)\n"
        f"    owner: {annotation} = km.field(on_delete={on_delete!r})\n"
        "    by_owner = km.Index('owner')\n"
    )
    with pytest.raises(km.ModelDefinitionError, match=match):
        exec(source, namespace)
        km.Session(km.open_kv()).get(namespace["Pet"], "x")


# -- against a reference model ------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    posts=st.lists(
        st.tuples(st.integers(0, 3), st.one_of(st.none(), st.integers(0, 3))), max_size=8
    ),
    comments=st.lists(st.integers(0, 7), max_size=12),
    badges=st.lists(st.integers(0, 3), max_size=2),
    doomed=st.sets(st.integers(0, 3), min_size=1),
)
def test_cascade_matches_a_reference_model(
    posts: list[tuple[int, int | None]],
    comments: list[int],
    badges: list[int],
    doomed: set[int],
) -> None:
    """Deleting random users leaves what deleting by hand (cascade, nullify, restrict) does."""
    kv = Kv(MemoryEngine())
    comments = [c for c in comments if c < len(posts)]
    with km.Session(kv) as s:
        s.add_all(User(id=f"u{i}") for i in range(4))
        s.add_all(
            Post(
                id=f"p{i}",
                author=km.Ref(User, f"u{a}"),
                editor=None if e is None else km.Ref(User, f"u{e}"),
            )
            for i, (a, e) in enumerate(posts)
        )
        s.add_all(Comment(id=f"c{i}", post=km.Ref(Post, f"p{p}")) for i, p in enumerate(comments))
        s.add_all(Badge(id=f"b{i}", owner=km.Ref(User, f"u{o}")) for i, o in enumerate(badges))
    # The reference model: plain dicts.
    users = {f"u{i}" for i in range(4)} - {f"u{d}" for d in doomed}
    kept_posts = {
        f"p{i}": (f"u{a}", None if e is None or f"u{e}" not in users else f"u{e}")
        for i, (a, e) in enumerate(posts)
        if f"u{a}" in users
    }
    kept_comments = {f"c{i}" for i, p in enumerate(comments) if f"p{p}" in kept_posts}
    blocked = any(f"u{o}" not in users for o in badges)
    before = everything(kv)
    s = km.Session(kv)
    for d in doomed:
        s.delete(s.get(User, f"u{d}"))  # type: ignore[arg-type]
    if blocked:
        with pytest.raises(km.ReferentialIntegrityError):
            s.commit()
        assert everything(kv) == before
        return
    s.commit()
    assert {u.id for u in User.all(kv)} == users
    assert {p.id: (p.author.pk[0], p.editor and p.editor.pk[0]) for p in Post.all(kv)} == (
        kept_posts
    )
    assert {c.id for c in Comment.all(kv)} == kept_comments
    assert km.check_indexes(kv, Post, Comment).ok


def test_bulk_writes_keep_references_whole_commit_by_commit(kv: Kv) -> None:
    """bulk_delete cascades in each of its commits; a broken reference is reported."""
    blog(kv)
    report = km.bulk_save(
        kv, [Post(id="p3", author=km.Ref(User, "bob")), Post(id="p4", author=km.Ref(User, "zed"))]
    )
    assert report.saved == 1 and [k for k, _ in report.conflicts] == [("ref_posts", "p4")]
    assert "does not exist" in report.conflicts[0][1]
    with km.Session(kv) as s:
        s.add(Badge(id="b", owner=km.Ref(User, "bob")))
    report = km.bulk_delete(kv, [User(id="ada"), User(id="bob")])
    assert report.deleted == 1 and [k for k, _ in report.conflicts] == [("ref_users", "bob")]
    assert "Badge('b') refers to it" in report.conflicts[0][1]
    assert [p.id for p in Post.all(kv)] == ["p2", "p3"]
    assert not Comment.by_post.exists(kv, "p1")


def test_a_referrer_that_cannot_resolve_is_named_by_a_delete() -> None:
    """A model declaring on_delete whose types never resolve fails each delete loudly,
    naming itself, and stops counting once it is gone."""
    import gc

    from kvmodel.orm import refs

    class Stray(km.Model, prefix="ref_stray"):
        id: str = km.field(primary_key=True)
        owner: km.Ref[Nowhere] = km.field(on_delete="cascade")  # type: ignore[name-defined]  # noqa: F821
        by_owner = km.Index("owner")

    kv = Kv(MemoryEngine())
    with km.Session(kv) as s:
        s.add(User(id="ada"))
    try:
        for _ in range(2):
            s = km.Session(kv)
            s.delete(s.get(User, "ada"))  # type: ignore[arg-type]
            with pytest.raises(km.ModelDefinitionError, match=r"Stray .*cannot be prepared"):
                s.commit()
    finally:
        del Stray
        gc.collect()
    assert not [c for c in refs._referrers if c.__name__ == "Stray"]
    s = km.Session(kv)
    s.delete(s.get(User, "ada"))  # type: ignore[arg-type]
    s.commit()


def test_reference_checks_that_overflow_a_commit_say_so(kv: Kv) -> None:
    """60 posts of 60 authors need 120 checks: the error says the references did it."""
    with km.Session(kv) as s:
        s.add_all(User(id=f"u{i:02}") for i in range(60))
    s = km.Session(kv)
    s.add_all(Post(id=f"p{i:02}", author=km.Ref(User, f"u{i:02}")) for i in range(60))
    with pytest.raises(km.LimitExceededError, match=r"checked against 60 target\(s\)"):
        s.commit()
    assert not list(Post.all(kv))


def test_building_a_ref_wrongly_raises_naming_what_to_give() -> None:
    """km.Ref needs a model object, or a model class with one value per key field."""
    with pytest.raises(km.KvTypeError, match="takes a model object or a model class"):
        km.Ref(int)  # type: ignore[type-var]
    with pytest.raises(km.KvTypeError, match="one value per field"):
        km.Ref(User)
    with pytest.raises(km.KvTypeError, match="takes the target object alone"):
        km.Ref(User(id="ada"), "bob")  # type: ignore[call-overload]
    with pytest.raises(km.InvalidArgumentError, match="is a str field"):
        km.Ref(User, 5)
    with pytest.raises(km.InvalidKeyError, match="is None"):
        km.Ref(User(id=None))  # type: ignore[arg-type]
    assert km.Ref(Thread, "f", 2.0).pk == ("f", 2)  # an integral float for an int key field


@settings(max_examples=60, deadline=None)
@given(
    parents=st.lists(st.one_of(st.none(), st.integers(0, 7)), min_size=1, max_size=8),
    doomed=st.sets(st.integers(0, 7), min_size=1, max_size=3),
)
def test_cascades_through_any_graph_of_self_references_end(
    parents: list[int | None], doomed: set[int]
) -> None:
    """Random parent links (cycles and self links included): a delete removes exactly the
    nodes from which a chain of parents reaches a deleted node."""
    kv = Kv(MemoryEngine())
    n = len(parents)
    links = [p if p is None or p < n else p % n for p in parents]
    doomed = {d % n for d in doomed}
    with km.Session(kv) as s:
        nodes = [Node(id=f"n{i}") for i in range(n)]
        s.add_all(nodes)
    with km.Session(kv) as s:
        for i, p in enumerate(links):
            node = s.get(Node, f"n{i}")
            assert node is not None
            node.parent = None if p is None else km.Ref(Node, f"n{p}")
    gone = set(doomed)
    while True:  # the reference model: children of gone nodes go, to a fixed point
        more = {i for i, p in enumerate(links) if p is not None and p in gone} - gone
        if not more:
            break
        gone |= more
    s = km.Session(kv)
    for d in doomed:
        s.delete(s.get(Node, f"n{d}"))  # type: ignore[arg-type]
    s.commit()
    assert {node.id for node in Node.all(kv)} == {f"n{i}" for i in range(n)} - {
        f"n{i}" for i in gone
    }
    assert km.check_indexes(kv, Node).ok
    assert not [k for k in everything(kv) if k[0] == "kvmodel_refs" and int(k[2][1:]) in gone]
