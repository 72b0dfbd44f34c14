"""The connections of a SqliteEngine: pool, lock waits, opening and migrating, forks.

:class:`SqliteConnections` is the base of :class:`kvmodel.engines.sqlite.SqliteEngine`;
the readers, the commits and the queue (each in its own module) build on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from typing import TypeVar

from kvmodel.engines._sqlite_poller import Poller
from kvmodel.engines._sqlite_schema import (
    APPLICATION_ID,
    BEGIN_IMMEDIATE,
    BUMP_COUNTER,
    BUMP_COUNTER_RETURNING,
    COMMIT,
    HAS_RETURNING,
    MIGRATIONS,
    ROLLBACK,
    SCHEMA_VERSION,
    SELECT_COUNTER,
    check_identity,
    is_busy,
    read_identity,
)
from kvmodel.engines.base import (
    ChangeSignal,
    Clock,
)
from kvmodel.errors import EngineError, KvClosedError

_T = TypeVar("_T")

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
LIVE_ENGINES: weakref.WeakSet[SqliteConnections] = weakref.WeakSet()
INHERITED_FILES: set[tuple[int, int]] = set()


def file_identity(path: str) -> tuple[int, int] | None:
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
    for engine in list(LIVE_ENGINES):
        if engine._disown_after_fork():
            inherited.append(engine._file_id)
    INHERITED_FILES.update(i for i in inherited if i is not None)


os.register_at_fork(after_in_child=_after_fork_in_child)


class SqliteConnections:
    """Pooled connections to one SQLite file, with the engine's state they share."""

    _path: str
    _synchronous: str
    _clock: Clock
    _lease_timeout_ms: int
    _busy_timeout: float
    _closed: bool
    _forked_from: int | None
    _file_id: tuple[int, int] | None
    _close_lock: threading.Lock
    _signal: ChangeSignal
    _conns: set[sqlite3.Connection]
    _conns_cond: threading.Condition
    _pool: list[sqlite3.Connection]
    _poller: Poller
    _poller_conn: sqlite3.Connection

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

    @staticmethod
    def _bump_counter(conn: sqlite3.Connection) -> int:
        if HAS_RETURNING:
            # fetchall steps the statement to completion before COMMIT.
            rows = conn.execute(BUMP_COUNTER_RETURNING).fetchall()
            return int(rows[0][0])
        conn.execute(BUMP_COUNTER)
        return int(conn.execute(SELECT_COUNTER).fetchone()[0])
