"""Conformance: keys, values and the single-key calls (get, get_many, set, delete).

The rules of keys, key encoding, values and limits (docs/reference/key-encoding.md,
value-encoding.md, limits.md) as get, get_many, set and delete apply them.
Every error case also checks that the failed call changed nothing.
"""

from __future__ import annotations

import itertools
import math
import struct
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmodel import (
    EncodeError,
    InvalidArgumentError,
    InvalidKeyError,
    Kv,
    KvU64,
    LimitExceededError,
)
from kvmodel.engines.base import ReadRange
from kvmodel.keys import encode_key
from kvmodel.limits import (
    MAX_EXPIRE_IN_SECONDS,
    MAX_GET_MANY_KEYS,
    MAX_KEY_SIZE,
    MAX_READ_KEY_SIZE,
    MAX_VALUE_SIZE,
)
from kvmodel.testing.conformance_support import VERSIONSTAMP_RE, dump, key_of_size, unchanged
from kvmodel.testing.strategies import key_order, keys, values

# Hypothesis runs many examples on one function-scoped ``kv``; each example
# writes under a prefix of its own, so sharing the Kv is sound.
_shared_kv = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same examples on every run, so CI is reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
_example_ids = itertools.count()


# ---------------------------------------------------------------------------
# Keys


@pytest.mark.parametrize(
    "key",
    [
        (b"\x00\xffbytes",),
        ("str \x00 with nul",),
        ("",),
        (0,),
        (-(2**100),),
        (2**100,),
        (1.5,),
        (-math.inf,),
        (False,),
        (True,),
        (b"b", "s", 7, 2.5, True, False),
    ],
    ids=repr,
)
def test_each_key_part_type_round_trips(kv: Kv, key: tuple[Any, ...]) -> None:
    """A key of every supported part type is stored and read back with equal, same-typed parts."""
    kv.set(key, "v")
    entry = kv.get(key)
    assert entry.value == "v"
    assert entry.key == key
    assert [type(p) for p in entry.key] == [type(p) for p in key]
    listed = [e.key for e in kv.list(prefix=())]
    assert listed == [key]
    assert [type(p) for p in listed[0]] == [type(p) for p in key]


def test_list_keys_are_accepted_and_read_back_as_tuples(kv: Kv) -> None:
    """A key given as a list addresses the same entry as the tuple, and reads return tuples."""
    kv.set(["a", 1], "v")
    entry = kv.get(("a", 1))
    assert entry.value == "v"
    assert isinstance(entry.key, tuple)
    entry_from_list = kv.get(["a", 1])
    assert entry_from_list.key == ("a", 1)
    assert isinstance(entry_from_list.key, tuple)
    assert [e.key for e in kv.list(prefix=["a"])] == [("a", 1)]


def test_missing_key_reads_as_empty_entry_with_key_echoed_as_tuple(kv: Kv) -> None:
    """get of a missing key gives Entry(key as a tuple, None, None)."""
    entry = kv.get(["nope", 1])
    assert entry.key == ("nope", 1)
    assert isinstance(entry.key, tuple)
    assert entry.value is None
    assert entry.versionstamp is None


def test_bytes_like_key_parts_are_accepted_and_read_back_as_bytes(kv: Kv) -> None:
    """bytearray and memoryview key parts address the bytes key and read back as bytes."""
    kv.set((bytearray(b"ab"), "x"), 1)
    assert kv.get((memoryview(b"ab"), "x")).value == 1
    assert kv.get((b"ab", "x")).value == 1
    (entry,) = list(kv.list(prefix=()))
    assert entry.key == (b"ab", "x")
    assert type(entry.key[0]) is bytes


