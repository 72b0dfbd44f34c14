"""Conformance: atomic commits, checks, KvU64 arithmetic, versionstamps and expiry.

Atomic operations, versionstamps, KvU64, the per-commit limits and expiry as
docs/reference/api.md and limits.md state them, with kvmodel's deliberate
differences from Deno (a commit is all-or-nothing, expired keys vanish at once,
failed commits name their checks).
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest

from kvmodel import (
    VERSIONSTAMP,
    InvalidArgumentError,
    InvalidKeyError,
    Kv,
    KvTypeError,
    KvU64,
    LimitExceededError,
)
from kvmodel.limits import (
    MAX_CHECKS,
    MAX_KEY_SIZE,
    MAX_MUTATIONS,
    MAX_TOTAL_KEY_SIZE,
    MAX_TOTAL_MUTATION_SIZE,
    MAX_VALUE_SIZE,
)
from kvmodel.testing.conformance_support import VERSIONSTAMP_RE, dump, unchanged, wait_until

# ---------------------------------------------------------------------------
# Commits and checks


def test_atomic_commit_writes_every_mutation_with_one_versionstamp(kv: Kv) -> None:
    """Every key written by one commit gets the commit's versionstamp."""
    kv.set(("gone",), 0)
    result = (
        kv.atomic()
        .set(("a",), 1)
        .set(("b",), 2)
        .sum(("n",), KvU64(5))
        .min(("lo",), KvU64(3))
        .max(("hi",), KvU64(4))
        .delete(("gone",))
        .commit()
    )
    assert result.ok is True
    assert result.versionstamp is not None
    assert VERSIONSTAMP_RE.fullmatch(result.versionstamp)
    assert result.failed_checks == ()
    assert dump(kv) == [
        (("a",), 1, result.versionstamp),
        (("b",), 2, result.versionstamp),
        (("hi",), KvU64(4), result.versionstamp),
        (("lo",), KvU64(3), result.versionstamp),
        (("n",), KvU64(5), result.versionstamp),
    ]


def test_mutations_apply_in_order(kv: Kv) -> None:
    """Mutations of one key in one commit apply in the order they were added."""
    kv.atomic().set(("a",), 1).delete(("a",)).commit()
    kv.atomic().delete(("b",)).set(("b",), 2).commit()
    kv.atomic().set(("c",), KvU64(1)).sum(("c",), KvU64(2)).commit()
    kv.atomic().set(("d",), 1).set(("d",), 2).commit()
    assert kv.get(("a",)).versionstamp is None
    assert kv.get(("b",)).value == 2
    assert kv.get(("c",)).value == KvU64(3)
    assert kv.get(("d",)).value == 2


def test_check_of_an_unchanged_entry_passes(kv: Kv) -> None:
    """check(entry) passes while the key still has the entry's versionstamp, then fails."""
    kv.set(("a",), 1)
    entry = kv.get(("a",))
    result = kv.atomic().check(entry).set(("a",), 2).commit()
    assert result.ok
    assert kv.get(("a",)).value == 2
    stale = kv.atomic().check(entry).set(("a",), 3).commit()
    assert stale.ok is False
    assert kv.get(("a",)).value == 2


def test_check_of_a_missing_entry_passes_only_while_absent(kv: Kv) -> None:
    """An Entry read from a missing key checks that the key is still absent."""
    missing = kv.get(("a",))
    assert kv.atomic().check(missing).set(("b",), 1).commit().ok
    kv.set(("a",), 1)
    assert not kv.atomic().check(missing).set(("b",), 2).commit().ok
    assert kv.get(("b",)).value == 1


def test_check_none_passes_iff_the_key_is_absent(kv: Kv) -> None:
    """check((key, None)) passes for an absent key and fails for a present one."""
    assert kv.atomic().check((("a",), None)).set(("a",), 1).commit().ok
    result = kv.atomic().check((("a",), None)).set(("a",), 2).commit()
    assert result.ok is False
    assert kv.get(("a",)).value == 1
    kv.delete(("a",))
    assert kv.atomic().check((("a",), None)).set(("a",), 3).commit().ok


