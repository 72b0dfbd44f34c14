"""The reads of a SqliteEngine: point, range, linked and watched reads, and snapshots."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from kvmodel.engines._sqlite_connections import SqliteConnections
from kvmodel.engines._sqlite_rows import (
    checked_entries,
    checked_entry,
    checked_linked,
    checked_point,
)
from kvmodel.engines._sqlite_schema import (
    BEGIN_READ,
    COMMIT,
    MAX_POINTS,
    SELECT_COUNTER,
    SELECT_LINKED,
    SELECT_LINKED_REVERSE,
    SELECT_POINT,
    SELECT_POINTS,
    SELECT_RANGE,
    SELECT_RANGE_REVERSE,
    is_busy,
)
from kvmodel.engines.base import (
    Consistency,
    RawEntry,
    ReadRange,
    SnapshotEntry,
)
from kvmodel.errors import KvClosedError


class SqliteReads(SqliteConnections):
    """Reads at one consistent point on pooled connections, hiding expired keys."""

    def read_point(self, key: bytes) -> RawEntry | None:
        """The live entry at one encoded key (a strong read), or None.

        The hot path of ``Kv.get``: one primary-key lookup on a pooled
        connection, with the expiry test in Python so the clock is only read
        for keys that can expire.
        """
        if self._closed:
            self._raise_if_closed()
        pool = self._pool
        try:
            conn = pool.pop()
        except IndexError:  # (not "if pool": another thread may empty it meanwhile)
            conn = self._acquire()
        try:
            row = conn.execute(SELECT_POINT, (key,)).fetchone()
        except sqlite3.Error as exc:
            try:
                if not is_busy(exc):
                    raise self._wrap(exc, "reading") from exc
                point = ReadRange(key, key + b"\x00", 1)
                found = self._retry_busy(conn, lambda c: self._read_range(c, point), "reading", exc)
            finally:
                self._release(conn)
            return found[0] if found else None
        except BaseException:
            self._release(conn)
            raise
        if self._closed:
            self._discard(conn)
        else:
            pool.append(conn)
        if row is None:
            return None
        entry = checked_point(key, row)  # every column checked (DecodeError names the key)
        if row[3] is not None and row[3] <= self._now_ms():
            return None
        return entry

    def snapshot_read(
        self, ranges: Sequence[ReadRange], *, consistency: Consistency = Consistency.STRONG
    ) -> list[list[RawEntry]]:
        """Reads every range at one consistent point, hiding expired keys.

        ``consistency`` is accepted for the protocol; a local file is always
        read at its latest commit.
        """
        if self._closed:
            self._raise_if_closed()
        if len(ranges) == 1:
            r = ranges[0]
            if r.end == r.start + b"\x00" and r.limit > 0:
                entry = self.read_point(r.start)
                return [[] if entry is None else [entry]]
        return self._run(lambda conn: self._read_ranges(conn, ranges), "reading")

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
        rows = conn.execute(sql, (r.start, r.end, now_ms, r.limit)).fetchall()
        return checked_linked(rows, now_ms)

    def _read_points(
        self, conn: sqlite3.Connection, ranges: Sequence[ReadRange]
    ) -> list[list[RawEntry]]:
        """get_many's case: every range is one key, read with a single IN query."""
        keys = [r.start for r in ranges]
        sql = SELECT_POINTS.format(",".join("?" * len(keys)))
        rows = conn.execute(sql, keys).fetchall()
        # Checked once, as a batch (the accelerator's loop when it is there).
        found = {e.key: e for e in checked_entries(rows)}
        deadlines = {row[0]: row[4] for row in rows if row[4] is not None}
        if deadlines:
            now_ms = self._now_ms()
            for key, deadline in deadlines.items():
                if deadline <= now_ms:
                    del found[key]
        out: list[list[RawEntry]] = []
        for key in keys:
            entry = found.get(key)
            out.append([] if entry is None else [entry])
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
            entry = checked_entry(start, *row)
            expiration_ms = row[3]
            if expiration_ms is not None and expiration_ms <= self._now_ms():
                return []
            return [entry]
        sql = SELECT_RANGE_REVERSE if r.reverse else SELECT_RANGE
        rows = conn.execute(sql, (start, r.end, self._now_ms(), limit)).fetchall()
        return checked_entries(rows)

    def _read_keys(self, keys: Sequence[bytes]) -> list[RawEntry | None]:
        def op(conn: sqlite3.Connection) -> list[RawEntry | None]:
            conn.execute(BEGIN_READ)
            try:
                now_ms = self._now_ms()
                out: list[RawEntry | None] = []
                for key in keys:
                    row = conn.execute(SELECT_POINT, (key,)).fetchone()
                    entry = None if row is None else checked_entry(key, *row)
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


class _SqliteSnapshot:
    """A :class:`kvmodel.engines.base.Snapshot`: one open read transaction."""

    def __init__(self, engine: SqliteReads, conn: sqlite3.Connection, now_ms: int) -> None:
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
        return [SnapshotEntry(checked_entry(*row), row[4]) for row in rows]

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._engine._rollback(conn)
            self._engine._release(conn)
