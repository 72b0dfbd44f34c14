"""The SQLite engine's file format: schema, migrations, SQL statements, and file inspection.

:data:`MIGRATIONS` lists the schema changes in order; ``PRAGMA user_version``
records how many a file has had and ``PRAGMA application_id`` marks the file as
kvmodel's. The inspection functions look at an existing file read-only, so a
file that is not ours (or is damaged, or is newer) is refused byte-for-byte
intact. The engine itself is in :mod:`kvmodel.engines.sqlite`.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat

from kvmodel.errors import EngineError

APPLICATION_ID = 0x6B764D44
"""``PRAGMA application_id`` of a kvmodel file ("kvMD" in ASCII)."""

# ---------------------------------------------------------------------------
# Schema. Each migration takes the file from version i to i + 1; never edit a
# released migration, append a new one.

CREATE_KV = """
CREATE TABLE kv (
    k BLOB PRIMARY KEY,
    v BLOB NOT NULL,
    v_encoding INTEGER NOT NULL,
    version INTEGER NOT NULL,
    expiration_ms INTEGER
) WITHOUT ROWID
"""
# Partial: most keys never expire, and the collector only looks for those that do.
CREATE_KV_EXPIRATION_INDEX = """
CREATE INDEX kv_expiration_ms ON kv (expiration_ms) WHERE expiration_ms IS NOT NULL
"""
CREATE_COMMIT_COUNTER = """
CREATE TABLE commit_counter (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    counter INTEGER NOT NULL
)
"""
INSERT_COMMIT_COUNTER = "INSERT INTO commit_counter (id, counter) VALUES (0, 0)"
CREATE_QUEUE = """
CREATE TABLE queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ready_at_ms INTEGER NOT NULL,
    payload BLOB NOT NULL,
    encoding INTEGER NOT NULL,
    keys_if_undelivered BLOB NOT NULL,
    backoff_schedule BLOB NOT NULL,
    attempt INTEGER NOT NULL,
    lease_until_ms INTEGER,
    lease_token BLOB
)
"""
CREATE_QUEUE_READY_INDEX = "CREATE INDEX queue_ready ON queue (ready_at_ms, id)"
CREATE_QUEUE_LEASE_INDEX = """
CREATE INDEX queue_lease ON queue (lease_until_ms) WHERE lease_until_ms IS NOT NULL
"""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: the initial schema.
    (
        CREATE_KV,
        CREATE_KV_EXPIRATION_INDEX,
        CREATE_COMMIT_COUNTER,
        INSERT_COMMIT_COUNTER,
        CREATE_QUEUE,
        CREATE_QUEUE_READY_INDEX,
        CREATE_QUEUE_LEASE_INDEX,
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this code writes (``PRAGMA user_version``)."""


def tables_of_version(version: int) -> frozenset[str]:
    """The tables a kvmodel file of schema ``version`` must have (created by its migrations)."""
    return frozenset(
        match.group(1)
        for migration in MIGRATIONS[:version]
        for statement in migration
        if (match := re.match(r"\s*CREATE TABLE (\w+)", statement))
    )


# ---------------------------------------------------------------------------
# Statements.

BEGIN_IMMEDIATE = "BEGIN IMMEDIATE"
BEGIN_READ = "BEGIN"
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"

