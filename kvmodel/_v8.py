"""The V8 value codec: Python values to V8's serialization format, as Deno stores them.

Deno writes a value with V8's structured serialisation (``v8::ValueSerializer``)
unless it is a top-level ``Uint8Array`` (stored raw) or ``Deno.KvU64`` (8 bytes
little-endian); kvmodel does the same, so a value written here reads back in
Deno as the JavaScript value below, and the other way round.

=====================  ===========================  ==============================
Python                 JavaScript                   notes
=====================  ===========================  ==============================
None                   null
bool                   boolean
float                  number                       every JS number reads as float
int                    bigint                       any size
str                    string
bytes                  Uint8Array                   top level: raw bytes (Deno's)
list (tuple)           Array                        dense; a tuple reads as list
dict (str keys)        plain object
datetime (UTC, ms)     Date                         aware, ``tzinfo=datetime.UTC``,
                                                    whole milliseconds
JSMap                  Map                          ``v8serialize.jstypes.JSMap``
JSSet                  Set                          ``v8serialize.jstypes.JSSet``
KvU64 (top level)      Deno.KvU64                   8 bytes little-endian
=====================  ===========================  ==============================

Everything else is refused, because it would not read back as written:
``EncodeError`` names the value and the reason (a naive, non-UTC or
sub-millisecond datetime, a KvU64 inside a value, which Deno itself stores as
the plain object ``{value: n}``, a dict with non-str keys, a set, a cycle), and
``DecodeError`` does the same for what Deno can store but Python cannot hold
without changing it on the way back (``undefined``, holes in arrays, arrays with
extra properties, other typed arrays, a bare ArrayBuffer, RegExp, Error,
boxed primitives, an invalid Date, a cycle).

The wire format: V8's version 16 (V8 14.9 and later, so Deno 2.8 and later)
differs from version 15 only in allowing lengths of 4 GiB and more; values are
at most 64 KiB, so a version-16 header is read as version 15, and values are
written with a version-15 header, which every Deno since 1.x reads.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kvmodel._text import brief_value
from kvmodel.errors import DecodeError, EncodeError, LimitExceededError
from kvmodel.limits import MAX_VALUE_SIZE

__all__ = ["V8_INSTALL_HINT", "decode_v8", "encode_v8", "load_v8serialize"]

V8_INSTALL_HINT = "install the deno extra: pip install 'kvmodel[deno]'"

_HEADER_15 = b"\xff\x0f"
_HEADER_16 = b"\xff\x10"
# Deeper than this the recursive walks below would near Python's own limit.
_MAX_DEPTH = 200


def load_v8serialize() -> Any:
    """The v8serialize module, or an EncodeError saying how to install it."""
    try:
        import v8serialize
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise EncodeError(
            f"Values in V8's format need the v8serialize package; {V8_INSTALL_HINT}."
        ) from exc
    return v8serialize


# ---------------------------------------------------------------------------
# Encoding


class _Refused(Exception):
    def __init__(self, reason: str, path: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path


def encode_v8(value: object, *, limit: int = MAX_VALUE_SIZE) -> bytes:
    """Serialises a value in V8's format (with a version-15 header).

    >>> encode_v8({"a": [1.5, None]}).hex()
    'ff0f6f53016141024e000000000000f83f302400027b01'

    Raises:
        EncodeError: the value holds something that would not read back as
            written (see the module's table); the message says what and where.
        LimitExceededError: the value certainly encodes to more than ``limit``
            bytes (``actual`` is then a lower bound).
    """
    v8 = load_v8serialize()
    _estimate(value, limit, {}, 0)
    budget = [limit]
    try:
        js = _to_js(value, v8.jstypes, "", 0, set(), budget)
    except _Refused as exc:
        where = f" at value{exc.path}" if exc.path else ""
        raise EncodeError(
            f"The value {brief_value(value)} cannot be stored in V8's format{where}: {exc.reason}"
        ) from None
    try:
        data: bytes = v8.dumps(js)
    except v8.V8SerializeError as exc:  # pragma: no cover - _to_js builds only known types
        raise EncodeError(f"The value {brief_value(value)} cannot be serialised: {exc}") from exc
    return data


def _estimate(value: object, limit: int, memo: dict[int, int], depth: int) -> int:
    """A lower bound of the encoded size, each shared container counted once per use.

    A value that reuses one list many times (``x = [x, x]`` a few hundred
    times over) encodes each use in full: this walk visits each container
    once, so it refuses such a value with LimitExceededError in linear time.
    """
    t = type(value)
    if t is str or t is bytes:
        return 1 + len(value)  # type: ignore[arg-type]
    if (t is not list and t is not tuple and t is not dict) or depth > _MAX_DEPTH:
        return 1
    known = memo.get(id(value))
    if known is not None:
        return known
    memo[id(value)] = 1  # a cycle: counted once here, refused by _to_js
    items: Any = value.values() if isinstance(value, dict) else value
    size = 1 + sum(_estimate(v, limit, memo, depth + 1) for v in items)
    memo[id(value)] = size
    if size > limit:
        raise LimitExceededError(
            f"The value is at least {size} bytes encoded in V8's format; "
            f"values are at most {limit}.",
            limit=limit,
            actual=size,
        )
    return size


def _charge(budget: list[int], n: int, limit_hint: int) -> None:
    # Each node costs at least one output byte: stop walking (and allocating)
    # once the value certainly cannot fit.
    budget[0] -= n
    if budget[0] < 0:
        raise LimitExceededError(
            "The value is more than the value size limit encoded in V8's format.",
            limit=limit_hint,
            actual=limit_hint - budget[0],
        )


def _to_js(
    value: object, jt: Any, path: str, depth: int, open_ids: set[int], budget: list[int]
) -> Any:
    t = type(value)
    _charge(budget, 1, MAX_VALUE_SIZE)
    if value is None or t is bool:
        return value
    if t is float:
        return value
    if t is int:
        _charge(budget, (value.bit_length() + 7) // 8, MAX_VALUE_SIZE)  # type: ignore[attr-defined]
        return jt.JSBigInt(value)
    if t is str:
        _charge(budget, len(value), MAX_VALUE_SIZE)  # type: ignore[arg-type]
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        _charge(budget, len(data), MAX_VALUE_SIZE)
        return jt.JSUint8Array(jt.JSArrayBuffer(data))
    if t is datetime:
        return _date_to_js(value, path)  # type: ignore[arg-type]
    if depth >= _MAX_DEPTH:
        raise _Refused(f"it is nested more than {_MAX_DEPTH} levels deep.", path)
    if t is list or t is tuple or t is dict or t is jt.JSMap or t is jt.JSSet:
        if id(value) in open_ids:
            raise _Refused("it contains itself.", path)
        open_ids.add(id(value))
        try:
            return _container_to_js(value, jt, path, depth + 1, open_ids, budget)
        finally:
            open_ids.discard(id(value))
    from kvmodel._values import KvU64

    if t is KvU64:
        raise _Refused(
            "a KvU64 keeps its type only as a whole value; inside a value Deno stores it as "
            "the plain object {value: n}, so store the int or the KvU64 under its own key.",
            path,
        )
    if isinstance(value, set | frozenset):
        raise _Refused(
            "a Python set reads back as a v8serialize JSSet; store a JSSet "
            "(from v8serialize.jstypes import JSSet) or a list.",
            path,
        )
    raise _Refused(
        f"{t.__name__} is not one of None, bool, int, float, str, bytes, list, tuple, "
        "dict with str keys, UTC datetime, JSMap and JSSet.",
        path,
    )


def _container_to_js(
    value: Any, jt: Any, path: str, depth: int, open_ids: set[int], budget: list[int]
) -> Any:
    t = type(value)
    if t is list or t is tuple:
        return jt.JSArray(
            [_to_js(x, jt, f"{path}[{i}]", depth, open_ids, budget) for i, x in enumerate(value)]
        )
    if t is dict:
        obj = jt.JSObject()
        for k, v in value.items():
            if type(k) is not str:
                raise _Refused(
                    f"the dict key {brief_value(k)} is not a str (a JavaScript object's "
                    "keys are strings); use a JSMap for other keys.",
                    path,
                )
            _charge(budget, len(k), MAX_VALUE_SIZE)
            obj[k] = _to_js(v, jt, f"{path}[{k!r}]", depth, open_ids, budget)
        return obj
    if t is jt.JSMap:
        out = jt.JSMap()
        for i, (k, v) in enumerate(value.items()):
            out[_to_js(k, jt, f"{path}<key {i}>", depth, open_ids, budget)] = _to_js(
                v, jt, f"{path}[{brief_value(k)}]", depth, open_ids, budget
            )
        return out
    return jt.JSSet(
        _to_js(x, jt, f"{path}<item {i}>", depth, open_ids, budget) for i, x in enumerate(value)
    )


def _date_to_js(value: datetime, path: str) -> datetime:
    if value.tzinfo is not UTC:
        what = "naive" if value.tzinfo is None else f"in {value.tzinfo!r}"
        raise _Refused(
            f"the datetime is {what}; a JavaScript Date is an instant and reads back in UTC, "
            "so pass dt.astimezone(datetime.UTC).",
            path,
        )
    if value.microsecond % 1000:
        raise _Refused(
            "the datetime has microseconds; a JavaScript Date holds whole milliseconds, so "
            "round it, e.g. dt.replace(microsecond=dt.microsecond // 1000 * 1000).",
            path,
        )
    return value


# ---------------------------------------------------------------------------
# Decoding


def decode_v8(data: bytes) -> object:
    """Deserialises a value written in V8's format (by Deno or :func:`encode_v8`).

    >>> decode_v8(bytes.fromhex("ff0f6f53016141024e000000000000f83f302400027b01"))
    {'a': [1.5, None]}

    Raises:
        DecodeError: the bytes are not V8's format, or hold a value Python
            cannot hold without changing it (see the module docstring).
    """
    if len(data) > MAX_VALUE_SIZE:
        raise DecodeError(
            f"Stored bytes are {len(data)} long, more than any value can be "
            f"({MAX_VALUE_SIZE} bytes encoded)."
        )
    if data[:2] == _HEADER_16:
        # Identical to version 15 below 4 GiB (see the module docstring).
        data = _HEADER_15 + data[2:]
    try:
        v8 = load_v8serialize()
    except EncodeError as exc:  # pragma: no cover - the extra is installed in tests
        raise DecodeError(str(exc)) from exc
    try:
        js = v8.loads(data, default_timezone=UTC)
    except RecursionError:
        raise DecodeError("A V8 value is nested too deeply to read.") from None
    # v8serialize's parser can fail with IndexError and the like on bytes that
    # end inside a tag (b'r\x00', found by tests/torture/test_hostile_decoders.py).
    except (
        v8.V8SerializeError,
        ValueError,
        TypeError,
        OverflowError,
        IndexError,
        KeyError,
        AttributeError,
    ) as exc:
        raise DecodeError(f"Stored bytes are not a valid V8 value: {exc}") from exc
    try:
        return _Reader(v8.jstypes).read(js, 0)
    except _Refused as exc:
        path = exc.path if len(exc.path) <= 80 else f"{exc.path[:40]}...{exc.path[-30:]}"
        where = f" at {path}" if path else ""
        raise DecodeError(f"A value stored by Deno cannot be read{where}: {exc.reason}") from None


# How much a decoded value may expand, counted as _estimate counts an encoding
# (one per node, plus the length of each str and bytes). V8 lets a value name an
# object it already wrote, so 161 stored bytes can describe a binary tree of 2**22
# nodes. The reader keeps such an object shared (one Python object, converted
# once), which bounds decoding by the stored size; this bound keeps every later
# walk of the value (saving it, dumping it, structuring a document) bounded too.
# Four values' worth leaves room for data that shares objects on purpose.
MAX_EXPANDED_SIZE = 4 * MAX_VALUE_SIZE


class _Reader:
    """Converts one deserialised V8 value to Python, each shared object once.

    Paths are built only on the way out of a refusal: each container adds its
    segment to the _Refused passing through, so reading pays nothing for them.
    """

    __slots__ = ("jt", "open_ids", "seen", "size")

    def __init__(self, jt: Any) -> None:
        self.jt = jt
        self.size = 0  # the expanded size read so far
        # id of a JavaScript container -> (its Python value, its expanded size).
        # The ids stay valid: the deserialised value holds every container.
        self.seen: dict[int, tuple[Any, int]] = {}
        self.open_ids: set[int] = set()  # containers being converted: a cycle

    def grow(self, n: int) -> None:
        self.size += n
        if self.size > MAX_EXPANDED_SIZE:
            raise _Refused(
                f"it uses its objects so many times over that it expands to more than "
                f"{MAX_EXPANDED_SIZE} bytes ({MAX_EXPANDED_SIZE // MAX_VALUE_SIZE} times the "
                "value size limit), and every walk of it would take that long; write it "
                "without the repeated references.",
                "",
            )

    def read(self, value: Any, depth: int) -> Any:
        jt = self.jt
        t = type(value)
        if t is str:
            self.grow(1 + len(value))
            return value
        if t is int or t is float:
            self.grow(1)
            return float(value)  # a JavaScript number, whichever tag V8 chose
        if value is None or t is bool:
            self.grow(1)
            return value
        if t is jt.JSBigInt:
            n = int(value)
            self.grow(1 + (n.bit_length() >> 3))
            return n
        if t is datetime:
            self.grow(1)
            if value.tzinfo is None:  # pragma: no cover - default_timezone makes it aware
                value = value.replace(tzinfo=UTC)
            return value
        if t is jt.JSUint8Array:
            data = _view_bytes(value)
            self.grow(1 + len(data))
            return data
        if value is jt.JSUndefined:
            raise _Refused(
                "undefined has no Python value that writes back as undefined; store null instead.",
                "",
            )
        if value is jt.JSHole:
            raise _Refused("an array with holes has no Python counterpart.", "")
        if t is jt.JSObject or t is jt.JSArray or t is jt.JSMap or t is jt.JSSet:
            known = self.seen.get(id(value))
            if known is not None:
                self.grow(known[1])
                return known[0]
            if id(value) in self.open_ids:
                raise _Refused("it contains itself.", "")
            if depth >= _MAX_DEPTH:
                raise _Refused(f"it is nested more than {_MAX_DEPTH} levels deep.", "")
            self.open_ids.add(id(value))
            start = self.size
            self.grow(1)
            result = self.container(value, depth + 1)
            self.open_ids.discard(id(value))
            self.seen[id(value)] = (result, self.size - start)
            return result
        raise _Refused(f"{t.__name__} (a JavaScript {_js_name(t)}) has no Python counterpart.", "")

    def container(self, value: Any, depth: int) -> Any:
        jt = self.jt
        read = self.read
        t = type(value)
        if t is jt.JSArray:
            if len(value.properties):
                raise _Refused("an array with named properties has no Python counterpart.", "")
            array: list[Any] = []
            append = array.append
            i = 0
            try:
                for i, x in enumerate(value.array):  # noqa: B007 - i names where a refusal is
                    append(read(x, depth))
            except _Refused as exc:
                exc.path = f"[{i}]{exc.path}"
                raise
            return array
        if t is jt.JSObject:
            out: dict[str, Any] = {}
            key = ""
            try:
                for k, v in value.items():
                    # V8 writes array-index keys as numbers; JavaScript keys are strings.
                    key = k if type(k) is str else str(k)
                    self.grow(len(key))
                    out[key] = read(v, depth)
            except _Refused as exc:
                exc.path = f"[{key!r}]{exc.path}"
                raise
            return out
        if t is jt.JSMap:
            result = jt.JSMap()
            where = ""
            try:
                for i, (k, v) in enumerate(value.items()):
                    where = f"<key {i}>"
                    py_key = read(k, depth)
                    where = f"[{brief_value(k)}]"
                    result[py_key] = read(v, depth)
            except _Refused as exc:
                exc.path = where + exc.path
                raise
            return result
        members = []
        i = 0
        try:
            for i, x in enumerate(value):  # noqa: B007 - i names the item a refusal is at
                members.append(read(x, depth))
        except _Refused as exc:
            exc.path = f"<item {i}>{exc.path}"
            raise
        return jt.JSSet(members)


def _view_bytes(view: Any) -> bytes:
    with view.get_buffer_as_memoryview() as mv:
        return bytes(mv)


def _js_name(t: type) -> str:
    name = t.__name__
    return name[2:] if name.startswith("JS") else name
