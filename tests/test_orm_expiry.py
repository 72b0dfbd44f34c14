"""Tests of expiring documents in the object mapper (Session.add/put expire_in, the model's
expire_in class keyword, kvmodel.expires_at): a document and its index entries expire
together, on every engine."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

import kvmodel as km
from kvmodel import Kv
from kvmodel.engines.memory import MemoryEngine


class Token(km.Model, prefix="tokens", expire_in=timedelta(hours=1)):
    id: str = km.field(primary_key=True)
    user: str
    code: str = ""
    by_user = km.Index("user")
    by_code = km.Unique("code")


class Note(km.Model, prefix="notes_exp"):
    id: str = km.field(primary_key=True)
    tag: str = ""
    by_tag = km.Index("tag")


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _keys(kv: Kv) -> list[tuple[object, ...]]:
    return [e.key for e in kv.list(prefix=())]


def test_a_document_and_its_entries_share_one_deadline() -> None:
    """One millisecond before the deadline everything is there; at it, nothing is."""
    clock = Clock()
    kv = km.Kv(MemoryEngine(clock=clock))
    with km.Session(kv) as s:
        s.add(Note(id="n1", tag="a"), expire_in=10)
    deadline = km.expires_at(km.Session(kv).get(Note, "n1"))  # type: ignore[arg-type]
    assert deadline == datetime.fromtimestamp(clock.now + 10, UTC)
    clock.now += 10 - 0.001
    assert _keys(kv) == [("notes_exp", "n1"), ("notes_exp_by_tag", "a", "n1")]
    clock.now += 0.001
    assert _keys(kv) == []
    assert Note.by_tag.find(kv, "a").items == []
    assert km.Session(kv).get(Note, "n1") is None
    kv.close()


def test_the_model_default_applies_to_new_documents_and_saves_keep_the_deadline() -> None:
    """expire_in on the class sets the deadline at creation; a later save keeps it, and
    add(obj, expire_in=...) on a tracked object extends it, entries included."""
    clock = Clock()
    kv = km.Kv(MemoryEngine(clock=clock))
    with km.Session(kv) as s:
        s.add(Token(id="t1", user="ada", code="x1"))
    first = km.expires_at(km.Session(kv).get(Token, "t1"))  # type: ignore[arg-type]
    assert first == datetime.fromtimestamp(clock.now + 3600, UTC)
    clock.now += 1000
    with km.Session(kv) as s:
        s.get(Token, "t1").user = "bob"  # type: ignore[union-attr]
    assert km.expires_at(km.Session(kv).get(Token, "t1")) == first  # type: ignore[arg-type]
    clock.now += 100
    with km.Session(kv) as s:
        t = s.get(Token, "t1")
        assert t is not None
        s.add(t, expire_in=3600)  # extends: every key gets the new deadline
    clock.now += 2600  # past the first deadline
    assert [t.id for t in Token.by_user.find(kv, "bob")] == ["t1"]
    assert Token.by_code.get(kv, "x1") is not None
    clock.now += 1000
    assert _keys(kv) == []
    kv.close()


def test_expiring_documents_work_on_every_engine(kv: Kv) -> None:
    """A short-lived document vanishes with its entries; queries never return it."""
    with km.Session(kv) as s:
        s.add(Note(id="short", tag="t"), expire_in=0.5)
        s.add(Note(id="long", tag="t"))
    assert [n.id for n in Note.by_tag.find(kv, "t")] == ["long", "short"]
    assert km.expires_at(km.Session(kv).get(Note, "long")) is None  # type: ignore[arg-type]
    doc = kv.get(("notes_exp", "short")).value
    assert isinstance(doc["$exp"], int)
    deadline = time.time() + 5
    while kv.get(("notes_exp", "short")).versionstamp is not None:
        assert time.time() < deadline, "the document did not expire"
        time.sleep(0.05)
    assert [n.id for n in Note.by_tag.find(kv, "t")] == ["long"]
    assert kv.get(("notes_exp_by_tag", "t", "short")).versionstamp is None
    assert km.check_indexes(kv, Note).ok


def test_put_keeps_or_sets_the_deadline(kv: Kv) -> None:
    """put of an existing expiring document keeps its deadline unless given expire_in."""
    with km.Session(kv) as s:
        s.add(Note(id="p"), expire_in=3600)
    before = kv.get(("notes_exp", "p")).value["$exp"]
    with km.Session(kv) as s:
        s.put(Note(id="p", tag="new"))
    assert kv.get(("notes_exp", "p")).value["$exp"] == before
    with km.Session(kv) as s:
        s.put(Note(id="p", tag="newer"), expire_in=7200)
    assert kv.get(("notes_exp", "p")).value["$exp"] > before


def test_bad_expiry_options_are_refused() -> None:
    """A negative or non-numeric expire_in is an error, at the call or at class creation."""
    kv = km.open_kv()
    with pytest.raises(km.InvalidArgumentError):
        km.Session(kv).add(Note(id="x"), expire_in=-1)
    with pytest.raises(km.InvalidArgumentError):
        km.Session(kv).add(Note(id="x"), expire_in="soon")
    with pytest.raises(km.ModelDefinitionError, match="expire_in"):

        class Bad(km.Model, prefix="bad_exp", expire_in=-5):
            id: str = km.field(primary_key=True)

    with pytest.raises(km.KvTypeError):
        km.expires_at("not a model")  # type: ignore[arg-type]
