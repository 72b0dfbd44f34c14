"""Tests of kvmodel.keys: Deno KV's key encoding, its order and its range helpers."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kvmodel.errors import DecodeError, InvalidKeyError
from kvmodel.keys import (
    MAX_INT_BYTES,
    Key,
    KeyPart,
    common_prefix,
    decode_key,
    encode_key,
    encode_key_part,
    key_successor,
    prefix_range,
)
from kvmodel.testing.strategies import corrupted

# Deterministic runs: the same examples every time, so a failure reproduces.
settings.register_profile("kvmodel-keys", derandomize=True, max_examples=300, deadline=None)
KEY_SETTINGS = settings.get_profile("kvmodel-keys")


def _hex(text: str) -> bytes:
    return bytes.fromhex(text)


# (key, encoding): DESIGN.md's vectors, then denokv's own test vectors
# (proto/codec.rs `explicit_bijection`, npm/src/kv_key_test.ts; JS numbers are
# Python floats, JS bigints Python ints).
VECTORS: list[tuple[Key, bytes]] = [
    (("a", 1, True), _hex("02 61 00 15 01 27")),
    ((1.0,), _hex("21 bf f0 00 00 00 00 00 00")),
    ((-1,), _hex("13 fe")),
    (("hello",), _hex("02 68 65 6c 6c 6f 00")),
    ((b"\x01\x02\x00\x07\x08",), _hex("01 01 02 00 ff 07 08 00")),
    (
        ("hello", b"\x01\x02\x00\x07\x08"),
        _hex("02 68 65 6c 6c 6f 00 01 01 02 00 ff 07 08 00"),
    ),
    (("foo",), bytes([2, 102, 111, 111, 0])),
    (("f\0o",), bytes([2, 102, 0, 0xFF, 111, 0])),
    ((0.0,), bytes([33, 128, 0, 0, 0, 0, 0, 0, 0])),
    ((123.456,), bytes([33, 192, 94, 221, 47, 26, 159, 190, 119])),
    ((-300.0,), bytes([33, 63, 141, 63, 255, 255, 255, 255, 255])),
    ((200.0,), bytes([33, 192, 105, 0, 0, 0, 0, 0, 0])),
    ((b"foo",), bytes([1, 102, 111, 111, 0])),
    ((b"\x04\x00\x04",), bytes([1, 4, 0, 255, 4, 0])),
    ((False,), bytes([38])),
    ((True,), bytes([39])),
    ((0,), bytes([20])),
    ((-200,), bytes([19, 55])),
    ((200,), bytes([21, 200])),
    ((600,), bytes([22, 2, 88])),
    ((70000,), bytes([23, 1, 17, 112])),
    ((305419896,), bytes([24, 18, 52, 86, 120])),
    ((78187493520,), bytes([25, 18, 52, 86, 120, 144])),
    ((0x112233445566,), bytes([26, 17, 34, 51, 68, 85, 102])),
    ((0x11223344556677,), bytes([27, 17, 34, 51, 68, 85, 102, 119])),
    ((0x1122334455667788,), bytes([28, 17, 34, 51, 68, 85, 102, 119, 136])),
    ((0x112233445566778899,), bytes([29, 9, 17, 34, 51, 68, 85, 102, 119, 136, 153])),
    (
        (0x1122334455667788990011223344556677889900,),
        bytes([29, 20]) + bytes.fromhex("1122334455667788990011223344556677889900"),
    ),
    (
        (-0x1122334455667788990011223344556677889900,),
        bytes([11, 235])
        + bytes(0xFF ^ b for b in bytes.fromhex("1122334455667788990011223344556677889900")),
    ),
    ((), b""),
]


@pytest.mark.parametrize(("key", "encoded"), VECTORS, ids=[repr(k)[:40] for k, _ in VECTORS])
def test_vectors_encode_and_decode_exactly(key: Key, encoded: bytes) -> None:
    """Each vector encodes to Deno's bytes and decodes back to the same key."""
    assert encode_key(key) == encoded
    assert _same_key(decode_key(encoded), key)


