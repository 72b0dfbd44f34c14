"""Deno's SQLite layout for ``Deno.openKv(path)`` files (denokv's sqlite backend), as facts.

Tables (after Deno's three schema migrations; ``migration_state`` row 0 holds 3):

* ``data_version(k, version, seq)``: one row, k = 0. ``version`` is the commit
  counter; Deno adds a random 1..9 to it per commit and 1 per expiry sweep.
* ``kv(k, v, v_encoding, version, seq, expiration_ms)``, without rowid: a key's
  encoded bytes, its value, the value's encoding (1 = V8, 2 = LE64, 3 = bytes),
  the commit counter that wrote it, and its deadline in ms (-1: none).
  A key's versionstamp is ``version`` as 8 big-endian bytes and two zero bytes.
* ``queue(ts, id, data, backoff_schedule, keys_if_undelivered)``: ready
  messages: the ready time in ms, a UUID, the V8 payload, the remaining
  backoff schedule as a JSON list of ms, the dead-letter keys as a JSON list
  of byte lists.
* ``queue_running(deadline, id, ...)``: leased messages with the same columns;
  Deno keeps its own leases 5 s ahead and requeues any whose deadline passed.

Deno puts the file in WAL mode and, on open, applies the migrations the file
lacks; kvmodel does the same, so either side can create the file.
"""

from __future__ import annotations

__all__ = [
    "DENO_ENCODING_BYTES",
    "DENO_ENCODING_LE64",
    "DENO_ENCODING_V8",
    "DENO_LEASE_SECONDS",
    "MIGRATIONS",
]

DENO_ENCODING_V8 = 1
DENO_ENCODING_LE64 = 2
DENO_ENCODING_BYTES = 3

DENO_LEASE_SECONDS = 5.0
"""How far ahead Deno keeps the deadline of a message it is handling."""

CREATE_MIGRATION_TABLE = (
    "CREATE TABLE IF NOT EXISTS migration_state"
    " (k INTEGER NOT NULL PRIMARY KEY, version INTEGER NOT NULL)"
)
MIGRATION_VERSION = "SELECT version FROM migration_state WHERE k = 0"
SET_MIGRATION_VERSION = "REPLACE INTO migration_state (k, version) VALUES (0, ?)"

# Deno's migrations, in order; a file at migration N has had the first N.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE data_version (k INTEGER PRIMARY KEY, version INTEGER NOT NULL);
    INSERT INTO data_version (k, version) VALUES (0, 0);
    CREATE TABLE kv (
        k BLOB PRIMARY KEY, v BLOB NOT NULL, v_encoding INTEGER NOT NULL,
        version INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    """
    CREATE TABLE queue (
        ts INTEGER NOT NULL, id TEXT NOT NULL, data BLOB NOT NULL,
        backoff_schedule TEXT NOT NULL, keys_if_undelivered BLOB NOT NULL,
        PRIMARY KEY (ts, id)
    );
    CREATE TABLE queue_running (
        deadline INTEGER NOT NULL, id TEXT NOT NULL, data BLOB NOT NULL,
        backoff_schedule TEXT NOT NULL, keys_if_undelivered BLOB NOT NULL,
        PRIMARY KEY (deadline, id)
    );
    """,
    """
    ALTER TABLE kv ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE data_version ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE kv ADD COLUMN expiration_ms INTEGER NOT NULL DEFAULT -1;
    CREATE INDEX kv_expiration_ms_idx ON kv (expiration_ms);
    """,
)

# -- statements -----------------------------------------------------------------

GET_VERSION = "SELECT version FROM data_version WHERE k = 0"
ADD_VERSION = "UPDATE data_version SET version = version + ? WHERE k = 0 RETURNING version"

# Live rows only: an expired key is absent for kvmodel from its deadline on
# (Deno shows it until its sweep deletes it).
RANGE = (
    "SELECT k, v, v_encoding, version FROM kv WHERE k >= ? AND k < ?"
    " AND (expiration_ms < 0 OR expiration_ms > ?) ORDER BY k {order} LIMIT ?"
)
RANGE_ASC = RANGE.format(order="ASC")
RANGE_DESC = RANGE.format(order="DESC")
POINT = (
    "SELECT v, v_encoding, version FROM kv WHERE k = ? AND (expiration_ms < 0 OR expiration_ms > ?)"
)
UPSERT = (
    "INSERT INTO kv (k, v, v_encoding, version, expiration_ms) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (k) DO UPDATE SET v = excluded.v, v_encoding = excluded.v_encoding,"
    " version = excluded.version, expiration_ms = excluded.expiration_ms"
)
DELETE = "DELETE FROM kv WHERE k = ?"
DELETE_EXPIRED = "DELETE FROM kv WHERE expiration_ms >= 0 AND expiration_ms <= ? RETURNING k"
NEXT_EXPIRY = "SELECT min(expiration_ms) FROM kv WHERE expiration_ms >= 0"

QUEUE_ADD = (
    "INSERT INTO queue (ts, id, data, backoff_schedule, keys_if_undelivered) VALUES (?, ?, ?, ?, ?)"
)
QUEUE_NEXT_READY = (
    "SELECT ts, id, data, backoff_schedule, keys_if_undelivered FROM queue"
    " WHERE ts <= ? ORDER BY ts, id LIMIT 1"
)
QUEUE_WAKE_UP = "SELECT (SELECT min(ts) FROM queue), (SELECT min(deadline) FROM queue_running)"
QUEUE_REMOVE = "DELETE FROM queue WHERE id = ?"
RUNNING_ADD = (
    "INSERT INTO queue_running (deadline, id, data, backoff_schedule, keys_if_undelivered)"
    " VALUES (?, ?, ?, ?, ?)"
)
RUNNING_RENEW = "UPDATE queue_running SET deadline = ? WHERE id = ?"
RUNNING_GET = "SELECT data, backoff_schedule, keys_if_undelivered FROM queue_running WHERE id = ?"
RUNNING_REMOVE = "DELETE FROM queue_running WHERE id = ?"
# kvmodel's one addition, a table Deno never reads: how often kvmodel has
# delivered each message (Deno's tables do not count attempts).
CREATE_ATTEMPTS = (
    "CREATE TABLE IF NOT EXISTS kvmodel_queue_attempts"
    " (id TEXT PRIMARY KEY, attempts INTEGER NOT NULL)"
)
ATTEMPT_ADD = (
    "INSERT INTO kvmodel_queue_attempts (id, attempts) VALUES (?, 1)"
    " ON CONFLICT (id) DO UPDATE SET attempts = attempts + 1"
)
ATTEMPT_GET = "SELECT attempts FROM kvmodel_queue_attempts WHERE id = ?"
ATTEMPT_REMOVE = "DELETE FROM kvmodel_queue_attempts WHERE id = ?"
RUNNING_PAST_DEADLINE = (
    "SELECT id FROM queue_running WHERE deadline <= ? ORDER BY deadline LIMIT 100"
)
