"""The command line's text forms of keys and values, and their typed JSON form.

Two forms, both exact (format then parse gives back an equal key or value of
the same types, NaN and -0.0 included):

**Text form**, for people: what ``kvmodel get``/``set``/``ls`` read and print.

* A key is its parts separated by commas: ``users,ada,42``. The empty text is
  the empty key (``kvmodel ls app.db ""`` lists everything). A key may also be
  given as the typed JSON array that ``--json`` prints: ``["users", "ada", 42]``.
* A part or a value is a literal:

  ===============  =============================================================
  type             literal
  ===============  =============================================================
  str              ``"json string"``; in a key also a bare word
                   ``[A-Za-z0-9_][A-Za-z0-9_.-]*`` that is not a number and
                   not ``true``, ``false``, ``null``, ``nan``, ``inf`` (so ids
                   such as ULIDs, ``01M95P6WMWB0WFC90HRV3ZTRFC``, need no quotes)
  int              ``42``, ``-7``, any number of digits
  float            ``1.5``, ``-0.0``, ``1e+300``, ``nan``, ``inf``, ``-inf``
                   (a float always has a ``.``, an ``e`` or is a word)
  bool             ``true``, ``false``
  bytes            ``x"00ff"`` (hex)
  None             ``null`` (values only)
  KvU64            ``u64(5)`` (values only)
  datetime         ``datetime("2024-05-01T12:00:00+02:00")``: ISO 8601 wall
                   clock time and offset (none for a naive datetime); a
                   ``zoneinfo`` zone adds ``zone="Europe/Paris"``, a named
                   ``datetime.timezone`` adds ``name="EST"``, fold 1 adds
                   ``fold=1`` (values only)
  index parts      ``datetime("2024-05-01T12:00:00+00:00")``, ``date("2024-05-01")``,
                   ``uuid("...")`` in a key: the int of UTC microseconds, the
                   ordinal, the 16 bytes an index stores for that value (keys
                   only; :mod:`kvmodel.cli._described` prints them)
  encoded key      ``key(orders,01HX)``: the bytes of an encoded key, an index
                   entry's value (values only)
  list             ``[1, "a", [true]]`` (a tuple prints as a list)
  map              ``{"a": 1, 2: x"00"}``: keys are any literal (values only)
  ===============  =============================================================

**Typed JSON**, for scripts (``--json``, ``dump``/``load``): plain JSON where
JSON is exact, a one-key object where it is not.

* null, bool, str, a list and a str-keyed object whose keys do not start with
  ``$`` are themselves; an int is a JSON integer when ``|n| < 2**53``;
  a finite float is a JSON number with a ``.`` or an exponent (``-0.0`` too).
* ``{"$int": "123..."}`` a larger int, ``{"$float": "nan"|"inf"|"-inf"}``,
  ``{"$bytes": "base64"}``, ``{"$u64": "5"}``, ``{"$datetime": "iso",
  "zone"?: "Europe/Paris", "name"?: "EST", "fold"?: 1}``, ``{"$map": [[k, v],
  ...]}`` for any other map. A key is a JSON array of its parts.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import uuid
import zoneinfo
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from kvmodel._values import KvU64
from kvmodel.errors import InvalidArgumentError
from kvmodel.keys import encode_key

__all__ = [
    "format_key",
    "format_part",
    "format_value",
    "key_from_json",
    "key_to_json",
    "parse_key",
    "parse_value",
    "value_from_json",
    "value_to_json",
]

_SAFE_INT = 1 << 53
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
# A key part may be an id-shaped word that starts with a digit (a ULID, a date
# stamp); it is a str unless the whole word is a number.
_ID_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_WORDS = frozenset(("true", "false", "null", "nan", "inf"))
# The typed literals a key part may be written as (kvmodel.cli._described prints them).
_KEY_FORMS = frozenset(("datetime", "date", "uuid"))
_NUMBER = re.compile(r"-?(?:inf|nan|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")


# ---------------------------------------------------------------------------
# Formatting the text form


def format_key(key: tuple[Any, ...] | list[Any]) -> str:
    """The text form of a key: its parts separated by commas."""
    return ",".join(format_part(p) for p in key)


def format_part(part: object) -> str:
    """The text form of one key part."""
    if isinstance(part, str) and _is_bare_key_word(part):
        return part
    return _format(part, key_part=True)


def format_value(value: object) -> str:
    """The text form of a value (see the module docstring)."""
    return _format(value, key_part=False)


def _format_float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(x)  # always has a "." or an "e", and round-trips exactly


def _format(v: object, *, key_part: bool) -> str:
    if v is None:
        if key_part:
            raise InvalidArgumentError("None is not a key part.")
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _format_float(v)
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: escape it, or printing fails
            return json.dumps(v)
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, bytes | bytearray | memoryview):
        return 'x"' + bytes(v).hex() + '"'
    if key_part:
        raise InvalidArgumentError(f"{v!r} is not a key part.")
    if isinstance(v, KvU64):
        return f"u64({v.value})"
    if isinstance(v, datetime):
        text = f"datetime({json.dumps(v.isoformat())}"
        for name, extra in _datetime_extras(v).items():
            text += f", {name}={json.dumps(extra)}"
        return text + ")"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_format(x, key_part=False) for x in v) + "]"
    if isinstance(v, dict):
        items = (
            f"{_format(k, key_part=False)}: {_format(x, key_part=False)}" for k, x in v.items()
        )
        return "{" + ", ".join(items) + "}"
    raise InvalidArgumentError(f"{type(v).__name__} {v!r} has no text form.")


def _datetime_extras(dt: datetime) -> dict[str, Any]:
    """What the ISO text of a datetime leaves out: its zone's name and its fold."""
    extras: dict[str, Any] = {}
    tz = dt.tzinfo
    if isinstance(tz, zoneinfo.ZoneInfo):
        extras["zone"] = tz.key
    elif isinstance(tz, timezone) and tz is not UTC:
        name = tz.tzname(None)
        if name != timezone(tz.utcoffset(None)).tzname(None):
            extras["name"] = name
    if dt.fold:
        extras["fold"] = 1
    return extras


