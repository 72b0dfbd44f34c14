"""Tests of kvmodel.orm.bulk: bulk_save, bulk_delete and Index.delete_where, on every engine."""

from __future__ import annotations

from typing import Any

import pytest

import kvmodel as km
from kvmodel import Kv
from kvmodel.engines.base import AtomicWrite


class Account(km.Model, prefix="bulk_accounts"):
    id: str = km.field(primary_key=True)
    email: str
    plan: str = "free"
    score: int = 0

    by_email = km.Unique("email")
    by_plan = km.Index("plan", "score")


def _accounts(n: int, *, start: int = 0, plan: str = "free") -> list[Account]:
    return [
        Account(id=f"a{i:05d}", email=f"a{i}@x", plan=plan, score=i % 7)
        for i in range(start, start + n)
    ]


def _record_commits(kv: Kv) -> list[AtomicWrite]:
    """Wraps ``kv.commit_write`` to keep every write the Kv sends to its engine."""
    writes: list[AtomicWrite] = []
    original = kv.commit_write

    def spy(write: AtomicWrite, check_keys: Any) -> Any:
        writes.append(write)
        return original(write, check_keys)

    kv.commit_write = spy  # type: ignore[method-assign]
    return writes


def _per_commit(kv: Kv, checks: int, writes: int) -> int:
    """How many objects of ``checks`` checks and ``writes`` mutations fit in one commit."""
    limits = kv.limits
    fit = min(limits.max_checks // checks, limits.max_mutations // writes)
    if limits.max_operations is not None:
        fit = min(fit, limits.max_operations // (checks + writes))
    return fit


def _count(kv: Kv, prefix: str) -> int:
    return sum(1 for _ in kv.list(prefix=(prefix,)))


def test_a_session_too_large_for_one_commit_points_at_bulk_save(kv: Kv) -> None:
    """Committing more objects than one commit holds fails with advice naming km.bulk_save."""
    s = km.Session(kv)
    s.add_all(_accounts(200))
    with pytest.raises(km.LimitExceededError, match=r"km\.bulk_save"):
        s.commit()
    assert _count(kv, "bulk_accounts") == 0


def test_thousands_of_objects_are_saved_in_as_few_commits_as_the_limits_allow(kv: Kv) -> None:
    """bulk_save writes 2000 objects with a unique index, every commit within the limits."""
    writes = _record_commits(kv)
    report = km.bulk_save(kv, _accounts(2000))
    assert report.ok and bool(report)
    assert (report.saved, report.unchanged, report.conflicts) == (2000, 0, ())
    # A new account: its absent check and its unique value's absent check,
    # and three sets (document, unique entry, plan entry).
    fit = _per_commit(kv, 2, 3)
    assert report.commits == -(-2000 // fit)
    data = [w for w in writes if any(m.key[:1] != b"\xff" for m in w.mutations)]
    assert len(data) == report.commits
    limits = kv.limits
    for w in data:
        assert len(w.checks) <= limits.max_checks
        assert len(w.mutations) <= limits.max_mutations
        if limits.max_operations is not None:
            assert len(w.checks) + len(w.mutations) <= limits.max_operations
    assert _count(kv, "bulk_accounts") == 2000
    assert km.check_indexes(kv, Account).ok
    assert Account.by_email.get(kv, "a1234@x").id == "a01234"  # type: ignore[union-attr]
    assert str(report) == f"2000 saved, 0 unchanged in {report.commits} commits; 0 not written."


def test_bulk_save_is_an_upsert_with_exact_index_diffs_and_unknown_fields_kept(kv: Kv) -> None:
    """Existing documents are overwritten: moved index entries follow, unknown fields stay."""
    km.bulk_save(kv, _accounts(300))
    kv.set(("bulk_accounts", "a00007"), {**_doc(7), "legacy": "keep me"})
    again = _accounts(300)
    for a in again[::3]:
        a.email = a.email.replace("@x", "@y")
        a.plan = "pro"
    report = km.bulk_save(kv, again)
    assert report.ok
    assert (report.saved, report.unchanged) == (100, 200)
    assert km.check_indexes(kv, Account).ok
    assert Account.by_email.get(kv, "a0@x") is None
    assert Account.by_email.get(kv, "a0@y").id == "a00000"  # type: ignore[union-attr]
    assert Account.by_plan.count(kv, "pro") == 100
    assert kv.get(("bulk_accounts", "a00007")).value["legacy"] == "keep me"


def _doc(i: int) -> dict[str, Any]:
    return {"id": f"a{i:05d}", "email": f"a{i}@x", "plan": "free", "score": i % 7}


def test_a_unique_conflict_in_the_middle_is_reported_while_the_others_are_saved(kv: Kv) -> None:
    """An object whose unique value another document holds is left out, named with its key."""
    with km.Session(kv) as s:
        s.add(Account(id="owner", email="a150@x"))
    report = km.bulk_save(kv, _accounts(300))
    assert not report.ok
    assert report.saved == 299
    [(key, reason)] = report.conflicts
    assert key == ("bulk_accounts", "a00150")
    assert "Account.by_email" in reason and "'a150@x'" in reason
    assert "1 not written" in str(report) and "a00150" in str(report)
    assert _count(kv, "bulk_accounts") == 300  # 299 and the owner
    assert km.check_indexes(kv, Account).ok


def test_a_document_changed_after_it_was_read_is_not_overwritten(kv: Kv) -> None:
    """bulk_save checks the versionstamps it read: a concurrent change wins and is reported."""
    km.bulk_save(kv, _accounts(300))
    victims: list[str] = []

    def progress(report: km.BulkReport) -> None:
        # A batch is committed when the next object does not fit, and objects
        # are read before they are packed: the next object is read, not written.
        if not victims:
            victims.append(f"a{report.saved:05d}")
            with km.Session(kv) as s:
                a = s.get(Account, victims[0])
                assert a is not None
                a.score = 99

    again = _accounts(300)
    for a in again:
        a.plan = "team"
    report = km.bulk_save(kv, again, progress=progress)
    assert [k for k, _ in report.conflicts] == [("bulk_accounts", victims[0])]
    assert "changed or deleted since it was read" in report.conflicts[0][1]
    assert report.saved == 299
    stored = km.Session(kv).get(Account, victims[0])
    assert stored is not None and (stored.plan, stored.score) == ("free", 99)
    assert km.check_indexes(kv, Account).ok


def test_objects_the_model_refuses_are_reported_not_raised(kv: Kv) -> None:
    """A value that does not validate leaves that object out and names it."""
    objs = _accounts(10)
    objs[4].score = "high"  # type: ignore[assignment]
    report = km.bulk_save(kv, objs)
    assert report.saved == 9
    [(key, reason)] = report.conflicts
    assert key == ("bulk_accounts", "a00004") and "score" in reason


def test_the_same_key_twice_is_written_in_order(kv: Kv) -> None:
    """A later object with the same key overwrites the earlier one, after it is committed."""
    first = Account(id="dup", email="one@x")
    second = Account(id="dup", email="two@x")
    report = km.bulk_save(kv, [*_accounts(5), first, *_accounts(5, start=5), second])
    assert report.ok and report.saved == 12
    assert km.Session(kv).get(Account, "dup").email == "two@x"  # type: ignore[union-attr]
    assert Account.by_email.get(kv, "one@x") is None
    assert km.check_indexes(kv, Account).ok


def test_progress_gets_the_running_report_after_each_commit(kv: Kv) -> None:
    """progress is called once per commit with growing counts; the last equals the result."""
    seen: list[km.BulkReport] = []
    report = km.bulk_save(kv, _accounts(400), progress=seen.append)
    assert len(seen) == report.commits > 1
    assert [r.commits for r in seen] == list(range(1, report.commits + 1))
    assert [r.saved for r in seen] == sorted(r.saved for r in seen)
    assert seen[-1] == report


def test_bulk_delete_removes_documents_and_their_entries(kv: Kv) -> None:
    """bulk_delete deletes each object's stored document with the entries it has."""
    km.bulk_save(kv, _accounts(600))
    stale = _accounts(600)[::2]
    for a in stale:
        a.email = "not what is stored"  # the stored document decides the entries
    report = km.bulk_delete(kv, [*stale, Account(id="nobody", email="n@x")])
    assert report.ok
    assert (report.deleted, report.skipped) == (300, 1)
    assert _count(kv, "bulk_accounts") == 300
    assert km.check_indexes(kv, Account).ok
    assert str(report).startswith(f"300 deleted, 1 skipped in {report.commits} commits")


def test_delete_where_removes_what_the_query_selects(kv: Kv) -> None:
    """delete_where deletes every selected document and all its entries, nothing else."""
    km.bulk_save(kv, [*_accounts(700, plan="free"), *_accounts(300, start=700, plan="pro")])
    seen: list[km.BulkReport] = []
    report = Account.by_plan.delete_where(kv, "free", start=2, end=5, progress=seen.append)
    selected = [i for i in range(700) if 2 <= i % 7 < 5]
    assert report.ok and report.deleted == len(selected) == 300
    assert seen and seen[-1] == report
    assert Account.by_plan.count(kv, "free", start=2, end=5) == 0
    assert Account.by_plan.count(kv, "free") == 400
    assert Account.by_plan.count(kv, "pro") == 300
    assert km.check_indexes(kv, Account).ok
    report = Account.by_email.delete_where(kv, "a701@x")
    assert report.deleted == 1
    assert Account.by_email.get(kv, "a701@x") is None
    assert Account.by_plan.delete_where(kv, "nothing").deleted == 0
    assert km.check_indexes(kv, Account).ok


def test_delete_where_skips_a_document_changed_to_no_longer_match(kv: Kv) -> None:
    """A document moved out of the selection meanwhile survives; one still inside goes."""
    km.bulk_save(kv, _accounts(400, plan="old"))
    changed: list[bool] = []

    def progress(report: km.BulkReport) -> None:
        if not changed:
            changed.append(True)
            with km.Session(kv) as s:
                moved = s.get(Account, "a00390")
                kept = s.get(Account, "a00391")
                assert moved is not None and kept is not None
                moved.plan = "new"
                kept.score = 3  # still selected by "old"

    report = Account.by_plan.delete_where(kv, "old", progress=progress)
    assert report.ok
    assert report.deleted == 399
    left = list(Account.by_plan.find(kv, "new"))
    assert [a.id for a in left] == ["a00390"]
    assert _count(kv, "bulk_accounts") == 1
    assert km.check_indexes(kv, Account).ok


def test_delete_where_wants_a_kv_not_a_session(kv: Kv) -> None:
    """A Session is refused: the deletion commits on its own."""
    with pytest.raises(km.KvTypeError, match=r"session\.kv"):
        Account.by_plan.delete_where(km.Session(kv), "free")


class Member(km.Model, prefix="bulk_members"):
    id: str = km.field(primary_key=True)
    team: str = ""

    by_team = km.Index("team")


def test_delete_where_respects_a_building_index(kv: Kv) -> None:
    """delete_where on an index that is still building raises IndexNotReadyError."""
    for i in range(5):
        kv.set(("bulk_members", f"m{i}"), {"id": f"m{i}", "team": "t"})
    with pytest.raises(km.IndexNotReadyError):
        Member.by_team.delete_where(kv, "t")
    assert _count(kv, "bulk_members") == 5
    km.rebuild_indexes(kv, Member)
    assert Member.by_team.delete_where(kv, "t").deleted == 5
    assert km.check_indexes(kv, Member).ok
