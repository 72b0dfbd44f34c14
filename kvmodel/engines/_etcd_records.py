"""The etcd engine's records: how a value is stored in etcd, and the txn operations built from it.

A stored value is a small header (expiry deadline, encoding) followed by the
value, so reads can hide expired keys before etcd's lease deletes them.
:class:`TxnPlan` folds a commit's mutations per key, since etcd rejects a key
twice in one txn.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from kvmodel.engines._etcd_transport import (
    b64,
    unb64,
)
from kvmodel.engines.base import (
    AtomicWrite,
    MutationKind,
    RawEntry,
    apply_numeric_mutation,
    check_stored_value,
    describe_stored_key,
    read_stored_backoff,
    read_stored_dead_letter_keys,
    versionstamp_from_counter,
    versionstamped_key,
)
from kvmodel.errors import DecodeError
from kvmodel.limits import MAX_READ_KEY_SIZE, MAX_TOTAL_KEY_SIZE, MAX_VALUE_SIZE

Json = dict[str, Any]

NO_DEADLINE = 0xFFFF_FFFF_FFFF_FFFF
"""The deadline stored for a key that never expires."""
STORED_HEADER = struct.Struct(">QB")  # deadline_ms, encoding


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with ``prefix``."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return b"\x00"  # etcd: "to the end of the keyspace"
    p[-1] += 1
    return bytes(p)


def as_int(value: Any) -> int:
    """A gateway int64 (a JSON string, absent when zero)."""
    return int(value) if value else 0


class Stored:
    """A decoded data key: the etcd record plus its header."""

    __slots__ = ("create_revision", "deadline_ms", "encoding", "key", "mod_revision", "value")

    def __init__(self, key: bytes, kv: Json) -> None:
        raw = unb64(kv.get("value"))
        # Something other than kvmodel may have written under the prefix: the
        # value is checked as a SQLite row is (see base.check_stored_value).
        if len(key) > MAX_READ_KEY_SIZE:
            raise DecodeError(
                f"The etcd key {describe_stored_key(key)} is {len(key)} bytes, longer than "
                f"any key can be ({MAX_READ_KEY_SIZE}); it was written by something other "
                "than kvmodel: delete it."
            )
        if len(raw) < STORED_HEADER.size:
            raise DecodeError(
                f"The etcd value of the key {describe_stored_key(key)} has no kvmodel header; "
                "it was written by something other than kvmodel: delete or rewrite it."
            )
        self.key = key
        deadline, encoding = STORED_HEADER.unpack_from(raw)
        self.deadline_ms: int = deadline
        self.value, self.encoding = check_stored_value(
            f"the key {describe_stored_key(key)}", raw[STORED_HEADER.size :], encoding
        )
        self.mod_revision = as_int(kv.get("mod_revision"))
        self.create_revision = as_int(kv.get("create_revision"))

    def expired(self, now_ms: int) -> bool:
        return self.deadline_ms <= now_ms

    def entry(self) -> RawEntry:
        return RawEntry(
            self.key, self.value, self.encoding, versionstamp_from_counter(self.mod_revision)
        )


def encode_stored(value: bytes, encoding: int, expire_at_ms: int | None) -> bytes:
    deadline = NO_DEADLINE if expire_at_ms is None else max(0, expire_at_ms)
    return STORED_HEADER.pack(deadline, encoding) + value


def put_op(key: bytes, value: bytes, lease: int = 0) -> Json:
    req: Json = {"key": b64(key), "value": b64(value)}
    if lease:
        req["lease"] = str(lease)
    return {"request_put": req}


def delete_op(key: bytes) -> Json:
    return {"request_delete_range": {"key": b64(key)}}


def range_op(key: bytes, end: bytes | None = None, **extra: Any) -> Json:
    req: Json = {"key": b64(key), **extra}
    if end is not None:
        req["range_end"] = b64(end)
    return {"request_range": req}


def cmp_created(key: bytes, revision: int) -> Json:
    return {
        "key": b64(key),
        "target": "CREATE",
        "result": "EQUAL",
        "create_revision": str(revision),
    }


def cmp_mod(key: bytes, revision: int) -> Json:
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def cmp_alive(key: bytes, now_ms: int) -> Json:
    # deadline > now_ms  <=>  value > be64(now_ms) ++ 0xff, since value[8] < 0xff.
    bound = now_ms.to_bytes(8, "big") + b"\xff"
    return {"key": b64(key), "target": "VALUE", "result": "GREATER", "value": b64(bound)}


class TxnPlan:
    """The folded form of a commit's mutations: one final operation per key."""

    def __init__(self, write: AtomicWrite) -> None:
        self.write = write
        # Keys whose first mutation is numeric: their stored value must be read.
        self.read_keys: list[bytes] = []
        seen: set[bytes] = set()
        self.versionstamped = False
        for m in write.mutations:
            if m.kind is MutationKind.SET_SUFFIX_VERSIONSTAMPED_KEY:
                self.versionstamped = True
                continue
            if m.key not in seen:
                seen.add(m.key)
                if m.kind in (MutationKind.SUM, MutationKind.MIN, MutationKind.MAX):
                    self.read_keys.append(m.key)

    def fold(
        self, versionstamp: bytes, stored: dict[bytes, Stored | None], now_ms: int
    ) -> dict[bytes, tuple[bytes, int | None] | None]:
        """Key -> (encoded stored bytes, expire_at_ms) for a put, or None for a delete.

        Raises KvTypeError when a numeric mutation meets a value that is not LE64.
        """
        final: dict[bytes, tuple[bytes, int, int | None] | None] = {}
        for m in self.write.mutations:
            key = m.key
            if m.kind is MutationKind.SET_SUFFIX_VERSIONSTAMPED_KEY:
                key = versionstamped_key(m.key, versionstamp)
            if m.kind in (MutationKind.SET, MutationKind.SET_SUFFIX_VERSIONSTAMPED_KEY):
                final[key] = (m.value, m.encoding, m.expire_at_ms)
            elif m.kind is MutationKind.DELETE:
                final[key] = None
            else:
                if key in final:
                    cur = final[key]
                    current = None if cur is None else (cur[0], cur[1])
                else:
                    s = stored.get(key)
                    current = None if s is None or s.expired(now_ms) else (s.value, s.encoding)
                result = apply_numeric_mutation(m.kind, current, m.value)
                final[key] = (result, 2, None)
        return {
            k: None if v is None else (encode_stored(v[0], v[1], v[2]), v[2])
            for k, v in final.items()
        }


