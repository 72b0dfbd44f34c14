"""Tests of kvmodel.orm._planner: the pure unit-of-work planner, without any Kv."""

from __future__ import annotations

from typing import Any

import pytest

import kvmodel.orm as km
from kvmodel.errors import InvalidArgumentError, LimitExceededError, UniqueViolationError
from kvmodel.keys import encode_key
from kvmodel.limits import EngineLimits
from kvmodel.orm._planner import PlannedEnqueue, Tracked, plan_commit
from kvmodel.orm.model import model_info


class Person(km.Model, prefix="people"):
    id: str = km.field(primary_key=True)
    email: str
    city: str | None = None
    by_email = km.Unique("email")
    by_city = km.Index("city")


INFO = model_info(Person)


def new(p: Person) -> Tracked:
    """A tracked object that was never stored."""
    return Tracked(p, INFO, (p.id,), None, None)


def loaded(p: Person, vs: str = "00000000000000010000") -> Tracked:
    """A tracked object as if read from the Kv with versionstamp ``vs``."""
    return Tracked(p, INFO, (p.id,), INFO.unstructure(p), vs)


def ops(plan: Any) -> list[tuple[str, Any]]:
    """The plan's mutations as ("set"/"del", key) pairs, sorted."""
    return sorted(("del" if m.delete else "set", m.key) for m in plan.mutations)


def test_a_new_object_checks_absence_and_writes_its_entries() -> None:
    """A new object: primary absent check, unique absent check, primary and index sets."""
    plan = plan_commit([new(Person(id="p1", email="a@x", city="Oslo"))], [])
    assert [(c.key, c.versionstamp) for c in plan.checks] == [
        (("people", "p1"), None),
        (("people_by_email", "a@x"), None),
    ]
    assert ops(plan) == [
        ("set", ("people", "p1")),
        ("set", ("people_by_city", "Oslo", "p1")),
        ("set", ("people_by_email", "a@x")),
    ]
    values = {m.key: m.value for m in plan.mutations}
    assert values[("people_by_email", "a@x")] == encode_key(("people", "p1"))
    assert values[("people_by_city", "Oslo", "p1")] == encode_key(("people", "p1"))


def test_an_unchanged_object_contributes_nothing() -> None:
    """A loaded object that did not change adds no check and no mutation."""
    plan = plan_commit([loaded(Person(id="p1", email="a@x"))], [])
    assert plan.empty and plan.checks == ()


def test_a_changed_object_checks_its_versionstamp_and_diffs_its_indexes() -> None:
    """Only the changed index entries are deleted and written; unchanged ones are left alone."""
    t = loaded(Person(id="p1", email="a@x", city="Oslo"), "000000000000000a0000")
    t.obj.city = "Rome"
    plan = plan_commit([t], [])
    assert [(c.key, c.versionstamp) for c in plan.checks] == [
        (("people", "p1"), "000000000000000a0000")
    ]
    assert ops(plan) == [
        ("del", ("people_by_city", "Oslo", "p1")),
        ("set", ("people", "p1")),
        ("set", ("people_by_city", "Rome", "p1")),
    ]
    assert plan.written == ((t, INFO.unstructure(t.obj)),)


def test_setting_a_field_to_none_removes_its_entry() -> None:
    """A value becoming None deletes the entry and writes none."""
    t = loaded(Person(id="p1", email="a@x", city="Oslo"))
    t.obj.city = None
    assert ("del", ("people_by_city", "Oslo", "p1")) in ops(plan_commit([t], []))


def test_a_swap_of_unique_values_needs_no_absence_checks() -> None:
    """Values released in the same commit are guarded by the releasers' versionstamp checks."""
    a = loaded(Person(id="a", email="a@x"))
    b = loaded(Person(id="b", email="b@x"))
    a.obj.email, b.obj.email = "b@x", "a@x"
    plan = plan_commit([a, b], [])
    assert sorted(c.key for c in plan.checks) == [("people", "a"), ("people", "b")]
    assert ops(plan) == [
        ("set", ("people", "a")),
        ("set", ("people", "b")),
        ("set", ("people_by_email", "a@x")),
        ("set", ("people_by_email", "b@x")),
    ]
    values = {m.key: m.value for m in plan.mutations}
    assert values[("people_by_email", "a@x")] == encode_key(("people", "b"))


def test_a_delete_removes_the_primary_and_every_entry() -> None:
    """A deleted object checks its versionstamp and deletes its primary and entries."""
    t = loaded(Person(id="p1", email="a@x", city="Oslo"))
    t.deleted = True
    plan = plan_commit([t], [])
    assert [c.key for c in plan.checks] == [("people", "p1")]
    assert ops(plan) == [
        ("del", ("people", "p1")),
        ("del", ("people_by_city", "Oslo", "p1")),
        ("del", ("people_by_email", "a@x")),
    ]
    assert plan.removed == (t,)


def test_two_objects_claiming_one_value_are_refused() -> None:
    """Two objects of one plan with the same unique value raise UniqueViolationError."""
    with pytest.raises(UniqueViolationError) as info:
        plan_commit([new(Person(id="a", email="x")), new(Person(id="b", email="x"))], [])
    assert info.value.index == "Person.by_email"
    assert info.value.value == "x"
    assert info.value.owner_key == ("people", "a")


def test_a_changed_primary_key_is_refused() -> None:
    """The planner refuses an object whose primary key attribute changed."""
    t = loaded(Person(id="p1", email="a@x"))
    t.obj.id = "p2"
    with pytest.raises(InvalidArgumentError, match="primary key"):
        plan_commit([t], [])


def test_limits_name_the_object_that_crosses_them() -> None:
    """Too many checks or mutations name the first object past the limit."""
    people = [new(Person(id=f"p{i}", email=f"{i}@x")) for i in range(3)]
    with pytest.raises(LimitExceededError, match=r"Person\('p1'\)") as info:
        plan_commit(people, [], EngineLimits(max_checks=3))
    assert info.value.limit == 3
    with pytest.raises(LimitExceededError, match=r"Person\('p2'\)"):
        plan_commit(people, [PlannedEnqueue(1, {})], EngineLimits(max_mutations=6))
    plan_commit(people, [], EngineLimits(max_checks=6, max_mutations=6))


def test_enqueues_join_the_plan() -> None:
    """Enqueued messages ride along, and make an otherwise empty plan non-empty."""
    plan = plan_commit([], [PlannedEnqueue({"job": 1}, {"delay": 0})])
    assert not plan.empty and plan.enqueues[0].value == {"job": 1}