def test_lists_and_bytes_likes_encode_like_tuples_and_bytes() -> None:
    """A list key and bytearray/memoryview parts encode as the tuple/bytes they stand for."""
    expected = encode_key(("a", b"x\x00y"))
    assert encode_key(["a", bytearray(b"x\x00y")]) == expected
    assert encode_key(("a", memoryview(b"x\x00y"))) == expected
    assert decode_key(expected) == ("a", b"x\x00y")


def test_subclasses_encode_as_their_base_type() -> None:
    """An IntEnum or str subclass part encodes as the plain int or str."""
    import enum

    class Color(enum.IntEnum):
        RED = 7

    class Name(str):
        pass

    assert encode_key((Color.RED, Name("n"))) == encode_key((7, "n"))


def test_bool_is_not_encoded_as_int() -> None:
    """True and False get their own tags although bool subclasses int."""
    assert encode_key((True,)) == b"\x27"
    assert encode_key((False,)) == b"\x26"
    assert encode_key((1,)) == b"\x15\x01"
    assert decode_key(b"\x27\x15\x01") == (True, 1)
    assert type(decode_key(b"\x27")[0]) is bool


def test_unsupported_part_names_the_part_and_the_key() -> None:
    """A part of an unsupported type is an InvalidKeyError naming the part and the key."""
    with pytest.raises(InvalidKeyError) as info:
        encode_key(("a", 3.5j))  # type: ignore[arg-type]
    assert (
        str(info.value) == "Key part 3.5j in ('a', 3.5j) is not a bytes, str, int, float or bool."
    )
    assert isinstance(info.value, TypeError)
    with pytest.raises(InvalidKeyError, match=r"Key part None in \['x', None\]|\('x', None\)"):
        encode_key(["x", None])  # type: ignore[list-item]


@pytest.mark.parametrize("key", ["abc", b"abc", 5, None, {"a": 1}, iter(("a",))])
def test_non_sequence_keys_are_rejected(key: Any) -> None:
    """A str, bytes or non-sequence is not a key (a str is not a sequence of parts)."""
    with pytest.raises(InvalidKeyError, match="is not a tuple of key parts"):
        encode_key(key)


@pytest.mark.parametrize("depth", [20, 1500, 100_000])
def test_deeply_nested_parts_get_a_short_message(depth: int) -> None:
    """A part of nested lists, however deep, is an InvalidKeyError with a short message."""
    part: list[Any] = []
    for _ in range(depth):
        part = [part]
    with pytest.raises(InvalidKeyError) as info:
        encode_key(("a", part))  # type: ignore[arg-type]
    assert str(info.value).startswith("Key part [[[[")
    assert "[[[[[[[[[[[[[...]]]]]]]]]]]]]" in str(info.value)  # shown 12 levels deep
    assert len(str(info.value)) < 400
    deep_dict: dict[str, Any] = {}
    for _ in range(depth):
        deep_dict = {"k": deep_dict}
    with pytest.raises(InvalidKeyError, match="is not a tuple of key parts"):
        encode_key(deep_dict)  # type: ignore[arg-type]


def test_a_huge_str_part_is_shown_cut() -> None:
    """A lone surrogate in a 100,000-character part is reported with the part cut short."""
    with pytest.raises(InvalidKeyError, match="characters>") as info:
        encode_key(("x" * 100_000 + "\ud800",))
    assert len(str(info.value)) < 500


def test_lone_surrogate_is_an_invalid_key() -> None:
    """A str part that has no UTF-8 encoding is an InvalidKeyError, not a UnicodeError."""
    with pytest.raises(InvalidKeyError, match="lone surrogate"):
        encode_key(("a", "\ud800"))


