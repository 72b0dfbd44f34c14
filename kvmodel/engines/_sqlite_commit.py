"""The commits of a SqliteEngine: one atomic write, or a group of them in one transaction.

Concurrent commits of one process go through a :class:`GroupCommitter`: a
commit that finds no other in progress runs alone (:meth:`_commit`, exactly
the single-commit transaction), and commits that arrive while one is being
written are run together by the next leader (:meth:`_commit_group`).

A group is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` in which every write is
evaluated in queue order as if it had committed alone: its checks see the
writes before it in the group, a failed check skips it, a ``sum`` that meets
a value of the wrong type (or a damaged row) rolls it back to its own
``SAVEPOINT`` and fails it alone, and each applied write takes the next value
of the commit counter, so versionstamps still increase by one per applied
write. The counter row is written once, at the end. Nothing is acknowledged
before the ``COMMIT`` (and its fsync) returned; an SQLite error fails the
whole group, as it would have failed each of its writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from kvmodel.engines._group_commit import GroupCommitter
from kvmodel.engines._sqlite_connections import SqliteConnections
from kvmodel.engines._sqlite_rows import checked_entry, damaged_row
from kvmodel.engines._sqlite_schema import (
    BEGIN_IMMEDIATE,
    COMMIT,
    DELETE,
    INSERT_MESSAGE,
    ROLLBACK,
    SELECT_COUNTER,
    SELECT_VALUE,
    SELECT_VERSION,
    SELECT_VERSIONS_IN,
    UPSERT,
    is_busy,
)
from kvmodel.engines.base import (
    AtomicWrite,
    Check,
    CommitOutcome,
    Mutation,
    MutationKind,
    apply_numeric_mutation,
    versionstamp_from_counter,
    versionstamped_key,
)

# A group's statements beside the schema's: the counter is set once per group,
# and each write of a group runs inside its own savepoint.
SET_COUNTER = "UPDATE commit_counter SET counter = ? WHERE id = 0"
SAVEPOINT = "SAVEPOINT kvmodel_write"
RELEASE = "RELEASE kvmodel_write"
ROLLBACK_TO = "ROLLBACK TO kvmodel_write"
_NUMERIC = frozenset((MutationKind.SUM, MutationKind.MIN, MutationKind.MAX))


class SqliteCommits(SqliteConnections):
    """Atomic writes under ``BEGIN IMMEDIATE``, versionstamped by the commit counter."""

    _committer: GroupCommitter[AtomicWrite, CommitOutcome]

    def atomic_write(self, write: AtomicWrite) -> CommitOutcome:
        """Applies a write all-or-nothing, or reports failed checks; durable when it returns.

        Concurrent calls from threads of this process share transactions
        (see :mod:`kvmodel.engines._sqlite_commit`); each is still applied
        or refused on its own.

        Raises:
            KvTypeError: SUM, MIN or MAX met a stored value that is not LE64
                (nothing of this write is written).
            EngineError: SQLite failed, or the file stayed locked past busy_timeout.
        """
        if self._closed:
            self._raise_if_closed()
        return self._committer.submit(write, self._commit_writes)

    def _commit_writes(self, writes: Sequence[AtomicWrite]) -> list[CommitOutcome | Exception]:
        """Commits a group (run by its leader): one transaction, one result per write."""
        if len(writes) == 1:
            # No company: exactly the transaction of a single commit. Its
            # errors (KvTypeError too) are raised to its one caller.
            return [self._commit_one(writes[0])]
        if self._closed:
            self._raise_if_closed()
        results: list[CommitOutcome | Exception]
        conn = self._acquire()
        try:
            try:
                results = self._commit_group(conn, writes)
            except sqlite3.Error as exc:
                if not is_busy(exc):
                    raise self._wrap(exc, "committing") from exc
                results = self._retry_busy(
                    conn, lambda c: self._commit_group(c, writes), "committing", exc
                )
        finally:
            self._release(conn)
        for r in results:
            if type(r) is CommitOutcome and r.versionstamp is not None:
                self._signal.bump()  # once per transaction: waiters re-read anyway
                break
        return results

    def _commit_one(self, write: AtomicWrite) -> CommitOutcome:
        """One write alone: its transaction, with lock waits retried."""
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
        """One write in its own transaction: the commit of a writer with no company."""
        execute = conn.execute
        execute(BEGIN_IMMEDIATE)
        try:
            # Read the clock after taking the lock: expiry is judged at commit time.
            now_ms = self._now_ms()
            if write.checks:
                failed = self._failed_checks(conn, write, now_ms)
                if failed:
                    execute(ROLLBACK)
                    return CommitOutcome(None, failed)
            counter = self._bump_counter(conn)
            versionstamp = versionstamp_from_counter(counter)
            self._apply(conn, write, counter, versionstamp, now_ms)
            self._committer.wake_previous()
            execute(COMMIT)
        except BaseException:
            self._rollback(conn)
            raise
        return CommitOutcome(versionstamp)

    def _commit_group(
        self, conn: sqlite3.Connection, writes: Sequence[AtomicWrite]
    ) -> list[CommitOutcome | Exception]:
        """Several writes in one transaction, each applied or refused as if alone, in order."""
        execute = conn.execute
        execute(BEGIN_IMMEDIATE)
        try:
            now_ms = self._now_ms()
            first = counter = int(execute(SELECT_COUNTER).fetchone()[0])
            results: list[CommitOutcome | Exception] = []
            for write in writes:
                # Only SUM, MIN and MAX can fail once something of the write is
                # written (a check fails before that): only they need a savepoint.
                savepoint = any(m.kind in _NUMERIC for m in write.mutations)
                if savepoint:
                    execute(SAVEPOINT)
                try:
                    failed = self._failed_checks(conn, write, now_ms) if write.checks else ()
                    if not failed:
                        versionstamp = versionstamp_from_counter(counter + 1)
                        self._apply(conn, write, counter + 1, versionstamp, now_ms)
                except sqlite3.Error:
                    raise  # the whole group fails (the except below rolls back)
                except Exception as exc:  # KvTypeError, DecodeError: this write alone
                    if savepoint:
                        execute(ROLLBACK_TO)
                        execute(RELEASE)
                    results.append(exc)
                    continue
                if savepoint:
                    execute(RELEASE)
                if failed:  # nothing of it was written
                    results.append(CommitOutcome(None, failed))
                    continue
                counter += 1
                results.append(CommitOutcome(versionstamp))
            if counter != first:
                execute(SET_COUNTER, (counter,))
            self._committer.wake_previous()  # they prepare their next commits during the fsync
            execute(COMMIT)
        except BaseException:
            self._rollback(conn)
            raise
        return results

    @staticmethod
    def _failed_checks(
        conn: sqlite3.Connection, write: AtomicWrite, now_ms: int
    ) -> tuple[int, ...]:
        """The indexes of the write's checks that do not hold (an expired key is absent)."""
        checks = write.checks
        row_of: Callable[[bytes], tuple[Any, Any] | None]
        if len(checks) >= BATCH_FROM:
            row_of = _version_rows(conn, checks).get  # 256 keys per statement
        else:
            select = conn.execute

            def row_of(key: bytes) -> tuple[Any, Any] | None:
                row: tuple[Any, Any] | None = select(SELECT_VERSION, (key,)).fetchone()
                return row

        failed: list[int] = []
        for index, check in enumerate(checks):
            row = row_of(check.key)
            current = None
            if row is not None and not (
                type(row[0]) is int and row[0] >= 0 and (row[1] is None or type(row[1]) is int)
            ):
                raise damaged_row(check.key, b"", 1, *row)
            if row is not None and (row[1] is None or row[1] > now_ms):
                current = versionstamp_from_counter(row[0])
            if current != check.versionstamp:
                failed.append(index)
        return tuple(failed)

    @staticmethod
    def _apply(
        conn: sqlite3.Connection,
        write: AtomicWrite,
        counter: int,
        versionstamp: bytes,
        now_ms: int,
    ) -> None:
        """Writes the mutations and enqueues of one write, versionstamped by ``counter``."""
        execute = conn.execute
        mutations: Sequence[Mutation] = write.mutations
        if len(mutations) >= BATCH_FROM:
            mutations = _apply_runs(conn, mutations, counter)
        for m in mutations:
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
                # Raises KvTypeError; the caller rolls this write back.
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


