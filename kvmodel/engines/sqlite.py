"""SqliteEngine: a durable, multi-process engine on one SQLite file (stdlib sqlite3).

The layout follows denokv's SQLite backend (``sqlite/backend.rs``):

* ``kv`` holds the data: ``k BLOB PRIMARY KEY`` (the encoded key, so SQLite's
  bytewise BLOB order is the key order), the tagged value, the commit counter
  that wrote it and an optional expiry deadline in milliseconds.
* ``commit_counter`` is a single row; every commit increments it inside its
  write transaction, so versionstamps strictly increase in commit order across
  threads, processes and reopens.
* ``queue`` holds enqueued messages with their ready time and lease.

The file is marked with ``PRAGMA application_id`` and its schema version is
``PRAGMA user_version``; :data:`MIGRATIONS` lists the schema changes in order
(the format lives in :mod:`kvmodel.engines._sqlite_schema`).
An existing file is inspected read-only before anything is written, so a file
that is not ours (or is damaged, or is newer) is refused byte-for-byte intact.

Concurrency: SQLite in WAL mode lets readers run beside one writer. Every write
starts with ``BEGIN IMMEDIATE`` so it takes the write lock before it reads, and
checks are evaluated under that lock. Lock contention (``SQLITE_BUSY``) waits in
a jittered retry loop of short sleeps (not in SQLite's busy handler, whose
growing sleeps let one busy writer starve the others), bounded by
``busy_timeout`` in total, after which :class:`EngineError` is raised.

Lifetime: :meth:`SqliteEngine.close` joins the poller thread and closes every
connection, waiting for calls in flight, before it returns. No connection
crosses ``os.fork()``: in the child an engine opened before the fork raises
:class:`EngineError` and the file cannot be opened again (SQLite's locks are
per process and its in-process lock records would be shared with the
parent's); close engines before forking.

Waiting: every local commit bumps a :class:`ChangeSignal`. While a watch stream
or a queue listener is waiting, one poller thread per engine also watches
``PRAGMA data_version`` (which moves when another connection or process
commits) and bumps the signal, so waiters wake on commits of other processes too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TypeVar

import msgpack

from kvmodel.engines._sqlite_poller import Poller
from kvmodel.engines._sqlite_schema import (
    APPLICATION_ID,
    BEGIN_IMMEDIATE,
    BEGIN_READ,
    BUMP_COUNTER,
    BUMP_COUNTER_RETURNING,
    COLLECT_BATCH,
    COMMIT,
    CREATE_QUEUE_QUARANTINE,
    DELETE,
    DELETE_EXPIRED_BATCH,
    DELETE_MESSAGE,
    HAS_RETURNING,
    INSERT_MESSAGE,
    LEASE_MESSAGE,
    LEASE_MESSAGE_NO_RETURNING,
    MAX_POINTS,
    MIGRATIONS,
    QUARANTINE_MESSAGE,
    RENEW_LEASE,
    RESCHEDULE_MESSAGE,
    ROLLBACK,
    SCHEMA_VERSION,
    SELECT_ANY_EXPIRED,
    SELECT_ATTEMPT,
    SELECT_COUNTER,
    SELECT_LEASED_MESSAGE,
    SELECT_LINKED,
    SELECT_LINKED_REVERSE,
    SELECT_NEXT_EXPIRATION,
    SELECT_POINT,
    SELECT_POINTS,
    SELECT_QUEUE_WAKE,
    SELECT_RANGE,
    SELECT_RANGE_REVERSE,
    SELECT_READY_MESSAGE,
    SELECT_VALUE,
    SELECT_VERSION,
    SYNCHRONOUS_MODES,
    UPSERT,
    check_identity,
    check_writable,
    inspect_database,
    inspect_header,
    is_busy,
    read_identity,
)
from kvmodel.engines.base import (
    VALUE_ENCODINGS,
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
    SnapshotEntry,
    apply_numeric_mutation,
    check_stored_value,
    describe_stored_key,
    log_undelivered,
    next_backoff,
    queue_logger,
    read_stored_backoff,
    read_stored_dead_letter_keys,
    versionstamp_from_counter,
    versionstamped_key,
)
from kvmodel.errors import DecodeError, EngineError, InvalidArgumentError, KvClosedError
from kvmodel.limits import (
    DEFAULT_LIMITS,
    MAX_KEY_SIZE,
    MAX_READ_KEY_SIZE,
    MAX_TOTAL_KEY_SIZE,
    MAX_VALUE_SIZE,
    EngineLimits,
)

__all__ = [
    "APPLICATION_ID",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SqliteEngine",
]

_T = TypeVar("_T")

# Bounds on the msgpack columns of a queue row, far above what kvmodel writes
# (keys_if_undelivered is bounded by the total key size of one commit, the
# schedule by 5 intervals), so a damaged row cannot make the decoder allocate
# more than that.
_MAX_COLUMN_BYTES = 2 * MAX_TOTAL_KEY_SIZE
_MAX_ATTEMPT = 1 << 62
# What _lease_next returns as the wake time when the queue changed under it.
_LOOK_AGAIN = -1


def _unpack_column(where: str, column: str, blob: object) -> object:
    """Unpacks a msgpack column of a queue row; DecodeError when it is not one."""
    if type(blob) is not bytes or len(blob) > _MAX_COLUMN_BYTES:
        size = f" of {len(blob)}" if isinstance(blob, bytes | str) else ""
        raise DecodeError(
            f"The {column} column of {where} is a {type(blob).__name__}{size}, "
            f"not msgpack bytes of at most {_MAX_COLUMN_BYTES}."
        )
    try:
        return msgpack.unpackb(
            blob,
            raw=False,
            max_bin_len=MAX_KEY_SIZE,
            max_str_len=0,
            max_array_len=_MAX_COLUMN_BYTES,
            max_map_len=0,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        detail = str(exc).rstrip(".") or type(exc).__name__
        raise DecodeError(
            f"The {column} column of {where} is not valid msgpack ({detail})."
        ) from exc


def _checked_entry(
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
        raise _damaged_row(key, value, encoding, version, expiration_ms)
    return RawEntry(key, value, encoding, versionstamp_from_counter(version))


def _damaged_row(
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


# ---------------------------------------------------------------------------
# Queue messages and watch streams.


class _SqliteQueueMessage(LeasedMessage):
    """A message leased from the queue table; the token proves the lease is ours."""

    __slots__ = ("_engine", "_id", "_token")

    def __init__(
        self,
        engine: SqliteEngine,
        message_id: int,
        token: bytes,
        payload: bytes,
        encoding: int,
        attempt: int,
    ) -> None:
        # AUTOINCREMENT: a row id is never handed out twice, and a retry keeps its row.
        super().__init__(payload, encoding, attempt, message_id=str(message_id))
        self._engine = engine
        self._id = message_id
        self._token = token

    def renew_lease(self) -> bool:
        """Extends the lease by the engine's lease timeout; False if the lease was lost."""
        return self._engine._renew_lease(self._id, self._token)

    def finish(self, success: bool) -> None:
        """Settles the message (see :meth:`kvmodel.engines.base.QueueMessage.finish`)."""
        self._engine._finish_message(self._id, self._token, success)

    def __repr__(self) -> str:
        return f"<SqliteQueueMessage id={self._id} attempt={self._attempt}>"


