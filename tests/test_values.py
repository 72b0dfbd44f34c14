"""Tests of kvmodel._values: the value codec (msgpack, raw bytes, LE64) and KvU64."""

from __future__ import annotations

import contextlib
import copy
import decimal
import enum
import math
import pickle
import struct
import tracemalloc
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmodel._values import (
    EXT_BIGINT,
    EXT_DATETIME,
    EXT_KVU64,
    KvU64,
    decode_value,
    encode_value,
)
from kvmodel.engines.base import (
    VALUE_ENCODING_BYTES,
    VALUE_ENCODING_LE64,
    VALUE_ENCODING_MSGPACK,
)
from kvmodel.errors import DecodeError, EncodeError, LimitExceededError
from kvmodel.limits import MAX_VALUE_SIZE
from kvmodel.testing.strategies import corrupted

# Deterministic runs: the same examples every time, so a failure reproduces.
settings.register_profile("kvmodel-values", derandomize=True, max_examples=300, deadline=None)
VALUE_SETTINGS = settings.get_profile("kvmodel-values")


def _roundtrip(value: object) -> object:
    return decode_value(*encode_value(value))


def _ext(code: int, payload: bytes) -> bytes:
    # Built by hand (ext 8/16) so that any code, reserved negative ones too, can be written.
    if len(payload) < 256:
        return b"\xc7" + struct.pack(">Bb", len(payload), code) + payload
    return b"\xc8" + struct.pack(">Hb", len(payload), code) + payload


def _dt_payload(*fields: int, rest: bytes = b"") -> bytes:
    return struct.pack(">HBBBBBIBB", *fields) + rest


# ---------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -1,
        2**63 - 1,
        -(2**63),
        2**64 - 1,
        0.0,
        -0.0,
        1.5,
        math.inf,
        -math.inf,
        "",
        "héllo \U0001f600 \x00",
        [b""],
        [],
        {},
        [1, "a", None, [2.5, [b"x"]]],
        {"a": 1, 1: "b", None: [], 2.5: {"x": True}, b"k": False, "t": True},
        {"big": 10**40, "neg": -(10**40)},
        [KvU64(0), {"n": KvU64(2**64 - 1)}],
    ],
    ids=repr,
)
def test_msgpack_values_round_trip(value: object) -> None:
    """Every supported msgpack value decodes back equal, with the same type."""
    data, encoding = encode_value(value)
    assert encoding == VALUE_ENCODING_MSGPACK
    decoded = decode_value(data, encoding)
    assert decoded == value
    assert type(decoded) is type(value)


def test_negative_zero_and_nan_floats_round_trip() -> None:
    """-0.0 keeps its sign and NaN stays NaN."""
    assert math.copysign(1.0, _roundtrip(-0.0)) == -1.0  # type: ignore[arg-type]
    assert math.isnan(_roundtrip(math.nan))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "n",
    [2**64, -(2**63) - 1, 2**64 + 1, -(2**64), 10**100, -(10**100), 2**8000, -(2**8000)],
)
def test_big_ints_round_trip_as_an_extension(n: int) -> None:
    """Ints outside msgpack's range use extension 1 and come back exactly."""
    data, encoding = encode_value(n)
    assert encoding == VALUE_ENCODING_MSGPACK
    assert msgpack.unpackb(data, ext_hook=lambda code, _: code) == EXT_BIGINT
    assert _roundtrip(n) == n
    assert _roundtrip([n, {"k": n}]) == [n, {"k": n}]


def test_int_subclasses_encode_as_ints() -> None:
    """An IntEnum member encodes as its int value."""

    class Level(enum.IntEnum):
        HIGH = 3
        HUGE = 2**70

    assert _roundtrip([Level.HIGH, Level.HUGE]) == [3, 2**70]


def test_tuples_read_back_as_lists() -> None:
    """A tuple value is a msgpack array and reads back as a list."""
    assert _roundtrip((1, (2, "x"))) == [1, [2, "x"]]


