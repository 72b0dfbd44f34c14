"""The value codec: Python values to ``(bytes, encoding)`` records and back.

Four encodings, numbered as Deno's (see ``kvmodel.engines.base``):

* ``VALUE_ENCODING_BYTES`` (3): a top-level ``bytes``, ``bytearray`` or
  ``memoryview``, stored raw.
* ``VALUE_ENCODING_LE64`` (2): a top-level :class:`KvU64`, stored as 8 bytes
  little-endian (what ``sum``/``min``/``max`` operate on).
* ``VALUE_ENCODING_MSGPACK`` (1): everything else, as msgpack where Deno stores
  V8 serialisation.
* ``VALUE_ENCODING_V8`` (4): everything else on a Kv opened with
  ``values="v8"`` (:func:`encode_value_v8`), in V8's format as Deno stores it
  (see ``kvmodel._v8``); :func:`decode_value` reads it on any Kv.

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

from kvmodel._text import brief_value
from kvmodel.engines.base import (
    VALUE_ENCODING_BYTES,
    VALUE_ENCODING_LE64,
    VALUE_ENCODING_MSGPACK,
    VALUE_ENCODING_V8,
    describe_stored_key,
)
from kvmodel.errors import DecodeError, EncodeError, LimitExceededError
from kvmodel.limits import MAX_VALUE_SIZE

__all__ = [
    "EXT_BIGINT",
    "EXT_KVU64",
    "EXT_DATETIME",
    "KvU64",
    "encode_value",
    "encode_value_v8",
    "encode_message_v8",
    "decode_value",
    "unpack_msgpack",
    "UNPACK_OPTIONS",
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
UNPACK_OPTIONS: dict[str, Any] = {
    "raw": False,
    "use_list": True,
    "strict_map_key": False,
    "ext_hook": _ext_hook,
    "timestamp": 3,
}


def unpack_msgpack(data: bytes | bytearray | memoryview) -> object:
    """Decodes kvmodel's msgpack value bytes (no size check: decode_value makes it).

    Raises:
        DecodeError: the bytes are not a valid msgpack value of kvmodel's.
    """
    try:
        return msgpack.unpackb(data, **UNPACK_OPTIONS)
    except DecodeError:
        raise
    except TypeError:
        pass  # an unhashable map key: a tuple key written as an array; see below
    except Exception as exc:  # msgpack's errors, bad UTF-8, bad datetimes...
        raise DecodeError(f"Stored bytes are not a valid msgpack value: {exc}.") from exc
    # Slow path, only for maps with tuple keys: rebuild every map from its pairs,
    # turning array keys back into tuples.
    try:
        return msgpack.unpackb(data, object_pairs_hook=_tuple_keys, **UNPACK_OPTIONS)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"Stored bytes are not a valid msgpack value: {exc}.") from exc


# ---------------------------------------------------------------------------
# Public entry points

_BYTES_LIKE = (bytes, bytearray, memoryview)
_SUPPORTED = "None, bool, int, float, str, bytes, list, tuple, dict, datetime and KvU64"
# A value deeper than this cannot come back: msgpack's unpacker holds at most
# 1024 open containers.
_MAX_DEPTH = 1024


def encode_value(value: object, *, limit: int = MAX_VALUE_SIZE) -> tuple[bytes, int]:
    """Encodes a value into ``(data, encoding)`` for an engine record.

    >>> encode_value(b"raw")
    (b'raw', 3)
    >>> encode_value(KvU64(1))
    (b'\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00', 2)
    >>> encode_value({"a": [1, None]})
    (b'\\x81\\xa1a\\x92\\x01\\xc0', 1)

    Before anything is packed, a walk of the value (see :func:`_measure`)
    refuses values that cannot fit in ``limit`` bytes, that contain
    themselves, or that nest too deeply, so no value costs more than a small
    multiple of ``limit`` in time or memory. The result may still be longer
    than ``limit``: the caller checks the exact size.

    Raises:
        EncodeError: the value holds something other than None, bool, int,
            float, str, bytes, list, tuple, dict, datetime (naive, with a
            ``datetime.timezone`` or a ``zoneinfo.ZoneInfo``) and KvU64, or
            contains itself, or is nested too deeply. The message names the
            type and where it sits.
        LimitExceededError: the value's encoding is certainly longer than
            ``limit`` bytes. ``actual`` is then a lower bound of its size.
    """
    t = type(value)
    if t is bytes:
        return value, VALUE_ENCODING_BYTES  # type: ignore[return-value]
    if t is KvU64:
        return _LE64.pack(value._value), VALUE_ENCODING_LE64  # type: ignore[attr-defined]
    if t is dict:
        # The first level of _fits, inlined: most values are a dict of scalars,
        # and a call and a level list cost as much as the loop itself here.
        size = 1 + 2 * len(value)  # type: ignore[arg-type]
        below: list[Any] | None = None
        fits = False
        # A dict too long to fit is not even scanned (its loop could be long).
        entries = value.items() if size <= limit else ()  # type: ignore[attr-defined]
        try:
            for k, v in entries:
                if type(k) is not str:
                    break
                tv = type(v)
                if tv is str:
                    size += len(k) + len(v)
                    continue
                size += len(k)
                if tv is int:
                    if not _MSGPACK_INT_MIN <= v < _U64_LIMIT:
                        size += _element_cost(v, False)
                elif tv in _CONTAINERS:
                    if below is None:
                        below = [v]
                    else:
                        below.append(v)
                elif tv is datetime and v.tzinfo is UTC:
                    size += 5  # as in _fits: a timestamp is at least 6 bytes
                elif tv not in _PLAIN_SCALARS:
                    cost = _element_cost(v, False)
                    if cost < 0:
                        break  # a subclass of a container
                    size += cost
            else:
                fits = size <= limit and (below is None or _fits(below, size, limit, 2))
        except _Unsupported:
            pass
        if not fits and not _fits([value], 1, limit):
            _measure(value, limit)  # raises, unless _fits only met something unusual
    elif t is list or t is tuple:
        if not _fits([value], 1, limit):
            _measure(value, limit)
    elif t is str:
        if len(value) >= limit:  # type: ignore[arg-type]
            _measure(value, limit)
    elif t is int:
        if not _MSGPACK_INT_MIN <= value < _U64_LIMIT:  # type: ignore[operator]
            _measure(value, limit)
    elif t is float or t is bool or value is None:
        pass
    elif isinstance(value, _BYTES_LIKE):
        size = value.nbytes if isinstance(value, memoryview) else len(value)
        if size > limit:  # refused before bytes() copies it
            raise _over_limit(size, limit)
        return bytes(value), VALUE_ENCODING_BYTES
    else:
        _measure(value, limit)  # a datetime, a subclass or an unsupported type
    try:
        packer = _local.packer
    except AttributeError:
        packer = _packer()
    try:
        data: bytes = packer.pack(value)
    except (_Unsupported, ValueError, TypeError, OverflowError, BufferError) as exc:
        # Only now walk the value in Python, to say what failed and where. The
        # walk above bounded the value, so this one is bounded too.
        raise _encode_error(value, exc) from (None if isinstance(exc, _Unsupported) else exc)
    return data, VALUE_ENCODING_MSGPACK


def decode_value(data: bytes, encoding: int, key: object = None) -> object:
    """Decodes ``(data, encoding)`` from an engine record back into a value.

    >>> decode_value(b"\\x81\\xa1a\\x92\\x01\\xc0", 1)
    {'a': [1, None]}

    Readers pass the ``key`` the value is stored at (its tuple or its encoded
    bytes), and an error then names it; the name is built only on failure, so
    naming it costs nothing on success.

    Raises:
        DecodeError: the bytes are not a valid value of that encoding, or the
            encoding is unknown.
    """
    try:
        if encoding == VALUE_ENCODING_MSGPACK:
            if len(data) > MAX_VALUE_SIZE:
                # Writes are refused past this size, so no stored value is longer;
                # the check also bounds every length inside (see UNPACK_OPTIONS).
                raise DecodeError(
                    f"Stored bytes are {len(data)} long, more than any value can be "
                    f"({MAX_VALUE_SIZE} bytes encoded)."
                )
            return unpack_msgpack(data)
        if encoding == VALUE_ENCODING_BYTES:
            return bytes(data)
        if encoding == VALUE_ENCODING_LE64:
            if len(data) != 8:
                raise DecodeError(f"A KvU64 value has {len(data)} bytes instead of 8.")
            return KvU64(_LE64.unpack(data)[0])
        if encoding == VALUE_ENCODING_V8:
            from kvmodel._v8 import decode_v8

            return decode_v8(data)
        raise DecodeError(f"Unknown value encoding {encoding!r}.")
    except DecodeError as exc:
        if key is None:
            raise
        where = describe_stored_key(key)
        raise DecodeError(f"The value stored at the key {where} cannot be read: {exc}") from None


def encode_value_v8(value: object, *, limit: int = MAX_VALUE_SIZE) -> tuple[bytes, int]:
    """Encodes a value as Deno does: raw bytes, a KvU64 as LE64, the rest in V8's format.

    The codec of a Kv opened with ``values="v8"`` (see ``kvmodel._v8`` for the
    types it takes).

    Raises:
        EncodeError: the value would not read back as written in V8's format.
        LimitExceededError: the value certainly encodes to more than ``limit`` bytes.
    """
    t = type(value)
    if t is bytes:
        return value, VALUE_ENCODING_BYTES  # type: ignore[return-value]
    if t is KvU64:
        return _LE64.pack(value._value), VALUE_ENCODING_LE64  # type: ignore[attr-defined]
    if isinstance(value, _BYTES_LIKE):
        size = value.nbytes if isinstance(value, memoryview) else len(value)
        if size > limit:
            raise _over_limit(size, limit)
        return bytes(value), VALUE_ENCODING_BYTES
    from kvmodel._v8 import encode_v8

    return encode_v8(value, limit=limit), VALUE_ENCODING_V8


def encode_message_v8(value: object, *, limit: int = MAX_VALUE_SIZE) -> tuple[bytes, int]:
    """Encodes a queue message as Deno does: always in V8's format.

    Deno's queue table has no encoding column, so a top-level bytes value is
    a Uint8Array inside V8's format there (and reads back as bytes); a
    top-level KvU64 has no V8 form that reads back as one and is refused.

    Raises:
        EncodeError: as :func:`encode_value_v8`, or the value is a KvU64.
    """
    from kvmodel._v8 import encode_v8

    if type(value) is KvU64:
        raise EncodeError(
            f"The queue message {value!r} cannot be stored in V8's format: Deno's queue "
            "keeps only V8 values, where a KvU64 becomes the plain object {value: n}; "
            "enqueue the int instead."
        )
    return encode_v8(value, limit=limit), VALUE_ENCODING_V8


# ---------------------------------------------------------------------------
# The bounding walk


class _Cycle(Exception):
    """Raised inside :func:`_measure` when a container holds itself or an open ancestor."""


# Elements that cost nothing beyond the byte their container charges for them.
_PLAIN_SCALARS: Final = frozenset((float, bool, type(None)))
_CONTAINERS: Final = frozenset((dict, list, tuple))


class _NotAType:
    """Stands for ``str`` in :func:`_measure`'s fast branch when strs must be checked too."""


