"""The etcd engine's reads: ranges at one revision, linked reads, snapshots and watches.

Every read of several ranges is one read-only txn, so all of them see one
revision; a range whose expired keys took places in a page is read on at that
same revision. A read that pins a revision etcd has compacted meanwhile is
tried again (:func:`retry_compacted`). Watches are etcd watch streams from the
first read's revision (:class:`EtcdWatchStream`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import TypeVar

from kvmodel.engines._etcd_core import MAX_ATTEMPTS, EtcdCore, Json
from kvmodel.engines._etcd_records import NO_DEADLINE, Stored, as_int, range_op
from kvmodel.engines._etcd_transport import EtcdServerError, b64, unb64
from kvmodel.engines._etcd_watch import Watcher
from kvmodel.engines.base import (
    VALUE_ENCODING_BYTES,
    ChangeSignal,
    Consistency,
    PollingWatchStream,
    RawEntry,
    ReadRange,
    SnapshotEntry,
)
from kvmodel.errors import EngineError

__all__ = ["EtcdReads", "EtcdSnapshot", "EtcdWatchStream", "retry_compacted"]

_T = TypeVar("_T")
# Linked keys read per txn: under etcd's default --max-txn-ops of 128.
_MAX_LINKS_PER_TXN = 100


def retry_compacted(read: Callable[[], _T]) -> _T:
    """Runs a read that pins a revision, again while etcd has compacted that revision away."""
    for _ in range(MAX_ATTEMPTS):
        try:
            return read()
        except EtcdServerError as exc:
            if exc.code != 11:  # 11: the pinned revision was compacted; read again
                raise
    raise EngineError("etcd compacted every revision this read pinned; try again.")


class EtcdReads(EtcdCore):
    """Snapshot reads, linked reads, snapshots and watch streams of the etcd engine."""

    _streams: weakref.WeakSet[EtcdWatchStream]  # set by EtcdEngine.__init__

    def snapshot_read(
        self, ranges: Sequence[ReadRange], *, consistency: Consistency = Consistency.STRONG
    ) -> list[list[RawEntry]]:
        """Reads every range at one etcd revision, hiding expired keys."""
        stored, _ = self._read_ranges(ranges, serializable=consistency is Consistency.EVENTUAL)
        return [[s.entry() for s in found] for found in stored]

    def snapshot_read_linked(
        self, read: ReadRange, *, consistency: Consistency = Consistency.STRONG
    ) -> list[tuple[RawEntry, RawEntry | None]]:
        """Reads the range, then the linked keys pinned at the range's revision."""
        serializable = consistency is Consistency.EVENTUAL
        return retry_compacted(lambda: self._read_linked_once(read, serializable))

    def _read_linked_once(
        self, read: ReadRange, serializable: bool
    ) -> list[tuple[RawEntry, RawEntry | None]]:
        [found], revision = self._read_ranges_once([read], serializable)
        links = list(
            dict.fromkeys(s.value for s in found if s.encoding == VALUE_ENCODING_BYTES and s.value)
        )
        targets: dict[bytes, RawEntry] = {}
        for lo in range(0, len(links), _MAX_LINKS_PER_TXN):
            points = [ReadRange(k, k + b"\x00", 1) for k in links[lo : lo + _MAX_LINKS_PER_TXN]]
            linked, _ = self._read_ranges_once(points, serializable, revision)
            for point, hit in zip(points, linked, strict=True):
                if hit:
                    targets[point.start] = hit[0].entry()
        return [
            (s.entry(), targets.get(s.value) if s.encoding == VALUE_ENCODING_BYTES else None)
            for s in found
        ]

    def _range_body(self, r: ReadRange, limit: int, revision: int, serializable: bool) -> Json:
        body: Json = {
            "key": b64(self._data + r.start),
            "range_end": b64(self._data + r.end),
            "limit": str(limit),
        }
        if r.reverse:
            body["sort_order"] = "DESCEND"
            body["sort_target"] = "KEY"
        if revision:
            body["revision"] = str(revision)
        if serializable:
            body["serializable"] = True
        return body

    def _read_ranges(
        self, ranges: Sequence[ReadRange], *, serializable: bool = False
    ) -> tuple[list[list[Stored]], int]:
        """Reads the ranges at one revision: one read-only txn, then pinned pages."""
        return retry_compacted(lambda: self._read_ranges_once(ranges, serializable))

    def _read_ranges_once(
        self, ranges: Sequence[ReadRange], serializable: bool, pinned: int = 0
    ) -> tuple[list[list[Stored]], int]:
        """One attempt of :meth:`_read_ranges`; ``pinned`` reads at that revision."""
        now_ms = self._now_ms()
        todo = [r for r in ranges if r.start < r.end and r.limit > 0]
        first = [
            {"request_range": self._range_body(r, r.limit, pinned, serializable)} for r in todo
        ]
        resp = self._call("/v3/kv/txn", {"success": first} if first else {})
        revision = pinned or as_int(resp["header"]["revision"])
        answers = iter(resp.get("responses", []))
        results: list[list[Stored]] = []
        for r in ranges:
            if not (r.start < r.end and r.limit > 0):
                results.append([])
                continue
            rr = next(answers).get("response_range", {})
            found: list[Stored] = []
            cur = r
            while True:
                kvs = rr.get("kvs", [])
                for kv in kvs:
                    s = Stored(unb64(kv["key"])[len(self._data) :], kv)
                    if not s.expired(now_ms):
                        found.append(s)
                if len(found) >= r.limit or not rr.get("more") or not kvs:
                    break
                # Expired keys took places: fetch the rest at the same revision.
                last = unb64(kvs[-1]["key"])[len(self._data) :]
                if r.reverse:
                    cur = ReadRange(cur.start, last, r.limit, True)
                else:
                    cur = ReadRange(last + b"\x00", cur.end, r.limit, False)
                body = self._range_body(cur, r.limit - len(found), revision, serializable)
                rr = self._call("/v3/kv/range", body)
            results.append(found[: r.limit])
        return results, revision

    def _read_keys(self, keys: Sequence[bytes]) -> tuple[dict[bytes, Stored], int, int]:
        """The stored records (expired ones too) of some data keys, the revision and the fence's."""
        ops = [range_op(self._fence), *(range_op(self._data + k) for k in dict.fromkeys(keys))]
        resp = self._call("/v3/kv/txn", {"success": ops})
        answers = resp.get("responses", [])
        fence = answers[0].get("response_range", {}).get("kvs", [])
        out: dict[bytes, Stored] = {}
        for answer in answers[1:]:
            for kv in answer.get("response_range", {}).get("kvs", []):
                key = unb64(kv["key"])[len(self._data) :]
                out[key] = Stored(key, kv)
        fence_revision = as_int(fence[0]["mod_revision"]) if fence else 0
        return out, as_int(resp["header"]["revision"]), fence_revision

    def open_snapshot(self) -> EtcdSnapshot:
        """Reads pinned at the cluster's current revision (until etcd compacts it)."""
        self._raise_if_closed()
        resp = self._call("/v3/kv/range", {"key": b64(self._fence), "count_only": True})
        return EtcdSnapshot(self, as_int(resp["header"]["revision"]), self._now_ms())

    def watch(self, keys: Sequence[bytes]) -> EtcdWatchStream:
        """Watches ``keys`` with an etcd watch stream from the first read's revision."""
        self._raise_if_closed()
        stream = EtcdWatchStream(self, list(keys))
        self._streams.add(stream)
        return stream