def test_tuple_dict_keys_read_back_as_tuples() -> None:
    """A dict keyed by tuples decodes with tuple keys, nested ones included."""
    value = {(1, (2, "x")): "a", "plain": {(3,): [4]}}
    assert _roundtrip(value) == value


def test_nested_bytes_likes_are_msgpack_bin() -> None:
    """bytes, bytearray and memoryview inside a container come back as bytes."""
    assert _roundtrip([b"a", bytearray(b"b"), memoryview(b"c")]) == [b"a", b"b", b"c"]


@pytest.mark.parametrize("value", [b"", b"\x00raw\xff", bytearray(b"ba"), memoryview(b"mv")])
def test_top_level_bytes_use_the_bytes_encoding(value: bytes) -> None:
    """Top-level bytes-likes are stored raw with VALUE_ENCODING_BYTES."""
    data, encoding = encode_value(value)
    assert (data, encoding) == (bytes(value), VALUE_ENCODING_BYTES)
    assert type(data) is bytes
    assert decode_value(data, encoding) == bytes(value)


def test_top_level_kvu64_uses_le64() -> None:
    """A top-level KvU64 is 8 bytes little-endian with VALUE_ENCODING_LE64."""
    assert encode_value(KvU64(1)) == (b"\x01" + b"\x00" * 7, VALUE_ENCODING_LE64)
    assert encode_value(KvU64(2**64 - 1)) == (b"\xff" * 8, VALUE_ENCODING_LE64)
    assert decode_value(b"\x05\x01" + b"\x00" * 6, VALUE_ENCODING_LE64) == KvU64(261)


def test_nested_kvu64_uses_its_extension() -> None:
    """A KvU64 inside a container is extension 2 holding 8 bytes little-endian."""
    data, _ = encode_value([KvU64(258)])
    assert data == b"\x91\xd7\x02" + b"\x02\x01" + b"\x00" * 6  # fixext 8, code 2


DATETIMES = [
    datetime(2024, 2, 29, 23, 59, 58, 999999),
    datetime(1, 1, 1),
    datetime(9999, 12, 31, 23, 59, 59, 999999),
    datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    datetime(2024, 1, 2, tzinfo=timezone(timedelta(hours=23, minutes=59, microseconds=7))),
    datetime(2024, 1, 2, tzinfo=timezone(timedelta(hours=2), "CEST")),
    datetime(2024, 7, 1, 12, tzinfo=ZoneInfo("Europe/Paris")),
    datetime(2021, 11, 7, 1, 30, tzinfo=ZoneInfo("America/New_York"), fold=0),
    datetime(2021, 11, 7, 1, 30, tzinfo=ZoneInfo("America/New_York"), fold=1),
    datetime(2024, 1, 1, tzinfo=ZoneInfo("UTC")),
]


@pytest.mark.parametrize("value", DATETIMES, ids=repr)
def test_datetimes_round_trip_with_their_tzinfo(value: datetime) -> None:
    """A datetime comes back equal, with the same wall time, fold and kind of tzinfo."""
    decoded = _roundtrip([value])[0]  # type: ignore[index]
    assert isinstance(decoded, datetime)
    assert decoded == value
    assert decoded.replace(tzinfo=None) == value.replace(tzinfo=None)
    assert decoded.fold == value.fold
    assert type(decoded.tzinfo) is type(value.tzinfo)
    assert decoded.utcoffset() == value.utcoffset()
    assert decoded.tzname() == value.tzname()
    if isinstance(value.tzinfo, ZoneInfo):
        assert decoded.tzinfo.key == value.tzinfo.key  # type: ignore[union-attr]
    assert _roundtrip(value) == value


def test_naive_and_aware_datetimes_stay_apart() -> None:
    """A naive datetime stays naive and an aware one stays aware."""
    decoded = _roundtrip([datetime(2024, 1, 1), datetime(2024, 1, 1, tzinfo=UTC)])
    assert isinstance(decoded, list)
    assert decoded[0].tzinfo is None
    assert decoded[1].tzinfo is UTC