def _make_datetime(iso: str, extras: dict[str, Any]) -> datetime:
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError as exc:
        raise InvalidArgumentError(f"{iso!r} is not an ISO 8601 date and time.") from exc
    unknown = set(extras) - {"zone", "name", "fold"}
    if unknown:
        raise InvalidArgumentError(
            f"datetime() takes zone=, name= and fold=, not {', '.join(sorted(unknown))}."
        )
    fold = extras.get("fold", 0)
    if fold not in (0, 1):
        raise InvalidArgumentError(f"fold={fold!r} is not 0 or 1.")
    if "zone" in extras:
        try:
            tz: Any = zoneinfo.ZoneInfo(str(extras["zone"]))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise InvalidArgumentError(f"{extras['zone']!r} is not a known time zone.") from exc
        dt = dt.replace(tzinfo=tz)
    elif "name" in extras:
        offset = dt.utcoffset()
        if offset is None:
            raise InvalidArgumentError("A datetime with name= needs an offset in its ISO text.")
        dt = dt.replace(tzinfo=timezone(offset, str(extras["name"])))
    elif dt.tzinfo is not None and dt.utcoffset() == timedelta(0):
        dt = dt.replace(tzinfo=UTC)  # fromisoformat's +00:00 is timezone.utc already
    return dt.replace(fold=fold)


# ---------------------------------------------------------------------------
# Parsing the text form