def test_keys_sort_by_type_then_value(kv: Kv) -> None:
    """Keys list in Deno's order: bytes < str < int < float < False < True, each by value."""
    ordered = [
        (b"",),
        (b"\x00",),
        (b"\xff",),
        ("",),
        ("\x00",),
        ("a",),
        ("a\x00",),
        ("b",),
        ("\u00e9",),
        ("\U0001f600",),
        (-(2**70),),
        (-(2**64),),
        (-256,),
        (-1,),
        (0,),
        (1,),
        (255,),
        (2**64,),
        (2**70,),
        (-math.inf,),
        (-1.5,),
        (-0.0,),
        (0.0,),
        (5e-324,),
        (1.5,),
        (math.inf,),
        (False,),
        (True,),
    ]
    for i, key in enumerate(reversed(ordered)):
        kv.set(key, i)
    assert [e.key for e in kv.list(prefix=())] == ordered
    assert [e.key for e in kv.list(prefix=(), reverse=True)] == ordered[::-1]


def test_shorter_key_sorts_before_its_extensions(kv: Kv) -> None:
    """A key sorts before every longer key it is a prefix of, and after smaller siblings."""
    ordered = [("a",), ("a", b""), ("a", ""), ("a", 0), ("a", 0, 0), ("a", 1), ("a\x00",), ("b",)]
    for key in reversed(ordered):
        kv.set(key, 0)
    assert [e.key for e in kv.list(prefix=())] == ordered


def test_bool_and_int_keys_are_distinct(kv: Kv) -> None:
    """(True,) and (1,), (False,) and (0,) are four different keys."""
    kv.set((True,), "true")
    kv.set((1,), "one")
    kv.set((False,), "false")
    kv.set((0,), "zero")
    assert kv.get((True,)).value == "true"
    assert kv.get((1,)).value == "one"
    assert kv.get((False,)).value == "false"
    assert kv.get((0,)).value == "zero"
    assert len(dump(kv)) == 4


def test_int_and_float_keys_are_distinct(kv: Kv) -> None:
    """(1,) and (1.0,) are different keys, and every int sorts before every float."""
    kv.set((1.0,), "float")
    kv.set((1,), "int")
    assert [e.key for e in kv.list(prefix=())] == [(1,), (1.0,)]
    assert type(kv.get((1.0,)).key[0]) is float


def test_negative_zero_and_zero_are_different_keys(kv: Kv) -> None:
    """-0.0 and 0.0 are different keys, -0.0 first."""
    kv.set((0.0,), "pos")
    kv.set((-0.0,), "neg")
    assert kv.get((0.0,)).value == "pos"
    assert kv.get((-0.0,)).value == "neg"
    listed = [e.key[0] for e in kv.list(prefix=())]
    assert [math.copysign(1.0, x) for x in listed] == [-1.0, 1.0]


def test_nan_key_parts_are_canonicalised(kv: Kv) -> None:
    """Every NaN bit pattern of one sign addresses the same key; -NaN is another key, as in Deno."""
    # denokv's codec (proto/codec.rs canonicalize_f64) keeps the NaN's sign:
    # positive NaNs become 0x7ff8..., negative ones 0xfff8..., two different keys.
    other_nan = struct.unpack(">d", bytes.fromhex("7ff8000000000123"))[0]
    other_negative_nan = struct.unpack(">d", bytes.fromhex("fff0000000000001"))[0]
    assert math.isnan(other_nan)
    assert math.isnan(other_negative_nan)
    kv.set((math.nan,), "nan")
    kv.set((-math.nan,), "-nan")
    assert kv.get((other_nan,)).value == "nan"
    assert kv.get((other_negative_nan,)).value == "-nan"
    listed = [e.key[0] for e in kv.list(prefix=())]
    assert len(listed) == 2
    assert all(math.isnan(x) for x in listed)
    # Deno's float order: -NaN first, +NaN last.
    assert [math.copysign(1.0, x) for x in listed] == [-1.0, 1.0]


@_shared_kv
@given(st.lists(keys(), min_size=1, max_size=12, unique_by=key_order))
def test_listing_order_matches_the_spec_key_order(kv: Kv, some_keys: list[tuple[Any, ...]]) -> None:
    """For random keys, list order equals the spec's order of values (FDB tuple property)."""
    prefix = ("order", next(_example_ids))
    for key in some_keys:
        kv.set(prefix + key, None)
    listed = [e.key[len(prefix) :] for e in kv.list(prefix=prefix)]
    assert [key_order(k) for k in listed] == sorted(key_order(k) for k in some_keys)