SELECT_POINT = "SELECT v, v_encoding, version, expiration_ms FROM kv WHERE k = ?"
# Several point reads (get_many) in one statement, which is one snapshot; the
# placeholders are filled in per call, up to get_many's 10 keys.
MAX_POINTS = 32
SELECT_POINTS = "SELECT k, v, v_encoding, version, expiration_ms FROM kv WHERE k IN ({})"
# expiration_ms is selected too (though the WHERE already judged it) so a
# damaged, non-integer deadline is reported rather than read as "never".
SELECT_RANGE = """
SELECT k, v, v_encoding, version, expiration_ms FROM kv
WHERE k >= ? AND k < ? AND (expiration_ms IS NULL OR expiration_ms > ?)
ORDER BY k LIMIT ?
"""
SELECT_RANGE_REVERSE = """
SELECT k, v, v_encoding, version, expiration_ms FROM kv
WHERE k >= ? AND k < ? AND (expiration_ms IS NULL OR expiration_ms > ?)
ORDER BY k DESC LIMIT ?
"""
# A range and the entries its bytes values link to, in one statement (one
# snapshot). 3 is VALUE_ENCODING_BYTES; the target's expiry is judged in Python.
_SELECT_LINKED = """
SELECT i.k, i.v, i.v_encoding, i.version, i.expiration_ms,
       t.v, t.v_encoding, t.version, t.expiration_ms, t.k IS NOT NULL
FROM kv AS i LEFT JOIN kv AS t ON i.v_encoding = 3 AND t.k = i.v
WHERE i.k >= ? AND i.k < ? AND (i.expiration_ms IS NULL OR i.expiration_ms > ?)
ORDER BY i.k {} LIMIT ?
"""
SELECT_LINKED = _SELECT_LINKED.format("")
SELECT_LINKED_REVERSE = _SELECT_LINKED.format("DESC")
SELECT_VERSION = "SELECT version, expiration_ms FROM kv WHERE k = ?"
SELECT_VALUE = "SELECT v, v_encoding, expiration_ms FROM kv WHERE k = ?"
# The checks of a large commit, read many keys at a time ({} is the placeholders).
SELECT_VERSIONS_IN = "SELECT k, version, expiration_ms FROM kv WHERE k IN ({})"
UPSERT = (
    "INSERT OR REPLACE INTO kv (k, v, v_encoding, version, expiration_ms) VALUES (?, ?, ?, ?, ?)"
)
DELETE = "DELETE FROM kv WHERE k = ?"
BUMP_COUNTER_RETURNING = (
    "UPDATE commit_counter SET counter = counter + 1 WHERE id = 0 RETURNING counter"
)
BUMP_COUNTER = "UPDATE commit_counter SET counter = counter + 1 WHERE id = 0"
SELECT_COUNTER = "SELECT counter FROM commit_counter WHERE id = 0"

SELECT_ANY_EXPIRED = (
    "SELECT 1 FROM kv WHERE expiration_ms IS NOT NULL AND expiration_ms <= ? LIMIT 1"
)
DELETE_EXPIRED_BATCH = """
DELETE FROM kv WHERE k IN (
    SELECT k FROM kv WHERE expiration_ms IS NOT NULL AND expiration_ms <= ? LIMIT ?
)
"""
SELECT_NEXT_EXPIRATION = "SELECT MIN(expiration_ms) FROM kv WHERE expiration_ms IS NOT NULL"

