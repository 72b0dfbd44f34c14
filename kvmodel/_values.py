"""The value codec: Python values to ``(bytes, encoding)`` records and back.

Three encodings, numbered as Deno's (see ``kvmodel.engines.base``):

* ``VALUE_ENCODING_BYTES`` (3): a top-level ``bytes``, ``bytearray`` or
  ``memoryview``, stored raw.
* ``VALUE_ENCODING_LE64`` (2): a top-level :class:`KvU64`, stored as 8 bytes
  little-endian (what ``sum``/``min``/``max`` operate on).
* ``VALUE_ENCODING_MSGPACK`` (1): everything else, as msgpack where Deno stores
  V8 serialisation.

Inside msgpack, the types msgpack lacks are extension types:

======  ===========  ========================================================
code    type         payload
======  ===========  ========================================================
1       int          an int outside msgpack's range [-2**63, 2**64):
                     big-endian two's complement in the fewest bytes
2       KvU64        8 bytes little-endian
3       datetime     ``>HBBBBBIBB`` year, month, day, hour, minute, second,
                     microsecond, fold, tz kind; then by tz kind:
                     0 naive (nothing), 1 ``datetime.timezone`` without a
                     name (``>q`` offset in microseconds), 2 a named
                     ``datetime.timezone`` (``>q`` offset, then the UTF-8
                     name), 3 ``zoneinfo.ZoneInfo`` (its UTF-8 key).
                     The fields are local (wall-clock) time.
-1      datetime     msgpack's standard timestamp: an aware datetime whose
                     tzinfo is ``datetime.timezone.utc`` (fold 0) is written
                     so, and reads back as one (msgpack decodes it in C)
======  ===========  ========================================================

Decoding never runs code or builds arbitrary types: only msgpack's own types
(None, bool, int, float, str, bytes, list, dict) and the extension types above
come out, every length is bounded by the value size limit, and trailing bytes,
unknown extension codes and non-canonical forms are errors.
"""

from __future__ import annotations

import re
import struct
import threading
import zoneinfo
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any, Final, NoReturn

import msgpack

from kvmodel.engines.base import (
    VALUE_ENCODING_BYTES,
    VALUE_ENCODING_LE64,
    VALUE_ENCODING_MSGPACK,
)
from kvmodel.errors import DecodeError, EncodeError
from kvmodel.limits import MAX_VALUE_SIZE

__all__ = [
    "EXT_BIGINT",
    "EXT_KVU64",
    "EXT_DATETIME",
    "KvU64",
    "encode_value",
    "decode_value",
]

EXT_BIGINT: Final = 1
"""msgpack extension code of an int outside [-2**63, 2**64)."""
EXT_KVU64: Final = 2
"""msgpack extension code of a nested KvU64."""
EXT_DATETIME: Final = 3
"""msgpack extension code of a datetime."""

_U64_LIMIT = 1 << 64
_MSGPACK_INT_MIN = -(1 << 63)
_LE64 = struct.Struct("<Q")

# ---------------------------------------------------------------------------
# KvU64


class KvU64:
    """An unsigned 64-bit integer, the operand and result of ``sum``, ``min`` and ``max``.

    >>> KvU64(5)
    KvU64(5)
    >>> int(KvU64(5)) + 1
    6
    >>> KvU64(5) == KvU64(5), KvU64(5) == 5
    (True, False)

    Raises:
        TypeError: ``value`` is not an int (a bool is not accepted either).
        ValueError: ``value`` is not in ``0 <= value < 2**64``.
    """

    __slots__ = ("_value",)
    _value: int

    def __init__(self, value: int) -> None:
        if type(value) is not int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"KvU64 takes an int, not {type(value).__name__} {value!r}.")
            value = int(value)
        if not 0 <= value < _U64_LIMIT:
            raise ValueError(
                f"KvU64 value {value!r} is out of range; it must be in 0 <= n < 2**64."
            )
        object.__setattr__(self, "_value", value)

    @property
    def value(self) -> int:
        """The integer, ``0 <= value < 2**64``."""
        return self._value

    def __int__(self) -> int:
        return self._value

    def __eq__(self, other: object) -> bool:
        if type(other) is KvU64:
            return self._value == other._value
        return NotImplemented

    def __hash__(self) -> int:
        return hash((KvU64, self._value))

    def __repr__(self) -> str:
        return f"KvU64({self._value})"

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"KvU64 is immutable; cannot set {name!r}.")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"KvU64 is immutable; cannot delete {name!r}.")

    def __reduce__(self) -> tuple[type[KvU64], tuple[int]]:
        return (KvU64, (self._value,))