def test_msgpack_timestamps_read_as_utc_datetimes() -> None:
    """msgpack's standard timestamp extension (-1), written by other tools, reads as UTC."""
    moment = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    data = msgpack.packb(moment, datetime=True)
    assert decode_value(data, VALUE_ENCODING_MSGPACK) == moment


# ---------------------------------------------------------------------------
# Encode errors


class _CustomTz(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=1)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "X"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({1, 2}, "Cannot encode value: type 'set' is not supported"),
        (3.5j, "Cannot encode value: type 'complex'"),
        (decimal.Decimal("1.5"), "Cannot encode value: type 'decimal.Decimal'"),
        (date(2024, 1, 1), "Cannot encode value: type 'datetime.date'"),
        ([1, {"a": object()}], r"Cannot encode value\[1\]\['a'\]: type 'object'"),
        ({"k": [1, frozenset()]}, r"value\['k'\]\[1\]: type 'frozenset'"),
        ({frozenset(): 1}, "Cannot encode a key of value: type 'frozenset'"),
        (["ok", "\ud800"], r"str '\\ud800' at value\[1\]: it holds a lone surrogate"),
        ([datetime(2024, 1, 1, tzinfo=_CustomTz())], r"datetime .* at value\[0\]: its tzinfo"),
    ],
    ids=lambda v: type(v).__name__,
)
def test_unsupported_values_name_the_type_and_place(value: object, message: str) -> None:
    """An unsupported value raises EncodeError naming its type and where it sits."""
    with pytest.raises(EncodeError, match=message) as info:
        encode_value(value)
    assert isinstance(info.value, TypeError)


def test_a_zoneinfo_without_a_key_is_an_encode_error() -> None:
    """A ZoneInfo read from a file has no key to store, so it is an EncodeError."""
    with open("/usr/share/zoneinfo/UTC", "rb") as file:
        zone = ZoneInfo.from_file(file)
    with pytest.raises(
        EncodeError, match=r"not a datetime\.timezone or a zoneinfo\.ZoneInfo loaded"
    ):
        encode_value({"at": datetime(2024, 1, 1, tzinfo=zone)})


def test_too_deep_nesting_is_an_encode_error() -> None:
    """A value nested beyond what decoding accepts, or containing itself, is an EncodeError."""
    deep: list[Any] = []
    for _ in range(1024):
        deep = [deep]  # 1025 nested lists: one more than msgpack unpacks
    with pytest.raises(EncodeError, match="nested too deeply"):
        encode_value(deep)
    deeper: dict[str, Any] = {}
    for _ in range(5000):
        deeper = {"a": deeper}
    with pytest.raises(EncodeError, match="nested too deeply"):
        encode_value(deeper)
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(EncodeError, match="contains itself"):
        encode_value(loop)
    ok: list[Any] = []
    for _ in range(1023):
        ok = [ok]
    data, encoding = encode_value(ok)
    decoded = decode_value(data, encoding)
    for _ in range(1023):
        assert isinstance(decoded, list) and len(decoded) == 1
        decoded = decoded[0]
    assert decoded == []


def test_encoding_is_repeatable_after_an_error() -> None:
    """A failed encode leaves the shared packer clean for the next value."""
    with pytest.raises(EncodeError):
        encode_value(["x" * 100, object()])
    assert encode_value(["y"]) == (b"\x91\xa1y", VALUE_ENCODING_MSGPACK)


# ---------------------------------------------------------------------------
# Bounded encoding


def _shared_lists(n: int) -> list[Any]:
    """n lists, each holding the previous one twice: 2**n copies once encoded."""
    value: list[Any] = []
    for _ in range(n):
        value = [value, value]
    return value