def test_int_sizes_up_to_255_bytes_and_the_error_beyond() -> None:
    """Ints use the long form from 9 magnitude bytes up to 255, then are rejected."""
    biggest = (1 << (8 * MAX_INT_BYTES)) - 1
    encoded = encode_key((biggest,))
    assert encoded[:2] == bytes([0x1D, 255]) and len(encoded) == 2 + 255
    assert decode_key(encoded) == (biggest,)
    encoded_neg = encode_key((-biggest,))
    assert encoded_neg[:2] == bytes([0x0B, 0x00]) and set(encoded_neg[2:]) == {0}
    assert decode_key(encoded_neg) == (-biggest,)
    for n in (2**64 - 1, 2**64, -(2**64 - 1), -(2**64)):
        assert decode_key(encode_key((n,))) == (n,)
    assert encode_key((2**64 - 1,))[0] == 0x1C
    assert encode_key((2**64,))[:2] == bytes([0x1D, 9])
    assert encode_key((-(2**64),))[:2] == bytes([0x0B, 9 ^ 0xFF])
    for too_big in (biggest + 1, -biggest - 1, 10**5000):
        with pytest.raises(InvalidKeyError, match="at most 255 bytes"):
            encode_key(("a", too_big))


def test_negative_zero_and_zero_are_different_keys() -> None:
    """-0.0 and 0.0 encode differently, -0.0 first, and keep their sign through decoding."""
    neg, pos = encode_key((-0.0,)), encode_key((0.0,))
    assert neg == _hex("21 7f ff ff ff ff ff ff ff")
    assert pos == _hex("21 80 00 00 00 00 00 00 00")
    assert neg < pos
    assert math.copysign(1.0, decode_key(neg)[0]) == -1.0  # type: ignore[arg-type]
    assert math.copysign(1.0, decode_key(pos)[0]) == 1.0  # type: ignore[arg-type]


def test_nan_is_canonicalised_keeping_its_sign() -> None:
    """Every NaN encodes as denokv's canonical NaN of its sign, sorted outside the infinities."""
    payload_nan = struct.unpack(">d", bytes.fromhex("7ff8000000000001"))[0]
    other_nan = struct.unpack(">d", bytes.fromhex("7ff0000000000002"))[0]
    negative_nan = struct.unpack(">d", bytes.fromhex("fff4000000000000"))[0]
    canonical = _hex("21 ff f8 00 00 00 00 00 00")  # 0x7ff8... with the sign bit flipped
    assert encode_key((math.nan,)) == canonical
    assert encode_key((payload_nan,)) == canonical
    assert encode_key((other_nan,)) == canonical
    assert encode_key((negative_nan,)) == _hex("21 00 07 ff ff ff ff ff ff")
    assert encode_key((-math.nan,)) == encode_key((negative_nan,))
    assert encode_key((-math.nan,)) < encode_key((-math.inf,))
    assert encode_key((math.inf,)) < encode_key((math.nan,))
    assert math.isnan(decode_key(canonical)[0])  # type: ignore[arg-type]


def test_nul_is_escaped_in_str_and_bytes() -> None:
    """A NUL inside a str or bytes part is written 00 FF and read back as NUL."""
    assert encode_key(("\x00",)) == _hex("02 00 ff 00")
    assert encode_key((b"\x00\x00",)) == _hex("01 00 ff 00 ff 00")
    assert encode_key((b"\x00\xff",)) == _hex("01 00 ff ff 00")
    assert decode_key(_hex("01 00 ff ff 00 02 00 ff 00")) == (b"\x00\xff", "\x00")


def test_type_order() -> None:
    """bytes < str < int < float < False < True, whatever the values."""
    ordered: list[Key] = [
        (b"\xff",),
        ("",),
        (-(2**100),),
        (2**100,),
        (-math.inf,),
        (False,),
        (True,),
    ]
    assert sorted(ordered, key=encode_key) == ordered