_BAD_PARTS: list[Any] = [
    None,
    1j,
    object(),
    [1],
    (1,),
    {"a": 1},
    datetime(2024, 1, 1),
    KvU64(1),
]


@pytest.mark.parametrize("part", _BAD_PARTS, ids=lambda p: type(p).__name__)
def test_unsupported_key_parts_raise_invalid_key_error(kv: Kv, part: Any) -> None:
    """A key part that is not bytes, str, int, float or bool is an InvalidKeyError everywhere."""
    kv.set(("keep",), 1)
    key = ("a", part)
    calls: list[Callable[[], object]] = [
        lambda: kv.get(key),
        lambda: kv.get_many([("ok",), key]),
        lambda: kv.set(key, 1),
        lambda: kv.delete(key),
        lambda: list(kv.list(prefix=key)),
        lambda: kv.atomic().set(("ok",), 1).set(key, 1).commit(),
        lambda: kv.atomic().set(("ok",), 1).check((key, None)).commit(),
    ]
    for call in calls:
        with unchanged(kv), pytest.raises(InvalidKeyError):
            call()


@pytest.mark.parametrize("key", ["abc", b"abc", 5, None, {"a": 1}], ids=repr)
def test_key_that_is_not_a_tuple_or_list_raises_invalid_key_error(kv: Kv, key: Any) -> None:
    """A key must be a tuple or list of parts; a bare str, bytes, int or None is rejected."""
    with unchanged(kv), pytest.raises(InvalidKeyError):
        kv.set(key, 1)
    with pytest.raises(InvalidKeyError):
        kv.get(key)


def test_empty_key_is_rejected_on_writes(kv: Kv) -> None:
    """set, delete and every atomic mutation of () raise InvalidKeyError and write nothing."""
    kv.set(("keep",), KvU64(1))
    writes: list[Callable[[], object]] = [
        lambda: kv.set((), 1),
        lambda: kv.set([], 1),
        lambda: kv.delete(()),
        lambda: kv.atomic().set(("ok",), 1).set((), 1).commit(),
        lambda: kv.atomic().set(("ok",), 1).delete(()).commit(),
        lambda: kv.atomic().set(("ok",), 1).sum((), 1).commit(),
        lambda: kv.atomic().set(("ok",), 1).min((), 1).commit(),
        lambda: kv.atomic().set(("ok",), 1).max((), 1).commit(),
        # Deno rejects an empty key in a check too (ext/kv lib.rs: EmptyKey).
        lambda: kv.atomic().set(("ok",), 1).check(((), None)).commit(),
    ]
    for write in writes:
        with unchanged(kv), pytest.raises(InvalidKeyError):
            write()


def test_key_size_limit_for_writes_is_exact(kv: Kv) -> None:
    """A written key may encode to 2048 bytes; 2049 is a LimitExceededError naming both numbers."""
    assert MAX_KEY_SIZE == 2048
    fits, too_big = key_of_size(MAX_KEY_SIZE), key_of_size(MAX_KEY_SIZE + 1)
    assert kv.set(fits, 1).ok
    assert kv.get(fits).value == 1
    writes: list[Callable[[], object]] = [
        lambda: kv.set(too_big, 1),
        lambda: kv.delete(too_big),
        lambda: kv.atomic().set(("ok",), 1).set(too_big, 1).commit(),
        lambda: kv.atomic().set(("ok",), 1).sum(too_big, 1).commit(),
        lambda: kv.atomic().set(("ok",), 1).check((too_big, None)).commit(),
    ]
    for write in writes:
        with unchanged(kv), pytest.raises(LimitExceededError) as info:
            write()
        assert info.value.limit == MAX_KEY_SIZE
        assert info.value.actual == MAX_KEY_SIZE + 1