KvU64.__module__ = "kvmodel"


# ---------------------------------------------------------------------------
# Datetime extension payloads

_DT_HEADER = struct.Struct(">HBBBBBIBB")
_I64 = struct.Struct(">q")
_TZ_NAIVE = 0
_TZ_OFFSET = 1
_TZ_NAMED_OFFSET = 2
_TZ_ZONEINFO = 3
# Zone keys as the IANA database spells them; anything else is refused before
# zoneinfo goes looking on disk for it.
_ZONE_KEY = re.compile(r"[A-Za-z0-9_+\-]{1,64}(?:/[A-Za-z0-9_+\-]{1,64}){0,3}")


class _Unsupported(Exception):
    """Raised inside the packer's ``default`` hook; turned into an EncodeError with a path."""


def _pack_datetime(dt: datetime) -> bytes:
    header = _DT_HEADER.pack(
        dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second, dt.microsecond, dt.fold, 0
    )[:-1]
    tz = dt.tzinfo
    if tz is None:
        return header + b"\x00"
    if type(tz) is timezone:
        offset = tz.utcoffset(None)
        micros = offset // timedelta(microseconds=1)
        name = tz.tzname(None)
        if name == timezone(offset).tzname(None):
            return header + b"\x01" + _I64.pack(micros)
        try:
            return header + b"\x02" + _I64.pack(micros) + name.encode("utf-8")
        except UnicodeEncodeError:
            raise _Unsupported(dt) from None
    if type(tz) is zoneinfo.ZoneInfo and tz.key is not None and _ZONE_KEY.fullmatch(tz.key):
        return header + b"\x03" + tz.key.encode("ascii")
    raise _Unsupported(dt)


def _unpack_datetime(payload: bytes) -> datetime:
    if len(payload) < _DT_HEADER.size:
        raise DecodeError(f"A datetime extension of {len(payload)} bytes is truncated.")
    year, month, day, hour, minute, second, micro, fold, kind = _DT_HEADER.unpack_from(payload)
    rest = payload[_DT_HEADER.size :]
    tz: tzinfo | None
    if kind == _TZ_NAIVE and not rest:
        tz = None
    elif kind in (_TZ_OFFSET, _TZ_NAMED_OFFSET) and len(rest) >= 8:
        offset = timedelta(microseconds=_I64.unpack_from(rest)[0])
        if kind == _TZ_OFFSET:
            if len(rest) != 8:
                raise DecodeError("A datetime extension has trailing bytes.")
            tz = timezone(offset)
        else:
            tz = timezone(offset, rest[8:].decode("utf-8"))
    elif kind == _TZ_ZONEINFO:
        key = rest.decode("ascii")
        if not _ZONE_KEY.fullmatch(key):
            raise DecodeError(f"A datetime extension names an invalid time zone {key!r}.")
        tz = zoneinfo.ZoneInfo(key)
    else:
        raise DecodeError(f"A datetime extension has an unknown time zone kind {kind}.")
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz, fold=fold)


# ---------------------------------------------------------------------------
# msgpack hooks


def _default(obj: object) -> msgpack.ExtType:
    """Packs the types msgpack lacks as extension types; called by the packer."""
    if type(obj) is KvU64:
        return msgpack.ExtType(EXT_KVU64, _LE64.pack(obj._value))
    if isinstance(obj, int) and not isinstance(obj, bool):
        n = int(obj)  # an int msgpack could not hold: outside [-2**63, 2**64)
        size = ((n if n >= 0 else ~n).bit_length() + 8) >> 3
        return msgpack.ExtType(EXT_BIGINT, n.to_bytes(size, "big", signed=True))
    if isinstance(obj, datetime):
        if obj.tzinfo is UTC and not obj.fold:
            # msgpack's own timestamp decodes in C straight to a UTC datetime:
            # the common case (km.utcnow()) reads several times faster.
            return msgpack.Timestamp.from_datetime(obj)
        return msgpack.ExtType(EXT_DATETIME, _pack_datetime(obj))
    raise _Unsupported(obj)


