"""Checks of the rows SqliteEngine reads back: SQLite stores any type in any column.

A file written by something other than kvmodel can hold text where a value
belongs, or an integer that ``bytes()`` would turn into hundreds of megabytes;
every reader of a ``kv`` or ``queue`` row goes through these checks, which
raise :class:`DecodeError` naming the key or message at fault.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

import msgpack

from kvmodel._accel import speedups
from kvmodel._text import brief_repr
from kvmodel.engines.base import (
    VALUE_ENCODINGS,
    RawEntry,
    check_stored_value,
    describe_stored_key,
    versionstamp_from_counter,
)
from kvmodel.errors import DecodeError
from kvmodel.keys import decode_key, encode_key
from kvmodel.limits import (
    MAX_KEY_SIZE,
    MAX_READ_KEY_SIZE,
    MAX_TOTAL_KEY_SIZE,
    MAX_VALUE_SIZE,
)

# Bounds on the msgpack columns of a queue row, far above what kvmodel writes
# (keys_if_undelivered is bounded by the total key size of one commit, the
# schedule by 5 intervals), so a damaged row cannot make the decoder allocate
# more than that.
MAX_COLUMN_BYTES = 2 * MAX_TOTAL_KEY_SIZE
MAX_ATTEMPT = 1 << 62


def unpack_column(where: str, column: str, blob: object) -> object:
    """Unpacks a msgpack column of a queue row; DecodeError when it is not one."""
    if type(blob) is not bytes or len(blob) > MAX_COLUMN_BYTES:
        size = f" of {len(blob)}" if isinstance(blob, bytes | str) else ""
        raise DecodeError(
            f"The {column} column of {where} is a {type(blob).__name__}{size}, "
            f"not msgpack bytes of at most {MAX_COLUMN_BYTES}."
        )
    try:
        return msgpack.unpackb(
            blob,
            raw=False,
            max_bin_len=MAX_KEY_SIZE,
            max_str_len=0,
            max_array_len=MAX_COLUMN_BYTES,
            max_map_len=0,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        detail = str(exc).rstrip(".") or type(exc).__name__
        raise DecodeError(
            f"The {column} column of {where} is not valid msgpack ({detail})."
        ) from exc


def checked_entry(
    key: bytes, value: object, encoding: object, version: object, expiration_ms: object
) -> RawEntry:
    """The entry a ``kv`` row holds, once every column has the type kvmodel writes.

    SQLite stores any type in any column, so a file written by something else
    can hold text where a value belongs, or an integer that ``bytes()`` would
    turn into hundreds of megabytes; those raise DecodeError naming the key.
    """
    if not (
        type(value) is bytes
        and len(value) <= MAX_VALUE_SIZE
        and type(encoding) is int
        and encoding in VALUE_ENCODINGS
        and type(version) is int
        and version >= 0
        and (expiration_ms is None or type(expiration_ms) is int)
        and len(key) <= MAX_READ_KEY_SIZE
    ):
        raise damaged_row(key, value, encoding, version, expiration_ms)
    return RawEntry(key, value, encoding, versionstamp_from_counter(version))


def checked_entries(rows: list[tuple[bytes, object, object, object, object]]) -> list[RawEntry]:
    """``checked_entry(*row)`` for each (key, value, encoding, version, expiry) row.

    The pure-Python reference of the accelerator's twin of the same name;
    checked_entry's test is inlined, as a listing runs it once per row.
    """
    out: list[RawEntry] = []
    append = out.append
    for key, value, encoding, version, expiration_ms in rows:
        if (
            type(value) is bytes
            and len(value) <= MAX_VALUE_SIZE
            and type(encoding) is int
            and encoding in VALUE_ENCODINGS
            and type(version) is int
            and version >= 0
            and (expiration_ms is None or type(expiration_ms) is int)
            and len(key) <= MAX_READ_KEY_SIZE
        ):
            append(RawEntry(key, value, encoding, version.to_bytes(8, "big") + b"\x00\x00"))
        else:
            append(checked_entry(key, value, encoding, version, expiration_ms))  # raises
    return out


def checked_point(key: bytes, row: tuple[object, object, object, object]) -> RawEntry:
    """``checked_entry(key, *row)`` for a point read's (value, encoding, version, expiry) row.

    The pure-Python reference of the accelerator's twin of the same name.
    """
    return checked_entry(key, *row)


def checked_linked(
    rows: list[tuple[Any, ...]], now_ms: int
) -> list[tuple[RawEntry, RawEntry | None]]:
    """The (entry, linked document) pairs of a joined read of index entries.

    Each row is an index entry's (key, value, encoding, version, expiry), then
    its linked document's (value, encoding, version, expiry) and whether there
    is one; the document's key is the entry's value. A document past its
    deadline at ``now_ms`` is None, but its row is still checked first.
    The pure-Python reference of the accelerator's twin of the same name.
    """
    out: list[tuple[RawEntry, RawEntry | None]] = []
    for k, v, enc, ver, exp, tv, tenc, tver, texp, linked in rows:
        entry = checked_entry(k, v, enc, ver, exp)
        target = None
        if linked:
            target = checked_entry(v, tv, tenc, tver, texp)
            if texp is not None and texp <= now_ms:
                target = None
        out.append((entry, target))
    return out


checked_entries_py = checked_entries
checked_point_py = checked_point
checked_linked_py = checked_linked
if speedups is not None:
    speedups.install_row_checks(
        checked_entry=checked_entry,
        raw_entry=RawEntry,
        value_encodings=VALUE_ENCODINGS,
        max_value_size=MAX_VALUE_SIZE,
        max_read_key_size=MAX_READ_KEY_SIZE,
    )
    checked_entries = speedups.checked_entries
    checked_point = speedups.checked_point
    checked_linked = speedups.checked_linked


def damaged_row(
    key: bytes, value: object, encoding: object, version: object, expiration_ms: object
) -> DecodeError:
    """The DecodeError for a ``kv`` row with a column kvmodel cannot have written."""
    where = f"the key {describe_stored_key(key)}"
    advice = "the database was written by something other than kvmodel: delete or rewrite that key."
    if len(key) > MAX_READ_KEY_SIZE:
        return DecodeError(
            f"The stored key {describe_stored_key(key)} is {len(key)} bytes, longer than "
            f"any key can be ({MAX_READ_KEY_SIZE}); {advice}"
        )
    try:
        check_stored_value(where, value, encoding)
    except DecodeError as exc:
        return exc
    if type(version) is not int or version < 0:
        return DecodeError(
            f"The stored version of {where} is {describe_stored_key(version)}, "
            f"not a commit counter; {advice}"
        )
    return DecodeError(
        f"The stored expiry of {where} is {describe_stored_key(expiration_ms)}, "
        f"not a time in milliseconds; {advice}"
    )


@dataclasses.dataclass(frozen=True)
class UnreachableRow:
    """A ``kv`` row that no read can reach, as :meth:`SqliteEngine.unreachable_rows` reports it.

    Attributes:
        key: the stored key column, shown for a message (its repr, cut when long).
        reason: why no read reaches it, and what to do.
    """

    key: str
    reason: str

    def __str__(self) -> str:
        return f"the stored key {self.key}: {self.reason}"


# Reads compare keys as blobs, and SQLite orders every NULL, INTEGER, REAL and
# TEXT before any BLOB, so such a key is outside every range and every point read.
SELECT_NON_BLOB_KEYS = "SELECT k, typeof(k) FROM kv WHERE typeof(k) != 'blob' ORDER BY k LIMIT ?"
SELECT_BLOB_KEYS = "SELECT k FROM kv WHERE typeof(k) = 'blob' ORDER BY k"


def unreachable_rows_on(conn: sqlite3.Connection, limit: int) -> list[UnreachableRow]:
    """At most ``limit`` rows of ``kv`` whose key no get, list or watch can reach."""
    advice = (
        "the database was written by something other than kvmodel; delete that row with sqlite3"
    )
    out = [
        UnreachableRow(
            brief_repr(k if not isinstance(k, str) else k[:64]),
            f"the key is stored as {kind.upper()}, not as a BLOB, so no read compares equal "
            f"to it; {advice}.",
        )
        for k, kind in conn.execute(SELECT_NON_BLOB_KEYS, (limit,))
    ]
    for (k,) in conn.execute(SELECT_BLOB_KEYS):
        if len(out) >= limit:
            break
        if len(k) > MAX_READ_KEY_SIZE or k[:1] == b"\xff":
            # A listing meets an overlong key and raises DecodeError naming it;
            # 0xff starts the object mapper's own keys, which it reads by bytes.
            continue
        try:
            key = decode_key(k)
        except DecodeError as exc:
            out.append(
                UnreachableRow(
                    brief_repr(k[:64]), f"the key bytes do not decode ({exc}); {advice}."
                )
            )
            continue
        if encode_key(key) != k:
            out.append(
                UnreachableRow(
                    brief_repr(k[:64]),
                    f"the bytes decode to {key!r} but are not its encoding, so get, set and "
                    f"delete of {key!r} address another row; {advice}.",
                )
            )
    return out