# ---------------------------------------------------------------------------
# Queue records: msgpack [attempt, encoding, payload, keys_if_undelivered,
# backoff_schedule_ms, claimed]. ``claimed`` is set when a listener takes the
# message; finding it set on a message nobody holds a claim on means that
# delivery was abandoned (its listener died), which counts as a failed attempt.
# Records written before the flag existed have 5 items and count as unclaimed.

_MAX_RECORD_BYTES = 2 * MAX_TOTAL_KEY_SIZE + 2 * MAX_VALUE_SIZE


class QueueRecord:
    """A queue message as stored in etcd, every field checked."""

    __slots__ = ("attempt", "backoff", "claimed", "encoding", "keys_if_undelivered", "payload")

    def __init__(
        self,
        attempt: int,
        encoding: int,
        payload: bytes,
        keys_if_undelivered: tuple[bytes, ...],
        backoff: tuple[int, ...],
        claimed: bool = False,
    ) -> None:
        self.attempt = attempt
        self.encoding = encoding
        self.payload = payload
        self.keys_if_undelivered = keys_if_undelivered
        self.backoff = backoff
        self.claimed = claimed

    def pack(self) -> bytes:
        packed: bytes = msgpack.packb(
            [
                self.attempt,
                self.encoding,
                self.payload,
                list(self.keys_if_undelivered),
                list(self.backoff),
                self.claimed,
            ]
        )
        return packed


def _unpack_record(where: str, raw: bytes) -> list[Any]:
    if len(raw) > _MAX_RECORD_BYTES:
        raise DecodeError(f"The record of {where} is {len(raw)} bytes, too long for a message.")
    try:
        items = msgpack.unpackb(
            raw,
            raw=False,
            max_bin_len=MAX_VALUE_SIZE,
            max_str_len=MAX_VALUE_SIZE,  # none is valid, but a str field may be the only damage
            max_array_len=_MAX_RECORD_BYTES,
            max_map_len=0,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise DecodeError(f"The record of {where} is not valid msgpack: {exc}.") from exc
    if not isinstance(items, list) or len(items) not in (5, 6):
        raise DecodeError(f"The record of {where} is not a list of 5 or 6 fields.")
    return items


def read_queue_record(where: str, raw: bytes) -> QueueRecord:
    """Decodes and checks a stored queue record.

    Raises:
        DecodeError: a field does not have the type and bounds kvmodel writes.
    """
    items = _unpack_record(where, raw)
    attempt, encoding, payload, keys, backoff = items[:5]
    claimed = items[5] if len(items) == 6 else False
    payload, encoding = check_stored_value(where, payload, encoding)
    dead_letter_keys = read_stored_dead_letter_keys(where, keys)
    if type(attempt) is not int or not 1 <= attempt < 1 << 62:
        raise DecodeError(
            f"The attempt count of {where} is {describe_stored_key(attempt)}, not a positive int."
        )
    if type(claimed) is not bool:
        raise DecodeError(f"The claimed flag of {where} is {describe_stored_key(claimed)}.")
    return QueueRecord(
        attempt, encoding, payload, dead_letter_keys, read_stored_backoff(where, backoff), claimed
    )


def salvage_queue_record(where: str, raw: bytes) -> tuple[bytes, int, tuple[bytes, ...]] | None:
    """The (payload, encoding, keys_if_undelivered) of a damaged record, if they are sound.

    A record whose value and dead-letter keys are sound (and that has at least
    one key) can still be dead-lettered; any other damaged record is quarantined.
    """
    try:
        items = _unpack_record(where, raw)
        payload, encoding = check_stored_value(where, items[2], items[1])
        keys = read_stored_dead_letter_keys(where, items[3])
    except DecodeError:
        return None
    return (payload, encoding, keys) if keys else None