def test_key_size_limit_for_reads_is_one_more(kv: Kv) -> None:
    """A key used to read may encode to 2049 bytes; 2050 is a LimitExceededError."""
    assert MAX_READ_KEY_SIZE == 2049
    fits, too_big = key_of_size(MAX_READ_KEY_SIZE), key_of_size(MAX_READ_KEY_SIZE + 1)
    assert kv.get(fits).versionstamp is None
    assert kv.get_many([fits])[0].versionstamp is None
    with pytest.raises(LimitExceededError) as info:
        kv.get(too_big)
    assert info.value.limit == MAX_READ_KEY_SIZE
    assert info.value.actual == MAX_READ_KEY_SIZE + 1
    with pytest.raises(LimitExceededError):
        kv.get_many([("ok",), too_big])


def test_list_start_and_end_obey_the_read_key_size(kv: Kv) -> None:
    """list start and end keys may encode to 2049 bytes; 2050 is a LimitExceededError."""
    fits, too_big = key_of_size(MAX_READ_KEY_SIZE), key_of_size(MAX_READ_KEY_SIZE + 1)
    assert list(kv.list(start=("a",), end=fits)) == []
    with pytest.raises(LimitExceededError):
        list(kv.list(start=("a",), end=too_big))
    with pytest.raises(LimitExceededError):
        list(kv.list(start=too_big, end=(True,)))


def test_list_prefix_range_bounds_obey_the_read_key_size(kv: Kv) -> None:
    """A prefix whose range bound (prefix + one byte) exceeds 2049 bytes is rejected, as in Deno."""
    # Deno (ext/kv lib.rs) applies check_read_key_size to the range a prefix
    # reads, [P+00, P+FF), so the prefix itself may encode to at most 2048 bytes.
    assert list(kv.list(prefix=key_of_size(MAX_READ_KEY_SIZE - 1))) == []
    with pytest.raises(LimitExceededError):
        list(kv.list(prefix=key_of_size(MAX_READ_KEY_SIZE)))


# ---------------------------------------------------------------------------
# Values

_ROUND_TRIP_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    2**64,
    -(2**64),
    2**200,
    -(2**200),
    0.0,
    -1.5,
    1e300,
    math.inf,
    -math.inf,
    "",
    "text with \x00 and \u00e9 and \U0001f600",
    b"",
    b"\x00\x01\xff",
    [],
    [1, "a", None, [2.5, [b"x"]]],
    {},
    {"a": 1, "b": [1, 2, {"c": None}], "": b"x"},
    datetime(2024, 5, 6, 7, 8, 9, 123456),
    datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
    datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(1, 1, 1),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-11))),
    KvU64(0),
    KvU64(2**64 - 1),
    [KvU64(7), {"n": KvU64(8)}],
    {"when": datetime(2020, 1, 1, tzinfo=UTC), "raw": b"\x00", "big": 2**90},
]


@pytest.mark.parametrize("value", _ROUND_TRIP_VALUES, ids=repr)
def test_values_round_trip_with_their_types(kv: Kv, value: Any) -> None:
    """Each supported value reads back equal, with the same type at every level."""
    if not kv.engine.capabilities.msgpack_values and _msgpack_only(value):
        pytest.skip("the engine stores V8 values, without this datetime or nested KvU64")
    kv.set(("v",), value)
    read = kv.get(("v",)).value
    assert read == value
    assert _type_tree(read) == _type_tree(value)


def _msgpack_only(value: Any) -> bool:
    """True when the value holds what only msgpack keeps.

    That is a non-UTC or sub-millisecond datetime, or a KvU64 inside a value.
    """
    if isinstance(value, list | tuple):
        return any(isinstance(v, KvU64) or _msgpack_only(v) for v in value)
    if isinstance(value, dict):
        return _msgpack_only(list(value.values()))
    if isinstance(value, datetime):
        return value.tzinfo is not UTC or value.microsecond % 1000 != 0
    return False