def test_check_accepts_key_versionstamp_pairs(kv: Kv) -> None:
    """check takes (key, versionstamp) pairs, several at once, keys as tuples or lists."""
    a = kv.set(("a",), 1).versionstamp
    b = kv.set(("b",), 1).versionstamp
    result = kv.atomic().check((("a",), a), (["b"], b), (("c",), None)).set(("c",), 1).commit()
    assert result.ok


@pytest.mark.parametrize("stamp", ["", "xyz", "0" * 19, "0" * 21, "g" * 20, 1], ids=repr)
def test_check_with_a_malformed_versionstamp_is_invalid(kv: Kv, stamp: Any) -> None:
    """A check whose versionstamp is not 20 hex digits (or None) is an InvalidArgumentError."""
    # Deno rejects these too ("invalid versionstamp", ext/kv lib.rs check_from_v8).
    with unchanged(kv), pytest.raises(InvalidArgumentError):
        kv.atomic().check((("a",), stamp)).set(("a",), 1).commit()


def test_check_versionstamp_hex_is_case_insensitive(kv: Kv) -> None:
    """An upper-case spelling of the current versionstamp passes, as Deno decodes hex."""
    stamp = ""
    for i in range(16):  # among 16 consecutive counters one ends in a hex letter
        stamp = kv.set(("a",), i).versionstamp or ""
        if stamp != stamp.upper():
            break
    assert stamp != stamp.upper()
    assert kv.atomic().check((("a",), stamp.upper())).set(("a",), "new").commit().ok


def test_checks_are_evaluated_before_the_mutations(kv: Kv) -> None:
    """A check sees the state before its own commit's mutations."""
    result = kv.atomic().set(("a",), 1).check((("a",), None)).commit()
    assert result.ok
    assert kv.get(("a",)).value == 1


def test_failed_check_writes_nothing_and_names_the_failed_keys(kv: Kv) -> None:
    """A failed check gives ok=False, no versionstamp, the failing keys, and writes nothing."""
    a = kv.set(("a",), KvU64(1)).versionstamp
    b = kv.set(("b",), 1).versionstamp
    kv.set(("a",), KvU64(2))  # ("a",)'s versionstamp moves on
    with unchanged(kv):
        result = (
            kv.atomic()
            .check((("a",), a), (("b",), b), (("c",), None), (("b",), None))
            .set(("x",), 1)
            .delete(("b",))
            .sum(("a",), KvU64(1))
            .commit()
        )
    assert result.ok is False
    assert not result
    assert result.versionstamp is None
    assert result.failed_checks == (("a",), ("b",))


def test_one_hundred_checks_are_fine_and_one_more_is_too_many(kv: Kv) -> None:
    """A commit may have 100 checks; 101 is a LimitExceededError."""
    assert MAX_CHECKS == 100
    ok = kv.atomic().check(*[(("c", i), None) for i in range(MAX_CHECKS)]).set(("x",), 1).commit()
    assert ok.ok
    with unchanged(kv), pytest.raises(LimitExceededError) as info:
        kv.atomic().check(*[(("c", i), None) for i in range(MAX_CHECKS + 1)]).set(
            ("y",), 1
        ).commit()
    assert info.value.limit == MAX_CHECKS
    assert info.value.actual == MAX_CHECKS + 1


def test_one_thousand_mutations_are_fine_and_one_more_is_too_many(kv: Kv) -> None:
    """A commit may have 1000 mutations; 1001 is a LimitExceededError."""
    assert MAX_MUTATIONS == 1000
    atomic = kv.atomic()
    for i in range(MAX_MUTATIONS):
        atomic.set(("m", i), i)
    assert atomic.commit().ok
    assert len(dump(kv)) == MAX_MUTATIONS
    with unchanged(kv), pytest.raises(LimitExceededError) as info:
        atomic = kv.atomic()
        for i in range(MAX_MUTATIONS + 1):
            if i % 2:
                atomic.delete(("m", i))
            else:
                atomic.sum(("s", i), 1)
        atomic.commit()
    assert info.value.limit == MAX_MUTATIONS
    assert info.value.actual == MAX_MUTATIONS + 1