def _fits(level: list[Any], size: int, limit: int, depth: int = 1) -> bool:
    """The walk of :func:`_measure` for the common case, without its bookkeeping.

    Walks on from the containers of ``level``, at ``depth``, with ``size``
    counted so far (``_fits([value], 1, limit)`` walks a whole value). True
    when the value certainly cannot be refused: its total stays within
    ``limit``, it nests at most 1024 deep, and it holds only str keys, exact
    containers and elements of supported types. False means "ask
    :func:`_measure`", which says exactly what is wrong (or, for what this
    pass does not handle, such as int keys, finds nothing wrong).

    It goes level by level, charging what :func:`_measure` charges, so it
    stops as early and holds as little: a cycle or shared references grow
    the total until it passes ``limit``, or the depth until it passes 1024.
    """
    depth -= 1
    try:
        while True:
            depth += 1
            below: list[Any] = []
            for node in level:
                if type(node) is dict:
                    size += 2 * len(node)
                    if size > limit:
                        return False
                    for k, v in node.items():
                        if type(k) is not str:
                            return False
                        t = type(v)
                        if t is str:
                            size += len(k) + len(v)
                            continue
                        size += len(k)
                        if t is int:
                            if not _MSGPACK_INT_MIN <= v < _U64_LIMIT:
                                size += _element_cost(v, False)
                        elif t in _CONTAINERS:
                            below.append(v)
                        elif t is datetime and v.tzinfo is UTC:
                            # Documents carry UTC timestamps: a timestamp is at least
                            # 6 bytes, and this spares _element_cost's type chain.
                            size += 5
                        elif t not in _PLAIN_SCALARS:
                            cost = _element_cost(v, False)
                            if cost < 0:
                                return False  # a subclass of a container
                            size += cost
                else:
                    size += len(node)
                    if size > limit:
                        return False
                    for v in node:
                        t = type(v)
                        if t is str:
                            size += len(v)
                        elif t is int:
                            if not _MSGPACK_INT_MIN <= v < _U64_LIMIT:
                                size += _element_cost(v, False)
                        elif t in _CONTAINERS:
                            below.append(v)
                        elif t is datetime and v.tzinfo is UTC:
                            size += 5
                        elif t not in _PLAIN_SCALARS:
                            cost = _element_cost(v, False)
                            if cost < 0:
                                return False
                            size += cost
            if size > limit:
                return False
            if not below:
                return True
            if depth >= _MAX_DEPTH:
                return False
            level = below
    except _Unsupported:
        return False