def test_prefix_sorts_before_its_extensions() -> None:
    """A key sorts before every longer key it prefixes, and bytes before their extensions."""
    keys: list[Key] = [("a",), ("a", b""), ("a", "b"), ("a\x00",), ("a\x00b",), ("ab",)]
    assert sorted(keys, key=encode_key) == keys


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x00", "unknown tag 0x00"),
        (b"\x03", "unknown tag 0x03"),
        (b"\x20", "unknown tag 0x20"),
        (b"\x28", "unknown tag 0x28"),
        (b"\x02abc", "no terminating"),
        (b"\x01a\x00\xffb", "no terminating"),
        (b"\x02\xff\x00", "not valid UTF-8"),
        (b"\x02\xed\xa0\x80\x00", "not valid UTF-8"),  # an encoded surrogate
        (b"\x02\xc0\x80\x00", "not valid UTF-8"),  # an overlong NUL
        (b"\x16\x01", "truncated"),
        (b"\x12\xfe", "truncated"),
        (b"\x21\x80\x00", "truncated"),
        (b"\x1d", "truncated"),
        (b"\x1d\x09\x01", "truncated"),
        (b"\x0b\xf6\x01", "truncated"),
        (b"\x15\x00", "leading zero"),
        (b"\x16\x00\x01", "leading zero"),
        (b"\x13\xff", "leading zero"),
        (b"\x1d\x09" + b"\x00" + b"\x01" * 8, "leading zero"),
        (b"\x0b\xf6" + b"\xff" + b"\x01" * 8, "leading zero"),
        (b"\x1d\x08" + b"\x01" * 8, "long form"),
        (b"\x1d\x00", "long form"),
        (b"\x0b\xff", "long form"),
        (_hex("21 ff f8 00 00 00 00 00 01"), "non-canonical NaN"),
        (_hex("21 00 07 ff ff ff ff ff fe"), "non-canonical NaN"),
    ],
)
def test_malformed_keys_are_decode_errors(data: bytes, problem: str) -> None:
    """Each malformed or non-canonical encoding raises DecodeError saying what is wrong."""
    with pytest.raises(DecodeError, match=problem):
        decode_key(data)


def test_decode_rejects_non_bytes() -> None:
    """Decoding something that is not bytes-like is a DecodeError."""
    with pytest.raises(DecodeError, match="expected bytes"):
        decode_key("\x15\x01")  # type: ignore[arg-type]
    assert decode_key(bytearray(b"\x15\x01")) == (1,)
    assert decode_key(memoryview(b"\x15\x01")) == (1,)


def test_encode_key_part_matches_the_part_of_a_key() -> None:
    """encode_key is the concatenation of encode_key_part over the parts."""
    key: Key = ("a", 1, 2.5, b"\x00", False, -(2**70))
    assert encode_key(key) == b"".join(encode_key_part(p) for p in key)


def test_prefix_range_and_successor() -> None:
    """prefix_range spans the keys strictly under the prefix; key_successor follows a key."""
    start, end = prefix_range(("a",))
    assert (start, end) == (b"\x02a\x00\x00", b"\x02a\x00\xff")
    assert prefix_range(()) == (b"\x00", b"\xff")
    inside: list[Key] = [("a", b""), ("a", "z"), ("a", True), ("a", 1, 2)]
    outside: list[Key] = [("a",), ("b",), ("a\x00",), (b"a",), ("",)]
    for key in inside:
        assert start <= encode_key(key) < end
    for key in outside:
        assert not start <= encode_key(key) < end
    encoded = encode_key(("a", 1))
    assert key_successor(encoded) == encoded + b"\x00"
    assert encode_key(("a", 1)) < key_successor(encoded) < encode_key(("a", 1, b""))


def test_common_prefix() -> None:
    """common_prefix returns the longest shared leading bytes."""
    assert common_prefix(b"\x02a\x00\x02a\x00", b"\x02a\x00\x02e\x00") == b"\x02a\x00\x02"
    assert common_prefix(b"abc", b"abc") == b"abc"
    assert common_prefix(b"", b"abc") == b""


# ---------------------------------------------------------------------------
# Properties


def _float_rank(x: float) -> tuple[int, float, float]:
    # The encoding orders floats by IEEE 754 totalOrder over canonical NaNs:
    # negative NaN < -inf < ... < -0.0 < 0.0 < ... < inf < positive NaN. Python's
    # < says -0.0 == 0.0 and that NaN is unordered, so rank them explicitly: the
    # sign of a NaN puts it at one end, and the sign of a zero breaks the tie.
    sign = math.copysign(1.0, x)
    if math.isnan(x):
        return (int(sign), 0.0, 0.0)
    return (0, x, sign)