def test_total_key_size_limit_is_exact(kv: Kv) -> None:
    """Keys written by one commit may total 81920 bytes (40 keys of 2048); 41 such keys fail."""
    assert MAX_TOTAL_KEY_SIZE == 40 * MAX_KEY_SIZE

    def key(i: int) -> tuple[str]:
        return (f"{i:06d}".ljust(MAX_KEY_SIZE - 2, "x"),)  # tag + 2046 chars + 00 = 2048

    atomic = kv.atomic()
    for i in range(40):
        atomic.set(key(i), None)
    assert atomic.commit().ok
    with unchanged(kv), pytest.raises(LimitExceededError) as info:
        atomic = kv.atomic()
        for i in range(100, 141):
            atomic.set(key(i), None)
        atomic.commit()
    assert info.value.limit == MAX_TOTAL_KEY_SIZE


def test_total_mutation_size_limit_is_exact(kv: Kv) -> None:
    """One commit's mutations may total 819200 bytes (valued keys count twice); one more fails."""
    # Deno (ext/kv lib.rs) counts every mutation key, then each valued mutation's
    # key again plus its value. Keys ("k00",) encode to 5 bytes; bytes values are raw.
    big = b"x" * MAX_VALUE_SIZE
    used = 12 * (5 + 5 + MAX_VALUE_SIZE)
    last = MAX_TOTAL_MUTATION_SIZE - used - 10
    assert 0 < last <= MAX_VALUE_SIZE

    def build(last_size: int) -> Any:
        atomic = kv.atomic()
        for i in range(12):
            atomic.set((f"k{i:02d}",), big)
        return atomic.set(("k12",), b"y" * last_size)

    assert build(last).commit().ok
    with unchanged(kv), pytest.raises(LimitExceededError) as info:
        build(last + 1).commit()
    assert info.value.limit == MAX_TOTAL_MUTATION_SIZE
    assert info.value.actual == MAX_TOTAL_MUTATION_SIZE + 1


# ---------------------------------------------------------------------------
# KvU64 and sum / min / max


def test_kvu64_accepts_exactly_the_unsigned_64_bit_range() -> None:
    """KvU64(n) needs 0 <= n < 2**64; outside is a ValueError."""
    assert KvU64(0).value == 0
    assert KvU64(2**64 - 1).value == 2**64 - 1
    with pytest.raises(ValueError):
        KvU64(-1)
    with pytest.raises(ValueError):
        KvU64(2**64)


def test_kvu64_equality_and_int() -> None:
    """KvU64 compares by value and converts with int()."""
    assert KvU64(5) == KvU64(5)
    assert KvU64(5) != KvU64(6)
    assert int(KvU64(7)) == 7
    assert isinstance(int(KvU64(7)), int)


def test_sum_adds_and_wraps_modulo_2_64(kv: Kv) -> None:
    """sum adds, wrapping around modulo 2**64."""
    kv.set(("n",), KvU64(2**64 - 1))
    kv.atomic().sum(("n",), KvU64(2)).commit()
    assert kv.get(("n",)).value == KvU64(1)
    kv.atomic().sum(("n",), KvU64(41)).commit()
    assert kv.get(("n",)).value == KvU64(42)


def test_min_and_max_keep_the_smaller_and_larger(kv: Kv) -> None:
    """min keeps the smaller and max the larger of the stored value and the operand."""
    kv.set(("lo",), KvU64(10))
    kv.set(("hi",), KvU64(10))
    kv.atomic().min(("lo",), KvU64(3)).max(("hi",), KvU64(3)).commit()
    assert (kv.get(("lo",)).value, kv.get(("hi",)).value) == (KvU64(3), KvU64(10))
    kv.atomic().min(("lo",), KvU64(20)).max(("hi",), KvU64(2**64 - 1)).commit()
    assert (kv.get(("lo",)).value, kv.get(("hi",)).value) == (KvU64(3), KvU64(2**64 - 1))


@pytest.mark.parametrize("op", ["sum", "min", "max"])
def test_numeric_mutation_on_a_missing_key_stores_the_operand(kv: Kv, op: str) -> None:
    """sum, min and max on a missing key store the operand."""
    getattr(kv.atomic(), op)(("n",), KvU64(9)).commit()
    assert kv.get(("n",)).value == KvU64(9)


