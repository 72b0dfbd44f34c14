"""Deno KV's order-preserving key encoding, byte for byte.

A key is a tuple of parts, each ``bytes``, ``str``, ``int``, ``float`` or ``bool``.
The encoding is the subset of the FoundationDB tuple layer that Deno KV uses
(denokv ``proto/codec.rs``), so encoded keys sort bytewise in the same order as
Deno sorts keys: bytes < str < int < float < False < True, and within a type
by value (floats by their IEEE total order, so -0.0 < 0.0).

======  =====================================================================
tag     part
======  =====================================================================
0x01    bytes: the bytes with each 0x00 written 0x00 0xFF, then 0x00
0x02    str: its UTF-8 bytes, escaped and terminated like bytes
0x0B    int < -(2**64 - 1): 0x0B, length ^ 0xFF, one's complement of magnitude
0x0C    int of 8..1 magnitude bytes, negative: 0x14 - n, one's complement
..0x13
0x14    the int 0
0x15    int of 1..8 magnitude bytes, positive: 0x14 + n, big-endian magnitude
..0x1C
0x1D    int > 2**64 - 1: 0x1D, length, big-endian magnitude (<= 255 bytes)
0x21    float: 8 bytes big-endian; positives get the sign bit flipped,
        negatives every bit; NaN is canonicalised (keeping its sign)
0x26    False
0x27    True
======  =====================================================================

>>> encode_key(("a", 1, True)).hex(" ")
'02 61 00 15 01 27'
>>> encode_key((1.0,)).hex(" ")
'21 bf f0 00 00 00 00 00 00'
>>> decode_key(bytes.fromhex("13fe"))
(-1,)

The range helpers at the end turn prefixes and selectors into byte ranges; the
rules are those of ``docs/reference/key-encoding.md``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, TypeAlias

from kvmodel._accel import speedups
from kvmodel._text import brief_repr, brief_value
from kvmodel.errors import DecodeError, InvalidKeyError

__all__ = [
    "KeyPart",
    "Key",
    "KeyPartLike",
    "BYTES_CODE",
    "STRING_CODE",
    "NEG_INT_START_CODE",
    "INT_ZERO_CODE",
    "POS_INT_END_CODE",
    "DOUBLE_CODE",
    "FALSE_CODE",
    "TRUE_CODE",
    "MAX_INT_BYTES",
    "encode_key",
    "decode_key",
    "encode_key_part",
    "prefix_range",
    "key_successor",
    "common_prefix",
]

KeyPart: TypeAlias = bytes | str | int | float | bool
"""One element of a key."""
Key: TypeAlias = tuple[KeyPart, ...]
"""A key as reads return it: a tuple of parts."""
KeyPartLike: TypeAlias = KeyPart | bytearray | memoryview
"""What a key part may be on input: bytes-likes are taken as ``bytes``."""

BYTES_CODE = 0x01
STRING_CODE = 0x02
NEG_INT_START_CODE = 0x0B
INT_ZERO_CODE = 0x14
POS_INT_END_CODE = 0x1D
DOUBLE_CODE = 0x21
FALSE_CODE = 0x26
TRUE_CODE = 0x27
ESCAPE = 0xFF

MAX_INT_BYTES = 255
"""Most magnitude bytes an int part may have (the length byte's range, as in denokv)."""

# denokv canonicalize_f64: every NaN becomes one of two patterns, keeping its sign.
_CANONICAL_NAN_POS = 0x7FF8000000000000
_CANONICAL_NAN_NEG = 0xFFF8000000000000
_SIGN_BIT = 1 << 63
_ALL_BITS = (1 << 64) - 1
# The canonical NaNs as they appear in an encoded key, for the decoder's check.
_ENCODED_NAN_POS = _CANONICAL_NAN_POS ^ _SIGN_BIT
_ENCODED_NAN_NEG = _CANONICAL_NAN_NEG ^ _ALL_BITS

_F64 = struct.Struct(">d")
_U64 = struct.Struct(">Q")
_TAGGED_U64 = struct.Struct(">BQ")

_NUL = b"\x00"
_ESCAPED_NUL = b"\x00\xff"
_STR_TAG = b"\x02"
_BYTES_TAG = b"\x01"
_FALSE = b"\x26"
_TRUE = b"\x27"
_ZERO = b"\x14"
# Tag bytes of ints with 1..8 magnitude bytes, indexed by the byte count.
_POS_TAGS = tuple(bytes((INT_ZERO_CODE + n,)) for n in range(9))
_NEG_TAGS = tuple(bytes((INT_ZERO_CODE - n,)) for n in range(9))
# Small non-negative ints are the most common int parts (ids, counters, years):
# their encodings are precomputed so the hot path is one tuple index.
_SMALL_INT_LIMIT = 1024
_SMALL_INTS = tuple(
    _ZERO
    if n == 0
    else _POS_TAGS[(n.bit_length() + 7) >> 3] + n.to_bytes((n.bit_length() + 7) >> 3)
    for n in range(_SMALL_INT_LIMIT)
)


# ---------------------------------------------------------------------------
# Encoding


def _describe_key(key: object) -> str:
    """The key as an error message shows it (a list is shown as the tuple it stands for)."""
    return brief_repr(key)


def _bad_part(part: object, key: object) -> InvalidKeyError:
    return InvalidKeyError(
        f"Key part {brief_value(part)} in {_describe_key(key)} is not a bytes, str, int, "
        "float or bool."
    )


def _encode_int(n: int, key: object) -> bytes:
    """Encodes an int part other than the precomputed small ones."""
    if n > 0:
        size = (n.bit_length() + 7) >> 3
        if size <= 8:
            return _POS_TAGS[size] + n.to_bytes(size, "big")
        if size > MAX_INT_BYTES:
            raise _int_too_big(n, key)
        return bytes((POS_INT_END_CODE, size)) + n.to_bytes(size, "big")
    if n == 0:
        return _ZERO
    magnitude = -n
    size = (magnitude.bit_length() + 7) >> 3
    # One's complement of the magnitude over `size` bytes, so that a larger
    # magnitude sorts lower.
    complement = ((1 << (size << 3)) - 1) ^ magnitude
    if size <= 8:
        return _NEG_TAGS[size] + complement.to_bytes(size, "big")
    if size > MAX_INT_BYTES:
        raise _int_too_big(n, key)
    return bytes((NEG_INT_START_CODE, size ^ 0xFF)) + complement.to_bytes(size, "big")


def _int_too_big(n: int, key: object) -> InvalidKeyError:
    # Name the int by its size, not its digits: it has over 600 of them.
    return InvalidKeyError(
        f"Key part int of {n.bit_length()} bits in a key of {len(key)} parts is too "  # type: ignore[arg-type]
        f"large: an int key part has at most {MAX_INT_BYTES} bytes of magnitude "
        f"(its absolute value is below 2**{MAX_INT_BYTES * 8})."
    )


def _encode_float(x: float) -> bytes:
    bits = _U64.unpack(_F64.pack(x))[0]
    if x != x:  # NaN: denokv canonicalises the payload, keeping the sign.
        bits = _CANONICAL_NAN_NEG if bits & _SIGN_BIT else _CANONICAL_NAN_POS
    # Flipping the sign bit of positives and every bit of negatives makes the
    # unsigned big-endian order equal the numeric order.
    bits ^= _ALL_BITS if bits & _SIGN_BIT else _SIGN_BIT
    return _TAGGED_U64.pack(DOUBLE_CODE, bits)


def _encode_str(s: str, key: object) -> bytes:
    try:
        data = s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidKeyError(
            f"Key part {brief_value(s)} in {_describe_key(key)} is not valid Unicode "
            "(it holds a lone surrogate), so it has no UTF-8 encoding."
        ) from exc
    if _NUL in data:
        data = data.replace(_NUL, _ESCAPED_NUL)
    return _STR_TAG + data + _NUL


def _encode_slow_part(part: object, key: object) -> bytes:
    """Encodes a part that is not of an exact built-in type (subclasses, bytes-likes)."""
    # bool before int: bool is a subclass of int.
    if isinstance(part, bool):
        return _TRUE if part else _FALSE
    if isinstance(part, str):
        return _encode_str(part, key)
    if isinstance(part, int):
        return _encode_int(int(part), key)
    if isinstance(part, float):
        return _encode_float(float(part))
    if isinstance(part, bytes | bytearray | memoryview):
        data = bytes(part)
        if _NUL in data:
            data = data.replace(_NUL, _ESCAPED_NUL)
        return _BYTES_TAG + data + _NUL
    raise _bad_part(part, key)


def encode_key_part(part: KeyPartLike) -> bytes:
    """Encodes one key part; ``encode_key(k)`` is the concatenation of its parts' encodings.

    Raises:
        InvalidKeyError: the part is not bytes, str, int, float or bool, or it
            cannot be encoded (a str with a lone surrogate, an int of more than
            255 magnitude bytes).
    """
    return encode_key((part,))


def encode_key(key: Sequence[KeyPartLike]) -> bytes:
    """Encodes a key (a tuple or list of parts) into Deno KV's ordered bytes.

    Bytes-like parts (``bytearray``, ``memoryview``) encode as ``bytes``. The
    empty key encodes to ``b""``; rejecting it for writes is the Kv's business.

    >>> encode_key(("users", 42)).hex(" ")
    '02 75 73 65 72 73 00 15 2a'

    Raises:
        InvalidKeyError: ``key`` is not a tuple or list, or one of its parts is
            not bytes, str, int, float or bool, or cannot be encoded.
    """
    if type(key) is not tuple and (
        not isinstance(key, Sequence) or isinstance(key, str | bytes | bytearray | memoryview)
    ):
        raise InvalidKeyError(
            f"Key {brief_repr(key)} is not a tuple of key parts; write a key as a tuple, "
            f"for example ({brief_repr(key)},)."
        )
    parts: Sequence[Any] = key  # checked by exact type below, which mypy cannot follow
    out = b""
    # The common exact types come first and inline; everything else (bool,
    # subclasses, bytes-likes, errors) goes through _encode_slow_part.
    for part in parts:
        t = type(part)
        if t is str:
            try:
                data = part.encode("utf-8")
            except UnicodeEncodeError:
                out += _encode_str(part, key)  # raises InvalidKeyError
                continue
            if _NUL in data:
                data = data.replace(_NUL, _ESCAPED_NUL)
            out += _STR_TAG + data + _NUL
        elif t is int:
            if 0 <= part < _SMALL_INT_LIMIT:
                out += _SMALL_INTS[part]
            else:
                out += _encode_int(part, key)
        elif t is bytes:
            if _NUL in part:
                part = part.replace(_NUL, _ESCAPED_NUL)
            out += _BYTES_TAG + part + _NUL
        elif t is float:
            out += _encode_float(part)
        elif part is True:
            out += _TRUE
        elif part is False:
            out += _FALSE
        else:
            out += _encode_slow_part(part, key)
    return out


# ---------------------------------------------------------------------------
# Decoding


def _decode_error(data: bytes, pos: int, what: str) -> DecodeError:
    return DecodeError(f"Bytes {brief_value(data)} are not a valid key: {what} at offset {pos}.")


def _read_escaped(data: bytes, pos: int) -> tuple[bytes, int]:
    """Reads an escaped, NUL-terminated byte string starting at ``pos``.

    Returns the unescaped bytes and the offset just after the terminator.
    """
    end = data.find(_NUL, pos)
    if end < 0:
        raise _decode_error(data, pos - 1, "a bytes or str part has no terminating 0x00")
    if data[end + 1 : end + 2] != b"\xff":
        return data[pos:end], end + 1
    # Slow path: the part holds escaped NULs (0x00 0xFF); gather the pieces.
    pieces = []
    while True:
        pieces.append(data[pos:end])
        pos = end + 2
        end = data.find(_NUL, pos)
        if end < 0:
            raise _decode_error(data, pos, "a bytes or str part has no terminating 0x00")
        if data[end + 1 : end + 2] != b"\xff":
            pieces.append(data[pos:end])
            return _NUL.join(pieces), end + 1


def decode_key(data: bytes | bytearray | memoryview) -> Key:
    """Decodes bytes made by :func:`encode_key` back into a tuple of parts.

    The decoder is strict: it accepts exactly the canonical encodings, so
    ``encode_key(decode_key(b)) == b`` whenever it returns.

    >>> decode_key(bytes.fromhex("02 61 00 15 01 27"))
    ('a', 1, True)

    Raises:
        DecodeError: ``data`` is not a canonical key encoding (unknown tag, a
            missing terminator, a truncated number, invalid UTF-8, an int with
            leading zero bytes or in the long form when the short one fits, a
            non-canonical NaN).
    """
    if type(data) is not bytes:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(f"Cannot decode a key from {type(data).__name__!r}; expected bytes.")
        data = bytes(data)
    parts: list[KeyPart] = []
    append = parts.append
    pos = 0
    size = len(data)
    while pos < size:
        tag = data[pos]
        pos += 1
        if tag == STRING_CODE:
            # Inline fast path: no escaped NUL before the terminator.
            end = data.find(_NUL, pos)
            if end >= 0 and (end + 1 == size or data[end + 1] != ESCAPE):
                raw = data[pos:end]
                next_pos = end + 1
            else:
                raw, next_pos = _read_escaped(data, pos)
            try:
                append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise _decode_error(data, pos - 1, "a str part is not valid UTF-8") from None
            pos = next_pos
        elif INT_ZERO_CODE < tag <= INT_ZERO_CODE + 8:
            n = tag - INT_ZERO_CODE
            end = pos + n
            if end > size:
                raise _decode_error(data, pos - 1, "an int part is truncated")
            if data[pos] == 0:
                raise _decode_error(data, pos - 1, "an int part has a leading zero byte")
            append(int.from_bytes(data[pos:end], "big"))
            pos = end
        elif tag == INT_ZERO_CODE:
            append(0)
        elif INT_ZERO_CODE - 8 <= tag < INT_ZERO_CODE:
            n = INT_ZERO_CODE - tag
            end = pos + n
            if end > size:
                raise _decode_error(data, pos - 1, "an int part is truncated")
            if data[pos] == 0xFF:
                raise _decode_error(data, pos - 1, "an int part has a leading zero byte")
            complement = int.from_bytes(data[pos:end], "big")
            append(-(((1 << (n << 3)) - 1) ^ complement))
            pos = end
        elif tag == BYTES_CODE:
            raw, pos = _read_escaped(data, pos)
            append(raw)
        elif tag == DOUBLE_CODE:
            end = pos + 8
            if end > size:
                raise _decode_error(data, pos - 1, "a float part is truncated")
            bits = _U64.unpack_from(data, pos)[0]
            bits ^= _SIGN_BIT if bits & _SIGN_BIT else _ALL_BITS
            value = _F64.unpack(_U64.pack(bits))[0]
            if value != value and bits not in (_CANONICAL_NAN_POS, _CANONICAL_NAN_NEG):
                raise _decode_error(data, pos - 1, "a float part is a non-canonical NaN")
            append(value)
            pos = end
        elif tag == TRUE_CODE:
            append(True)
        elif tag == FALSE_CODE:
            append(False)
        elif tag in (POS_INT_END_CODE, NEG_INT_START_CODE):
            pos = _decode_long_int(data, pos, tag, append)
        else:
            raise _decode_error(data, pos - 1, f"unknown tag 0x{tag:02x}")
    return tuple(parts)


def _decode_long_int(data: bytes, pos: int, tag: int, append: object) -> int:
    """Decodes an int of more than 8 magnitude bytes; returns the next offset."""
    if pos >= len(data):
        raise _decode_error(data, pos - 1, "an int part is truncated")
    negative = tag == NEG_INT_START_CODE
    n = data[pos] ^ 0xFF if negative else data[pos]
    start = pos + 1
    end = start + n
    if end > len(data):
        raise _decode_error(data, pos - 1, "an int part is truncated")
    if n <= 8:
        raise _decode_error(data, pos - 1, "an int part uses the long form for a short int")
    if data[start] == (0xFF if negative else 0):
        raise _decode_error(data, pos - 1, "an int part has a leading zero byte")
    value = int.from_bytes(data[start:end], "big")
    if negative:
        value = -(((1 << (n << 3)) - 1) ^ value)
    append(value)  # type: ignore[operator]
    return end


# The pure-Python codec above is the reference. With the compiled accelerator
# the public names are its twins, which answer the common well-formed keys in C
# and pass everything else (and every error) to these references.
encode_key_py = encode_key
decode_key_py = decode_key
if speedups is not None:
    speedups.install_key_codec(encode_key=encode_key_py, decode_key=decode_key_py)
    speedups.encode_key.__doc__ = encode_key_py.__doc__
    speedups.decode_key.__doc__ = decode_key_py.__doc__
    encode_key = speedups.encode_key  # same signature, compiled
    decode_key = speedups.decode_key


# ---------------------------------------------------------------------------
# Ranges


def prefix_range(prefix: Sequence[KeyPartLike]) -> tuple[bytes, bytes]:
    """The byte range ``[enc(P) + 00, enc(P) + FF)`` of the keys strictly under ``prefix``.

    The prefix key itself is not in the range (as in Deno); ``prefix=()``
    gives ``(b"\\x00", b"\\xff")``, every key. Every encoded part starts with a
    tag in 0x01..0x27, so ``enc(P) + 00`` is below and ``enc(P) + FF`` above
    every longer key that starts with P.

    >>> prefix_range(("a",))
    (b'\\x02a\\x00\\x00', b'\\x02a\\x00\\xff')
    """
    encoded = encode_key(prefix)
    return encoded + b"\x00", encoded + b"\xff"


def key_successor(encoded: bytes) -> bytes:
    """The smallest byte string greater than ``encoded`` (``encoded + 00``).

    ``[enc(k), key_successor(enc(k)))`` is the range holding exactly the key k.
    """
    return encoded + b"\x00"


def common_prefix(a: bytes, b: bytes) -> bytes:
    """The longest common byte prefix of two encoded keys (Deno's cursor base for start+end)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return a[:i]