INSERT_MESSAGE = """
INSERT INTO queue (ready_at_ms, payload, encoding, keys_if_undelivered, backoff_schedule, attempt)
VALUES (?, ?, ?, ?, ?, 1)
"""
# The next deliverable message: ready, and no live lease holds it. Equal ready
# times are delivered in enqueue (id) order.
# The last column tells an abandoned message (its lease ran out unsettled)
# from a fresh or rescheduled one, which has no lease token.
SELECT_READY_MESSAGE = """
SELECT id, payload, encoding, attempt, keys_if_undelivered, backoff_schedule,
    lease_token IS NOT NULL
FROM queue
WHERE ready_at_ms <= ? AND (lease_until_ms IS NULL OR lease_until_ms <= ?)
ORDER BY ready_at_ms, id LIMIT 1
"""
# When the queue can next change by itself: an unleased message becomes ready,
# or a lease runs out.
SELECT_QUEUE_WAKE = """
SELECT
    (SELECT ready_at_ms FROM queue WHERE lease_until_ms IS NULL ORDER BY ready_at_ms, id LIMIT 1),
    (SELECT MIN(lease_until_ms) FROM queue WHERE lease_until_ms IS NOT NULL)
"""
# A message whose previous lease ran out (its listener died) counts that
# abandoned delivery as an attempt, as a failed one would.
LEASE_MESSAGE = """
UPDATE queue SET lease_until_ms = ?, lease_token = ?,
    attempt = attempt + (lease_token IS NOT NULL)
WHERE id = ?
RETURNING attempt
"""
LEASE_MESSAGE_NO_RETURNING = """
UPDATE queue SET lease_until_ms = ?, lease_token = ?,
    attempt = attempt + (lease_token IS NOT NULL)
WHERE id = ?
"""
SELECT_ATTEMPT = "SELECT attempt FROM queue WHERE id = ?"
RENEW_LEASE = "UPDATE queue SET lease_until_ms = ? WHERE id = ? AND lease_token = ?"
SELECT_LEASED_MESSAGE = """
SELECT payload, encoding, attempt, keys_if_undelivered, backoff_schedule FROM queue
WHERE id = ? AND lease_token = ?
"""
RESCHEDULE_MESSAGE = """
UPDATE queue SET ready_at_ms = ?, backoff_schedule = ?, attempt = attempt + 1,
    lease_until_ms = NULL, lease_token = NULL
WHERE id = ?
"""
DELETE_MESSAGE = "DELETE FROM queue WHERE id = ?"
# Messages whose stored columns are damaged (written by something other than
# kvmodel) and that cannot be dead-lettered are moved here verbatim, out of the
# listeners' way. The table is created on first use rather than by a
# migration: it is almost never needed, and a schema version bump would make
# every file unreadable by older kvmodel releases for its sake. Its columns have
# no declared type, so the damaged values are kept exactly as they were.
CREATE_QUEUE_QUARANTINE = """
CREATE TABLE IF NOT EXISTS queue_quarantine (
    id INTEGER PRIMARY KEY,
    quarantined_at_ms INTEGER NOT NULL,
    reason TEXT NOT NULL,
    ready_at_ms, payload, encoding, keys_if_undelivered, backoff_schedule, attempt
)
"""
QUARANTINE_MESSAGE = """
INSERT OR REPLACE INTO queue_quarantine
SELECT id, ?, ?, ready_at_ms, payload, encoding, keys_if_undelivered, backoff_schedule, attempt
FROM queue WHERE id = ?
"""

DATA_VERSION = "PRAGMA data_version"

# Keys the collector deletes per transaction, so it never holds the write lock long.
COLLECT_BATCH = 1000

_HEADER_MAGIC = b"SQLite format 3\x00"
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
SYNCHRONOUS_MODES = ("FULL", "NORMAL")
HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)


def is_busy(exc: sqlite3.Error) -> bool:
    """True when ``exc`` means another connection holds a lock (worth retrying)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    text = str(exc)
    return "database is locked" in text or "database table is locked" in text


# ---------------------------------------------------------------------------
# Opening: inspect an existing file without writing to it.


def inspect_header(path: str) -> None:
    """Refuses a file that is not an intact SQLite database, reading its bytes only."""
    try:
        with open(path, "rb") as f:
            header = f.read(100)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise EngineError(f"Cannot read the database file {path!r}: {exc.strerror}.") from exc
    if not header.startswith(_HEADER_MAGIC[: len(header)]) or len(header) < 100:
        if header.startswith(_HEADER_MAGIC[: len(header)]):
            raise EngineError(
                f"The file {path!r} is a truncated SQLite database ({size} bytes); "
                "restore it from a backup or choose another path."
            )
        raise EngineError(
            f"The file {path!r} is not a SQLite database; choose another path or remove it."
        )
    page_size = int.from_bytes(header[16:18], "big")
    if page_size == 1:
        page_size = 65536
    page_count = int.from_bytes(header[28:32], "big")
    # The in-header page count is valid only when its "version-valid-for" number
    # matches the change counter (file format, section 1.3.7). A non-empty WAL
    # means a checkpoint may be half done; SQLite completes it from the WAL.
    count_valid = header[92:96] == header[24:28]
    wal = path + "-wal"
    wal_pending = os.path.exists(wal) and os.path.getsize(wal) > 0
    if page_size < 512 or page_size & (page_size - 1):
        raise EngineError(
            f"The file {path!r} has a damaged SQLite header (page size {page_size}); "
            "restore it from a backup or choose another path."
        )
    if not wal_pending and (size % page_size or (count_valid and size < page_count * page_size)):
        raise EngineError(
            f"The file {path!r} is a truncated SQLite database: its header promises "
            f"{page_count} pages of {page_size} bytes but it holds {size} bytes; "
            "restore it from a backup or choose another path."
        )


def read_identity(conn: sqlite3.Connection) -> tuple[int, int, list[str]]:
    """A file's application id, schema version and table names, read on ``conn``."""
    application_id = conn.execute("PRAGMA application_id").fetchone()[0]
    user_version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = [
        row[0]
        for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    ]
    return application_id, user_version, tables