@pytest.mark.parametrize("op", ["sum", "min", "max"])
def test_numeric_mutations_accept_int_operands(kv: Kv, op: str) -> None:
    """An int operand works like the same KvU64."""
    kv.set(("n",), KvU64(5))
    getattr(kv.atomic(), op)(("n",), 7).commit()
    assert kv.get(("n",)).value == KvU64({"sum": 12, "min": 5, "max": 7}[op])


@pytest.mark.parametrize("operand", [-1, 2**64])
def test_numeric_operand_out_of_range_is_a_value_error(kv: Kv, operand: int) -> None:
    """An int operand outside [0, 2**64) is a ValueError and writes nothing."""
    kv.set(("n",), KvU64(5))
    with unchanged(kv), pytest.raises(ValueError):
        kv.atomic().set(("x",), 1).sum(("n",), operand).commit()


@pytest.mark.parametrize("operand", ["1", 1.5, None, b"\x01"], ids=repr)
def test_numeric_operand_of_another_type_is_rejected(kv: Kv, operand: Any) -> None:
    """An operand that is neither int nor KvU64 is rejected and writes nothing."""
    # The spec names no class for this; TypeError or ValueError are both fair.
    kv.set(("n",), KvU64(5))
    with unchanged(kv), pytest.raises((TypeError, ValueError)):
        kv.atomic().set(("x",), 1).sum(("n",), operand).commit()


@pytest.mark.parametrize("op", ["sum", "min", "max"])
@pytest.mark.parametrize("stored", ["text", 5, b"\x00" * 8, None, [1]], ids=repr)
def test_numeric_mutation_on_a_non_kvu64_raises_and_the_commit_writes_nothing(
    kv: Kv, op: str, stored: Any
) -> None:
    """sum/min/max over a stored value that is not a KvU64 raise KvTypeError; nothing is written."""
    kv.set(("n",), stored)
    kv.set(("other",), "old")
    with unchanged(kv), pytest.raises(KvTypeError):
        atomic = kv.atomic().set(("x",), 1).delete(("other",))
        getattr(atomic, op)(("n",), KvU64(1)).set(("y",), 2).commit()


# ---------------------------------------------------------------------------
# Versionstamps


def test_versionstamps_are_20_hex_chars_and_strictly_increase(kv: Kv) -> None:
    """Each commit's versionstamp is 20 lowercase hex chars, greater than every earlier one."""
    stamps: list[str] = []
    for i in range(10):
        stamps.append(kv.set(("a",), i).versionstamp or "")
        kv.delete(("b",))
        stamps.append(kv.atomic().set(("c",), i).commit().versionstamp or "")
        stamps.append(kv.atomic().sum(("n",), 1).commit().versionstamp or "")
    assert all(VERSIONSTAMP_RE.fullmatch(s) for s in stamps)
    assert stamps == sorted(set(stamps))


def test_versionstamp_suffix_is_replaced_by_the_commit_versionstamp(kv: Kv) -> None:
    """VERSIONSTAMP as the last key part of a set becomes the commit's versionstamp."""
    first = kv.atomic().set(("log", VERSIONSTAMP), "first").set(("other",), 0).commit()
    second = kv.set(("log", VERSIONSTAMP), "second")
    assert first.versionstamp is not None
    assert second.versionstamp is not None
    entries = list(kv.list(prefix=("log",)))
    assert [(e.key, e.value, e.versionstamp) for e in entries] == [
        (("log", first.versionstamp), "first", first.versionstamp),
        (("log", second.versionstamp), "second", second.versionstamp),
    ]
    assert kv.get(("other",)).versionstamp == first.versionstamp


def test_versionstamp_suffix_as_the_whole_key(kv: Kv) -> None:
    """A key of VERSIONSTAMP alone becomes (versionstamp,)."""
    # The spec's rule ("as the last part of a set key is replaced") applies as
    # written; Deno instead strips the marker and rejects the empty key left.
    result = kv.atomic().set((VERSIONSTAMP,), 1).commit()
    assert [e.key for e in kv.list(prefix=())] == [(result.versionstamp,)]