def _type_tree(value: Any) -> Any:
    """The value's shape of types (so True is not mistaken for 1, nor 1.0 for 1)."""
    if isinstance(value, list):
        return [_type_tree(v) for v in value]
    if isinstance(value, dict):
        return {k: _type_tree(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return (datetime, value.utcoffset())
    return type(value)


def test_nan_value_round_trips(kv: Kv) -> None:
    """A NaN float value reads back as a NaN float."""
    kv.set(("nan",), math.nan)
    read = kv.get(("nan",)).value
    assert isinstance(read, float)
    assert math.isnan(read)


def test_tuple_values_read_back_as_lists(kv: Kv) -> None:
    """Tuples, also nested ones, read back as lists."""
    kv.set(("t",), (1, "a", (2, (3,)), {"k": (4,)}))
    assert kv.get(("t",)).value == [1, "a", [2, [3]], {"k": [4]}]


def test_datetime_values_keep_their_timezone(kv: Kv) -> None:
    """An aware datetime keeps its UTC offset; a naive one stays naive."""
    if not kv.engine.capabilities.msgpack_values:
        pytest.skip("the engine stores V8 values, whose Date is a UTC instant")
    aware = datetime(2024, 2, 29, 12, 0, tzinfo=timezone(timedelta(hours=-3, minutes=-30)))
    naive = datetime(2024, 2, 29, 12, 0)
    kv.set(("aware",), aware)
    kv.set(("naive",), naive)
    read_aware = kv.get(("aware",)).value
    read_naive = kv.get(("naive",)).value
    assert read_aware == aware
    assert read_aware.utcoffset() == timedelta(hours=-3, minutes=-30)
    assert read_naive == naive
    assert read_naive.tzinfo is None


def test_none_value_is_stored_and_distinct_from_missing(kv: Kv) -> None:
    """A key set to None exists: it has a versionstamp and is listed."""
    result = kv.set(("none",), None)
    entry = kv.get(("none",))
    assert entry.value is None
    assert entry.versionstamp == result.versionstamp
    assert [e.key for e in kv.list(prefix=())] == [("none",)]


@_shared_kv
@given(values())
def test_random_values_round_trip(kv: Kv, value: Any) -> None:
    """Random nested values read back equal with the same types."""
    if not kv.engine.capabilities.msgpack_values:
        pytest.skip("the engine stores V8 values; kvmodel's V8 tests cover them")
    key = ("random-value", next(_example_ids))
    kv.set(key, value)
    read = kv.get(key).value
    assert read == value
    assert _type_tree(read) == _type_tree(value)


class _Custom:
    pass


_UNENCODABLE: list[Any] = [
    object(),
    _Custom(),
    {1, 2},
    frozenset(),
    1j,
    [1, object()],
    {"a": {"b": 1j}},
    range(3),
]


@pytest.mark.parametrize("value", _UNENCODABLE, ids=lambda v: type(v).__name__)
def test_unencodable_values_raise_encode_error_and_write_nothing(kv: Kv, value: Any) -> None:
    """A value of an unsupported type is an EncodeError; the key keeps its old value."""
    kv.set(("k",), "old")
    with unchanged(kv), pytest.raises(EncodeError):
        kv.set(("k",), value)
    with unchanged(kv), pytest.raises(EncodeError):
        kv.set(("new",), value)


def test_too_deeply_nested_or_cyclic_values_raise_encode_error(kv: Kv) -> None:
    """A value nested thousands of levels deep, or containing itself, is an EncodeError."""
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    for value in (deep, cyclic, {"a": cyclic}):
        with unchanged(kv), pytest.raises(EncodeError):
            kv.set(("k",), value)


def _shared_lists(n: int) -> list[Any]:
    """n lists, each holding the previous one twice: 2**n copies once encoded."""
    value: list[Any] = []
    for _ in range(n):
        value = [value, value]
    return value


def test_values_that_share_references_are_refused_before_encoding(kv: Kv) -> None:
    """Shared lists that would encode to 2**601 copies are a LimitExceededError, nothing written."""
    for n in (27, 601):
        with unchanged(kv), pytest.raises(LimitExceededError) as info:
            kv.set(("k",), _shared_lists(n))
        assert info.value.limit == MAX_VALUE_SIZE
        assert MAX_VALUE_SIZE < info.value.actual <= 2 * MAX_VALUE_SIZE
        with unchanged(kv), pytest.raises(LimitExceededError):
            kv.atomic().set(("a",), 1).set(("k",), {"x": _shared_lists(n)}).commit()
    # One big str held 100 times: each occurrence counts.
    with unchanged(kv), pytest.raises(LimitExceededError):
        kv.set(("k",), ["x" * 1000] * 100)
    assert kv.set(("k",), _shared_lists(10)).ok  # 2**10 empty lists fit
    assert kv.get(("k",)).value == _shared_lists(10)


def test_a_value_holding_itself_twice_is_an_encode_error(kv: Kv) -> None:
    """A list that contains itself twice is an EncodeError naming the cycle, nothing written."""
    twice: list[Any] = []
    twice.extend([twice, twice])
    with unchanged(kv), pytest.raises(EncodeError, match="contains itself"):
        kv.set(("k",), twice)
    inner: dict[str, Any] = {}
    outer = {"a": [1, inner]}
    inner["back"] = outer
    with unchanged(kv), pytest.raises(EncodeError, match=r"value\['a'\]\[1\]\['back'\]"):
        kv.set(("k",), outer)


def test_encode_error_inside_atomic_writes_nothing(kv: Kv) -> None:
    """An EncodeError in one mutation of an atomic commit writes none of its mutations."""
    kv.set(("k",), "old")
    with unchanged(kv), pytest.raises(EncodeError):
        kv.atomic().set(("a",), 1).delete(("k",)).set(("b",), object()).set(("c",), 3).commit()


def test_value_size_limit_is_exact_for_bytes(kv: Kv) -> None:
    """A top-level bytes value (stored raw) may be 65536 bytes; one more is a LimitExceededError."""
    assert MAX_VALUE_SIZE == 65536
    assert kv.set(("fits",), b"x" * MAX_VALUE_SIZE).ok
    assert kv.get(("fits",)).value == b"x" * MAX_VALUE_SIZE
    with unchanged(kv), pytest.raises(LimitExceededError) as info:
        kv.set(("big",), b"x" * (MAX_VALUE_SIZE + 1))
    assert info.value.limit == MAX_VALUE_SIZE
    assert info.value.actual == MAX_VALUE_SIZE + 1
    with unchanged(kv), pytest.raises(LimitExceededError):
        kv.atomic().set(("ok",), 1).set(("big",), b"x" * (MAX_VALUE_SIZE + 1)).commit()


def test_value_size_limit_counts_the_msgpack_encoding(kv: Kv) -> None:
    """A str value is limited by its msgpack size (3-byte str16 header + text)."""
    if not kv.engine.capabilities.msgpack_values:
        pytest.skip("the engine stores V8 values, with other header sizes")
    # msgpack str16 holds up to 65535 bytes behind a 3-byte header.
    fits = "y" * (MAX_VALUE_SIZE - 3)
    assert kv.set(("fits",), fits).ok
    assert kv.get(("fits",)).value == fits
    with unchanged(kv), pytest.raises(LimitExceededError):
        kv.set(("big",), "y" * (MAX_VALUE_SIZE - 2))


# ---------------------------------------------------------------------------
# Edge arguments: the same typed error on every engine


def _nested_list(depth: int) -> list[Any]:
    nested: list[Any] = []
    for _ in range(depth):
        nested = [nested]
    return nested


def test_a_key_part_nested_1500_deep_is_an_invalid_key_error_everywhere(kv: Kv) -> None:
    """A key part of 1,500 nested lists is an InvalidKeyError on every call that takes a key."""
    key = ("a", _nested_list(1500))
    deep_dict: dict[str, Any] = {}
    for _ in range(1500):
        deep_dict = {"k": deep_dict}
    calls: list[Callable[[], object]] = [
        lambda: kv.set(key, 1),
        lambda: kv.set(deep_dict, 1),  # type: ignore[arg-type]
        lambda: kv.get(key),
        lambda: kv.get_many([key]),
        lambda: kv.delete(key),
        lambda: list(kv.list(prefix=key)),
        lambda: list(kv.list(start=key, end=("b",))),
        lambda: kv.atomic().check((key, None)).commit(),
        lambda: kv.atomic().sum(key, 1).commit(),
        lambda: kv.enqueue(1, keys_if_undelivered=[key]),
        lambda: kv.watch([key]),
    ]
    for call in calls:
        with unchanged(kv), pytest.raises(InvalidKeyError) as info:
            call()
        assert len(str(info.value)) < 400


@pytest.mark.parametrize(
    "expire_in",
    [1e17, 10**400, timedelta.max, MAX_EXPIRE_IN_SECONDS + 1],
    ids=["1e17", "10**400", "timedelta.max", "maximum+1"],
)
def test_expire_in_beyond_its_maximum_is_a_limit_error(kv: Kv, expire_in: Any) -> None:
    """expire_in over MAX_EXPIRE_IN_SECONDS is a LimitExceededError (and InvalidArgumentError)."""
    kv.set(("k",), "old")
    writes: list[Callable[[], object]] = [
        lambda: kv.set(("k",), 1, expire_in=expire_in),
        lambda: kv.atomic().set(("k",), 1, expire_in=expire_in).commit(),
    ]
    for write in writes:
        with unchanged(kv), pytest.raises(LimitExceededError) as info:
            write()
        assert isinstance(info.value, InvalidArgumentError)
        assert info.value.limit == MAX_EXPIRE_IN_SECONDS


def test_expire_in_at_its_maximum_is_stored(kv: Kv) -> None:
    """The longest expire_in (100 years) is a deadline every engine holds."""
    assert kv.set(("k",), 1, expire_in=MAX_EXPIRE_IN_SECONDS).ok
    assert kv.get(("k",)).value == 1


@pytest.mark.parametrize("delay", [1e17, 10**400, timedelta.max], ids=["1e17", "10**400", "max"])
def test_a_huge_delay_is_a_limit_error(kv: Kv, delay: Any) -> None:
    """A delay far beyond 30 days is a LimitExceededError (and InvalidArgumentError)."""
    with unchanged(kv), pytest.raises(LimitExceededError) as info:
        kv.enqueue(1, delay=delay)
    assert isinstance(info.value, InvalidArgumentError)


@pytest.mark.parametrize(
    "stamp",
    [
        "00000000000000 01 00",
        " 000000000000000100 ",
        "00000000000000\t01\t00",
        "0x000000000000000100",
        "00000000000000000g00",
    ],
    ids=["spaces", "outer-spaces", "tabs", "0x", "g"],
)
def test_a_versionstamp_is_exactly_20_hex_digits(kv: Kv, stamp: str) -> None:
    """A versionstamp of 20 characters that are not all hex digits is invalid, spaces too."""
    # bytes.fromhex skips whitespace: these used to pass as 9-byte versionstamps.
    assert len(stamp) == 20
    real = kv.set(("k",), 1).versionstamp
    assert real is not None
    with unchanged(kv), pytest.raises(InvalidArgumentError, match="20 hex digits"):
        kv.atomic().check((("k",), stamp)).set(("k",), 2).commit()
    assert kv.atomic().check((("k",), real)).set(("k",), 2).commit().ok


# ---------------------------------------------------------------------------
# get, get_many, set, delete


def test_set_returns_ok_with_the_versionstamp_get_reports(kv: Kv) -> None:
    """set returns CommitResult(ok=True, versionstamp) and get reports that versionstamp."""
    result = kv.set(("a",), 1)
    assert result.ok is True
    assert result.versionstamp is not None
    assert VERSIONSTAMP_RE.fullmatch(result.versionstamp)
    entry = kv.get(("a",))
    assert (entry.key, entry.value, entry.versionstamp) == (("a",), 1, result.versionstamp)


def test_set_overwrites(kv: Kv) -> None:
    """A second set replaces the value and the versionstamp."""
    first = kv.set(("a",), 1)
    second = kv.set(("a",), 2)
    entry = kv.get(("a",))
    assert entry.value == 2
    assert entry.versionstamp == second.versionstamp != first.versionstamp


def test_get_many_keeps_order_and_reports_missing_keys(kv: Kv) -> None:
    """get_many returns one entry per key, in the order asked, missing ones empty."""
    kv.set(("b",), "B")
    kv.set(("a",), "A")
    entries = kv.get_many([("b",), ("missing",), ["a"], ("b",)])
    assert [(e.key, e.value) for e in entries] == [
        (("b",), "B"),
        (("missing",), None),
        (("a",), "A"),
        (("b",), "B"),
    ]
    assert entries[1].versionstamp is None
    assert entries[0].versionstamp == kv.get(("b",)).versionstamp


def test_get_many_of_no_keys_is_empty(kv: Kv) -> None:
    """get_many([]) returns an empty list."""
    assert kv.get_many([]) == []


def test_get_many_takes_at_most_ten_keys(kv: Kv) -> None:
    """Ten keys are fine; eleven is a LimitExceededError."""
    assert MAX_GET_MANY_KEYS == 10
    assert len(kv.get_many([(i,) for i in range(MAX_GET_MANY_KEYS)])) == MAX_GET_MANY_KEYS
    with pytest.raises(LimitExceededError) as info:
        kv.get_many([(i,) for i in range(MAX_GET_MANY_KEYS + 1)])
    assert info.value.limit == MAX_GET_MANY_KEYS
    assert info.value.actual == MAX_GET_MANY_KEYS + 1


def test_delete_removes_the_key(kv: Kv) -> None:
    """After delete, get gives an empty entry and list no longer shows the key."""
    kv.set(("a",), 1)
    kv.set(("b",), 2)
    kv.delete(("a",))
    entry = kv.get(("a",))
    assert (entry.key, entry.value, entry.versionstamp) == (("a",), None, None)
    assert [e.key for e in kv.list(prefix=())] == [("b",)]


def test_delete_of_a_missing_key_is_fine(kv: Kv) -> None:
    """Deleting a key that does not exist returns None and changes nothing."""
    kv.set(("a",), 1)
    with unchanged(kv):
        kv.delete(("missing",))


@pytest.mark.parametrize("consistency", ["strong", "eventual"])
def test_reads_accept_both_consistency_levels(kv: Kv, consistency: str) -> None:
    """get, get_many and list accept consistency "strong" and "eventual"."""
    kv.set(("a",), 1)
    assert kv.get(("a",), consistency=consistency).value == 1
    assert [e.value for e in kv.get_many([("a",)], consistency=consistency)] == [1]
    assert [e.value for e in kv.list(prefix=(), consistency=consistency)] == [1]


@pytest.mark.parametrize("consistency", ["bogus", "Strong", "", None, 1])
def test_other_consistency_values_are_invalid(kv: Kv, consistency: Any) -> None:
    """Any consistency other than "strong" or "eventual" is an InvalidArgumentError."""
    kv.set(("a",), 1)
    with pytest.raises(InvalidArgumentError):
        kv.get(("a",), consistency=consistency)
    with pytest.raises(InvalidArgumentError):
        kv.get_many([("a",)], consistency=consistency)
    with pytest.raises(InvalidArgumentError):
        list(kv.list(prefix=(), consistency=consistency))


def test_read_point_reads_what_snapshot_read_reads(kv: Kv) -> None:
    """An engine's optional ``read_point`` (get's hot path) agrees with ``snapshot_read``:
    present keys of every encoding, and missing, deleted and expired keys."""
    read_point = getattr(kv.engine, "read_point", None)
    if read_point is None:
        pytest.skip("the engine has no read_point (get uses snapshot_read)")
    kv.set(("rp", "doc"), {"a": [1, 2]})
    kv.set(("rp", "raw"), b"\x00bytes")
    kv.set(("rp", "u64"), KvU64(7))
    kv.set(("rp", "gone"), 1)
    kv.delete(("rp", "gone"))
    kv.set(("rp", "expired"), 1, expire_in=0.05)
    time.sleep(0.1)
    for key in [
        ("rp", "doc"),
        ("rp", "raw"),
        ("rp", "u64"),
        ("rp", "gone"),
        ("rp", "expired"),
        ("rp", "never"),
    ]:
        encoded = encode_key(key)
        (want,) = kv.engine.snapshot_read([ReadRange(encoded, encoded + b"\x00", 1)])
        got = read_point(encoded)
        assert ([] if got is None else [got]) == want, key
