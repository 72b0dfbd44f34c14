"""rebuild_indexes: entries for documents that predate an index, repairs, and concurrent writers."""

from __future__ import annotations

import random
import threading

import pytest

import kvmodel as km
from kvmodel import Kv
from kvmodel.keys import encode_key


class Member(km.Model, prefix="members"):
    """The next release indexes the same documents."""

    id: str = km.field(primary_key=True)
    email: str
    team: str = ""

    by_email = km.Unique("email")
    by_team = km.Index("team")


def _seed_v1(kv: Kv, n: int) -> None:
    """Documents as the first release, which had no indexes, stored them."""
    for i in range(n):
        kv.set(("members", f"m{i}"), {"id": f"m{i}", "email": f"m{i}@x", "team": f"t{i % 3}"})


def test_documents_written_before_an_index_get_their_entries(kv: Kv) -> None:
    """After rebuild_indexes, queries of a new index find the documents that predate it."""
    _seed_v1(kv, 7)
    with pytest.raises(km.IndexNotReadyError, match=r"Member.by_team .*rebuild_indexes"):
        Member.by_team.find(kv, "t0")
    assert not km.check_indexes(kv, Member)
    report = km.rebuild_indexes(kv, Member)
    assert report.ok, str(report)
    assert (report.documents, report.entries) == (7, 14)
    assert report.repairs == {
        "Member.by_email": km.IndexRepairs(added=7),
        "Member.by_team": km.IndexRepairs(added=7),
    }
    assert [m.id for m in Member.by_team.find(kv, "t0")] == ["m0", "m3", "m6"]
    assert Member.by_email.get(kv, "m4@x") == Member(id="m4", email="m4@x", team="t1")
    assert km.check_indexes(kv, Member).ok
    assert km.rebuild_indexes(kv, Member).repairs == {}  # a second run changes nothing
    with km.Session(kv) as s:  # sessions go on from there
        m = s.get(Member, "m0")
        assert m is not None
        m.team = "t9"
    assert km.check_indexes(kv, Member).ok


def test_wrong_and_dangling_entries_are_repaired_and_duplicates_reported(kv: Kv) -> None:
    """Wrong values are rewritten, entries no document implies are deleted, and a unique
    value held by two documents is left pointing at its first holder and reported."""
    with km.Session(kv) as s:
        s.add_all([Member(id="a", email="a@x", team="red"), Member(id="b", email="b@x")])
    kv.set(("members_by_team", "red", "a"), b"")  # a wrong value (the old format)
    kv.set(("members_by_team", "blue", "a"), encode_key(("members", "a")))  # stale
    kv.set(("members_by_team", "blue", "gone"), encode_key(("members", "gone")))  # dangling
    kv.set(("members_by_email", "z@x"), b"\x00 not a key")  # no document
    kv.delete(("members_by_email", "b@x"))  # missing
    kv.set(("members", "c"), {"id": "c", "email": "a@x", "team": ""})  # a duplicate email
    report = km.rebuild_indexes(kv, Member)
    problems = [(p.kind, p.key) for p in report.problems]
    assert problems == [("duplicate", ("members_by_email", "a@x"))]
    assert "('members', 'a')" in report.problems[0].detail
    assert dict(report.repairs) == {
        "Member.by_email": km.IndexRepairs(added=1, corrected=0, removed=1),
        "Member.by_team": km.IndexRepairs(added=1, corrected=1, removed=2),
    }
    assert str(report).startswith(
        "Repaired Member.by_email: 1 added, 0 corrected, 1 removed.\n"
        "Repaired Member.by_team: 1 added, 1 corrected, 2 removed.\n1 index problem(s):"
    )
    assert kv.get(("members_by_email", "a@x")).value == encode_key(("members", "a"))
    assert kv.get(("members_by_email", "b@x")).value == encode_key(("members", "b"))
    assert [e.key for e in kv.list(prefix=("members_by_team",))] == [
        ("members_by_team", "", "b"),
        ("members_by_team", "", "c"),
        ("members_by_team", "red", "a"),
    ]
    assert kv.get(("members_by_team", "red", "a")).value == encode_key(("members", "a"))
    assert kv.get(("members_by_email", "z@x")).versionstamp is None
    kv.delete(("members", "c"))  # settle the duplicate by hand, then rebuild again
    assert km.rebuild_indexes(kv, Member).ok
    assert km.check_indexes(kv, Member).ok


def _change(s: km.Session, rng: random.Random) -> None:
    """Creates, deletes or moves one random member."""
    i = rng.randrange(40)
    m = s.get(Member, f"m{i}")
    if m is None:
        s.add(Member(id=f"m{i}", email=f"m{i}@x", team=f"t{rng.randrange(3)}"))
    elif rng.random() < 0.3:
        s.delete(m)
    else:
        m.team = f"t{rng.randrange(3)}"


def test_rebuild_beside_writing_sessions_leaves_every_index_consistent(kv: Kv) -> None:
    """Sessions create, move and delete members while the rebuild runs; neither undoes the
    other, and the indexes end exactly as the documents imply."""
    _seed_v1(kv, 30)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                km.transaction(kv, lambda s: _change(s, rng), retries=50)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(2)]
    for t in threads:
        t.start()
    try:
        reports = [km.rebuild_indexes(kv, Member) for _ in range(3)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert all(r.ok for r in reports), [str(r) for r in reports]
    final = km.check_indexes(kv, Member)
    assert final.ok, str(final)