def check_identity(path: str, application_id: int, user_version: int, tables: list[str]) -> None:
    """Refuses another application's database, a damaged or a newer kvmodel schema."""
    if application_id == APPLICATION_ID:
        if user_version > SCHEMA_VERSION:
            raise EngineError(
                f"The database {path!r} has kvmodel schema version {user_version}, newer than "
                f"version {SCHEMA_VERSION} which this kvmodel understands; upgrade kvmodel."
            )
        # kvmodel sets its application id and version in the transaction that
        # creates the tables, so a missing table means damage, not a half-made file.
        missing = sorted(tables_of_version(max(user_version, 0)) - set(tables))
        if user_version < 1 or missing:
            lacks = f", no table {', '.join(missing)}" if missing else ""
            raise EngineError(
                f"The file {path!r} is a damaged kvmodel database (kvmodel's application "
                f"id, schema version {user_version}{lacks}); "
                "restore it from a backup or choose another path."
            )
        return
    if application_id != 0 or tables:
        raise EngineError(
            f"The file {path!r} is a SQLite database of another application "
            f"(application_id {application_id}, tables {tables!r}); "
            "kvmodel only opens its own files or empty ones."
        )


_SIDE_FILES = ("-wal", "-journal")


def inspect_database(path: str) -> None:
    """Reads an existing file without changing it and refuses it unless kvmodel may use it.

    With no ``-wal`` or ``-journal`` beside the file, nobody is writing it and
    the file alone holds every commit, so it is opened with ``immutable=1``:
    SQLite then takes no lock and creates no ``-shm`` or ``-wal`` file, and a
    refused file leaves its directory exactly as it was (a plain read-only
    connection to a WAL database creates both and leaves them behind).
    A side file means a live (or crashed) writer: then the file is read with
    locks, ``mode=ro``, so the WAL's commits are seen. If a writer appeared
    while the lock-free read ran and the read refused the file, it is read
    again with locks before the refusal stands.
    """
    live = any(os.path.exists(path + suffix) for suffix in _SIDE_FILES)
    try:
        identity = read_file_identity(path, immutable=not live)
        check_identity(path, *identity)
    except EngineError:
        if live or not any(os.path.exists(path + suffix) for suffix in _SIDE_FILES):
            raise
        check_identity(path, *read_file_identity(path, immutable=False))


def read_file_identity(path: str, *, immutable: bool) -> tuple[int, int, list[str]]:
    uri = "file:" + _uri_path(path) + ("?mode=ro&immutable=1" if immutable else "?mode=ro")
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise EngineError(f"Cannot open the database file {path!r}: {exc}.") from exc
    try:
        return read_identity(conn)
    except sqlite3.Error as exc:
        raise EngineError(
            f"The file {path!r} is not a readable SQLite database ({exc}); "
            "restore it from a backup or choose another path."
        ) from exc
    finally:
        conn.close()


def _uri_path(path: str) -> str:
    """Escapes a filesystem path for a ``file:`` URI."""
    return path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def check_writable(path: str, exists: bool) -> None:
    """Refuses a read-only file or directory with a clear message before SQLite fails."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise EngineError(
            f"The directory {directory!r} of the database {path!r} does not exist; create it first."
        )
    if exists:
        mode = os.stat(path).st_mode
        # The mode bits are checked too: os.access says yes to root for any file.
        if not os.access(path, os.W_OK) or not stat.S_IMODE(mode) & 0o222:
            raise EngineError(
                f"The database file {path!r} is read-only; kvmodel needs to write to it "
                "(make it writable, or copy it somewhere writable)."
            )
    if not os.access(directory, os.W_OK):
        raise EngineError(
            f"The directory {directory!r} is not writable; SQLite needs to create "
            f"{os.path.basename(path)!r} and its -wal and -shm files there."
        )
