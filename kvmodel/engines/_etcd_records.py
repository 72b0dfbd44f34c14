"""The etcd engine's records: how a value is stored in etcd, and the txn operations built from it.

A stored value is a small header (expiry deadline, encoding) followed by the
value, so reads can hide expired keys before etcd's lease deletes them.
:class:`TxnPlan` folds a commit's mutations per key, since etcd rejects a key
twice in one txn.
"""

from __future__ import annotations

import struct
from typing import Any

from kvmodel.engines._etcd_transport import (
    b64,
    unb64,
)
from kvmodel.engines.base import (
    AtomicWrite,
    MutationKind,
    RawEntry,
    apply_numeric_mutation,
    versionstamp_from_counter,
    versionstamped_key,
)
from kvmodel.errors import EngineError

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
        if len(raw) < STORED_HEADER.size:
            raise EngineError(f"The etcd value at {key!r} has no kvmodel header.")
        self.key = key
        deadline, encoding = STORED_HEADER.unpack_from(raw)
        self.deadline_ms: int = deadline
        self.encoding: int = encoding
        self.value = raw[STORED_HEADER.size :]
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
