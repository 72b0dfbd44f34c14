"""The commits of a SqliteEngine: one atomic write, or a group of them in one transaction."""

from __future__ import annotations

import sqlite3

import msgpack

from kvmodel.engines._sqlite_connections import SqliteConnections
from kvmodel.engines._sqlite_rows import checked_entry, damaged_row
from kvmodel.engines._sqlite_schema import (
    BEGIN_IMMEDIATE,
    COMMIT,
    DELETE,
    INSERT_MESSAGE,
    ROLLBACK,
    SELECT_VALUE,
    SELECT_VERSION,
    UPSERT,
    is_busy,
)
from kvmodel.engines.base import (
    AtomicWrite,
    CommitOutcome,
    MutationKind,
    apply_numeric_mutation,
    versionstamp_from_counter,
    versionstamped_key,
)


class SqliteCommits(SqliteConnections):
    """Atomic writes under ``BEGIN IMMEDIATE``, versionstamped by the commit counter."""

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
                        raise damaged_row(check.key, b"", 1, *row)
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
                        checked_entry(m.key, row[0], row[1], 0, row[2])
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
