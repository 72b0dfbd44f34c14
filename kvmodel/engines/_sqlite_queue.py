"""The queue of a SqliteEngine: leases, settling, backoff, dead letters and quarantine."""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Sequence

import msgpack

from kvmodel.engines._sqlite_connections import SqliteConnections
from kvmodel.engines._sqlite_poller import Poller
from kvmodel.engines._sqlite_rows import MAX_ATTEMPT, unpack_column
from kvmodel.engines._sqlite_schema import (
    BEGIN_IMMEDIATE,
    COMMIT,
    CREATE_QUEUE_QUARANTINE,
    DELETE_MESSAGE,
    HAS_RETURNING,
    LEASE_MESSAGE,
    LEASE_MESSAGE_NO_RETURNING,
    QUARANTINE_MESSAGE,
    RENEW_LEASE,
    RESCHEDULE_MESSAGE,
    ROLLBACK,
    SELECT_ATTEMPT,
    SELECT_LEASED_MESSAGE,
    SELECT_QUEUE_WAKE,
    SELECT_READY_MESSAGE,
    UPSERT,
)
from kvmodel.engines.base import (
    LeasedMessage,
    check_stored_value,
    describe_stored_key,
    log_undelivered,
    next_backoff,
    queue_logger,
    read_stored_backoff,
    read_stored_dead_letter_keys,
)
from kvmodel.errors import DecodeError, KvClosedError

# What _lease_next returns as the wake time when the queue changed under it.
LOOK_AGAIN = -1


class _SqliteQueueMessage(LeasedMessage):
    """A message leased from the queue table; the token proves the lease is ours."""

    __slots__ = ("_engine", "_id", "_token")

    def __init__(
        self,
        engine: SqliteQueue,
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


class SqliteQueue(SqliteConnections):
    """Queue messages in the ``queue`` table, leased by one listener at a time."""

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
                if wake_at_ms == LOOK_AGAIN:
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
                return None, LOOK_AGAIN
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
                return None, LOOK_AGAIN
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
            read_stored_backoff(where, unpack_column(where, "backoff_schedule", schedule_blob))
        )
        if step is not None:
            delay_ms, rest = step
            conn.execute(
                RESCHEDULE_MESSAGE, (now_ms + delay_ms, msgpack.packb(list(rest)), message_id)
            )
            return "retried"
        keys = read_stored_dead_letter_keys(
            where, unpack_column(where, "keys_if_undelivered", keys_blob)
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
                where, unpack_column(where, "keys_if_undelivered", keys_blob)
            )
        except DecodeError as exc:
            return self._quarantine(conn, message_id, exc)
        try:
            if type(attempt) is not int or not 1 <= attempt < MAX_ATTEMPT:
                raise DecodeError(
                    f"The attempt count of {where} is {describe_stored_key(attempt)}, "
                    "not a positive int."
                )
            read_stored_backoff(where, unpack_column(where, "backoff_schedule", schedule_blob))
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
