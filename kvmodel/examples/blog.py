"""A blog, written with kvmodel: users, posts with tags, comments, and their references.

Users have unique emails. A post refers to its author and carries tags; a
comment refers to its post. Both references cascade: deleting a user deletes
their posts, deleting a post deletes its comments, each in the one atomic
commit of the delete. Queries combine indexes (posts of an author with a tag)
and the object mapper reads the authors of a page of posts in one batch.

The store opens with ``limits="embedded"``: SQLite commits thousands of
objects in one transaction, so a post with 500 comments is added, and deleted,
in one session each. Under Deno KV's limits (100 checks per commit) neither
would fit.

Run it with ``python -m kvmodel.examples.blog`` (``--db PATH`` picks the
SQLite file).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import kvmodel as km
from kvmodel import F


class User(km.Model, prefix="users"):
    """Someone who writes posts and comments; one account per email."""

    id: str = km.field(primary_key=True, factory=km.new_id)
    email: str
    name: str

    by_email = km.Unique("email")


class Post(km.Model, prefix="posts"):
    """A post: its author (deleting the author deletes it), its tags, when it was written."""

    id: str = km.field(primary_key=True, factory=km.new_id)
    author: km.Ref[User] = km.field(on_delete="cascade")
    title: str
    body: str = ""
    tags: list[str] = km.field(factory=list)
    created_at: datetime = km.field(factory=km.utcnow)

    by_author = km.Index("author")
    by_author_date = km.Index("author", "created_at")
    by_tag = km.Index("tags", each=True)


class Comment(km.Model, prefix="comments"):
    """A comment on a post (deleting the post deletes it), by a user."""

    id: str = km.field(primary_key=True, factory=km.new_id)
    post: km.Ref[Post] = km.field(on_delete="cascade")
    author: km.Ref[User] = km.field(on_delete="cascade")
    text: str

    by_post = km.Index("post")
    by_author = km.Index("author")


class EmailTakenError(km.KvError, ValueError):
    """Another user has this email."""


# -- the application's operations -------------------------------------------------


def open_blog(path: str | Path | None) -> km.Kv:
    """Opens the blog's store, with SQLite's larger commits (``limits="embedded"``)."""
    return km.open_kv(path, limits="embedded")


def sign_up(kv: km.Kv, email: str, name: str) -> User:
    """Creates a user; EmailTakenError when the email has an account already."""
    user = User(email=email, name=name)
    try:
        with km.Session(kv) as session:
            session.add(user)
    except km.UniqueViolationError as exc:
        raise EmailTakenError(f"The email {email!r} has an account already.") from exc
    return user


def write_post(kv: km.Kv, author: User, title: str, *, tags: Iterable[str] = ()) -> Post:
    """Publishes a post by ``author``."""
    post = Post(author=km.Ref(author), title=title, tags=list(tags))
    with km.Session(kv) as session:
        session.add(post)
    return post


def comment_on(kv: km.Kv, post: Post, author: User, texts: Iterable[str]) -> list[Comment]:
    """Adds comments to a post, all in one commit."""
    comments = [Comment(post=km.Ref(post), author=km.Ref(author), text=t) for t in texts]
    with km.Session(kv) as session:
        session.add_all(comments)
    return comments


def posts_by(kv: km.Kv, author: User, *, tag: str | None = None) -> list[Post]:
    """An author's posts, newest first; with ``tag``, only the posts that carry it."""
    query = Post.query(kv, author=km.Ref(author))
    if tag is None:
        # by_author_date serves the equality and the order in one key range.
        return list(query.order_by("-created_at"))
    # by_author and by_tag each serve one condition with an equality on all
    # their fields: the planner merges the two index streams on the primary key
    # (which is a ULID, so in creation order).
    return list(query.where(F("tags").contains(tag)))[::-1]


def front_page(kv: km.Kv, tag: str, *, limit: int = 10) -> list[tuple[Post, User | None]]:
    """The posts with a tag and their authors, the authors read in one batch."""
    with km.Session(kv) as session:
        page = Post.query(session, F("tags").contains(tag)).page(limit=limit)
        session.load_refs(page, "author")
        return [(post, session.load(post.author)) for post in page]


