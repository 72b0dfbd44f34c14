"""Stateful tests of kvmodel.orm: random sessions keep the indexes derivable from the documents.

A hypothesis state machine adds, modifies and deletes objects of two models
(a unique index, a compound unique index, compound non-unique indexes, a
composite primary key), and commits or rolls back. A plain dict is the
reference. After every step the stored keys must be exactly those derived by
hand from the reference documents, and ``check_indexes`` must agree. A commit
must succeed exactly when the resulting documents keep every unique value
unique.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import kvmodel.orm as km
from kvmodel import Kv, open_kv
from kvmodel.errors import UniqueViolationError
from kvmodel.keys import encode_key

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Member(km.Model, prefix="m"):
    id: str = km.field(primary_key=True)
    email: str
    team: str = "a"
    score: int = 0
    handle: str | None = None

    by_email = km.Unique("email")
    by_team_score = km.Index("team", "score")
    by_team_handle = km.Unique("team", "handle")


class Note(km.Model, prefix="n"):
    owner: str = km.field(primary_key=True)
    n: int = km.field(primary_key=True)
    tag: str | None = None
    when: datetime = EPOCH

    by_tag_when = km.Index("tag", "when")


ids = st.sampled_from(["m1", "m2", "m3"])
emails = st.sampled_from(["a@x", "b@x", "c@x", "d@x", "e@x"])
teams = st.sampled_from(["red", "blue"])
scores = st.integers(-2, 2)
handles = st.none() | st.sampled_from(["h1", "h2"])
note_keys = st.tuples(st.sampled_from(["o1", "o2"]), st.integers(0, 2))
tags = st.none() | st.sampled_from(["t1", "t2"])
whens = st.integers(0, 3).map(lambda h: EPOCH + timedelta(hours=h))


def expected_keys(docs: dict[tuple[Any, ...], Any]) -> dict[tuple[Any, ...], Any]:
    """Every key (and index value) the documents imply, derived by hand from DESIGN section 3."""
    out: dict[tuple[Any, ...], Any] = {}
    for key, doc in docs.items():
        out[key] = doc
        pointer = encode_key(key)  # every index entry holds its document's encoded key
        if key[0] == "m":
            mid = key[1]
            out[("m_by_email", doc["email"])] = pointer
            out[("m_by_team_score", doc["team"], doc["score"], mid)] = pointer
            if doc["handle"] is not None:
                out[("m_by_team_handle", doc["team"], doc["handle"])] = pointer
        else:
            if doc["tag"] is not None:
                micros = (doc["when"] - EPOCH) // timedelta(microseconds=1)
                out[("n_by_tag_when", doc["tag"], micros, key[1], key[2])] = pointer
    return out


def unique_ok(docs: dict[tuple[Any, ...], Any]) -> bool:
    """True when no two members share an email or a (team, handle)."""
    members = [d for k, d in docs.items() if k[0] == "m"]
    emails_ = [d["email"] for d in members]
    pairs = [(d["team"], d["handle"]) for d in members if d["handle"] is not None]
    return len(set(emails_)) == len(emails_) and len(set(pairs)) == len(pairs)


def form(obj: Any) -> dict[str, Any]:
    """The reference form of an object (plain field values)."""
    if isinstance(obj, Member):
        return {
            "id": obj.id,
            "email": obj.email,
            "team": obj.team,
            "score": obj.score,
            "handle": obj.handle,
        }
    assert isinstance(obj, Note)
    return {"owner": obj.owner, "n": obj.n, "tag": obj.tag, "when": obj.when}


class SessionMachine(RuleBasedStateMachine):
    """Random unit-of-work traffic against a reference dict."""

    def __init__(self) -> None:
        super().__init__()
        self.kv: Kv = self.open()
        self.session = km.Session(self.kv)
        self.committed: dict[tuple[Any, ...], Any] = {}
        self.touched: dict[tuple[Any, ...], Any] = {}  # key -> object changed or added
        self.deleted: set[tuple[Any, ...]] = set()

    def open(self) -> Kv:
        return open_kv()

    def teardown(self) -> None:
        self.kv.close()

    def _load(self, model: type[Any], key: tuple[Any, ...]) -> Any:
        obj = self.session.get(model, *key[1:])
        if obj is not None:
            self.touched[key] = obj
        return obj

    @rule(mid=ids, email=emails, team=teams, score=scores, handle=handles)
    def add_member(self, mid: str, email: str, team: str, score: int, handle: str | None) -> None:
        key = ("m", mid)
        if key in self.touched or (key in self.committed and key not in self.deleted):
            return  # the session would refuse it, or the commit would conflict
        obj = Member(id=mid, email=email, team=team, score=score, handle=handle)
        self.session.add(obj)
        self.touched[key] = obj
        self.deleted.discard(key)

    @rule(nk=note_keys, tag=tags, when=whens)
    def add_note(self, nk: tuple[str, int], tag: str | None, when: datetime) -> None:
        key = ("n", *nk)
        if key in self.touched or (key in self.committed and key not in self.deleted):
            return
        obj = Note(owner=nk[0], n=nk[1], tag=tag, when=when)
        self.session.add(obj)
        self.touched[key] = obj
        self.deleted.discard(key)

    @rule(mid=ids, email=emails, team=teams, score=scores, handle=handles, which=st.integers(0, 3))
    def modify_member(
        self, mid: str, email: str, team: str, score: int, handle: str | None, which: int
    ) -> None:
        key = ("m", mid)
        if key in self.deleted:
            return
        obj = self._load(Member, key)
        if obj is None:
            return
        if which == 0:
            obj.email = email
        elif which == 1:
            obj.team, obj.score = team, score
        elif which == 2:
            obj.handle = handle
        else:
            obj.email, obj.handle = email, handle

    @rule(nk=note_keys, tag=tags, when=whens)
    def modify_note(self, nk: tuple[str, int], tag: str | None, when: datetime) -> None:
        key = ("n", *nk)
        if key in self.deleted:
            return
        obj = self._load(Note, key)
        if obj is not None:
            obj.tag, obj.when = tag, when

    @rule(mid=ids)
    def delete_member(self, mid: str) -> None:
        self._delete(Member, ("m", mid))

    @rule(nk=note_keys)
    def delete_note(self, nk: tuple[str, int]) -> None:
        self._delete(Note, ("n", *nk))

    def _delete(self, model: type[Any], key: tuple[Any, ...]) -> None:
        if key in self.deleted:
            return
        obj = self._load(model, key)
        if obj is None:
            return
        self.session.delete(obj)
        if key in self.committed:
            self.deleted.add(key)
        self.touched.pop(key, None)

    @rule()
    def commit(self) -> None:
        expected = dict(self.committed)
        for key in self.deleted:
            expected.pop(key, None)
        for key, obj in self.touched.items():
            expected[key] = form(obj)
        should_succeed = unique_ok(expected)
        try:
            self.session.commit()
        except UniqueViolationError:
            assert not should_succeed, "a commit with unique values was refused"
            self.rollback()
            return
        assert should_succeed, "a commit with a duplicate unique value was accepted"
        self.committed = expected
        self.touched.clear()
        self.deleted.clear()

    # Commits are drawn as often as changes, so that most machines reach
    # committed documents and then change them.
    @rule()
    def commit_more(self) -> None:
        self.commit()

    @rule()
    def commit_often(self) -> None:
        self.commit()

    @rule()
    def rollback(self) -> None:
        self.session.rollback()
        self.touched.clear()
        self.deleted.clear()

    @rule()
    def new_session(self) -> None:
        self.session = km.Session(self.kv)
        self.touched.clear()
        self.deleted.clear()

    @invariant()
    def indexes_match_documents(self) -> None:
        stored = {e.key: e.value for e in self.kv.list(prefix=())}
        want = expected_keys(self.committed)
        assert stored == want
        report = km.check_indexes(self.kv, Member, Note)
        assert report.ok, str(report)


class SqliteSessionMachine(SessionMachine):
    """The same traffic on a SQLite file."""

    def open(self) -> Kv:
        self._dir = tempfile.TemporaryDirectory()
        return open_kv(str(Path(self._dir.name) / "kv.db"))

    def teardown(self) -> None:
        super().teardown()
        self._dir.cleanup()


TestSessionMemory = SessionMachine.TestCase
TestSessionMemory.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, derandomize=True
)
TestSessionSqlite = SqliteSessionMachine.TestCase
TestSessionSqlite.settings = settings(
    max_examples=25, stateful_step_count=30, deadline=None, derandomize=True
)
