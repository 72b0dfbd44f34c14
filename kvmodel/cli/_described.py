"""Keys and values shown as the stored model descriptions explain them.

An index turns the values it indexes into key parts that keep their order
(docs/explanation/models-and-keys.md): a datetime becomes an int of UTC
microseconds, a date its ordinal, a UUID its 16 bytes, an Enum its value. And
every index entry's value is its document's encoded key. Printed raw, a key of
``orders_by_created`` reads ``orders_by_created,1714564800000000,01HX...`` and
its value ``x"026f7264657273..."``.

The object mapper stores a description of each model it has met
(:mod:`kvmodel.orm._catalog`): its prefix, its primary key and its indexes,
with the form of every key part. :class:`Descriptions` reads them once, and
then formats a key of a described keyspace with a typed literal for each part
that has one (``datetime("2024-05-01T12:00:00+00:00")``, ``date("2024-05-01")``,
``uuid("...")``) and an index entry's value as ``key(orders,01HX...)``. The
text form reads these literals back to the same stored bytes
(:mod:`kvmodel.cli._text`), so a printed key pastes into ``get``, ``rm`` or
``--start``. A key or value the descriptions do not explain, or one that does
not fit its description (a write that bypassed the object mapper), prints as
it is stored. ``--json`` output never uses them: it is the stored form, exactly.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from kvmodel.cli._text import format_part, format_value
from kvmodel.engines.base import Consistency, ReadRange
from kvmodel.errors import DecodeError, EngineError
from kvmodel.keys import decode_key, encode_key

if TYPE_CHECKING:
    from kvmodel._kv import Kv

__all__ = ["Descriptions"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_BATCH = 500


class _Space:
    """What the descriptions say of one keyspace (a first key part)."""

    __slots__ = ("kinds", "points_to")

    def __init__(self, kinds: list[str] | None, points_to: str | None) -> None:
        # The form of each key part after the first, when the description names them.
        self.kinds = kinds
        # For an index: the prefix of the documents its entries' values name.
        self.points_to = points_to


class Descriptions:
    """The stored model descriptions of one store, as a key and value formatter."""

    def __init__(self, spaces: dict[str, _Space]) -> None:
        self._spaces = spaces

    @classmethod
    def read(cls, kv: Kv) -> Descriptions:
        """Reads every stored model description of ``kv`` (one range read a batch)."""
        from kvmodel.orm._catalog import SYSTEM_KEY_PREFIX

        base = SYSTEM_KEY_PREFIX + encode_key(("kvmodel", "models"))
        start, end = base, base + b"\xff"
        spaces: dict[str, _Space] = {}
        while True:
            try:
                rows = kv.read_range(ReadRange(start, end, _BATCH), Consistency.STRONG)
            except EngineError:
                # A store that cannot hold kvmodel's reserved keys (a remote that
                # refuses the 0xFF range) has no descriptions: keys print as stored.
                return cls({})
            for row in rows:
                _add(spaces, row.key, row.value, row.encoding)
            if len(rows) < _BATCH:
                return cls(spaces)
            start = rows[-1].key + b"\x00"

    def __bool__(self) -> bool:
        return bool(self._spaces)

    def format_key(self, key: tuple[Any, ...]) -> str:
        """The text form of ``key``, with typed literals where its description has them."""
        space = self._spaces.get(key[0]) if key and isinstance(key[0], str) else None
        kinds = space.kinds if space is not None else None
        if kinds is None or len(kinds) != len(key) - 1:
            return ",".join(format_part(p) for p in key)
        return ",".join(
            [format_part(key[0])] + [_part(k, p) for k, p in zip(kinds, key[1:], strict=True)]
        )

    def format_value(self, key: tuple[Any, ...], value: object) -> str:
        """The text form of the value at ``key``: ``key(...)`` for an index entry's
        document key, the plain text form otherwise."""
        space = self._spaces.get(key[0]) if key and isinstance(key[0], str) else None
        if space is not None and space.points_to is not None and isinstance(value, bytes):
            try:
                pointed = decode_key(value)
            except DecodeError:
                pointed = None
            if pointed is not None and pointed[:1] == (space.points_to,):
                return f"key({self.format_key(pointed)})"
        return format_value(value)


def _add(spaces: dict[str, _Space], raw_key: bytes, data: bytes, encoding: int) -> None:
    """Records what one stored description says; a damaged one is skipped."""
    from kvmodel._values import decode_value
    from kvmodel.orm._catalog import SYSTEM_KEY_PREFIX

    try:
        key = decode_key(raw_key[len(SYSTEM_KEY_PREFIX) :])
        described = decode_value(data, encoding)
    except DecodeError:
        return
    if len(key) != 3 or not isinstance(key[2], str) or not isinstance(described, dict):
        return
    prefix = key[2]
    pk_kinds = _kinds(described.get("primary_key_parts"))
    spaces[prefix] = _Space(pk_kinds, None)
    indexes = described.get("indexes")
    if not isinstance(indexes, dict):
        return
    for name, index in indexes.items():
        if isinstance(name, str) and isinstance(index, dict):
            spaces[f"{prefix}_{name}"] = _Space(_kinds(index.get("parts")), prefix)


def _kinds(found: object) -> list[str] | None:
    if isinstance(found, list) and all(isinstance(k, str) for k in found):
        return found
    return None


def _part(kind: str, part: object) -> str:
    """One key part as the literal of its described form, when it has that form."""
    if type(part) is int and kind == "datetime":
        try:
            when = _EPOCH + timedelta(microseconds=part)
        except OverflowError:
            return format_part(part)
        return f"datetime({json.dumps(when.isoformat())})"
    if type(part) is int and kind == "date" and 1 <= part <= date.max.toordinal():
        return f"date({json.dumps(date.fromordinal(part).isoformat())})"
    if type(part) is bytes and kind == "uuid" and len(part) == 16:
        return f"uuid({json.dumps(str(uuid.UUID(bytes=part)))})"
    return format_part(part)