@pytest.mark.parametrize("n", [27, 601])
def test_shared_references_are_refused_in_bounded_memory(n: int) -> None:
    """Lists sharing references stop at the limit, holding a small multiple of it at most."""
    # Before the bounding walk, 27 such lists took 10.7 GiB and 601 never finished.
    value = _shared_lists(n)
    tracemalloc.start()
    try:
        with pytest.raises(LimitExceededError) as info:
            encode_value(value)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert MAX_VALUE_SIZE < info.value.actual <= 2 * MAX_VALUE_SIZE
    assert info.value.limit == MAX_VALUE_SIZE
    assert peak < 16 * MAX_VALUE_SIZE


@pytest.mark.parametrize(
    "value",
    [
        ["x" * 1000] * 100,  # one str held 100 times counts 100 times
        [b"x" * 1000] * 100,
        [10**2000] * 100,  # big ints count their bytes
        [datetime(2024, 1, 1, tzinfo=timezone(timedelta(0), "z" * 1000))] * 100,
        {"k" * 70_000: 1},
        "y" * 70_000,
        bytearray(70_000),  # refused before bytes() copies it
        [[]] * 70_000,
    ],
    ids=["str", "bytes", "bigint", "named-tz", "dict-key", "top-str", "bytearray", "many-lists"],
)
def test_oversized_values_are_refused_before_packing(value: object) -> None:
    """What certainly encodes past the limit is refused, naming a lower bound of its size."""
    with pytest.raises(LimitExceededError) as info:
        encode_value(value)
    assert info.value.actual > MAX_VALUE_SIZE


def test_the_limit_is_a_parameter() -> None:
    """encode_value(limit=n) refuses at n: the walk's total is a lower bound of the size."""
    assert encode_value(["ab"] * 10, limit=31) == (b"\x9a" + b"\xa2ab" * 10, VALUE_ENCODING_MSGPACK)
    with pytest.raises(LimitExceededError):
        encode_value(["ab"] * 10, limit=30)


def test_a_list_holding_itself_twice_names_the_cycle() -> None:
    """A container holding itself, or an open ancestor, is an EncodeError at once."""
    twice: list[Any] = []
    twice.extend([twice, twice])
    with pytest.raises(EncodeError, match=r"Cannot encode value\[0\]: it is value again"):
        encode_value(twice)
    inner: list[Any] = [1]
    outer = {"a": (2, inner)}
    inner.append(outer)
    with pytest.raises(EncodeError, match=r"value\['a'\]\[1\]\[1\]: it is value again"):
        encode_value(outer)
    middle: list[Any] = []
    top = [0, [1, middle]]
    middle.append(top[1])
    with pytest.raises(EncodeError, match=r"value\[1\]\[1\]\[0\]: it is value\[1\] again"):
        encode_value(top)


@pytest.mark.parametrize("kind", [list, tuple, dict])
def test_nesting_far_beyond_the_recursion_limit_is_an_encode_error(kind: type) -> None:
    """100,000 nested containers are an EncodeError, not a RecursionError."""
    value: Any = "leaf"
    for _ in range(100_000):
        value = {"k": value} if kind is dict else kind([value])
    with pytest.raises(EncodeError, match="nested too deeply"):
        encode_value(value)


def test_container_subclasses_are_walked_like_containers() -> None:
    """A list subclass holding shared lists is refused like a list; a namedtuple round-trips."""

    class MyList(list[Any]):
        pass

    with pytest.raises(LimitExceededError):
        encode_value(MyList([_shared_lists(40)]))
    assert decode_value(*encode_value(MyList([1, 2]))) == [1, 2]


def test_msgpack_extension_objects_are_refused() -> None:
    """An ExtType or Timestamp in a value is an EncodeError: it would not decode back."""
    for value in ([msgpack.ExtType(42, b"x")], {"t": msgpack.Timestamp(1)}):
        with pytest.raises(EncodeError, match="is not supported"):
            encode_value(value)


def test_the_error_search_is_bounded_on_shared_values() -> None:
    """A lone surrogate after 2**12 shared copies is found and named without walking forever."""
    shared: list[Any] = ["a"]
    for _ in range(12):
        shared = [shared, shared]
    with pytest.raises(EncodeError, match=r"str '\\ud800' at value\[1\]"):
        encode_value([shared, "\ud800"])


