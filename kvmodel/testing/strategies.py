"""Hypothesis strategies for Kv keys and values, and Deno KV's key order as a sort key.

``key_order`` is written from the rules of docs/reference/key-encoding.md,
not from the codec, so tests can check the codec's order against it::

    sorted(keys, key=key_order) == [e.key for e in kv.list(prefix=())]
"""

from __future__ import annotations

import math
from datetime import UTC, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "corrupted",
    "key_order",
    "key_parts",
    "keys",
    "kv_u64s",
    "scalar_values",
    "values",
]

# Deno's order between part types: bytes < str < int < float < False < True.
_BYTES, _STR, _INT, _FLOAT, _FALSE, _TRUE = range(6)


def key_part_order(part: Any) -> tuple[int, Any]:
    """A sort key for one key part that orders parts as their encodings do."""
    # bool before int: True is an int to Python but a different key type to Deno.
    if isinstance(part, bool):
        return (_TRUE if part else _FALSE, 0)
    if isinstance(part, bytes | bytearray | memoryview):
        # Bytes and str encodings escape 0x00 as 00 FF and end with 00, which
        # keeps the plain lexicographic order of the raw bytes.
        return (_BYTES, bytes(part))
    if isinstance(part, str):
        # UTF-8 byte order is code point order, which is Python's str order.
        return (_STR, part)
    if isinstance(part, int):
        return (_INT, part)
    if isinstance(part, float):
        if math.isnan(part):
            # The spec canonicalises NaN but does not say where it sorts.
            raise ValueError("NaN key parts have no place in the spec's key order.")
        # -0.0 sorts before 0.0: they are different keys with different encodings.
        return (_FLOAT, (part, math.copysign(1.0, part)))
    raise TypeError(f"Key part {part!r} is not a bytes, str, int, float or bool.")


def key_order(key: tuple[Any, ...] | list[Any]) -> tuple[tuple[int, Any], ...]:
    """A sort key that orders keys as Deno KV's encoding does (a prefix sorts first)."""
    return tuple(key_part_order(part) for part in key)


def key_parts(*, allow_nan: bool = False) -> st.SearchStrategy[Any]:
    """Any supported key part: bytes, str, int of any size, float, bool."""
    return st.one_of(
        st.binary(max_size=8),
        st.text(max_size=8),
        st.integers(),
        st.integers(min_value=-(2**80), max_value=2**80),
        st.floats(allow_nan=allow_nan),
        st.booleans(),
    )


def keys(
    *, min_size: int = 1, max_size: int = 4, allow_nan: bool = False
) -> st.SearchStrategy[Any]:
    """Keys as tuples of supported parts (non-empty by default, as writes need)."""
    return st.lists(key_parts(allow_nan=allow_nan), min_size=min_size, max_size=max_size).map(tuple)


def kv_u64s() -> st.SearchStrategy[Any]:
    """KvU64 values over the whole unsigned 64-bit range."""
    from kvmodel import KvU64

    return st.integers(min_value=0, max_value=2**64 - 1).map(KvU64)


_timezones = st.one_of(
    st.none(),
    st.just(UTC),
    st.integers(min_value=-23 * 60, max_value=23 * 60).map(
        lambda minutes: timezone(timedelta(minutes=minutes))
    ),
)


def scalar_values() -> st.SearchStrategy[Any]:
    """Values that are not containers; each reads back equal (NaN excluded)."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False),
        st.text(),
        st.binary(),
        st.datetimes(timezones=_timezones),
    )


def values(*, max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Values that round-trip: scalars, KvU64 and nested lists and str-keyed dicts.

    Tuples are left out because they read back as lists; test that separately.
    """
    return st.recursive(
        st.one_of(scalar_values(), kv_u64s()),
        lambda children: st.one_of(
            st.lists(children, max_size=5),
            st.dictionaries(st.text(max_size=8), children, max_size=5),
        ),
        max_leaves=max_leaves,
    )


def _corrupt(data: bytes, where: int, byte: int, action: int) -> bytes:
    """``data`` cut at, overwritten at, or with a byte inserted at ``where``."""
    if not data:
        return bytes([byte])
    where %= len(data)
    if action == 0:
        return data[:where]
    if action == 1:
        return data[:where] + bytes([byte]) + data[where + 1 :]
    return data[:where] + bytes([byte]) + data[where:]


def corrupted(
    valid: st.SearchStrategy[bytes], byte: st.SearchStrategy[int] | None = None
) -> st.SearchStrategy[bytes]:
    """Valid encodings with one flaw: truncated, one byte replaced, or one byte inserted.

    Fuzzing a decoder with near misses reaches its checks far more often than
    random bytes do. ``byte`` draws the byte written (any byte by default).
    """
    return st.builds(
        _corrupt,
        valid,
        st.integers(min_value=0),
        st.integers(0, 255) if byte is None else byte,
        st.integers(0, 2),
    )