class _SqliteWatchStream(PollingWatchStream):
    """A PollingWatchStream that keeps the poller running while ``next`` blocks."""

    def __init__(
        self,
        signal: ChangeSignal,
        read: Callable[[], list[RawEntry | None]],
        *,
        clock: Clock,
        expiry_deadline: Callable[[], float | None],
        poller: Poller,
        raise_if_forked: Callable[[], None],
    ) -> None:
        super().__init__(signal, read, clock=clock, expiry_deadline=expiry_deadline)
        self._poller = poller
        self._raise_if_forked = raise_if_forked

    def next(self, timeout: float | None = None) -> list[RawEntry | None] | None:
        """See :meth:`kvmodel.engines.base.WatchStream.next`."""
        # In a forked child nothing would ever wake this wait: raise instead.
        self._raise_if_forked()
        self._poller.add_waiter()
        try:
            return super().next(timeout)
        finally:
            self._poller.remove_waiter()


# ---------------------------------------------------------------------------
# Waiting for locks.

# Lock waits sleep in Python, never in SQLite's busy handler (timeout=0 below).
# The busy handler's sleeps grow to 100 ms, while the writer that holds the
# lock takes it again microseconds after each commit, so whoever holds it
# keeps it: 4 processes summing for 30 s (tests/torture/test_fairness.py, 2
# cores, busy_timeout 5 s) made 23,741 to 62,465 commits, and one commit
# waited 10 s and failed. With sleeps of at most BUSY_SLEEP_MAX every waiter
# polls often enough to hit the gaps between another writer's transactions:
# 32,346 to 37,409 commits, at most 0.27 s of waiting, and 13% fewer commits
# in total (handing the lock over costs cache reloads). A cap of 2 ms was as
# fair but cost another 20% in polling; 10 ms was less fair.
# A writer that has waited longer than BUSY_AGED_AFTER polls faster still,
# which gives it priority over fresh waiters: SQLite keeps no queue of waiters.
BUSY_SLEEP_FIRST = 0.0001
BUSY_SLEEP_MAX = 0.005
BUSY_SLEEP_AGED = 0.0005
BUSY_AGED_AFTER = 0.25

# ---------------------------------------------------------------------------
# Fork safety.

# Engines that may hold connections, so a forked child can disown them. The
# file identities of engines open at a fork: the child must not open those
# files again (see _after_fork_in_child).
_LIVE_ENGINES: weakref.WeakSet[SqliteEngine] = weakref.WeakSet()
_INHERITED_FILES: set[tuple[int, int]] = set()


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _keep_forever(conn: sqlite3.Connection) -> None:
    """Makes sure a connection inherited through a fork is never closed in the child.

    Closing it would release locks, or checkpoint and delete the WAL, on the
    strength of lock records that belong to the parent; so it keeps one
    reference that nothing gives back, not even interpreter shutdown.
    """
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))


def _after_fork_in_child() -> None:
    inherited = []
    for engine in list(_LIVE_ENGINES):
        if engine._disown_after_fork():
            inherited.append(engine._file_id)
    _INHERITED_FILES.update(i for i in inherited if i is not None)


os.register_at_fork(after_in_child=_after_fork_in_child)

# ---------------------------------------------------------------------------
# The engine.


