"""End-to-end tests of the blog example: unique emails, tag queries, references and cascades."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import kvmodel as km
from kvmodel.examples import blog
from kvmodel.examples.blog import Comment, Post, User


@pytest.fixture(params=["memory", "sqlite"])
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[km.Kv]:
    path = None if request.param == "memory" else tmp_path / "blog.db"
    with blog.open_blog(path) as store:
        yield store


def test_demo_runs_the_whole_story_on_a_sqlite_file(tmp_path: Path) -> None:
    """The demo signs up, posts, comments 500 times and cascades two deletes."""
    lines: list[str] = []
    report = blog.run_demo(tmp_path / "blog.db", say=lines.append)
    assert report["duplicate_refused"]
    assert report["ada_kv_titles"] == ["Atomic commits", "Ordered keys"]
    assert report["cascaded_comments"] == 500
    assert report["comments_left"] == 0
    assert report["bob_posts_left"] == 0
    assert (report["users"], report["posts"], report["comments"]) == (1, 2, 0)
    assert report["indexes_ok"]
    assert any("merge" in line for line in lines if line.startswith("  plan:"))


def test_the_module_runs_as_a_script(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kvmodel.examples.blog", "--db", str(tmp_path / "b.db")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "deleted the post and 500 comments; 0 left" in result.stdout


def test_an_email_has_one_account(kv: km.Kv) -> None:
    blog.sign_up(kv, "ada@example.com", "Ada")
    with pytest.raises(blog.EmailTakenError, match=r"ada@example\.com"):
        blog.sign_up(kv, "ada@example.com", "Other")
    assert User.query(kv, allow_scan=True).count() == 1


def test_posts_by_an_author_with_a_tag_are_newest_first(kv: km.Kv) -> None:
    ada = blog.sign_up(kv, "ada@example.com", "Ada")
    bob = blog.sign_up(kv, "bob@example.com", "Bob")
    first = blog.write_post(kv, ada, "one", tags=["x"])
    blog.write_post(kv, ada, "two", tags=["y"])
    third = blog.write_post(kv, ada, "three", tags=["x", "y"])
    blog.write_post(kv, bob, "four", tags=["x"])
    assert [p.id for p in blog.posts_by(kv, ada, tag="x")] == [third.id, first.id]
    assert [p.title for p in blog.posts_by(kv, ada)] == ["three", "two", "one"]
    assert blog.posts_by(kv, bob, tag="y") == []


def test_front_page_names_each_author(kv: km.Kv) -> None:
    ada = blog.sign_up(kv, "ada@example.com", "Ada")
    bob = blog.sign_up(kv, "bob@example.com", "Bob")
    blog.write_post(kv, ada, "a", tags=["kv"])
    blog.write_post(kv, bob, "b", tags=["kv"])
    blog.write_post(kv, bob, "c", tags=["other"])
    front = blog.front_page(kv, "kv")
    assert sorted((p.title, u.name if u else None) for p, u in front) == [
        ("a", "Ada"),
        ("b", "Bob"),
    ]


def test_deleting_a_post_with_500_comments_is_one_commit(kv: km.Kv) -> None:
    ada = blog.sign_up(kv, "ada@example.com", "Ada")
    post = blog.write_post(kv, ada, "busy")
    other = blog.write_post(kv, ada, "quiet")
    blog.comment_on(kv, post, ada, (str(i) for i in range(500)))
    blog.comment_on(kv, other, ada, ["stays"])
    before = kv.get(("posts", other.id)).versionstamp
    assert blog.delete_post(kv, post.id) == 500
    assert Comment.by_post.count(kv, km.Ref(post)) == 0
    assert [c.text for c in Comment.by_post.find(kv, km.Ref(other))] == ["stays"]
    assert kv.get(("posts", other.id)).versionstamp == before
    assert km.check_indexes(kv, User, Post, Comment).ok
    assert blog.delete_post(kv, post.id) == 0


def test_the_cascade_does_not_fit_deno_kv_limits_and_writes_nothing(tmp_path: Path) -> None:
    """Under the default limits the same cascade is refused whole, naming the way out."""
    path = tmp_path / "blog.db"
    with blog.open_blog(path) as kv:
        ada = blog.sign_up(kv, "ada@example.com", "Ada")
        post = blog.write_post(kv, ada, "busy")
        blog.comment_on(kv, post, ada, (str(i) for i in range(500)))
    with km.open_kv(path) as kv:
        with pytest.raises(km.LimitExceededError, match="embedded"):
            blog.delete_post(kv, post.id)
        assert Comment.by_post.count(kv, km.Ref(post)) == 500
        assert km.Session(kv).get(Post, post.id) is not None


def test_closing_an_account_cascades_through_posts_to_comments(kv: km.Kv) -> None:
    ada = blog.sign_up(kv, "ada@example.com", "Ada")
    bob = blog.sign_up(kv, "bob@example.com", "Bob")
    bobs = blog.write_post(kv, bob, "bob's")
    adas = blog.write_post(kv, ada, "ada's")
    blog.comment_on(kv, bobs, ada, ["on bob's"])
    blog.comment_on(kv, adas, bob, ["by bob on ada's"])
    blog.comment_on(kv, adas, ada, ["by ada on ada's"])
    with km.Session(kv) as session:
        session.delete(session.get(User, bob.id))
    assert Post.by_author.count(kv, km.Ref(bob)) == 0
    assert [c.text for c in Comment.by_post.find(kv, km.Ref(adas))] == ["by ada on ada's"]
    assert Comment.by_post.count(kv, km.Ref(bobs)) == 0
    assert km.check_indexes(kv, User, Post, Comment).ok