class _Parser:
    """A recursive-descent parser of the text form's literals."""

    def __init__(self, text: str, what: str) -> None:
        self.text = text
        self.pos = 0
        self.what = what

    def fail(self, message: str) -> InvalidArgumentError:
        return InvalidArgumentError(
            f"Cannot read {self.what} {self.text!r}: {message} at character {self.pos + 1}; "
            "see 'kvmodel help-text' for the text form."
        )

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def at_end(self) -> bool:
        self.skip_space()
        return self.pos >= len(self.text)

    def expect(self, char: str) -> None:
        self.skip_space()
        if not self.text.startswith(char, self.pos):
            raise self.fail(f"expected {char!r}")
        self.pos += len(char)

    def peek(self, char: str) -> bool:
        self.skip_space()
        return self.text.startswith(char, self.pos)

    def string(self) -> str:
        # json's own scanner reads one string literal with every JSON escape.
        try:
            value, end = json.JSONDecoder().raw_decode(self.text, self.pos)
        except json.JSONDecodeError as exc:
            raise self.fail("an unterminated or malformed string") from exc
        if not isinstance(value, str):  # pragma: no cover - the caller saw a quote
            raise self.fail("expected a string")
        self.pos = end
        return value

    def literal(self, *, key_part: bool) -> Any:
        self.skip_space()
        text, pos = self.text, self.pos
        if pos >= len(text):
            raise self.fail("expected a value")
        c = text[pos]
        if c == '"':
            return self.string()
        if text.startswith('x"', pos):
            self.pos += 1
            hex_text = self.string()
            try:
                return bytes.fromhex(hex_text)
            except ValueError as exc:
                raise self.fail(f"{hex_text!r} is not hex") from exc
        number = _NUMBER.match(text, pos)
        if key_part and c.isdigit():
            word = _ID_WORD.match(text, pos)
            if word is not None and number is not None and word.end() > number.end():
                self.pos = word.end()
                return word.group()
        if number and (c in "-.0123456789"):
            self.pos = number.end()
            return _number(number.group())
        word = _BARE.match(text, pos)
        if word is None:
            raise self.fail(f"unexpected {c!r}")
        name = word.group()
        self.pos = word.end()
        if name == "true":
            return True
        if name == "false":
            return False
        if name in ("nan", "inf"):
            return float(name)
        if key_part:
            if name == "null":
                raise self.fail("null is not a key part")
            if name in _KEY_FORMS and self.peek("("):
                return self.key_form(name)
            return name
        if name == "null":
            return None
        if name == "u64" and self.peek("("):
            self.expect("(")
            self.skip_space()
            digits = re.compile(r"\d+").match(text, self.pos)
            if digits is None:
                raise self.fail("u64() takes an integer")
            self.pos = digits.end()
            self.expect(")")
            try:
                return KvU64(int(digits.group()))
            except ValueError as exc:
                raise self.fail(str(exc)) from exc
        if name == "key" and self.peek("("):
            # An index entry's value: the encoded key of its document.
            self.expect("(")
            parts: list[Any] = []
            while not self.peek(")"):
                parts.append(self.literal(key_part=True))
                if not self.peek(")"):
                    self.expect(",")
            self.expect(")")
            return encode_key(parts)
        if name == "datetime" and self.peek("("):
            self.expect("(")
            self.skip_space()
            iso = self.string()
            extras: dict[str, Any] = {}
            while self.peek(","):
                self.expect(",")
                self.skip_space()
                arg = _BARE.match(text, self.pos)
                if arg is None:
                    raise self.fail("expected zone=, name= or fold=")
                self.pos = arg.end()
                self.expect("=")
                extras[arg.group()] = self.literal(key_part=False)
            self.expect(")")
            return _make_datetime(iso, extras)
        raise self.fail(f'{name!r} is not a value (quote a string: "{name}")')

    def key_form(self, name: str) -> Any:
        """``datetime("...")``, ``date("...")`` or ``uuid("...")`` in a key: the key part
        an index stores for that value (UTC microseconds, the ordinal, 16 bytes)."""
        self.expect("(")
        self.skip_space()
        if not self.peek('"'):
            raise self.fail(f"{name}() in a key takes a string")
        text = self.string()
        self.expect(")")
        try:
            if name == "datetime":
                when = datetime.fromisoformat(text)
                if when.utcoffset() is None:
                    raise self.fail(
                        f"datetime({text!r}) has no UTC offset, so it is no instant an index "
                        'holds; add one, e.g. "+00:00"'
                    )
                delta = when - datetime(1970, 1, 1, tzinfo=UTC)
                return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
            if name == "date":
                return date.fromisoformat(text).toordinal()
            return uuid.UUID(text).bytes
        except ValueError as exc:
            if isinstance(exc, InvalidArgumentError):
                raise
            raise self.fail(f"{text!r} is not a {name} ({exc})") from None

    def value(self) -> Any:
        if self.peek("["):
            self.expect("[")
            items: list[Any] = []
            while not self.peek("]"):
                items.append(self.value())
                if not self.peek("]"):
                    self.expect(",")
            self.expect("]")
            return items
        if self.peek("{"):
            self.expect("{")
            mapping: dict[Any, Any] = {}
            while not self.peek("}"):
                k = _freeze(self.value())
                self.expect(":")
                mapping[k] = self.value()
                if not self.peek("}"):
                    self.expect(",")
            self.expect("}")
            return mapping
        return self.literal(key_part=False)


def _freeze(v: Any) -> Any:
    """A map key as the value codec reads it back: lists become tuples."""
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        raise InvalidArgumentError("A map cannot be the key of a map.")
    return v


def _number(text: str) -> int | float:
    body = text.lstrip("-")
    if body in ("inf", "nan") or any(c in body for c in ".eE"):
        return float(text)
    return int(text)