class EtcdWatchStream:
    """Watched keys: an etcd watch stream wakes a PollingWatchStream that re-reads."""

    def __init__(self, engine: EtcdReads, keys: list[bytes]) -> None:
        self._engine = engine
        self._keys = keys
        self._signal = ChangeSignal()
        self._watcher: Watcher | None = None
        self._deadline: float | None = None
        self._inner = PollingWatchStream(
            self._signal, self._read, clock=engine.clock, expiry_deadline=lambda: self._deadline
        )

    def _read(self) -> list[RawEntry | None]:
        ranges = [ReadRange(k, k + b"\x00", 1) for k in self._keys]
        stored, revision = self._engine._read_ranges(ranges)
        deadlines = [s[0].deadline_ms for s in stored if s and s[0].deadline_ms != NO_DEADLINE]
        self._deadline = min(deadlines) / 1000 if deadlines else None
        if self._watcher is None:
            data = self._engine._data
            self._watcher = Watcher(
                self._engine._transport,
                [(data + k, None) for k in dict.fromkeys(self._keys)],
                revision + 1,
                self._signal.bump,
            )
        return [s[0].entry() if s else None for s in stored]

    def next(self, timeout: float | None = None) -> list[RawEntry | None] | None:
        """See :meth:`kvmodel.engines.base.WatchStream.next`."""
        if self._engine._closed:
            self._signal.close()
        return self._inner.next(timeout)

    def close(self) -> None:
        """Ends the stream and its etcd watch; a blocked ``next`` raises KvClosedError."""
        self._signal.close()
        self._inner.close()
        if self._watcher is not None:
            self._watcher.stop()


class EtcdSnapshot:
    """A :class:`kvmodel.engines.base.Snapshot`: range reads pinned at one revision."""

    def __init__(self, engine: EtcdReads, revision: int, now_ms: int) -> None:
        self._engine = engine
        self.revision = revision
        self._now_ms = now_ms

    def read(self, start: bytes, end: bytes, limit: int) -> list[SnapshotEntry]:
        engine = self._engine
        out: list[SnapshotEntry] = []
        while len(out) < limit and start < end:
            body = engine._range_body(
                ReadRange(start, end, 1), limit - len(out), self.revision, False
            )
            try:
                resp = engine._call("/v3/kv/range", body)
            except EtcdServerError as exc:
                if exc.code == 11:
                    raise EngineError(
                        f"etcd compacted revision {self.revision} while a snapshot was reading it; "
                        "run the command again, or keep more history (--auto-compaction-retention)."
                    ) from exc
                raise
            kvs = resp.get("kvs", [])
            for kv in kvs:
                s = Stored(unb64(kv["key"])[len(engine._data) :], kv)
                if not s.expired(self._now_ms):
                    deadline = None if s.deadline_ms == NO_DEADLINE else s.deadline_ms
                    out.append(SnapshotEntry(s.entry(), deadline))
            if not resp.get("more") or not kvs:
                break
            # Expired keys took places: read on after the last one.
            start = unb64(kvs[-1]["key"])[len(engine._data) :] + b"\x00"
        return out

    def close(self) -> None:
        pass
