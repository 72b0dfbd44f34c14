"""An engine on a file written by ``Deno.openKv(path)``, in Deno's own SQLite layout.

``km.open_kv("deno:path/to/kv.sqlite3")`` opens the file that a Deno program
opens with ``Deno.openKv("path/to/kv.sqlite3")``, and both can use it at the
same time: the rows, versionstamps, expiry deadlines and queue tables are
Deno's (see :mod:`kvmodel.engines._deno_schema`), and nothing is converted.

What the engine keeps so that Deno never meets a row it refuses:

* values are written with Deno's encodings only: V8 (kvmodel's
  ``VALUE_ENCODING_V8``, Deno's 1 on disk), LE64 and bytes; a msgpack value
  is refused with an :class:`EncodeError` (a Kv on this engine writes V8 by
  default);
* queue payloads are V8 (Deno's queue has no encoding column);
* the commit counter moves as Deno moves it: by a random 1..9 per commit, by 1
  per expiry sweep, so versionstamps from either side are ordered together.

Differences from Deno on the same file, all on the reading side: an expired
key is absent from its deadline on (Deno shows it until its sweep runs), and a
failed commit names its failed checks. Another process's commits (Deno's or
kvmodel's) wake watches and queue listeners here through a poller that reads
``PRAGMA data_version`` every ``poll_interval`` seconds; Deno's own watches
and queue do not see commits made here until their own timers fire (see the
how-to on sharing data with Deno for the measured figures).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from kvmodel.engines import _deno_schema as sql
from kvmodel.engines._sqlite_poller import Poller
from kvmodel.engines._sqlite_rows import UnreachableRow, unreachable_rows_on
from kvmodel.engines._sqlite_schema import read_file_identity
from kvmodel.engines.base import (
    VALUE_ENCODING_BYTES,
    VALUE_ENCODING_LE64,
    VALUE_ENCODING_V8,
    AtomicWrite,
    ChangeSignal,
    Clock,
    CommitOutcome,
    Consistency,
    EngineCapabilities,
    LeasedMessage,
    MutationKind,
    PollingWatchStream,
    RawEntry,
    ReadRange,
    apply_numeric_mutation,
    check_stored_value,
    describe_stored_key,
    log_undelivered,
    read_stored_backoff,
    read_stored_dead_letter_keys,
    versionstamp_from_counter,
    versionstamped_key,
)
from kvmodel.errors import DecodeError, EncodeError, EngineError, KvClosedError
from kvmodel.limits import DEFAULT_LIMITS, EngineLimits

__all__ = ["DenoFileEngine", "is_deno_kv_file"]

# kvmodel's encoding numbers <-> Deno's on disk.
_TO_DENO = {
    VALUE_ENCODING_V8: sql.DENO_ENCODING_V8,
    VALUE_ENCODING_LE64: sql.DENO_ENCODING_LE64,
    VALUE_ENCODING_BYTES: sql.DENO_ENCODING_BYTES,
}
_FROM_DENO = {deno: ours for ours, deno in _TO_DENO.items()}
_LIMITS = EngineLimits(name="a Deno KV file", max_key_size=DEFAULT_LIMITS.max_key_size)
_CAPABILITIES = EngineCapabilities(durable=True, cross_process=True, msgpack_values=False)
# Deno's own step for the commit counter: a random 1..9 per commit.
_STEP = random.SystemRandom()


def is_deno_kv_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a SQLite file in Deno's KV layout (so ``open_kv`` picks this engine).

    Looks only, the way the SQLite engine inspects a file before opening it:
    through SQLite (a plain ``open()`` and ``close()`` of the file would drop
    this process's locks on it), with ``immutable=1`` unless a writer's side
    file is present, so looking at a file creates no ``-wal`` or ``-shm``.
    """
    target = os.fspath(path)
    if not os.path.isfile(target):
        return False
    live = any(os.path.exists(target + suffix) for suffix in ("-wal", "-journal"))
    try:
        _, _, tables = read_file_identity(target, immutable=not live)
    except EngineError:
        return False
    return {"migration_state", "data_version", "kv"} <= set(tables)