# ---------------------------------------------------------------------------
# Decode errors


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a valid msgpack value"),
        (b"\x92\x01", "not a valid msgpack value"),  # truncated array
        (b"\x01\x02", "not a valid msgpack value"),  # trailing bytes
        (b"\xc1", "not a valid msgpack value"),  # the never-used byte
        (b"\xa2\xff\xfe", "not a valid msgpack value"),  # invalid UTF-8 str
        (_ext(7, b"x"), "Unknown msgpack extension type 7"),
        (_ext(-5, b"x"), "Unknown msgpack extension type -5"),
        (_ext(EXT_KVU64, b"\x01" * 7), "KvU64 extension has 7 bytes"),
        (_ext(EXT_BIGINT, (5).to_bytes(9, "big", signed=True)), "canonical"),
        (_ext(EXT_BIGINT, (2**64).to_bytes(10, "big", signed=True)), "canonical"),
        (_ext(EXT_BIGINT, b""), "canonical"),
        (_ext(EXT_DATETIME, b"\x07\xe8\x01"), "truncated"),
        (_ext(EXT_DATETIME, _dt_payload(2024, 13, 1, 0, 0, 0, 0, 0, 0)), "month"),
        (_ext(EXT_DATETIME, _dt_payload(2024, 1, 1, 0, 0, 0, 10**6, 0, 0)), "microsecond"),
        (_ext(EXT_DATETIME, _dt_payload(2024, 1, 1, 0, 0, 0, 0, 2, 0)), "fold"),
        (_ext(EXT_DATETIME, _dt_payload(2024, 1, 1, 0, 0, 0, 0, 0, 9)), "time zone kind 9"),
        (_ext(EXT_DATETIME, _dt_payload(2024, 1, 1, 0, 0, 0, 0, 0, 0, rest=b"x")), "kind 0"),
        (
            _ext(EXT_DATETIME, _dt_payload(2024, 1, 1, 0, 0, 0, 0, 0, 1, rest=b"\x00" * 9)),
            "trailing",
        ),
        (
            _ext(
                EXT_DATETIME,
                _dt_payload(2024, 1, 1, 0, 0, 0, 0, 0, 1, rest=struct.pack(">q", 86400 * 10**6)),
            ),
            "not a valid msgpack value",
        ),
        (
            _ext(EXT_DATETIME, _dt_payload(2024, 1, 1, 0, 0, 0, 0, 0, 3, rest=b"../../etc/passwd")),
            "invalid time zone",
        ),
        (
            _ext(EXT_DATETIME, _dt_payload(2024, 1, 1, 0, 0, 0, 0, 0, 3, rest=b"/etc/localtime")),
            "invalid time zone",
        ),
        (
            _ext(EXT_DATETIME, _dt_payload(2024, 1, 1, 0, 0, 0, 0, 0, 3, rest=b"Nowhere/Atlantis")),
            "not a valid msgpack value",
        ),
        (b"\x91" * 1100 + b"\xc0", "not a valid msgpack value"),  # deeper than the stack
        (
            b"\xdb" + struct.pack(">I", MAX_VALUE_SIZE + 1) + b"a" * (MAX_VALUE_SIZE + 1),
            "more than",
        ),
        (
            b"\xc6" + struct.pack(">I", MAX_VALUE_SIZE + 1) + b"a" * (MAX_VALUE_SIZE + 1),
            "more than",
        ),
        (b"\xdd" + struct.pack(">I", 2**32 - 1), "not a valid msgpack value"),
        (b"\xdf" + struct.pack(">I", 2**32 - 1), "not a valid msgpack value"),
        (b"\x81\x91\x81\xc0\xc0\xc0", "not a valid msgpack value"),  # a map as a map key
    ],
)
def test_malformed_msgpack_is_a_decode_error(data: bytes, message: str) -> None:
    """Malformed, non-canonical or out-of-bounds msgpack raises DecodeError only."""
    with pytest.raises(DecodeError, match=message):
        decode_value(data, VALUE_ENCODING_MSGPACK)