def _measure(value: object, limit: int, *, strict: bool = False) -> int:
    """Walks ``value`` in the packer's order without encoding it; refuses it early.

    The running total is a lower bound of the msgpack size: every element's
    encoding starts with at least one byte, so the value counts one, a
    container counts one per element (two per dict entry) before its elements
    are looked at, and a str, bytes, big int or datetime counts what it adds
    beyond its first byte. A container that appears several times is
    charged every time, as the packer writes it every time, so 601 lists
    sharing references cost as much here as they would there and stop here
    at once. The walk is iterative; it stops with

    * ``LimitExceededError`` once the total passes ``limit``,
    * ``EncodeError`` when a container holds itself or one of its open
      ancestors (msgpack would nest forever), when a container would open
      below depth 1024 (msgpack could not read it back), or at an element of
      an unsupported type.

    Everything the walk holds (the open containers and the containers still to
    visit) was charged first, so time and memory stay within a small multiple
    of ``limit``; the encoding itself is at most about 9 bytes per byte
    charged (a float or int charged 1), so packing after a walk that passed is
    bounded too. ``strict`` also checks what the packer checks (strs hold no
    lone surrogate, datetimes have a supported tzinfo): the error path uses
    it to say what failed and where.

    Returns the total.
    """
    fast_str: Any = _NotAType if strict else str
    if type(value) not in _CONTAINERS:
        try:
            cost = _element_cost(value, strict)
        except _Unsupported as exc:
            raise EncodeError(_unsupported_message(exc.args[0], "value")) from None
        if cost >= 0:
            if 1 + cost > limit:
                raise _over_limit(1 + cost, limit, lower_bound=True)
            return 1 + cost
        # A subclass of dict, list or tuple: walked as one.
    size = 1
    node: Any = value
    ancestors: list[Any] = []  # the open containers above node, outermost first
    open_ids: set[int] = set()  # their ids
    pending: list[list[Any]] = []  # per open container, its child containers to visit (last first)
    try:
        while True:
            kids: list[Any] = []
            if isinstance(node, dict):
                size += 2 * len(node)
                if size > limit:
                    raise _over_limit(size, limit, lower_bound=True)
                for k, v in node.items():
                    if type(k) is fast_str:
                        size += len(k)
                    else:
                        # Keys are hashable, so a container key is a tuple: it cannot
                        # hold an open ancestor.
                        cost = _element_cost(k, strict)
                        if cost >= 0:
                            size += cost
                        else:
                            kids.append(k)
                    t = type(v)
                    if t is fast_str:
                        size += len(v)
                    elif t is int:
                        if not _MSGPACK_INT_MIN <= v < _U64_LIMIT:
                            size += _element_cost(v, strict)
                    elif t not in _PLAIN_SCALARS:
                        cost = -1 if t in _CONTAINERS else _element_cost(v, strict)
                        if cost >= 0:
                            size += cost
                        elif v is node or id(v) in open_ids:
                            raise _Cycle(v)
                        else:
                            kids.append(v)
            else:
                size += len(node)
                if size > limit:
                    raise _over_limit(size, limit, lower_bound=True)
                for v in node:
                    t = type(v)
                    if t is fast_str:
                        size += len(v)
                    elif t is int:
                        if not _MSGPACK_INT_MIN <= v < _U64_LIMIT:
                            size += _element_cost(v, strict)
                    elif t not in _PLAIN_SCALARS:
                        cost = -1 if t in _CONTAINERS else _element_cost(v, strict)
                        if cost >= 0:
                            size += cost
                        elif v is node or id(v) in open_ids:
                            raise _Cycle(v)
                        else:
                            kids.append(v)
            if size > limit:
                raise _over_limit(size, limit, lower_bound=True)
            if kids:
                if len(ancestors) + 2 > _MAX_DEPTH:  # the kids would open at this depth
                    raise _too_deep(value)
                ancestors.append(node)
                open_ids.add(id(node))
                kids.reverse()
                pending.append(kids)
            # Move to the next container to visit, closing the finished ones.
            while pending and not pending[-1]:
                pending.pop()
                open_ids.discard(id(ancestors.pop()))
            if not pending:
                return size
            node = pending[-1].pop()
    except _Unsupported as exc:
        where = _path(ancestors, node, exc.args[0])
        raise EncodeError(_unsupported_message(exc.args[0], where)) from None
    except _Cycle as exc:
        # The element is node itself or one of its ancestors: name both places.
        again = exc.args[0]
        chain = [*ancestors, node]
        i = next(i for i, c in enumerate(chain) if c is again)
        first = _path(chain[: i - 1], chain[i - 1], again) if i else "value"
        raise EncodeError(
            f"Cannot encode {_path(ancestors, node, again)}: it is {first} again, "
            "so the value contains itself and has no finite encoding."
        ) from None