class DenoFileEngine:
    """Deno's SQLite KV file as a kvmodel engine; ``km.open_kv("deno:PATH")`` opens one.

    Args:
        path: the file ``Deno.openKv(path)`` uses; created (in Deno's layout)
            when missing.
        clock: wall-clock time in seconds (``time.time``).
        lease_timeout: seconds a dequeued message stays leased (Deno's 5 by
            default; Deno requeues a message whose lease passed).
        poll_interval: seconds between looks for other processes' commits
            while a watch or a queue listener waits.
        busy_timeout: seconds a statement waits for another process's lock.

    Raises:
        EngineError: the file is not a Deno KV file (a kvmodel SQLite file,
            another database, a newer Deno layout) or cannot be opened.
    """

    default_values = "v8"
    """Values on a Deno file are written in V8's format unless asked otherwise."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock = time.time,
        lease_timeout: float = sql.DENO_LEASE_SECONDS,
        poll_interval: float = 0.05,
        busy_timeout: float = 10.0,
    ) -> None:
        self._path = Path(path)
        self._clock = clock
        self._lease_timeout = float(lease_timeout)
        self._lock = threading.RLock()
        self._signal = ChangeSignal()
        self._closed = False
        self._last_id_ms = 0
        self._id_seq = 0
        self._busy_ms = int(busy_timeout * 1000)
        self._conn = self._connect()
        try:
            self._migrate()
            self._poller = Poller(self._connect(), self._signal, float(poll_interval))
        except BaseException:
            self._conn.close()
            raise

    # -- opening ----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            # Deno's mode: readers and one writer at a time, across processes.
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.Error as exc:
            raise EngineError(f"Cannot open the Deno KV file {str(self._path)!r}: {exc}") from exc
        return conn

    def _migrate(self) -> None:
        conn = self._conn
        try:
            with self._write() as cur:
                tables = {r[0] for r in cur.execute("SELECT name FROM sqlite_master")}
                if tables and not {"migration_state", "kv"} <= tables:
                    raise EngineError(
                        f"The file {str(self._path)!r} is a SQLite database but not a Deno KV "
                        "file (it has no migration_state table); open it without 'deno:'."
                    )
                cur.execute(sql.CREATE_MIGRATION_TABLE)
                row = cur.execute(sql.MIGRATION_VERSION).fetchone()
                current = 0 if row is None else row[0]
                if type(current) is not int or current > len(sql.MIGRATIONS):
                    raise EngineError(
                        f"The Deno KV file {str(self._path)!r} is at schema version "
                        f"{current!r}, newer than the {len(sql.MIGRATIONS)} kvmodel knows; "
                        "upgrade kvmodel."
                    )
                for version, migration in enumerate(sql.MIGRATIONS, start=1):
                    if version > current:
                        for statement in migration.split(";"):
                            if statement.strip():
                                cur.execute(statement)
                        cur.execute(sql.SET_MIGRATION_VERSION, (version,))
                cur.execute(sql.CREATE_ATTEMPTS)
        except sqlite3.Error as exc:
            conn.close()
            raise EngineError(f"Cannot read the Deno KV file {str(self._path)!r}: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction under the engine's lock (BEGIN IMMEDIATE: no lock upgrade)."""
        with self._lock:
            self._check_open()
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                self._conn.rollback()
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Cursor]:
        """One read transaction: every statement inside sees the same commit."""
        with self._lock:
            self._check_open()
            cur = self._conn.cursor()
            cur.execute("BEGIN")
            try:
                yield cur
            finally:
                self._conn.rollback()
                cur.close()

    def _check_open(self) -> None:
        if self._closed:
            raise KvClosedError("The Deno KV file engine is closed.")

    # -- properties ---------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The file's path."""
        return self._path

    @property
    def limits(self) -> EngineLimits:
        """Deno's limits, which this engine cannot lift: Deno itself must read the file."""
        return _LIMITS

    @property
    def capabilities(self) -> EngineCapabilities:
        """Durable and shared across processes (Deno's and kvmodel's)."""
        return _CAPABILITIES

    @property
    def clock(self) -> Clock:
        """The engine's time source."""
        return self._clock

    @property
    def lease_timeout(self) -> float:
        """Seconds a dequeued message stays leased."""
        return self._lease_timeout

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- reads --------------------------------------------------------------------

    def _entry(self, key: object, value: object, encoding: object, version: object) -> RawEntry:
        where = f"the key {describe_stored_key(key)}"
        if type(key) is not bytes or type(version) is not int:
            raise DecodeError(f"The row of {where} is damaged (its key or version column).")
        ours = _FROM_DENO.get(encoding) if type(encoding) is int else None
        data, ours = check_stored_value(where, value, ours if ours is not None else encoding)
        return RawEntry(key, data, ours, versionstamp_from_counter(version))

    def snapshot_read(
        self, ranges: Sequence[ReadRange], *, consistency: Consistency = Consistency.STRONG
    ) -> list[list[RawEntry]]:
        """Reads every range in one read transaction, hiding expired keys."""
        now = self._now_ms()
        try:
            with self._read() as cur:
                return [self._range(cur, r, now) for r in ranges]
        except sqlite3.Error as exc:
            raise self._error("read", exc) from exc

    def _range(self, cur: sqlite3.Cursor, r: ReadRange, now: int) -> list[RawEntry]:
        statement = sql.RANGE_DESC if r.reverse else sql.RANGE_ASC
        rows = cur.execute(statement, (r.start, r.end, now, r.limit)).fetchall()
        return [self._entry(*row) for row in rows]

    def snapshot_read_linked(
        self, read: ReadRange, *, consistency: Consistency = Consistency.STRONG
    ) -> list[tuple[RawEntry, RawEntry | None]]:
        """Reads a range and the entries its bytes values name, in one read transaction."""
        now = self._now_ms()
        try:
            with self._read() as cur:
                out: list[tuple[RawEntry, RawEntry | None]] = []
                for entry in self._range(cur, read, now):
                    target = None
                    if entry.encoding == VALUE_ENCODING_BYTES and entry.value:
                        row = cur.execute(sql.POINT, (entry.value, now)).fetchone()
                        if row is not None:
                            target = self._entry(entry.value, *row)
                    out.append((entry, target))
                return out
        except sqlite3.Error as exc:
            raise self._error("read", exc) from exc

    # -- writes -------------------------------------------------------------------

    def atomic_write(self, write: AtomicWrite) -> CommitOutcome:
        """Checks, mutates and enqueues in one write transaction, as Deno commits."""
        rows = []
        for m in write.mutations:
            if m.kind in (MutationKind.SET, MutationKind.SET_SUFFIX_VERSIONSTAMPED_KEY):
                rows.append(self._deno_encoding(m.encoding, "value"))
        for e in write.enqueues:
            if e.encoding != VALUE_ENCODING_V8:
                raise EncodeError(
                    "Deno's queue holds values in V8's format only; enqueue on a Kv opened "
                    "with values='v8' (the default on a 'deno:' file)."
                )
        now = self._now_ms()
        try:
            with self._write() as cur:
                failed = tuple(
                    i
                    for i, check in enumerate(write.checks)
                    if self._versionstamp(cur, check.key, now) != check.versionstamp
                )
                if failed:
                    raise _ChecksFailed(failed)  # _write rolls back
                version = cur.execute(sql.ADD_VERSION, (_STEP.randint(1, 9),)).fetchone()[0]
                versionstamp = versionstamp_from_counter(version)
                encodings = iter(rows)
                for m in write.mutations:
                    if m.kind is MutationKind.DELETE:
                        cur.execute(sql.DELETE, (m.key,))
                        continue
                    if m.kind in (MutationKind.SUM, MutationKind.MIN, MutationKind.MAX):
                        current = self._current(cur, m.key, now)
                        value = apply_numeric_mutation(m.kind, current, m.value)
                        cur.execute(sql.UPSERT, (m.key, value, sql.DENO_ENCODING_LE64, version, -1))
                        continue
                    key = m.key
                    if m.kind is MutationKind.SET_SUFFIX_VERSIONSTAMPED_KEY:
                        key = versionstamped_key(m.key, versionstamp)
                    expiry = -1 if m.expire_at_ms is None else m.expire_at_ms
                    cur.execute(sql.UPSERT, (key, m.value, next(encodings), version, expiry))
                for e in write.enqueues:
                    cur.execute(
                        sql.QUEUE_ADD,
                        (
                            e.ready_at_ms,
                            self._new_id(),
                            e.payload,
                            json.dumps(list(e.backoff_schedule_ms)),
                            json.dumps([list(k) for k in e.keys_if_undelivered]),
                        ),
                    )
        except _ChecksFailed as exc:
            return CommitOutcome(None, exc.failed)
        except sqlite3.Error as exc:
            raise self._error("write", exc) from exc
        self._signal.bump()
        return CommitOutcome(versionstamp)

    def _new_id(self) -> str:
        """A message id in UUID form that sorts by creation time (UUIDv7's layout).

        Deno orders its queue by ready time and then by the (ts, id) primary key,
        so time-ordered ids keep messages with the same ready time in enqueue
        order; Deno's own ids are random (UUIDv4).
        """
        with self._lock:
            ms = max(int(time.time() * 1000), self._last_id_ms)
            self._id_seq = self._id_seq + 1 if ms == self._last_id_ms else 0
            self._last_id_ms = ms
            seq = self._id_seq
        rand = int.from_bytes(os.urandom(8), "big")
        value = (ms << 80) | (0x7 << 76) | ((seq & 0xFFF) << 64) | (0x2 << 62)
        value |= rand & ((1 << 62) - 1)
        return str(uuid.UUID(int=value))

    def _deno_encoding(self, encoding: int, what: str) -> int:
        try:
            return _TO_DENO[encoding]
        except KeyError:
            raise EncodeError(
                f"A Deno KV file holds values in V8's format, LE64 or bytes, and Deno cannot "
                f"read this {what}'s encoding {encoding}; open the file with values='v8' "
                "(the default on a 'deno:' file)."
            ) from None

    def _versionstamp(self, cur: sqlite3.Cursor, key: bytes, now: int) -> bytes | None:
        row = cur.execute(sql.POINT, (key, now)).fetchone()
        if row is None:
            return None
        if type(row[2]) is not int:
            raise DecodeError(f"The row of the key {describe_stored_key(key)} is damaged.")
        return versionstamp_from_counter(row[2])

    def _current(self, cur: sqlite3.Cursor, key: bytes, now: int) -> tuple[bytes, int] | None:
        row = cur.execute(sql.POINT, (key, now)).fetchone()
        if row is None:
            return None
        entry = self._entry(key, *row)
        return entry.value, entry.encoding

    # -- expiry -------------------------------------------------------------------

    def collect_expired(self) -> float | None:
        """Deletes expired keys (moving the counter by 1, as Deno's sweep does)."""
        try:
            with self._write() as cur:
                deleted = cur.execute(sql.DELETE_EXPIRED, (self._now_ms(),)).fetchall()
                if deleted:
                    cur.execute(sql.ADD_VERSION, (1,)).fetchone()
                row = cur.execute(sql.NEXT_EXPIRY).fetchone()
        except KvClosedError:
            return None
        except sqlite3.Error as exc:
            raise self._error("collect expired keys in", exc) from exc
        if deleted:
            self._signal.bump()
        return None if row is None or row[0] is None else row[0] / 1000

    # -- queue --------------------------------------------------------------------

    def dequeue_next_message(self, timeout: float) -> _DenoMessage | None:
        """Leases the next ready message, polling the file for other processes' enqueues."""
        deadline = time.monotonic() + timeout
        self._poller.add_waiter()
        try:
            while not self._closed:
                seen = self._signal.seq
                try:
                    message, next_ready = self._try_dequeue()
                except KvClosedError:
                    return None
                if message is not None:
                    return message
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                wait = left
                if next_ready is not None:
                    wait = min(wait, max(0.0, next_ready - self._clock()) + 0.001)
                self._signal.wait(seen, wait)
            return None
        finally:
            self._poller.remove_waiter()

    def _try_dequeue(self) -> tuple[_DenoMessage | None, float | None]:
        now = self._now_ms()
        try:
            with self._write() as cur:
                # Messages whose lease passed (a handler that died, here or in
                # Deno) go back to the queue, as Deno's cleanup does.
                for (stale,) in cur.execute(sql.RUNNING_PAST_DEADLINE, (now,)).fetchall():
                    self._requeue(cur, stale, now, "its lease expired")
                row = cur.execute(sql.QUEUE_NEXT_READY, (now,)).fetchone()
                message = None
                if row is not None:
                    _ts, message_id, data, backoff, keys = row
                    cur.execute(sql.QUEUE_REMOVE, (message_id,))
                    lease_ms = int(self._lease_timeout * 1000)
                    cur.execute(sql.RUNNING_ADD, (now + lease_ms, message_id, data, backoff, keys))
                    cur.execute(sql.ATTEMPT_ADD, (message_id,))
                    attempt = cur.execute(sql.ATTEMPT_GET, (message_id,)).fetchone()[0]
                    message = self._message(message_id, data, attempt)
                # Wake for the next ready message or the next lease to expire.
                earliest = min(
                    (t for t in cur.execute(sql.QUEUE_WAKE_UP).fetchone() if t is not None),
                    default=None,
                )
        except sqlite3.Error as exc:
            raise self._error("dequeue from", exc) from exc
        return message, None if earliest is None else earliest / 1000

    def _message(self, message_id: object, data: object, attempt: int) -> _DenoMessage:
        where = f"queue message {message_id!r}"
        if type(message_id) is not str:
            raise DecodeError(f"The queue row {where} has a damaged id.")
        payload, _ = check_stored_value(where, data, VALUE_ENCODING_V8)
        return _DenoMessage(self, payload, attempt, message_id)

    def _requeue(self, cur: sqlite3.Cursor, message_id: str, now: int, why: str) -> None:
        """A failed or lost delivery: retry after the next backoff delay, or dead-letter it."""
        row = cur.execute(sql.RUNNING_GET, (message_id,)).fetchone()
        if row is None:
            return
        data, backoff_text, keys_text = row
        where = f"queue message {message_id!r}"
        try:
            backoff = read_stored_backoff(where, json.loads(backoff_text or "null") or [])
            keys = read_stored_dead_letter_keys(
                where, [bytes(k) for k in json.loads(keys_text or "[]")]
            )
        except (ValueError, TypeError) as exc:
            raise DecodeError(f"The {where} has damaged backoff or dead-letter columns.") from exc
        if backoff:
            cur.execute(
                sql.QUEUE_ADD,
                (now + backoff[0], message_id, data, json.dumps(list(backoff[1:])), keys_text),
            )
        else:
            row = cur.execute(sql.ATTEMPT_GET, (message_id,)).fetchone()
            attempts = 1 if row is None else row[0]
            cur.execute(sql.ATTEMPT_REMOVE, (message_id,))
            if keys:
                version = cur.execute(sql.ADD_VERSION, (_STEP.randint(1, 9),)).fetchone()[0]
                for key in keys:
                    cur.execute(sql.UPSERT, (key, data, sql.DENO_ENCODING_V8, version, -1))
            log_undelivered(where, attempts, keys, why)
        cur.execute(sql.RUNNING_REMOVE, (message_id,))

    def _renew(self, message_id: str) -> bool:
        deadline = self._now_ms() + int(self._lease_timeout * 1000)
        try:
            with self._write() as cur:
                return cur.execute(sql.RUNNING_RENEW, (deadline, message_id)).rowcount == 1
        except KvClosedError:
            return False
        except sqlite3.Error as exc:
            raise self._error("renew a lease in", exc) from exc

    def _finish(self, message_id: str, success: bool) -> None:
        try:
            with self._write() as cur:
                if success:
                    cur.execute(sql.RUNNING_REMOVE, (message_id,))
                    cur.execute(sql.ATTEMPT_REMOVE, (message_id,))
                else:
                    self._requeue(cur, message_id, self._now_ms(), "its handler failed")
        except sqlite3.Error as exc:
            raise self._error("settle a message in", exc) from exc
        self._signal.bump()

    # -- watch --------------------------------------------------------------------

    def watch(self, keys: Sequence[bytes]) -> _PolledWatch:
        """Watches keys; commits from other processes wake it through the poller."""
        self._check_open()
        keys = list(keys)

        def read() -> list[RawEntry | None]:
            found = self.snapshot_read([ReadRange(k, k + b"\x00", 1) for k in keys])
            return [entries[0] if entries else None for entries in found]

        stream = PollingWatchStream(
            self._signal, read, clock=self._clock, expiry_deadline=lambda: self._deadline(keys)
        )
        return _PolledWatch(stream, self._poller)

    def _deadline(self, keys: Sequence[bytes]) -> float | None:
        now = self._now_ms()
        try:
            with self._read() as cur:
                best: int | None = None
                for k in keys:
                    row = cur.execute(
                        "SELECT expiration_ms FROM kv WHERE k = ? AND expiration_ms > ?", (k, now)
                    ).fetchone()
                    if row is not None and (best is None or row[0] < best):
                        best = row[0]
        except (sqlite3.Error, KvClosedError):
            return None
        return None if best is None else best / 1000

    # -- checking -----------------------------------------------------------------

    def unreachable_rows(self, limit: int = 100) -> list[UnreachableRow]:
        """At most ``limit`` rows of the ``kv`` table that no get, list or watch can reach.

        The same check as :meth:`kvmodel.engines.sqlite.SqliteEngine.unreachable_rows`
        (Deno's table has the same key column): keys stored as TEXT, INTEGER,
        REAL or NULL, key bytes that do not decode or are not their key's
        encoding. Scans the whole table.
        """
        with self._read() as cur:
            return unreachable_rows_on(cur.connection, limit)

    # -- closing ------------------------------------------------------------------

    def close(self) -> None:
        """Closes the file; blocked watches and listeners return or raise KvClosedError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._signal.close()
        self._poller.close()
        with self._lock:
            self._conn.close()

    def _error(self, what: str, exc: sqlite3.Error) -> EngineError:
        return EngineError(f"Could not {what} the Deno KV file {str(self._path)!r}: {exc}")


class _ChecksFailed(Exception):
    def __init__(self, failed: tuple[int, ...]) -> None:
        super().__init__(failed)
        self.failed = failed


class _DenoMessage(LeasedMessage):
    """A message leased from Deno's queue_running table."""

    __slots__ = ("_done", "_engine")

    def __init__(self, engine: DenoFileEngine, payload: bytes, attempt: int, message_id: str):
        super().__init__(payload, VALUE_ENCODING_V8, attempt, message_id=message_id)
        self._engine = engine
        self._done = False

    def renew_lease(self) -> bool:
        """Moves the message's deadline one lease ahead; False if it is no longer ours."""
        return not self._done and self._engine._renew(self._message_id)

    def finish(self, success: bool) -> None:
        """Drops the message, or retries or dead-letters it, as Deno does."""
        if self._done:
            return
        self._done = True
        self._engine._finish(self._message_id, success)


class _PolledWatch:
    """A PollingWatchStream that keeps the file poller running while it waits."""

    def __init__(self, stream: PollingWatchStream, poller: Poller) -> None:
        self._stream = stream
        self._poller = poller

    def next(self, timeout: float | None = None) -> list[RawEntry | None] | None:
        """See :meth:`kvmodel.engines.base.WatchStream.next`."""
        self._poller.add_waiter()
        try:
            return self._stream.next(timeout)
        finally:
            self._poller.remove_waiter()

    def close(self) -> None:
        """See :meth:`kvmodel.engines.base.WatchStream.close`."""
        self._stream.close()