@pytest.mark.parametrize("data", [b"", b"\x01" * 7, b"\x01" * 9])
def test_le64_of_the_wrong_length_is_a_decode_error(data: bytes) -> None:
    """An LE64 value that is not exactly 8 bytes raises DecodeError."""
    with pytest.raises(DecodeError, match="instead of 8"):
        decode_value(data, VALUE_ENCODING_LE64)


@pytest.mark.parametrize("encoding", [0, 5, -1, 255])
def test_unknown_encoding_is_a_decode_error(encoding: int) -> None:
    """An encoding number kvmodel does not know raises DecodeError."""
    with pytest.raises(DecodeError, match=f"Unknown value encoding {encoding}"):
        decode_value(b"\xc0", encoding)


# ---------------------------------------------------------------------------
# Properties

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=False),
    st.text(max_size=10),
    st.binary(max_size=10),
    st.integers(0, 2**64 - 1).map(KvU64),
    st.datetimes(),
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-3))])),
    st.datetimes(timezones=st.sampled_from([ZoneInfo("Europe/Paris"), ZoneInfo("Asia/Tokyo")])),
)
hashable_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5))
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(hashable_scalars, children, max_size=4),
    ),
    max_leaves=12,
)


@VALUE_SETTINGS
@given(values)
def test_any_supported_value_round_trips(value: object) -> None:
    """Any nesting of supported values decodes back equal to what was encoded."""
    assert _roundtrip(value) == value


@VALUE_SETTINGS
@given(values, st.integers(1, 120))
def test_the_walk_never_refuses_a_value_that_fits(value: object, limit: int) -> None:
    """LimitExceededError only for values whose encoding is longer than the limit."""
    size = len(encode_value(value, limit=1 << 30)[0])
    try:
        encode_value(value, limit=limit)
    except LimitExceededError as exc:
        assert size > limit
        assert limit < exc.actual <= size


msgpack_fuzz = st.one_of(
    st.binary(max_size=60),
    corrupted(values.map(lambda v: encode_value(v)[0])),
    st.builds(
        _ext, st.sampled_from([-1, EXT_BIGINT, EXT_KVU64, EXT_DATETIME]), st.binary(max_size=40)
    ),
    st.builds(
        lambda fields, kind, rest: _ext(EXT_DATETIME, _dt_payload(*fields, kind, rest=rest)),
        st.tuples(
            st.integers(0, 2**16 - 1),
            *[st.integers(0, 255)] * 5,
            st.integers(0, 2**32 - 1),
            st.integers(0, 255),
        ),
        st.integers(0, 4),
        st.one_of(st.binary(max_size=12), st.sampled_from([b"UTC", b"Europe/Paris", b"a/../b"])),
    ),
)


@settings(VALUE_SETTINGS, max_examples=1000)
@given(msgpack_fuzz)
def test_decoding_arbitrary_msgpack_raises_only_decode_error(data: bytes) -> None:
    """Arbitrary bytes as msgpack decode to a value or raise DecodeError, nothing else."""
    with contextlib.suppress(DecodeError):
        decode_value(data, VALUE_ENCODING_MSGPACK)


@VALUE_SETTINGS
@given(st.binary(max_size=20), st.integers(-3, 6))
def test_decoding_arbitrary_bytes_in_any_encoding_raises_only_decode_error(
    data: bytes, encoding: int
) -> None:
    """Arbitrary bytes under any encoding number decode or raise DecodeError, nothing else."""
    try:
        value = decode_value(data, encoding)
    except DecodeError:
        return
    if encoding == VALUE_ENCODING_BYTES:
        assert value == data
    elif encoding == VALUE_ENCODING_LE64:
        assert value == KvU64(int.from_bytes(data, "little"))


# ---------------------------------------------------------------------------
# KvU64