def _is_bare_key_word(part: str) -> bool:
    """Whether a str key part prints without quotes and reads back as the same str."""
    if part in _WORDS or _ID_WORD.fullmatch(part) is None:
        return False
    if _BARE.fullmatch(part) is not None:
        return True
    # It starts with a digit: the parser reads the longer of the number and
    # the word there, so it is a str only if the number stops short of its end.
    number = _NUMBER.match(part)
    return number is None or number.end() < len(part)


def parse_key(text: str) -> tuple[Any, ...]:
    """Reads a key in the text form: parts separated by commas; "" is the empty key.

    Text that starts with ``[`` is the key's typed JSON array, as ``--json`` prints it.
    """
    if text.lstrip().startswith("["):
        try:
            j = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError(
                f"Cannot read the key {text!r}: it starts with '[' but is not a JSON "
                f"array ({exc.msg} at character {exc.pos + 1}); "
                "see 'kvmodel help-text' for the text form."
            ) from exc
        return key_from_json(j)
    p = _Parser(text, "the key")
    parts: list[Any] = []
    if p.at_end():
        return ()
    while True:
        parts.append(p.literal(key_part=True))
        if p.at_end():
            return tuple(parts)
        p.expect(",")


def parse_value(text: str) -> Any:
    """Reads a value in the text form."""
    p = _Parser(text, "the value")
    value = p.value()
    if not p.at_end():
        raise p.fail("unexpected text after the value")
    return value


# ---------------------------------------------------------------------------
# Typed JSON


def value_to_json(v: object) -> Any:
    """A value as typed JSON (a structure ``json.dumps`` writes exactly)."""
    if v is None or isinstance(v, bool | str):
        return v
    if isinstance(v, int):
        return v if -_SAFE_INT < v < _SAFE_INT else {"$int": str(v)}
    if isinstance(v, float):
        return v if math.isfinite(v) else {"$float": _format_float(v)}
    if isinstance(v, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(v)).decode("ascii")}
    if isinstance(v, KvU64):
        return {"$u64": str(v.value)}
    if isinstance(v, datetime):
        return {"$datetime": v.isoformat(), **_datetime_extras(v)}
    if isinstance(v, list | tuple):
        return [value_to_json(x) for x in v]
    if isinstance(v, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in v):
            return {k: value_to_json(x) for k, x in v.items()}
        return {"$map": [[value_to_json(k), value_to_json(x)] for k, x in v.items()]}
    raise InvalidArgumentError(f"{type(v).__name__} {v!r} has no JSON form.")


def value_from_json(j: Any) -> Any:
    """A value from its typed JSON (as ``json.loads`` returns it)."""
    if j is None or isinstance(j, bool | str | int | float):
        return j
    if isinstance(j, list):
        return [value_from_json(x) for x in j]
    if isinstance(j, dict):
        tags = [k for k in j if k.startswith("$")]
        if not tags:
            return {k: value_from_json(x) for k, x in j.items()}
        tag = tags[0]
        body = j[tag]
        try:
            if tag == "$int" and len(j) == 1:
                return int(body)
            if tag == "$float" and len(j) == 1 and body in ("nan", "inf", "-inf"):
                return float(body)
            if tag == "$bytes" and len(j) == 1:
                return base64.b64decode(body, validate=True)
            if tag == "$u64" and len(j) == 1:
                return KvU64(int(body))
            if tag == "$datetime":
                return _make_datetime(body, {k: x for k, x in j.items() if k != tag})
            if tag == "$map" and len(j) == 1:
                return {_freeze(value_from_json(k)): value_from_json(x) for k, x in body}
        except (TypeError, ValueError, binascii.Error) as exc:
            if isinstance(exc, InvalidArgumentError):
                raise
            raise InvalidArgumentError(f"{json.dumps(j)[:80]} is not valid typed JSON.") from exc
        raise InvalidArgumentError(f"{json.dumps(j)[:80]} is not valid typed JSON.")
    raise InvalidArgumentError(f"{j!r} is not typed JSON.")


def key_to_json(key: tuple[Any, ...] | list[Any]) -> list[Any]:
    """A key as a typed JSON array of its parts."""
    return [value_to_json(p) for p in key]


def key_from_json(j: Any) -> tuple[Any, ...]:
    """A key from its typed JSON array; each part must be a key part type."""
    if not isinstance(j, list):
        raise InvalidArgumentError(f"A key in JSON is an array of parts, not {j!r}.")
    parts = tuple(value_from_json(p) for p in j)
    for p in parts:
        if not isinstance(p, str | int | float | bytes):  # bool is an int
            raise InvalidArgumentError(f"{p!r} in the JSON key {j!r} is not a key part.")
    return parts