def _ext_hook(code: int, payload: bytes) -> object:
    """Unpacks the whitelisted extension types; anything else is a DecodeError."""
    if code == EXT_KVU64:
        if len(payload) != 8:
            raise DecodeError(f"A KvU64 extension has {len(payload)} bytes instead of 8.")
        return KvU64(_LE64.unpack(payload)[0])
    if code == EXT_DATETIME:
        return _unpack_datetime(payload)
    if code == EXT_BIGINT:
        n = int.from_bytes(payload, "big", signed=True)
        size = ((n if n >= 0 else ~n).bit_length() + 8) >> 3
        if _MSGPACK_INT_MIN <= n < _U64_LIMIT or len(payload) != size:
            raise DecodeError("A big int extension is not in its canonical form.")
        return n
    raise DecodeError(f"Unknown msgpack extension type {code}.")


_local = threading.local()


def _packer() -> Any:
    # A Packer keeps an internal buffer, so each thread gets its own: a
    # `default` call can let another thread run in the middle of a pack.
    packer = msgpack.Packer(default=_default, use_bin_type=True, datetime=False)
    _local.packer = packer
    return packer


def _tuple_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """object_pairs_hook for maps whose keys were tuples (they unpack as lists)."""
    return {_freeze(k): v for k, v in pairs}


def _freeze(obj: Any) -> Any:
    if type(obj) is list:
        return tuple(_freeze(item) for item in obj)
    return obj


# The decoder's settings: extension types whitelisted by _ext_hook. Lengths need
# no options: msgpack's unpackb bounds every str, bin, array, map and ext by the
# length of its input (the tightest bound there is), and each option passed
# costs a parse on every call of this hot path.
_UNPACK_OPTIONS: dict[str, Any] = {
    "raw": False,
    "use_list": True,
    "strict_map_key": False,
    "ext_hook": _ext_hook,
    "timestamp": 3,
}


def _unpack(data: bytes | bytearray | memoryview) -> object:
    try:
        return msgpack.unpackb(data, **_UNPACK_OPTIONS)
    except DecodeError:
        raise
    except TypeError:
        pass  # an unhashable map key: a tuple key written as an array; see below
    except Exception as exc:  # msgpack's errors, bad UTF-8, bad datetimes...
        raise DecodeError(f"Stored bytes are not a valid msgpack value: {exc}.") from exc
    # Slow path, only for maps with tuple keys: rebuild every map from its pairs,
    # turning array keys back into tuples.
    try:
        return msgpack.unpackb(data, object_pairs_hook=_tuple_keys, **_UNPACK_OPTIONS)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"Stored bytes are not a valid msgpack value: {exc}.") from exc


# ---------------------------------------------------------------------------
# Public entry points

_SUPPORTED = "None, bool, int, float, str, bytes, list, tuple, dict, datetime and KvU64"
# A value deeper than this cannot come back: msgpack's unpacker holds at most
# 1024 open containers. Only values of more bytes than that can be that deep.
_MAX_DEPTH = 1024


def encode_value(value: object) -> tuple[bytes, int]:
    """Encodes a value into ``(data, encoding)`` for an engine record.

    >>> encode_value(b"raw")
    (b'raw', 3)
    >>> encode_value(KvU64(1))
    (b'\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00', 2)
    >>> encode_value({"a": [1, None]})
    (b'\\x81\\xa1a\\x92\\x01\\xc0', 1)

    Raises:
        EncodeError: the value holds something other than None, bool, int,
            float, str, bytes, list, tuple, dict, datetime (naive, with a
            ``datetime.timezone`` or a ``zoneinfo.ZoneInfo``) and KvU64, or is
            nested too deeply. The message names the type and where it sits.
    """
    t = type(value)
    if t is bytes:
        return value, VALUE_ENCODING_BYTES  # type: ignore[return-value]
    if t is KvU64:
        return _LE64.pack(value._value), VALUE_ENCODING_LE64  # type: ignore[attr-defined]
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), VALUE_ENCODING_BYTES
    try:
        packer = _local.packer
    except AttributeError:
        packer = _packer()
    try:
        data: bytes = packer.pack(value)
    except (_Unsupported, ValueError, TypeError, OverflowError, BufferError) as exc:
        # Only now walk the value in Python, to say what failed and where.
        raise _encode_error(value, exc) from (None if isinstance(exc, _Unsupported) else exc)
    if len(data) > _MAX_DEPTH:
        # msgpack's packer accepts one level more than its unpacker; only a value
        # this long can be that deep, so only such values are checked by decoding.
        try:
            _unpack(data)
        except DecodeError as exc:
            if isinstance(exc.__cause__, msgpack.StackError):
                raise _too_deep(value) from None
            raise EncodeError(
                f"Cannot encode the {_type_name(value)}: it would not decode back ({exc})"
            ) from exc
    return data, VALUE_ENCODING_MSGPACK