# A large write (limits="embedded" allows 100,000 mutations) is written in runs:
# consecutive sets, and consecutive deletes, each go to SQLite in one
# executemany, and its checks are read 256 keys per statement. A small write
# keeps the statement-per-record path, the single-object commit's.
BATCH_FROM = 32
_IN_CHUNK = 256
_SELECT_VERSIONS_CHUNK = SELECT_VERSIONS_IN.format(", ".join("?" * _IN_CHUNK))


def _version_rows(
    conn: sqlite3.Connection, checks: Sequence[Check]
) -> dict[bytes, tuple[Any, Any]]:
    """The (version, expiry) row of each checked key that has one, read 256 keys per statement."""
    keys = list(dict.fromkeys(c.key for c in checks))
    rows: dict[bytes, tuple[Any, Any]] = {}
    for start in range(0, len(keys), _IN_CHUNK):
        chunk = keys[start : start + _IN_CHUNK]
        sql = (
            _SELECT_VERSIONS_CHUNK
            if len(chunk) == _IN_CHUNK
            else SELECT_VERSIONS_IN.format(", ".join("?" * len(chunk)))
        )
        for key, version, expiration in conn.execute(sql, chunk):
            rows[key] = (version, expiration)
    return rows


def _apply_runs(
    conn: sqlite3.Connection, mutations: Sequence[Mutation], counter: int
) -> Sequence[Mutation]:
    """Writes the leading sets and deletes of a large write in runs; returns the rest.

    Runs keep the mutations' order, so a later mutation of a key still wins.
    The first mutation of another kind (a sum, a versionstamped key) ends the
    runs: it and everything after it are left to the caller's loop.
    """
    run: list[tuple[object, ...]] = []
    run_kind: MutationKind | None = None
    done = 0
    for m in mutations:
        kind = m.kind
        if kind is not MutationKind.SET and kind is not MutationKind.DELETE:
            break
        if kind is not run_kind and run:
            conn.executemany(UPSERT if run_kind is MutationKind.SET else DELETE, run)
            run = []
        run_kind = kind
        if kind is MutationKind.SET:
            run.append((m.key, m.value, m.encoding, counter, m.expire_at_ms))
        else:
            run.append((m.key,))
        done += 1
    if run:
        conn.executemany(UPSERT if run_kind is MutationKind.SET else DELETE, run)
    return mutations[done:]