def test_versionstamp_marker_is_only_allowed_as_a_set_suffix(kv: Kv) -> None:
    """VERSIONSTAMP elsewhere than last in a set key is not a key part."""
    with unchanged(kv), pytest.raises(InvalidKeyError):
        kv.set(("log", VERSIONSTAMP, "x"), 1)
    with unchanged(kv), pytest.raises(InvalidKeyError):
        kv.get(("log", VERSIONSTAMP))
    with unchanged(kv), pytest.raises(InvalidKeyError):
        kv.atomic().delete(("log", VERSIONSTAMP)).commit()


# ---------------------------------------------------------------------------
# Expiry (real time: no engine-independent way to move the clock exists yet)

_SHORT = 0.4
"""Seconds a short-lived key lives: long enough to see it, short enough to wait for."""


def test_expiring_key_is_visible_then_absent_for_every_read_and_check(kv: Kv) -> None:
    """A key with expire_in is readable before its deadline and absent everywhere after it."""
    stamp = kv.set(("e",), "soon", expire_in=_SHORT).versionstamp
    kv.set(("keep",), "forever")
    assert kv.get(("e",)).value == "soon"
    assert wait_until(lambda: kv.get(("e",)).versionstamp is None)
    assert kv.get_many([("e",), ("keep",)])[0].versionstamp is None
    assert [e.key for e in kv.list(prefix=())] == [("keep",)]
    assert [e.key for e in kv.list(prefix=(), reverse=True)] == [("keep",)]
    # An expired key is absent for checks: None passes, its old versionstamp fails.
    assert not kv.atomic().check((("e",), stamp)).set(("x",), 1).commit().ok
    assert kv.atomic().check((("e",), None)).set(("x",), 2).commit().ok


def test_atomic_set_accepts_expire_in_as_timedelta(kv: Kv) -> None:
    """AtomicOperation.set takes expire_in too, as seconds or a timedelta."""
    kv.atomic().set(("e",), 1, expire_in=timedelta(seconds=_SHORT)).set(("f",), 2).commit()
    kv.atomic().set(("g",), 3, expire_in=3600).commit()
    assert kv.get(("e",)).value == 1
    assert wait_until(lambda: kv.get(("e",)).versionstamp is None)
    assert [e.key for e in kv.list(prefix=())] == [("f",), ("g",)]


def test_set_without_expire_in_and_numeric_mutations_clear_expiry(kv: Kv) -> None:
    """A later set without expire_in, or a sum/min/max, makes an expiring key permanent."""
    # Two back-to-back commits, so the second surely lands before the deadline.
    expiring = kv.atomic()
    for name in ("control", "set", "sum", "min", "max"):
        expiring.set((name,), KvU64(5), expire_in=_SHORT)
    expiring.commit()
    clearing = kv.atomic().set(("set",), KvU64(6)).sum(("sum",), KvU64(1))
    clearing.min(("min",), KvU64(1)).max(("max",), KvU64(9)).commit()
    assert wait_until(lambda: kv.get(("control",)).versionstamp is None)
    assert {e.key[0]: e.value for e in kv.list(prefix=())} == {
        "set": KvU64(6),
        "sum": KvU64(6),
        "min": KvU64(1),
        "max": KvU64(9),
    }


_BAD_DURATIONS: list[Any] = [
    -1,
    -0.001,
    math.nan,
    math.inf,
    -math.inf,
    timedelta(seconds=-1),
    "1",
    [1],
]


@pytest.mark.parametrize("duration", _BAD_DURATIONS, ids=repr)
def test_invalid_expire_in_is_an_invalid_argument_and_writes_nothing(kv: Kv, duration: Any) -> None:
    """Negative, NaN, infinite or non-numeric expire_in values are InvalidArgumentError."""
    kv.set(("a",), "old")
    with unchanged(kv), pytest.raises(InvalidArgumentError):
        kv.set(("a",), "new", expire_in=duration)
    with unchanged(kv), pytest.raises(InvalidArgumentError):
        kv.atomic().set(("b",), 1).set(("a",), "new", expire_in=duration).commit()