def decode_value(data: bytes, encoding: int) -> object:
    """Decodes ``(data, encoding)`` from an engine record back into a value.

    >>> decode_value(b"\\x81\\xa1a\\x92\\x01\\xc0", 1)
    {'a': [1, None]}

    Raises:
        DecodeError: the bytes are not a valid value of that encoding, or the
            encoding is unknown.
    """
    if encoding == VALUE_ENCODING_MSGPACK:
        if len(data) > MAX_VALUE_SIZE:
            # Writes are refused past this size, so no stored value is longer;
            # the check also bounds every length inside (see _UNPACK_OPTIONS).
            raise DecodeError(
                f"Stored bytes are {len(data)} long, more than any value can be "
                f"({MAX_VALUE_SIZE} bytes encoded)."
            )
        return _unpack(data)
    if encoding == VALUE_ENCODING_BYTES:
        return bytes(data)
    if encoding == VALUE_ENCODING_LE64:
        if len(data) != 8:
            raise DecodeError(f"A KvU64 value has {len(data)} bytes instead of 8.")
        return KvU64(_LE64.unpack(data)[0])
    raise DecodeError(f"Unknown value encoding {encoding!r}.")


# ---------------------------------------------------------------------------
# Error reporting (the slow path, after the packer failed)


def _type_name(obj: object) -> str:
    cls = type(obj)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _too_deep(value: object) -> EncodeError:
    return EncodeError(
        f"Cannot encode the {_type_name(value)}: it is nested too deeply (more than "
        f"{_MAX_DEPTH} levels of lists, tuples and dicts, or it contains itself)."
    )


def _encode_error(value: object, exc: BaseException) -> EncodeError:
    """Finds what in ``value`` the packer could not encode and says where it is."""
    found = _find_unsupported(value)
    if found is not None:
        return EncodeError(found)
    if "recursion" in str(exc) or "nest" in str(exc):
        return _too_deep(value)
    return EncodeError(f"Cannot encode the {_type_name(value)}: {exc}.")


def _find_unsupported(value: object) -> str | None:
    """A message about the first unsupported thing in ``value``, or None if all is fine.

    The walk is iterative (a value may be deeper than Python's recursion limit)
    and stops descending at the depth limit, which the caller reports.
    """
    stack: list[tuple[object, str, int]] = [(value, "value", 0)]
    while stack:
        obj, path, depth = stack.pop()
        if obj is None or isinstance(obj, bool | int | float | bytes | bytearray | memoryview):
            continue
        if isinstance(obj, KvU64):
            continue
        if isinstance(obj, str):
            try:
                obj.encode("utf-8")
            except UnicodeEncodeError:
                return (
                    f"Cannot encode the str {_short_repr(obj)} at {path}: "
                    "it holds a lone surrogate."
                )
            continue
        if isinstance(obj, datetime):
            try:
                _pack_datetime(obj)
            except _Unsupported:
                return (
                    f"Cannot encode the datetime {obj!r} at {path}: its tzinfo {obj.tzinfo!r} "
                    "is not a datetime.timezone or a zoneinfo.ZoneInfo loaded by key."
                )
            continue
        if depth >= _MAX_DEPTH:
            continue
        children: list[tuple[object, str, int]] = []
        if isinstance(obj, list | tuple):
            children = [(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(obj)]
        elif isinstance(obj, dict):
            for key, item in obj.items():
                children.append((key, f"a key of {path}", depth + 1))
                children.append((item, f"{path}[{_short_repr(key)}]", depth + 1))
        else:
            return (
                f"Cannot encode {path}: type {_type_name(obj)!r} is not supported; "
                f"supported types are {_SUPPORTED}."
            )
        stack.extend(reversed(children))
    return None


def _short_repr(obj: object) -> str:
    try:
        text = repr(obj)
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        text = f"<int of {obj.bit_length()} bits>" if isinstance(obj, int) else "<?>"
    return text if len(text) <= 40 else text[:37] + "..."
