"""What ``kvmodel stats`` and ``kvmodel queue`` can learn from each engine.

The engine protocol has no way to list queue messages (a listener only
dequeues the next one), so this module reads each engine's own layout,
read-only:

* SQLite: the ``queue`` table (ready, delayed and leased messages) and the
  ``queue_quarantine`` table (damaged messages moved aside), through a
  separate read-only connection; the file sizes of the database and its WAL.
* etcd: the ``Q`` subspace of the engine's prefix (messages) and ``X``
  (damaged messages moved aside).
* memory: a store the command line opens is new and empty, so it has no
  messages to list.

A message given up on (its backoff schedule exhausted) is no longer a queue
message anywhere: its value was written to its ``keys_if_undelivered``, which
are ordinary keys; ``kvmodel queue requeue`` enqueues such a key's value again.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Any

import attrs
import msgpack

from kvmodel._values import decode_value
from kvmodel.engines.base import Engine
from kvmodel.keys import decode_key

__all__ = ["QueueInfo", "QueuedMessage", "file_sizes", "queue_info"]


@attrs.frozen
class QueuedMessage:
    """One message as ``kvmodel queue ls`` shows it."""

    id: str
    state: str  # "ready", "delayed", "leased" or "quarantined"
    ready_at_ms: int | None
    attempt: int | None
    value: Any
    keys_if_undelivered: tuple[tuple[Any, ...], ...]
    note: str = ""


@attrs.frozen
class QueueInfo:
    """The messages of an engine's queue, or why they cannot be listed."""

    messages: tuple[QueuedMessage, ...]
    supported: bool = True
    why_not: str = ""

    def count(self, state: str) -> int:
        return sum(1 for m in self.messages if m.state == state)


def _value(payload: object, encoding: object) -> Any:
    try:
        return decode_value(payload, encoding)  # type: ignore[arg-type]
    except Exception as exc:  # a damaged message: show why instead of its value
        return f"<undecodable: {exc}>"


def _keys(blob: object) -> tuple[tuple[Any, ...], ...]:
    try:
        keys: Any = msgpack.unpackb(blob, raw=False) if isinstance(blob, bytes) else blob
        return tuple(decode_key(k) for k in keys)
    except Exception:
        return ()


def queue_info(engine: Engine, now_ms: int) -> QueueInfo:
    """Lists the queue of ``engine`` as far as its layout can be read."""
    name = type(engine).__name__
    if name == "SqliteEngine":
        return _sqlite_queue(str(engine.path), now_ms)  # type: ignore[attr-defined]
    if name == "EtcdEngine":
        return _etcd_queue(engine, now_ms)
    if name == "MemoryEngine":
        return QueueInfo(())
    return QueueInfo((), False, f"the {name} has no known queue layout")


def _sqlite_queue(path: str, now_ms: int) -> QueueInfo:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out: list[QueuedMessage] = []
        rows = conn.execute(
            "SELECT id, ready_at_ms, payload, encoding, keys_if_undelivered, attempt, "
            "lease_until_ms FROM queue ORDER BY ready_at_ms, id"
        ).fetchall()
        for mid, ready, payload, encoding, keys, attempt, lease in rows:
            if lease is not None and lease > now_ms:
                state = "leased"
            elif ready > now_ms:
                state = "delayed"
            else:
                state = "ready"
            out.append(
                QueuedMessage(
                    str(mid), state, ready, attempt, _value(payload, encoding), _keys(keys)
                )
            )
        has_quarantine = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'queue_quarantine'"
        ).fetchone()
        if has_quarantine:
            for mid, ready, payload, encoding, keys, attempt, reason in conn.execute(
                "SELECT id, ready_at_ms, payload, encoding, keys_if_undelivered, attempt, reason "
                "FROM queue_quarantine ORDER BY id"
            ):
                out.append(
                    QueuedMessage(
                        str(mid),
                        "quarantined",
                        ready if isinstance(ready, int) else None,
                        attempt if isinstance(attempt, int) else None,
                        _value(payload, encoding),
                        _keys(keys),
                        str(reason),
                    )
                )
        return QueueInfo(tuple(out))
    finally:
        conn.close()


def _etcd_queue(engine: Any, now_ms: int) -> QueueInfo:
    from kvmodel.engines._etcd_records import prefix_end, read_queue_record
    from kvmodel.engines._etcd_transport import b64, unb64

    out: list[QueuedMessage] = []
    for prefix, quarantined in ((engine._queue, False), (engine._quarantine, True)):
        resp = engine._call(
            "/v3/kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
        )
        for kv in resp.get("kvs", []):
            key = unb64(kv["key"])
            rest = key[len(prefix) :]
            ready = int.from_bytes(rest[:8], "big")
            mid = rest[8:].hex()
            raw = unb64(kv.get("value"))
            if quarantined:
                out.append(QueuedMessage(mid, "quarantined", ready, None, raw, ()))
                continue
            try:
                record = read_queue_record(f"queue message {mid}", raw)
            except Exception as exc:
                out.append(QueuedMessage(mid, "ready", ready, None, f"<undecodable: {exc}>", ()))
                continue
            if record.claimed:
                state = "leased"
            elif ready > now_ms:
                state = "delayed"
            else:
                state = "ready"
            out.append(
                QueuedMessage(
                    mid,
                    state,
                    ready,
                    record.attempt,
                    _value(record.payload, record.encoding),
                    tuple(decode_key(k) for k in record.keys_if_undelivered),
                )
            )
    return QueueInfo(tuple(out))


def file_sizes(engine: Engine) -> dict[str, int] | None:
    """The database file and its WAL and shared-memory files, for a SQLite engine."""
    if type(engine).__name__ != "SqliteEngine":
        return None
    path = str(engine.path)  # type: ignore[attr-defined]
    sizes = {}
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):  # no WAL or shm file while closed
            sizes[path + suffix] = os.path.getsize(path + suffix)
    return sizes