def delete_post(kv: km.Kv, post_id: str) -> int:
    """Deletes a post and, by cascade, its comments, in one commit; returns the comments deleted."""
    with km.Session(kv) as session:
        post = session.get(Post, post_id)
        if post is None:
            return 0
        comments = Comment.by_post.count(session, km.Ref(post))
        session.delete(post)
    return comments


# -- the demo -------------------------------------------------------------------------


def run_demo(db_path: str | Path, *, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the whole story on a SQLite file and returns what happened, for the report."""
    started = time.perf_counter()
    report: dict[str, Any] = {"db": str(db_path)}
    with open_blog(db_path) as kv:
        say(f"kvmodel blog demo on {db_path}")
        say("")
        say("1. Two writers sign up; a second account for the same email is refused.")
        ada = sign_up(kv, "ada@example.com", "Ada")
        bob = sign_up(kv, "bob@example.com", "Bob")
        try:
            sign_up(kv, "ada@example.com", "Impostor")
        except EmailTakenError as exc:
            say(f"  refused: {exc}")
            report["duplicate_refused"] = True

        say("")
        say("2. They write posts with tags.")
        posts = [
            write_post(kv, ada, "Ordered keys", tags=["kv", "design"]),
            write_post(kv, ada, "Atomic commits", tags=["kv"]),
            write_post(kv, bob, "Indexes that keep up", tags=["kv", "orm"]),
            write_post(kv, ada, "On naming", tags=["design"]),
        ]
        names = {ada.id: ada.name, bob.id: bob.name}
        for post in posts:
            say(f"  {names[post.author.pk[0]]} wrote {post.title!r} {post.tags}")

        say("")
        say("3. Ada's posts tagged 'kv': two indexes, merged on the primary key.")
        ada_kv = posts_by(kv, ada, tag="kv")
        say("  " + ", ".join(repr(p.title) for p in ada_kv))
        plan = Post.query(kv, F("tags").contains("kv"), author=km.Ref(ada)).explain()
        say("  plan: " + plan.replace("\n", "\n  "))

        say("")
        say("4. The front page for 'kv', with each post's author read in one batch.")
        front = front_page(kv, "kv")
        for post, author in front:
            say(f"  {post.title!r} by {author.name if author else '(deleted)'}")

        say("")
        say("5. Bob comments 500 times on 'Ordered keys', in one commit.")
        comment_on(kv, posts[0], bob, (f"comment {i}" for i in range(500)))
        say(f"  comments on it: {Comment.by_post.count(kv, km.Ref(posts[0]))}")

        say("")
        say("6. Ada deletes that post: it and its 500 comments go in one atomic commit.")
        deleted = delete_post(kv, posts[0].id)
        left = Comment.by_post.count(kv, km.Ref(posts[0]))
        say(f"  deleted the post and {deleted} comments; {left} left")

        say("")
        say("7. Bob closes his account: his posts (and their comments) go with it.")
        with km.Session(kv) as session:
            closing = session.get(User, bob.id)
            assert closing is not None
            session.delete(closing)
        bob_posts = Post.by_author.count(kv, km.Ref(bob))
        say(f"  Bob's posts left: {bob_posts}")

        report.update(
            users=User.query(kv, allow_scan=True).count(),
            posts=Post.query(kv, allow_scan=True).count(),
            comments=Comment.query(kv, allow_scan=True).count(),
            ada_kv_titles=[p.title for p in ada_kv],
            front_page=[(p.title, a.name if a else None) for p, a in front],
            cascaded_comments=deleted,
            comments_left=left,
            bob_posts_left=bob_posts,
            indexes_ok=km.check_indexes(kv, User, Post, Comment).ok,
            seconds=round(time.perf_counter() - started, 2),
        )
    say("")
    say(
        f"Done in {report['seconds']} s: {report['users']} user, {report['posts']} posts and "
        f"{report['comments']} comments left, every change in one atomic commit."
    )
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m kvmodel.examples.blog``."""
    parser = argparse.ArgumentParser(
        prog="python -m kvmodel.examples.blog", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--db", help="SQLite file to use (default: a new file in a temp dir)")
    args = parser.parse_args(argv)
    if args.db:
        run_demo(args.db)
    else:
        with tempfile.TemporaryDirectory(prefix="kvmodel-blog-") as tmp:
            run_demo(Path(tmp) / "blog.db")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