def _element_cost(x: object, strict: bool) -> int:
    """What ``x`` adds to the total beyond its one byte; -1 for a container.

    Raises:
        _Unsupported: ``x`` has a type the codec does not store (or, when
            ``strict``, a str with a lone surrogate or a datetime whose tzinfo
            cannot be stored).
    """
    if isinstance(x, msgpack.ExtType | msgpack.Timestamp):
        # The packer would write these as they are, and the decoder refuses
        # any extension code it does not own.
        raise _Unsupported(x)
    if isinstance(x, dict | list | tuple):
        return -1
    if isinstance(x, str):
        if strict:
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                raise _Unsupported(x) from None
        return len(x)  # at least one UTF-8 byte per character
    if isinstance(x, int):  # bool included
        n = int(x)
        if _MSGPACK_INT_MIN <= n < _U64_LIMIT:
            return 0
        return ((n if n >= 0 else ~n).bit_length() + 8) >> 3  # the extension's payload
    if x is None or isinstance(x, float) or type(x) is KvU64:
        return 0
    if isinstance(x, bytes | bytearray):
        return len(x)
    if isinstance(x, memoryview):
        return x.nbytes
    if isinstance(x, datetime):
        if strict:
            _pack_datetime(x)  # raises _Unsupported
        # A timestamp is at least 6 bytes; a zone name or key is stored too.
        tz = x.tzinfo
        if type(tz) is zoneinfo.ZoneInfo and isinstance(tz.key, str):
            return 5 + len(tz.key)
        if type(tz) is timezone:
            name = tz.tzname(None)
            return 5 + (len(name) if isinstance(name, str) else 0)
        return 5
    raise _Unsupported(x)