class SqliteEngine:
    """A durable engine on one SQLite file, safe across threads and processes.

    Args:
        path: the database file; created (with its schema) when missing or empty.
        synchronous: ``"FULL"`` (the default: a commit that returned survives a
            power loss, as in Deno) or ``"NORMAL"`` (a commit survives a crash of
            the process but the last commits may roll back on power loss).
        clock: the wall clock for expiry, queue ready times and leases.
        lease_timeout: seconds a dequeued message stays leased to its listener
            before another listener may take it (renewable).
        poll_interval: seconds between checks for commits of other processes,
            while someone waits.
        busy_timeout: seconds to wait for another connection's lock before
            raising :class:`EngineError`.

    Raises:
        EngineError: the file is not a kvmodel database (another application's,
            not SQLite, truncated, damaged, newer), is read-only, its directory
            is missing, or it was open in the parent when this process forked.
        InvalidArgumentError: an option is out of range.

    >>> import tempfile, os
    >>> from kvmodel.engines.base import AtomicWrite, Mutation, MutationKind, ReadRange
    >>> with tempfile.TemporaryDirectory() as d:
    ...     engine = SqliteEngine(os.path.join(d, "app.db"))
    ...     outcome = engine.atomic_write(
    ...         AtomicWrite(mutations=(Mutation(b"\\x02a\\x00", MutationKind.SET, b"v", 3),))
    ...     )
    ...     [[entry]] = engine.snapshot_read([ReadRange(b"\\x02a\\x00", b"\\x02a\\x00\\x00", 1)])
    ...     engine.close()
    >>> entry.value, entry.versionstamp.hex()
    (b'v', '00000000000000010000')
    """

    capabilities = EngineCapabilities(durable=True, cross_process=True)
    limits: EngineLimits = DEFAULT_LIMITS

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        clock: Clock = time.time,
        lease_timeout: float = 30.0,
        poll_interval: float = 0.02,
        busy_timeout: float = 30.0,
    ) -> None:
        path = os.fspath(path)
        if not isinstance(synchronous, str) or synchronous.upper() not in SYNCHRONOUS_MODES:
            raise InvalidArgumentError(
                f"synchronous={synchronous!r} is not supported; use 'FULL' or 'NORMAL'."
            )
        for name, value in (
            ("lease_timeout", lease_timeout),
            ("poll_interval", poll_interval),
            ("busy_timeout", busy_timeout),
        ):
            if not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise InvalidArgumentError(
                    f"{name}={value!r} is not a positive finite number of seconds."
                )
        if path == ":memory:" or path.startswith("file:"):
            raise InvalidArgumentError(
                f"SqliteEngine needs a file path, not {path!r}; use MemoryEngine for memory."
            )
        self._path = path
        self._synchronous = synchronous.upper()
        self._clock = clock
        self._lease_timeout_ms = int(lease_timeout * 1000)
        self._busy_timeout = float(busy_timeout)
        self._closed = False
        self._forked_from: int | None = None
        self._file_id: tuple[int, int] | None = None
        self._close_lock = threading.Lock()
        self._signal = ChangeSignal()
        # Every open connection (pooled, in use, the poller's), so close() can
        # wait until all are closed and a forked child can disown them all.
        self._conns: set[sqlite3.Connection] = set()
        self._conns_cond = threading.Condition(threading.Lock())

        # Connections: a pool (a list used as a LIFO stack) rather than one
        # connection behind a lock or one per thread. Measured on 2 cores with
        # 4 threads doing point reads: pool 119k/s, threading.local 121k/s, one
        # locked connection 80k/s (the lock serialises readers that WAL lets run
        # side by side while sqlite3 releases the GIL). Against threading.local
        # the pool wins on lifetime: connections of short-lived threads
        # (executors, web workers) return to the pool instead of staying open
        # until close(), and close() can reach every idle connection.
        # list.pop/append are atomic under the GIL (about 60 ns per call, as a
        # threading.local lookup), and the pool never holds more connections
        # than the peak number of concurrent calls.
        self._pool: list[sqlite3.Connection] = []

        file_id = _file_id(path)
        if file_id is not None and file_id in _INHERITED_FILES:
            raise EngineError(
                f"The database {path!r} was open in the parent when this process was "
                "forked; SQLite's locks do not survive a fork, so it cannot be used here. "
                "Close every Kv on it before forking, or start workers with the "
                "'spawn' method."
            )
        exists = os.path.exists(path) and os.path.getsize(path) > 0
        # An engine of this process that has the file open already accepted it.
        # Inspecting it again would also be harmful: reading the header opens
        # and closes a descriptor, and closing any descriptor of a file drops
        # every POSIX lock this process holds on it, the open engine's included.
        shared = file_id is not None and any(
            e._file_id == file_id and not e._closed for e in list(_LIVE_ENGINES)
        )
        if exists and not shared:
            inspect_header(path)
        check_writable(path, os.path.exists(path))
        if exists and not shared:
            inspect_database(path)
        conn = self._connect_and_migrate()
        self._pool.append(conn)
        poller_conn: sqlite3.Connection | None = None
        try:
            poller_conn = self._connect()

            def make_poller(c: sqlite3.Connection) -> Poller:
                return Poller(c, self._signal, float(poll_interval))

            try:
                # Reads the data version: busy while another process recovers the WAL.
                self._poller = make_poller(poller_conn)
            except sqlite3.Error as exc:
                if not is_busy(exc):
                    raise
                self._poller = self._retry_busy(poller_conn, make_poller, "opening", exc)
            self._poller_conn = poller_conn
        except BaseException as exc:
            for c in (conn, poller_conn):
                if c is not None:
                    self._discard(c)
            if isinstance(exc, sqlite3.Error):
                raise EngineError(f"Cannot open the database {path!r}: {exc}.") from exc
            raise
        self._file_id = _file_id(path)
        _LIVE_ENGINES.add(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SqliteEngine {self._path!r} {state}>"

    @property
    def clock(self) -> Clock:
        """The engine's wall clock; the Kv computes deadlines with the same one."""
        return self._clock

    @property
    def lease_timeout(self) -> float:
        """Seconds a dequeued message stays leased; the Kv renews leases well within it."""
        return self._lease_timeout_ms / 1000

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    # -- connections --------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit, and our explicit BEGIN/COMMIT are
        # the only transactions (sqlite3's implicit ones would defer the lock).
        # timeout=0: lock waits happen in _retry_busy (see BUSY_SLEEP_MAX).
        conn = sqlite3.connect(
            self._path,
            timeout=0,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=64,
        )
        with self._conns_cond:
            # Checked under the lock close() takes, so no connection opens after it.
            if self._closed:
                conn.close()
                raise self._closed_error()
            self._conns.add(conn)
        pragma = f"PRAGMA synchronous={self._synchronous}"
        try:
            try:
                conn.execute(pragma)
            except sqlite3.Error as exc:
                # Even a pragma loads the schema first, which is busy while
                # another process recovers the WAL of a killed writer.
                if not is_busy(exc):
                    raise
                self._retry_busy(conn, lambda c: c.execute(pragma), "opening a connection", exc)
        except BaseException:
            self._discard(conn)
            raise
        return conn

    def _discard(self, conn: sqlite3.Connection) -> None:
        """Closes a connection for good and tells a waiting close() about it."""
        conn.close()
        with self._conns_cond:
            self._conns.discard(conn)
            self._conns_cond.notify_all()

    def _disown_after_fork(self) -> bool:
        """In a forked child: gives up the parent's connections without closing them.

        Returns True when the engine was open (or still closing) at the fork;
        an engine closed before it stays merely closed (KvClosedError).
        """
        was_open = not self._closed or bool(self._conns)
        for conn in self._conns:
            _keep_forever(conn)
        self._conns = set()
        self._pool = []
        self._conns_cond = threading.Condition(threading.Lock())
        self._poller.disown_after_fork()
        self._close_lock = threading.Lock()
        if was_open:
            self._forked_from = self._forked_from or os.getppid()
        self._closed = True
        return was_open

    def _connect_and_migrate(self) -> sqlite3.Connection:
        path = self._path
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise EngineError(f"Cannot open the database {path!r}: {exc}.") from exc
        try:
            try:
                self._migrate(conn)
            except sqlite3.Error as exc:
                if not is_busy(exc):
                    raise
                self._retry_busy(conn, self._migrate, "opening", exc)
        except sqlite3.Error as exc:
            self._discard(conn)
            raise EngineError(f"Cannot initialise the database {path!r}: {exc}.") from exc
        except BaseException:
            self._discard(conn)
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Puts the file in WAL mode and brings its schema up to date (rolls back on error)."""
        path = self._path
        if self._schema_is_current(conn):
            # Opening an up-to-date file takes no write lock, so it never waits
            # for writers; the file is in WAL mode already.
            return
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise EngineError(
                f"The database {path!r} cannot use WAL mode (journal mode {mode!r}); "
                "put it on a local filesystem."
            )
        conn.execute(BEGIN_IMMEDIATE)
        try:
            # Read again under the write lock: another process may have
            # initialised (or, improbably, claimed) the file since the inspection.
            application_id, version, tables = read_identity(conn)
            check_identity(path, application_id, version, tables)
            for migration in MIGRATIONS[version:]:
                for statement in migration:
                    conn.execute(statement)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute(COMMIT)
        except BaseException:
            self._rollback(conn)
            raise

    def _schema_is_current(self, conn: sqlite3.Connection) -> bool:
        """True for a kvmodel file of this schema version in WAL mode; refuses a bad one."""
        application_id, version, tables = read_identity(conn)
        if application_id == APPLICATION_ID:
            check_identity(self._path, application_id, version, tables)
        if application_id != APPLICATION_ID or version != SCHEMA_VERSION:
            return False
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal"

    def _release(self, conn: sqlite3.Connection) -> None:
        # A connection still inside a transaction (a failed ROLLBACK) is not reused.
        if self._closed or conn.in_transaction:
            self._discard(conn)
        else:
            self._pool.append(conn)

    def _acquire(self) -> sqlite3.Connection:
        try:
            return self._pool.pop()
        except IndexError:
            pass
        try:
            return self._connect()
        except sqlite3.Error as exc:
            raise self._wrap(exc, "opening a connection") from exc

    def _closed_error(self) -> Exception:
        if self._forked_from is not None:
            return EngineError(
                f"The SqliteEngine for {self._path!r} was opened in process "
                f"{self._forked_from}, before it forked this one; SQLite connections "
                "cannot cross a fork. Close the Kv before forking and open a new one "
                "in the child, or start workers with the 'spawn' method."
            )
        return KvClosedError(f"The SqliteEngine for {self._path!r} is closed.")

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise self._closed_error()

    def _raise_if_forked(self) -> None:
        if self._forked_from is not None:
            raise self._closed_error()

    def _wrap(self, exc: sqlite3.Error, doing: str) -> Exception:
        if self._forked_from is not None:
            return self._closed_error()
        if self._closed:
            return KvClosedError(f"The SqliteEngine for {self._path!r} was closed while {doing}.")
        return EngineError(f"SQLite failed while {doing} in {self._path!r}: {exc}.")

    def _run(self, op: Callable[[sqlite3.Connection], _T], doing: str) -> _T:
        """Runs ``op`` on a pooled connection, retrying it while the database is busy.

        ``op`` must roll back its own transaction when it raises, so a retry
        starts from scratch (checks are evaluated again).
        """
        conn = self._acquire()
        try:
            try:
                return op(conn)
            except sqlite3.Error as exc:
                if not is_busy(exc):
                    raise self._wrap(exc, doing) from exc
                return self._retry_busy(conn, op, doing, exc)
        finally:
            self._release(conn)

    def _retry_busy(
        self,
        conn: sqlite3.Connection,
        op: Callable[[sqlite3.Connection], _T],
        doing: str,
        first: sqlite3.Error,
    ) -> _T:
        # The connections have no busy handler (timeout=0), so every lock wait
        # is this loop: jittered sleeps that double from BUSY_SLEEP_FIRST up to
        # BUSY_SLEEP_MAX, and up to only BUSY_SLEEP_AGED once the wait is long
        # (see BUSY_SLEEP_MAX for why), until busy_timeout has passed since the
        # first failure. close() ends the wait within one sleep.
        started = time.monotonic()
        deadline = started + self._busy_timeout
        aged_at = started + BUSY_AGED_AFTER
        delay = BUSY_SLEEP_FIRST
        last: sqlite3.Error = first
        while not self._closed:
            now = time.monotonic()
            if now >= deadline:
                break
            time.sleep(random.uniform(0.0, min(delay, deadline - now)))
            delay = min(delay * 2, BUSY_SLEEP_AGED if now >= aged_at else BUSY_SLEEP_MAX)
            try:
                return op(conn)
            except sqlite3.Error as exc:
                if not is_busy(exc):
                    raise self._wrap(exc, doing) from exc
                last = exc
        if self._closed:
            raise self._wrap(last, doing) from last
        raise EngineError(
            f"The database {self._path!r} stayed locked by another connection for "
            f"{self._busy_timeout:g} s while {doing}; raise busy_timeout or shorten "
            "the other writers' transactions."
        ) from last

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        # Never mask the original error; a connection whose rollback failed is
        # dropped by _release because it is still in a transaction.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute(ROLLBACK)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- reads --------------------------------------------------------------

    def snapshot_read(
        self, ranges: Sequence[ReadRange], *, consistency: Consistency = Consistency.STRONG
    ) -> list[list[RawEntry]]:
        """Reads every range at one consistent point, hiding expired keys.

        ``consistency`` is accepted for the protocol; a local file is always
        read at its latest commit.
        """
        if self._closed:
            self._raise_if_closed()
        pool = self._pool
        try:
            conn = pool.pop()
        except IndexError:  # (not "if pool": another thread may empty it meanwhile)
            conn = self._acquire()
        try:
            if len(ranges) == 1:
                r = ranges[0]
                start = r.start
                if r.end == start + b"\x00" and r.limit > 0:
                    # The hot path, inlined: a point read by primary key, with
                    # the expiry test in Python so the clock is only read for
                    # keys that can expire.
                    row = conn.execute(SELECT_POINT, (start,)).fetchone()
                    if row is not None and not (
                        type(row[0]) is bytes
                        and len(row[0]) <= MAX_VALUE_SIZE
                        and type(row[1]) is int
                        and row[1] in VALUE_ENCODINGS
                        and type(row[2]) is int
                        and row[2] >= 0
                        and (row[3] is None or type(row[3]) is int)
                    ):
                        raise _damaged_row(start, *row)
                    if row is None or (row[3] is not None and row[3] <= self._now_ms()):
                        result: list[list[RawEntry]] = [[]]
                    else:
                        stamp = versionstamp_from_counter(row[2])
                        result = [[RawEntry(start, row[0], row[1], stamp)]]
                    if self._closed:
                        self._discard(conn)
                    else:
                        pool.append(conn)
                    return result
            result = self._read_ranges(conn, ranges)
        except sqlite3.Error as exc:
            try:
                if not is_busy(exc):
                    raise self._wrap(exc, "reading") from exc
                result = self._retry_busy(
                    conn, lambda c: self._read_ranges(c, ranges), "reading", exc
                )
            finally:
                self._release(conn)
            return result
        except BaseException:
            self._release(conn)
            raise
        self._release(conn)
        return result

    def snapshot_read_linked(
        self, read: ReadRange, *, consistency: Consistency = Consistency.STRONG
    ) -> list[tuple[RawEntry, RawEntry | None]]:
        """Reads the range joined with the entries its values link to: one statement."""
        if self._closed:
            self._raise_if_closed()
        if read.limit <= 0 or read.start >= read.end:
            return []
        return self._run(lambda conn: self._read_linked(conn, read), "reading")

    def _read_linked(
        self, conn: sqlite3.Connection, r: ReadRange
    ) -> list[tuple[RawEntry, RawEntry | None]]:
        now_ms = self._now_ms()
        sql = SELECT_LINKED_REVERSE if r.reverse else SELECT_LINKED
        out: list[tuple[RawEntry, RawEntry | None]] = []
        for k, v, enc, ver, exp, tv, tenc, tver, texp, linked in conn.execute(
            sql, (r.start, r.end, now_ms, r.limit)
        ):
            entry = _checked_entry(k, v, enc, ver, exp)
            target = None
            if linked:
                target = _checked_entry(v, tv, tenc, tver, texp)
                if texp is not None and texp <= now_ms:
                    target = None
            out.append((entry, target))
        return out

    def _read_points(
        self, conn: sqlite3.Connection, ranges: Sequence[ReadRange]
    ) -> list[list[RawEntry]]:
        """get_many's case: every range is one key, read with a single IN query."""
        keys = [r.start for r in ranges]
        sql = SELECT_POINTS.format(",".join("?" * len(keys)))
        found = {row[0]: row for row in conn.execute(sql, keys)}
        now_ms: int | None = None
        out: list[list[RawEntry]] = []
        for key in keys:
            row = found.get(key)
            if row is not None:
                _checked_entry(*row)
            if row is not None and row[4] is not None:
                if now_ms is None:
                    now_ms = self._now_ms()
                if row[4] <= now_ms:
                    row = None
            out.append(
                []
                if row is None
                else [RawEntry(key, row[1], row[2], versionstamp_from_counter(row[3]))]
            )
        return out

    def _read_ranges(
        self, conn: sqlite3.Connection, ranges: Sequence[ReadRange]
    ) -> list[list[RawEntry]]:
        if len(ranges) == 1:
            # A single statement reads one snapshot already.
            return [self._read_range(conn, ranges[0])]
        if len(ranges) <= MAX_POINTS and all(
            r.end == r.start + b"\x00" and r.limit > 0 for r in ranges
        ):
            return self._read_points(conn, ranges)
        conn.execute(BEGIN_READ)
        try:
            result = [self._read_range(conn, r) for r in ranges]
            conn.execute(COMMIT)
        except BaseException:
            self._rollback(conn)
            raise
        return result

    def _read_range(self, conn: sqlite3.Connection, r: ReadRange) -> list[RawEntry]:
        start = r.start
        limit = r.limit
        if limit <= 0:  # SQLite reads LIMIT -1 as "no limit"
            return []
        if r.end == start + b"\x00":
            # A point read: the primary-key lookup, with the expiry test in
            # Python so the clock is only read for keys that can expire.
            row = conn.execute(SELECT_POINT, (start,)).fetchone()
            if row is None:
                return []
            entry = _checked_entry(start, *row)
            expiration_ms = row[3]
            if expiration_ms is not None and expiration_ms <= self._now_ms():
                return []
            return [entry]
        sql = SELECT_RANGE_REVERSE if r.reverse else SELECT_RANGE
        rows = conn.execute(sql, (start, r.end, self._now_ms(), limit)).fetchall()
        return [_checked_entry(*row) for row in rows]

    def _read_keys(self, keys: Sequence[bytes]) -> list[RawEntry | None]:
        def op(conn: sqlite3.Connection) -> list[RawEntry | None]:
            conn.execute(BEGIN_READ)
            try:
                now_ms = self._now_ms()
                out: list[RawEntry | None] = []
                for key in keys:
                    row = conn.execute(SELECT_POINT, (key,)).fetchone()
                    entry = None if row is None else _checked_entry(key, *row)
                    if entry is None or (row[3] is not None and row[3] <= now_ms):
                        out.append(None)
                    else:
                        out.append(entry)
                conn.execute(COMMIT)
            except BaseException:
                self._rollback(conn)
                raise
            return out

        self._raise_if_closed()
        return self._run(op, "reading watched keys")

    # -- writes -------------------------------------------------------------

    def atomic_write(self, write: AtomicWrite) -> CommitOutcome:
        """Applies a write all-or-nothing in one SQLite transaction, or reports failed checks.

        Raises:
            KvTypeError: SUM, MIN or MAX met a stored value that is not LE64
                (nothing is written).
            EngineError: SQLite failed, or the file stayed locked past busy_timeout.
        """
        if self._closed:
            self._raise_if_closed()
        conn = self._acquire()
        try:
            try:
                outcome = self._commit(conn, write)
            except sqlite3.Error as exc:
                if not is_busy(exc):
                    raise self._wrap(exc, "committing") from exc
                outcome = self._retry_busy(
                    conn, lambda c: self._commit(c, write), "committing", exc
                )
        finally:
            self._release(conn)
        if outcome.versionstamp is not None:
            self._signal.bump()
        return outcome

    def _commit(self, conn: sqlite3.Connection, write: AtomicWrite) -> CommitOutcome:
        execute = conn.execute
        execute(BEGIN_IMMEDIATE)
        try:
            # Read the clock after taking the lock: expiry is judged at commit time.
            now_ms = self._now_ms()
            if write.checks:
                failed: list[int] = []
                for index, check in enumerate(write.checks):
                    row = execute(SELECT_VERSION, (check.key,)).fetchone()
                    current = None
                    if row is not None and not (
                        type(row[0]) is int
                        and row[0] >= 0
                        and (row[1] is None or type(row[1]) is int)
                    ):
                        raise _damaged_row(check.key, b"", 1, *row)
                    if row is not None and (row[1] is None or row[1] > now_ms):
                        current = versionstamp_from_counter(row[0])
                    if current != check.versionstamp:
                        failed.append(index)
                if failed:
                    execute(ROLLBACK)
                    return CommitOutcome(None, tuple(failed))
            counter = self._bump_counter(conn)
            versionstamp = versionstamp_from_counter(counter)
            for m in write.mutations:
                kind = m.kind
                if kind is MutationKind.SET:
                    execute(UPSERT, (m.key, m.value, m.encoding, counter, m.expire_at_ms))
                elif kind is MutationKind.DELETE:
                    execute(DELETE, (m.key,))
                elif kind is MutationKind.SET_SUFFIX_VERSIONSTAMPED_KEY:
                    key = versionstamped_key(m.key, versionstamp)
                    execute(UPSERT, (key, m.value, m.encoding, counter, m.expire_at_ms))
                else:
                    row = execute(SELECT_VALUE, (m.key,)).fetchone()
                    stored = None
                    if row is not None:
                        _checked_entry(m.key, row[0], row[1], 0, row[2])
                    if row is not None and (row[2] is None or row[2] > now_ms):
                        stored = (row[0], row[1])
                    # Raises KvTypeError; the except below rolls everything back.
                    value = apply_numeric_mutation(kind, stored, m.value)
                    execute(UPSERT, (m.key, value, m.encoding, counter, None))
            for e in write.enqueues:
                execute(
                    INSERT_MESSAGE,
                    (
                        e.ready_at_ms,
                        e.payload,
                        e.encoding,
                        msgpack.packb(list(e.keys_if_undelivered)),
                        msgpack.packb(list(e.backoff_schedule_ms)),
                    ),
                )
            execute(COMMIT)
        except BaseException:
            self._rollback(conn)
            raise
        return CommitOutcome(versionstamp)

    @staticmethod
    def _bump_counter(conn: sqlite3.Connection) -> int:
        if HAS_RETURNING:
            # fetchall steps the statement to completion before COMMIT.
            rows = conn.execute(BUMP_COUNTER_RETURNING).fetchall()
            return int(rows[0][0])
        conn.execute(BUMP_COUNTER)
        return int(conn.execute(SELECT_COUNTER).fetchone()[0])

    # -- queue --------------------------------------------------------------

    def dequeue_next_message(self, timeout: float) -> _SqliteQueueMessage | None:
        """Leases the next ready message (FIFO for equal ready times), waiting up to ``timeout`` s.

        The lease lasts ``lease_timeout`` seconds; a message whose lease ran out
        (its listener died) is delivered again. Returns None on timeout or once
        the engine is closed.
        """
        self._raise_if_forked()  # not None, which would make a listener spin
        deadline = time.monotonic() + max(0.0, timeout)
        poller: Poller | None = None
        try:
            while not self._closed:
                seen = self._signal.seq
                try:
                    message, wake_at_ms = self._run(self._lease_next, "dequeuing")
                except KvClosedError:
                    return None
                if message is not None:
                    return message
                if wake_at_ms == _LOOK_AGAIN:
                    # A message was settled (or taken by another listener)
                    # just now: another may be ready, even with no time left.
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if poller is None:
                    # Only now that we will block do other processes' commits matter.
                    poller = self._poller
                    poller.add_waiter()
                if wake_at_ms is not None:
                    remaining = min(remaining, max(0.0, (wake_at_ms - self._now_ms()) / 1000))
                self._signal.wait(seen, remaining)
            return None
        finally:
            if poller is not None:
                poller.remove_waiter()

    def _lease_next(
        self, conn: sqlite3.Connection
    ) -> tuple[_SqliteQueueMessage | None, int | None]:
        execute = conn.execute
        now_ms = self._now_ms()
        # Look first without the write lock: an idle listener must not queue
        # behind writers (nor fsync) just to find nothing.
        if execute(SELECT_READY_MESSAGE, (now_ms, now_ms)).fetchone() is None:
            ready_ms, lease_ms = execute(SELECT_QUEUE_WAKE).fetchone()
            # A damaged (non-integer) time never makes its row ready; ignore it.
            wakes = [t for t in (ready_ms, lease_ms) if type(t) is int]
            return None, min(wakes) if wakes else None
        # A lease needs no fsync of its own: losing one to a power cut only means
        # the message is delivered again (at-least-once), and the next FULL commit
        # syncs the WAL frames before it anyway. Skipping the fsync here halves the
        # disk flushes per delivered message.
        relax = self._synchronous == "FULL"
        if relax:
            execute("PRAGMA synchronous=NORMAL")
        try:
            return self._lease_in_transaction(conn)
        finally:
            if relax:
                execute("PRAGMA synchronous=FULL")

    def _lease_in_transaction(
        self, conn: sqlite3.Connection
    ) -> tuple[_SqliteQueueMessage | None, int | None]:
        execute = conn.execute
        execute(BEGIN_IMMEDIATE)
        try:
            now_ms = self._now_ms()
            row = execute(SELECT_READY_MESSAGE, (now_ms, now_ms)).fetchone()
            if row is None:  # another listener took it first; look again at once
                execute(ROLLBACK)
                return None, _LOOK_AGAIN
            message_id, payload, encoding, attempt, _keys, _schedule, abandoned = row
            # Check every column before a handler sees the message: a damaged
            # row is moved aside now instead of failing (and staying leased)
            # in every listener that takes it.
            settled = self._settle_if_damaged(conn, message_id, row[1:6])
            if settled is None and abandoned:
                # The previous lease ran out unsettled: its handler killed or
                # hung its process. That delivery is a failed attempt (as in
                # Deno's queue_cleanup), so a poison message follows the backoff
                # schedule to its dead letters instead of returning for ever.
                settled = self._fail_message(
                    conn, message_id, row[1:6], now_ms, "its lease expired"
                )
            if settled is not None:
                execute(COMMIT)
                self._signal.bump()
                return None, _LOOK_AGAIN
            token = secrets.token_bytes(16)
            lease = (now_ms + self._lease_timeout_ms, token, message_id)
            if HAS_RETURNING:
                attempt = execute(LEASE_MESSAGE, lease).fetchall()[0][0]
            else:
                execute(LEASE_MESSAGE_NO_RETURNING, lease)
                attempt = execute(SELECT_ATTEMPT, (message_id,)).fetchone()[0]
            execute(COMMIT)
        except BaseException:
            self._rollback(conn)
            raise
        return _SqliteQueueMessage(self, message_id, token, payload, encoding, attempt), None

    def _renew_lease(self, message_id: int, token: bytes) -> bool:
        if self._closed:
            return False

        def op(conn: sqlite3.Connection) -> bool:
            until_ms = self._now_ms() + self._lease_timeout_ms
            return conn.execute(RENEW_LEASE, (until_ms, message_id, token)).rowcount == 1

        try:
            return self._run(op, "renewing a queue lease")
        except KvClosedError:
            return False

    def _finish_message(self, message_id: int, token: bytes, success: bool) -> None:
        # After close the lease simply runs out and the message is delivered
        # again on reopen: at-least-once, never lost.
        if self._closed:
            return

        def op(conn: sqlite3.Connection) -> bool:
            execute = conn.execute
            execute(BEGIN_IMMEDIATE)
            try:
                row = execute(SELECT_LEASED_MESSAGE, (message_id, token)).fetchone()
                if row is None:  # the lease was lost to another listener
                    execute(ROLLBACK)
                    return False
                if success:
                    execute(DELETE_MESSAGE, (message_id,))
                elif self._settle_if_damaged(conn, message_id, row) is None:
                    self._fail_message(conn, message_id, row, self._now_ms(), "its handler failed")
                execute(COMMIT)
            except BaseException:
                self._rollback(conn)
                raise
            return True

        try:
            changed = self._run(op, "finishing a queue message")
        except KvClosedError:
            return
        if changed:
            self._signal.bump()

    def _fail_message(
        self,
        conn: sqlite3.Connection,
        message_id: int,
        columns: Sequence[object],
        now_ms: int,
        why: str,
    ) -> str:
        """Retries a failed delivery after its next backoff interval, or gives up on it.

        ``columns`` are (payload, encoding, attempt, keys_if_undelivered,
        backoff_schedule), already checked by :meth:`_settle_if_damaged`. Runs
        inside the caller's write transaction; returns what it did.
        """
        payload, encoding, attempt, keys_blob, schedule_blob = columns
        where = f"queue message {message_id}"
        step = next_backoff(
            read_stored_backoff(where, _unpack_column(where, "backoff_schedule", schedule_blob))
        )
        if step is not None:
            delay_ms, rest = step
            conn.execute(
                RESCHEDULE_MESSAGE, (now_ms + delay_ms, msgpack.packb(list(rest)), message_id)
            )
            return "retried"
        keys = read_stored_dead_letter_keys(
            where, _unpack_column(where, "keys_if_undelivered", keys_blob)
        )
        self._dead_letter(conn, message_id, payload, encoding, keys)
        log_undelivered(str(message_id), attempt if isinstance(attempt, int) else 0, keys, why)
        return "given up"

    def _dead_letter(
        self,
        conn: sqlite3.Connection,
        message_id: int,
        payload: object,
        encoding: object,
        keys: Sequence[bytes],
    ) -> None:
        if keys:
            # Dead letter: one commit, one versionstamp for every key.
            counter = self._bump_counter(conn)
            for key in keys:
                conn.execute(UPSERT, (key, payload, encoding, counter, None))
        conn.execute(DELETE_MESSAGE, (message_id,))

    def _settle_if_damaged(
        self, conn: sqlite3.Connection, message_id: int, columns: Sequence[object]
    ) -> str | None:
        """Moves a message whose stored columns are damaged out of the queue.

        ``columns`` are (payload, encoding, attempt, keys_if_undelivered,
        backoff_schedule) as read. Returns None when they are all sound.
        Otherwise, inside the caller's write transaction, the message is
        dead-lettered when its value and its keys_if_undelivered are sound
        (and there is at least one key), and else copied verbatim into the
        ``queue_quarantine`` table; either way it leaves the queue and the
        reason is logged at WARNING on the ``kvmodel.queue`` logger.
        """
        payload, encoding, attempt, keys_blob, schedule_blob = columns
        where = f"queue message {message_id}"
        try:
            check_stored_value(where, payload, encoding)
            keys = read_stored_dead_letter_keys(
                where, _unpack_column(where, "keys_if_undelivered", keys_blob)
            )
        except DecodeError as exc:
            return self._quarantine(conn, message_id, exc)
        try:
            if type(attempt) is not int or not 1 <= attempt < _MAX_ATTEMPT:
                raise DecodeError(
                    f"The attempt count of {where} is {describe_stored_key(attempt)}, "
                    "not a positive int."
                )
            read_stored_backoff(where, _unpack_column(where, "backoff_schedule", schedule_blob))
        except DecodeError as exc:
            if not keys:
                return self._quarantine(conn, message_id, exc)
            self._dead_letter(conn, message_id, payload, encoding, keys)
            queue_logger.warning(
                "%s It was written to its keys_if_undelivered %s without being delivered.",
                exc,
                ", ".join(describe_stored_key(k) for k in keys),
            )
            return "dead-lettered"
        return None

    def _quarantine(self, conn: sqlite3.Connection, message_id: int, exc: DecodeError) -> str:
        conn.execute(CREATE_QUEUE_QUARANTINE)
        conn.execute(QUARANTINE_MESSAGE, (self._now_ms(), str(exc), message_id))
        conn.execute(DELETE_MESSAGE, (message_id,))
        queue_logger.warning(
            "%s It was moved to the table queue_quarantine of %r without being delivered.",
            exc,
            self._path,
        )
        return "quarantined"

    # -- watch and expiry ---------------------------------------------------

    def watch(self, keys: Sequence[bytes]) -> PollingWatchStream:
        """Watches ``keys``: a snapshot per wake-up, woken by any process's commits and expiries."""
        self._raise_if_closed()
        keys = list(keys)
        placeholders = ", ".join("?" * len(keys))
        sql = f"SELECT MIN(expiration_ms) FROM kv WHERE k IN ({placeholders}) AND expiration_ms > ?"

        def expiry_deadline() -> float | None:
            if not keys or self._closed:
                return None

            def op(conn: sqlite3.Connection) -> int | None:
                row = conn.execute(sql, (*keys, self._now_ms())).fetchone()
                return None if row is None else row[0]

            deadline_ms = self._run(op, "reading watched expiries")
            # A damaged (text) deadline is no deadline; reading its key reports it.
            return deadline_ms / 1000 if isinstance(deadline_ms, int | float) else None

        return _SqliteWatchStream(
            self._signal,
            lambda: self._read_keys(keys),
            clock=self._clock,
            expiry_deadline=expiry_deadline,
            poller=self._poller,
            raise_if_forked=self._raise_if_forked,
        )

    def collect_expired(self) -> float | None:
        """Deletes expired keys, waking watchers; returns the next deadline in epoch seconds.

        Deletes in transactions of at most :data:`COLLECT_BATCH` keys so the
        write lock is never held long.
        """
        self._raise_if_closed()
        now_ms = self._now_ms()

        def delete_batch(conn: sqlite3.Connection) -> int:
            if conn.execute(SELECT_ANY_EXPIRED, (now_ms,)).fetchone() is None:
                return 0
            conn.execute(BEGIN_IMMEDIATE)
            try:
                deleted = conn.execute(DELETE_EXPIRED_BATCH, (now_ms, COLLECT_BATCH)).rowcount
                conn.execute(COMMIT)
            except BaseException:
                self._rollback(conn)
                raise
            return deleted

        total = 0
        while True:
            deleted = self._run(delete_batch, "collecting expired keys")
            total += deleted
            if deleted < COLLECT_BATCH:
                break
        if total:
            self._signal.bump()
        next_ms = self._run(
            lambda conn: conn.execute(SELECT_NEXT_EXPIRATION).fetchone()[0],
            "reading the next expiry",
        )
        # A damaged (text) deadline is no deadline; reading its key reports it.
        return next_ms / 1000 if isinstance(next_ms, int | float) else None

    # -- snapshots ----------------------------------------------------------

    def open_snapshot(self) -> _SqliteSnapshot:
        """A read transaction held on its own connection until the snapshot is closed.

        In WAL mode the transaction's first read fixes what it sees, and
        writers go on beside it; the WAL cannot be checkpointed past that
        point while it is open, so close it soon.
        """
        self._raise_if_closed()
        conn = self._acquire()
        try:
            conn.execute(BEGIN_READ)
            conn.execute(SELECT_COUNTER).fetchone()  # the first read pins the snapshot
        except sqlite3.Error as exc:
            self._rollback(conn)
            self._release(conn)
            raise self._wrap(exc, "opening a snapshot") from exc
        return _SqliteSnapshot(self, conn, self._now_ms())

    # -- maintenance --------------------------------------------------------

    def vacuum(self) -> None:
        """Reclaims the space of deleted data: checkpoints, rewrites the file, empties the WAL.

        Takes the write lock for as long as the rewrite lasts (about the time
        to copy the file); run it in a quiet period.
        """
        self._raise_if_closed()

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

        self._run(op, "vacuuming")

    def close(self) -> None:
        """Wakes every waiter, joins the poller and closes every connection; idempotent.

        Calls in flight on other threads are interrupted (they raise
        :class:`KvClosedError`) and close() waits until each has given its
        connection back, so when it returns no connection of the engine is open.
        """
        with self._close_lock, self._conns_cond:
            if self._closed:
                return
            self._closed = True
        self._signal.close()
        self._poller.close()  # joins its thread, which closed its connection
        self._discard(self._poller_conn)
        pool = self._pool
        while True:
            while pool:
                try:
                    conn = pool.pop()
                except IndexError:
                    break
                self._discard(conn)
            with self._conns_cond:
                busy = list(self._conns)
            if not busy:
                break
            for conn in busy:
                # A statement in progress stops with SQLITE_INTERRUPT; a
                # connection closed meanwhile raises ProgrammingError.
                with contextlib.suppress(sqlite3.ProgrammingError):
                    conn.interrupt()
            with self._conns_cond:
                if self._conns:
                    self._conns_cond.wait(0.05)

    def __enter__(self) -> SqliteEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- invariants ---------------------------------------------------------

    def _check(self) -> None:
        """Asserts the file's invariants (tests call this after each step)."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(BEGIN_READ)
            try:
                assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
                assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
                counter = conn.execute(SELECT_COUNTER).fetchone()[0]
                newest = conn.execute("SELECT MAX(version) FROM kv").fetchone()[0]
                assert newest is None or newest <= counter, (newest, counter)
                half_leased = conn.execute(
                    "SELECT COUNT(*) FROM queue"
                    " WHERE (lease_until_ms IS NULL) != (lease_token IS NULL)"
                ).fetchone()[0]
                assert half_leased == 0
                bad_attempts = conn.execute(
                    "SELECT COUNT(*) FROM queue WHERE attempt < 1"
                ).fetchone()[0]
                assert bad_attempts == 0
                conn.execute(COMMIT)
            finally:
                self._rollback(conn)

        self._raise_if_closed()
        self._run(op, "checking invariants")


class _SqliteSnapshot:
    """A :class:`kvmodel.engines.base.Snapshot`: one open read transaction."""

    def __init__(self, engine: SqliteEngine, conn: sqlite3.Connection, now_ms: int) -> None:
        self._engine = engine
        self._conn: sqlite3.Connection | None = conn
        self._now_ms = now_ms

    def read(self, start: bytes, end: bytes, limit: int) -> list[SnapshotEntry]:
        conn = self._conn
        if conn is None:
            raise KvClosedError("The snapshot is closed.")
        if limit <= 0 or start >= end:
            return []
        try:
            rows = conn.execute(SELECT_RANGE, (start, end, self._now_ms, limit)).fetchall()
        except sqlite3.Error as exc:
            raise self._engine._wrap(exc, "reading a snapshot") from exc
        return [SnapshotEntry(_checked_entry(*row), row[4]) for row in rows]

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._engine._rollback(conn)
            self._engine._release(conn)