def python_order(key: Key) -> tuple[tuple[int, Any], ...]:
    """The key's sort key by Python values: type rank, then value."""
    ranked: list[tuple[int, Any]] = []
    for part in key:
        if isinstance(part, bool):  # before int: bool is an int subclass
            ranked.append((4 + part, 0))
        elif isinstance(part, bytes):
            ranked.append((0, part))
        elif isinstance(part, str):
            # Code point order equals UTF-8 byte order, so plain str comparison works.
            ranked.append((1, part))
        elif isinstance(part, int):
            ranked.append((2, part))
        else:
            ranked.append((3, _float_rank(part)))
    return tuple(ranked)


def _same_key(a: Key, b: Key) -> bool:
    """Equal part by part, with types, float signs and NaNs compared exactly."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if type(x) is not type(y):
            return False
        if isinstance(x, float):
            assert isinstance(y, float)
            if math.isnan(x) or math.isnan(y):
                if not (math.isnan(x) and math.isnan(y)):
                    return False
                if math.copysign(1.0, x) != math.copysign(1.0, y):
                    return False
            elif struct.pack(">d", x) != struct.pack(">d", y):
                return False
        elif x != y:
            return False
    return True


MAX_BIG = (1 << (8 * MAX_INT_BYTES)) - 1
key_parts: st.SearchStrategy[KeyPart] = st.one_of(
    st.binary(max_size=8),
    st.text(max_size=8),
    st.sampled_from(["", "\x00", "a\x00", "é", "\U0001f600", "\uffff"]),
    st.integers(),
    st.integers(min_value=-MAX_BIG, max_value=MAX_BIG),
    st.sampled_from(
        [0, 1, -1, 255, 256, -255, -256, 2**64 - 1, 2**64, -(2**64), MAX_BIG, -MAX_BIG]
    ),
    st.floats(),
    st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, -math.nan]),
    st.booleans(),
)
keys = st.lists(key_parts, max_size=4).map(tuple)


@KEY_SETTINGS
@given(st.lists(keys, min_size=2, max_size=8))
def test_sorting_by_encoding_equals_sorting_by_value(key_list: list[Key]) -> None:
    """Sorting keys by their encoding gives the order of their values (the codec's purpose)."""
    by_bytes = sorted(key_list, key=encode_key)
    by_value = sorted(key_list, key=python_order)
    assert [encode_key(k) for k in by_bytes] == [encode_key(k) for k in by_value]


@KEY_SETTINGS
@given(keys)
def test_decode_inverts_encode(key: Key) -> None:
    """decode_key(encode_key(k)) is k, part types and float signs included."""
    encoded = encode_key(key)
    decoded = decode_key(encoded)
    assert _same_key(decoded, key)
    assert encode_key(decoded) == encoded


# Bytes biased toward the ones the decoder treats specially (tags, NUL, escape),
# so that random input often reaches the checks behind them.
fuzz_byte = st.one_of(
    st.integers(0, 255),
    st.sampled_from([0x00, 0xFF, 0x01, 0x02, 0x0B, 0x0C, 0x13, 0x14, 0x15, 0x1C, 0x1D, 0x21]),
)
fuzz_bytes = st.one_of(
    st.lists(fuzz_byte, max_size=40).map(bytes),
    corrupted(keys.map(encode_key), fuzz_byte),
)


@settings(KEY_SETTINGS, max_examples=1500)
@given(fuzz_bytes)
@example(b"\x1d\xff" + b"\x01" * 255)
@example(b"\x0b\x00" + b"\xfe" * 255)
def test_decode_of_arbitrary_bytes_is_strict(data: bytes) -> None:
    """Arbitrary bytes either raise DecodeError or decode to a key that re-encodes to them."""
    try:
        decoded = decode_key(data)
    except DecodeError:
        return
    assert encode_key(decoded) == data