def test_kvu64_holds_an_unsigned_64_bit_int() -> None:
    """KvU64 exposes its value, converts with int() and reprs as KvU64(n)."""
    n = KvU64(2**64 - 1)
    assert n.value == 2**64 - 1
    assert int(n) == 2**64 - 1
    assert repr(KvU64(5)) == "KvU64(5)"
    assert KvU64.__module__ == "kvmodel"


@pytest.mark.parametrize("bad", [-1, 2**64, -(2**70)])
def test_kvu64_out_of_range_is_a_value_error(bad: int) -> None:
    """A KvU64 outside 0 <= n < 2**64 raises ValueError naming the number."""
    with pytest.raises(ValueError, match=f"KvU64 value {bad} is out of range"):
        KvU64(bad)


@pytest.mark.parametrize("bad", [True, False, 1.0, "1", None, decimal.Decimal(1)])
def test_kvu64_of_a_non_int_is_a_type_error(bad: object) -> None:
    """A KvU64 of anything but an int (bool included) raises TypeError."""
    with pytest.raises(TypeError, match="KvU64 takes an int"):
        KvU64(bad)  # type: ignore[arg-type]


def test_kvu64_accepts_int_subclasses_as_plain_ints() -> None:
    """An IntEnum member makes a KvU64 of its plain int value."""

    class Amount(enum.IntEnum):
        TEN = 10

    assert type(KvU64(Amount.TEN).value) is int
    assert KvU64(Amount.TEN) == KvU64(10)


def test_kvu64_equals_only_kvu64_of_the_same_value() -> None:
    """KvU64 equality and hashing go by value, and a KvU64 never equals a plain int."""
    assert KvU64(5) == KvU64(5)
    assert KvU64(5) != KvU64(6)
    assert KvU64(5) != 5
    assert KvU64(5).__eq__(5) is NotImplemented
    assert hash(KvU64(5)) == hash(KvU64(5))
    assert len({KvU64(5), KvU64(5), KvU64(6)}) == 2


def test_kvu64_is_immutable() -> None:
    """A KvU64's value cannot be set or deleted, and it has no __dict__."""
    n = KvU64(5)
    with pytest.raises(AttributeError):
        n._value = 6
    with pytest.raises(AttributeError):
        n.value = 6  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del n._value
    with pytest.raises(AttributeError):
        n.other = 1
    assert n == KvU64(5)


def test_kvu64_copies_and_pickles(monkeypatch: pytest.MonkeyPatch) -> None:
    """A KvU64 survives copy, deepcopy and pickle."""
    import kvmodel

    # pickle finds the class by its public name, kvmodel.KvU64.
    monkeypatch.setattr(kvmodel, "KvU64", KvU64, raising=False)
    n = KvU64(2**63)
    assert copy.copy(n) == n
    assert copy.deepcopy(n) == n
    assert pickle.loads(pickle.dumps(n)) == n


def test_utc_datetimes_use_msgpacks_own_timestamp() -> None:
    """A datetime in timezone.utc is written as msgpack's timestamp (-1) and reads back equal."""
    import datetime as dt

    import msgpack

    from kvmodel._values import EXT_DATETIME

    utc = dt.datetime(2026, 11, 28, 5, 45, 1, 123456, tzinfo=dt.UTC)
    data, encoding = encode_value({"at": utc})
    assert msgpack.unpackb(data, timestamp=0)["at"].__class__ is msgpack.Timestamp
    back = decode_value(data, encoding)["at"]
    assert back == utc and back.tzinfo is dt.UTC
    # Other zones, and a fold, keep kvmodel's own extension so nothing is lost.
    for other in (
        utc.replace(tzinfo=dt.timezone(dt.timedelta(hours=2))),
        utc.replace(tzinfo=dt.timezone(dt.timedelta(0), "Z")),
        utc.replace(fold=1),
    ):
        data, encoding = encode_value(other)
        assert msgpack.unpackb(data, ext_hook=lambda code, _: code) == EXT_DATETIME
        back = decode_value(data, encoding)
        assert back == other and back.tzinfo == other.tzinfo and back.fold == other.fold