def _over_limit(size: int, limit: int, *, lower_bound: bool = False) -> LimitExceededError:
    if lower_bound:
        text = f"The value is at least {size} bytes encoded"
    else:
        text = f"The value is {size} bytes encoded"
    return LimitExceededError(
        f"{text}; values are limited to {limit} bytes, so split it over several keys.",
        limit=limit,
        actual=size,
    )


def _path(ancestors: list[Any], node: Any, target: object) -> str:
    """Where ``target``, an element of ``node`` (below ``ancestors``), sits: "value[1]['a']".

    ``node`` None means ``target`` is the value itself. Each step names the
    first place its child sits in its parent, found by identity.
    """
    if node is None:
        return "value"
    text = "value"
    chain = [*ancestors, node]
    for parent, child in zip(chain, [*chain[1:], target], strict=True):
        if isinstance(parent, dict):
            for k, v in parent.items():
                if v is child:
                    text = f"{text}[{_short_repr(k)}]"
                    break
                if k is child:
                    text = f"a key of {text}"
                    break
        else:
            for i, v in enumerate(parent):
                if v is child:
                    text = f"{text}[{i}]"
                    break
    return text


def _unsupported_message(obj: object, path: str) -> str:
    if isinstance(obj, str):
        return f"Cannot encode the str {_short_repr(obj)} at {path}: it holds a lone surrogate."
    if isinstance(obj, datetime):
        return (
            f"Cannot encode the datetime {obj!r} at {path}: its tzinfo {obj.tzinfo!r} "
            "is not a datetime.timezone or a zoneinfo.ZoneInfo loaded by key."
        )
    return (
        f"Cannot encode {path}: type {_type_name(obj)!r} is not supported; "
        f"supported types are {_SUPPORTED}."
    )


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
        f"{_MAX_DEPTH} levels of lists, tuples and dicts)."
    )


def _encode_error(value: object, exc: BaseException) -> EncodeError:
    """Finds what in ``value`` the packer could not encode and says where it is."""
    try:
        _measure(value, 1 << 62, strict=True)
    except EncodeError as found:
        return found
    return EncodeError(f"Cannot encode the {_type_name(value)}: {exc}.")


def _short_repr(obj: object) -> str:
    if isinstance(obj, int):
        try:
            text = repr(obj)
        except ValueError:  # an int beyond sys.get_int_max_str_digits()
            text = f"<int of {obj.bit_length()} bits>"
    else:
        text = brief_value(obj, 1 << 30)  # bounded in depth; cut below
    return text if len(text) <= 40 else text[:37] + "..."
