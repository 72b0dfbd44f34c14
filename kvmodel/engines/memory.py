"""The in-memory engine: a SortedDict of encoded keys, thread-safe, for tests and caches.

Nothing is durable and nothing is shared between processes. It is also the
reference the conformance suite holds the other engines to, so it favours
obviously-correct code under one lock over cleverness.
"""

from __future__ import annotations

import bisect
import heapq
import threading
import time
import uuid
from collections.abc import Sequence

import attrs
from sortedcontainers import SortedDict, SortedList

from kvmodel.engines.base import (
    VALUE_ENCODING_BYTES,
    AtomicWrite,
    ChangeSignal,
    Clock,
    CommitOutcome,
    Consistency,
    EngineCapabilities,
    Enqueue,
    LeasedMessage,
    MutationKind,
    PollingWatchStream,
    RawEntry,
    ReadRange,
    SnapshotEntry,
    apply_numeric_mutation,
    log_undelivered,
    versionstamp_from_counter,
    versionstamped_key,
)
from kvmodel.errors import KvClosedError
from kvmodel.limits import EngineLimits

__all__ = ["MemoryEngine"]

# One commit applies under one lock; the embedded limits keep it well under a second.
_LIMITS = attrs.evolve(EngineLimits.embedded(), name="the memory engine")

_NUMERIC = (MutationKind.SUM, MutationKind.MIN, MutationKind.MAX)


class _Message:
    """A queued message; ``available_ms`` is its ready time or its lease deadline."""

    __slots__ = (
        "attempt",
        "available_ms",
        "backoff_ms",
        "dead_letter_keys",
        "encoding",
        "lease_token",
        "payload",
        "seq",
    )

    def __init__(self, enqueue: Enqueue, seq: int) -> None:
        self.seq = seq
        self.payload = enqueue.payload
        self.encoding = enqueue.encoding
        self.available_ms = enqueue.ready_at_ms
        self.dead_letter_keys = enqueue.keys_if_undelivered
        self.backoff_ms = enqueue.backoff_schedule_ms
        self.attempt = 1
        self.lease_token: str | None = None


class _MemoryQueueMessage(LeasedMessage):
    """The handle a listener gets for a leased message."""

    __slots__ = ("_engine", "_message", "_token")

    def __init__(self, engine: MemoryEngine, message: _Message, token: str) -> None:
        # The sequence number is the message's for life (retries keep the object).
        super().__init__(
            message.payload, message.encoding, message.attempt, message_id=str(message.seq)
        )
        self._engine = engine
        self._message = message
        self._token = token

    def renew_lease(self) -> bool:
        return self._engine._renew(self._message, self._token)

    def finish(self, success: bool) -> None:
        self._engine._finish(self._message, self._token, success)


class MemoryEngine:
    """A thread-safe in-memory engine on sortedcontainers.

    Args:
        clock: the time source for expiry, queue delays and leases.
        lease_timeout: seconds a listener holds a message before it is delivered again.
    """

    def __init__(self, *, clock: Clock = time.time, lease_timeout: float = 30.0) -> None:
        self.clock = clock
        self._lease_ms = int(lease_timeout * 1000)
        self._lock = threading.Lock()
        # Stored entries are RawEntry objects, handed to readers as they are
        # (they are immutable). Deadlines live beside them, for expiring keys only,
        # so a store without expiring keys never reads the clock.
        self._data: SortedDict = SortedDict()
        self._expire_at: dict[bytes, int] = {}
        self._counter = 0
        self._signal = ChangeSignal()
        # Expiry deadlines as a lazy heap: an item is stale when the record's
        # deadline no longer matches it.
        self._expiries: list[tuple[int, bytes]] = []
        # Queue: messages ordered by (available_ms, seq), which is FIFO for equal ready times.
        self._queue: SortedList = SortedList()
        self._messages: dict[int, _Message] = {}
        self._queue_seq = 0
        self._closed = False

    @property
    def lease_timeout(self) -> float:
        """Seconds a listener holds a message before it is delivered again."""
        return self._lease_ms / 1000

    @property
    def limits(self) -> EngineLimits:
        """The most it holds: the embedded limits (a Kv enforces Deno's unless asked)."""
        return _LIMITS

    @property
    def capabilities(self) -> EngineCapabilities:
        """Neither durable nor shared across processes."""
        return EngineCapabilities()

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _check_open(self) -> None:
        if self._closed:
            raise KvClosedError("The in-memory engine is closed.")

    # -- reads ---------------------------------------------------------------

    def _live(self, key: bytes, now_ms: int) -> RawEntry | None:
        entry: RawEntry | None = self._data.get(key)
        if entry is not None and self._expire_at:
            deadline = self._expire_at.get(key)
            if deadline is not None and deadline <= now_ms:
                return None
        return entry

    def _versionstamp(self, key: bytes, now_ms: int) -> bytes | None:
        entry = self._live(key, now_ms)
        return None if entry is None else entry.versionstamp

    def read_point(self, key: bytes) -> RawEntry | None:
        """The live entry at one encoded key, or None (``Kv.get``'s hot path)."""
        with self._lock:
            if self._closed:
                self._check_open()
            return self._live(key, self._now_ms() if self._expire_at else 0)

    def snapshot_read(
        self, ranges: Sequence[ReadRange], *, consistency: Consistency = Consistency.STRONG
    ) -> list[list[RawEntry]]:
        """Reads every range under the lock, so all see one state."""
        with self._lock:
            if self._closed:
                self._check_open()
            now_ms = self._now_ms() if self._expire_at else 0
            return [self._read(r, now_ms) for r in ranges]

    def snapshot_read_linked(
        self, read: ReadRange, *, consistency: Consistency = Consistency.STRONG
    ) -> list[tuple[RawEntry, RawEntry | None]]:
        """Reads the range and every linked entry under one hold of the lock."""
        with self._lock:
            if self._closed:
                self._check_open()
            now_ms = self._now_ms() if self._expire_at else 0
            live = self._live
            return [
                (e, live(e.value, now_ms) if e.encoding == VALUE_ENCODING_BYTES else None)
                for e in self._read(read, now_ms)
            ]

    def _read(self, r: ReadRange, now_ms: int) -> list[RawEntry]:
        """One range's live entries; the caller holds the lock."""
        if r.end == r.start + b"\x00":  # a point read: skip the tree walk
            entry = self._live(r.start, now_ms)
            return [entry] if entry is not None and r.limit > 0 else []
        entries: list[RawEntry] = []
        if r.start < r.end and r.limit > 0:
            data = self._data
            expire_at = self._expire_at
            for key in data.irange(r.start, r.end, (True, False), reverse=r.reverse):
                if expire_at and expire_at.get(key, now_ms + 1) <= now_ms:
                    continue
                entries.append(data[key])
                if len(entries) >= r.limit:
                    break
        return entries

    # -- writes --------------------------------------------------------------

    def atomic_write(self, write: AtomicWrite) -> CommitOutcome:
        """Checks, then applies every mutation to a staging dict, then publishes it."""
        with self._lock:
            self._check_open()
            now_ms = self._now_ms() if self._expire_at else 0
            if write.checks:
                failed = tuple(
                    i
                    for i, check in enumerate(write.checks)
                    if self._versionstamp(check.key, now_ms) != check.versionstamp
                )
                if failed:
                    return CommitOutcome(None, failed)
            versionstamp = versionstamp_from_counter(self._counter + 1)
            mutations = write.mutations
            if len(mutations) == 1 and not write.enqueues:
                m = mutations[0]
                if m.kind is MutationKind.SET and m.expire_at_ms is None:
                    # Kv.set's case, without the staging a multi-key commit needs
                    # (one plain set cannot fail half-way).
                    self._counter += 1
                    self._data[m.key] = RawEntry(m.key, m.value, m.encoding, versionstamp)
                    if self._expire_at:
                        self._expire_at.pop(m.key, None)
                    self._signal.bump()
                    return CommitOutcome(versionstamp)
            # Stage every change first: a KvTypeError from sum/min/max must leave
            # the store untouched (all-or-nothing, unlike Deno).
            staged: dict[bytes, tuple[RawEntry, int | None] | None] = {}
            for m in write.mutations:
                kind = m.kind
                if kind is MutationKind.SET:
                    staged[m.key] = (
                        RawEntry(m.key, m.value, m.encoding, versionstamp),
                        m.expire_at_ms,
                    )
                elif kind is MutationKind.DELETE:
                    staged[m.key] = None
                elif kind is MutationKind.SET_SUFFIX_VERSIONSTAMPED_KEY:
                    key = versionstamped_key(m.key, versionstamp)
                    staged[key] = (RawEntry(key, m.value, m.encoding, versionstamp), m.expire_at_ms)
                else:
                    if m.key in staged:
                        pending = staged[m.key]
                        current = None if pending is None else pending[0]
                    else:
                        current = self._live(m.key, now_ms)
                    old = None if current is None else (current.value, current.encoding)
                    new = apply_numeric_mutation(kind, old, m.value)
                    staged[m.key] = (RawEntry(m.key, new, m.encoding, versionstamp), None)
            self._counter += 1
            for key, change in staged.items():
                if change is None:
                    self._data.pop(key, None)
                    self._expire_at.pop(key, None)
                    continue
                self._data[key] = change[0]
                deadline = change[1]
                if deadline is None:
                    self._expire_at.pop(key, None)
                else:
                    self._expire_at[key] = deadline
                    heapq.heappush(self._expiries, (deadline, key))
            for enqueue in write.enqueues:
                self._push_message(_Message(enqueue, self._next_queue_seq()))
            self._signal.bump()
            return CommitOutcome(versionstamp)

    def collect_expired(self) -> float | None:
        """Deletes keys whose deadline passed; returns the next deadline (epoch seconds)."""
        with self._lock:
            self._check_open()
            now_ms = self._now_ms()
            removed = False
            heap = self._expiries
            while heap and heap[0][0] <= now_ms:
                deadline, key = heapq.heappop(heap)
                if self._expire_at.get(key) == deadline:
                    del self._data[key]
                    del self._expire_at[key]
                    removed = True
            # Drop stale heap items at the top so the next deadline is real.
            while heap and self._expire_at.get(heap[0][1]) != heap[0][0]:
                heapq.heappop(heap)
            if removed:
                self._signal.bump()
            return heap[0][0] / 1000 if heap else None

    # -- queue ---------------------------------------------------------------

    def _next_queue_seq(self) -> int:
        self._queue_seq += 1
        return self._queue_seq

    def _push_message(self, message: _Message) -> None:
        self._messages[message.seq] = message
        self._queue.add((message.available_ms, message.seq))

    def dequeue_next_message(self, timeout: float) -> _MemoryQueueMessage | None:
        """Leases the first available message, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._closed:
                    return None
                seen = self._signal.seq
                now_ms = self._now_ms()
                wait = deadline - time.monotonic()
                leased = None
                while self._queue and leased is None:
                    available_ms, seq = self._queue[0]
                    if available_ms > now_ms:
                        wait = min(wait, (available_ms - now_ms) / 1000)
                        break
                    leased = self._lease(seq, now_ms)
                if leased is not None:
                    return leased
            if wait <= 0 and time.monotonic() >= deadline:
                return None
            self._signal.wait(seen, max(wait, 0.0))

    def _lease(self, seq: int, now_ms: int) -> _MemoryQueueMessage | None:
        """Leases the message, or settles it as failed if its last lease ran out.

        Returns None when the message was settled instead (the caller looks again).
        """
        message = self._messages[seq]
        self._queue.remove((message.available_ms, seq))
        if message.lease_token is not None:
            # The previous lease ran out unsettled: its handler killed or hung
            # its process. That delivery is a failed attempt, as in Deno's
            # queue_cleanup, so a message that kills every handler follows the
            # backoff schedule to its dead letters instead of returning for ever.
            self._fail(message, now_ms, "its lease expired")
            return None
        message.lease_token = uuid.uuid4().hex
        message.available_ms = now_ms + self._lease_ms
        self._queue.add((message.available_ms, seq))
        return _MemoryQueueMessage(self, message, message.lease_token)

    def _renew(self, message: _Message, token: str) -> bool:
        with self._lock:
            if message.lease_token != token or message.seq not in self._messages:
                return False
            self._queue.remove((message.available_ms, message.seq))
            message.available_ms = self._now_ms() + self._lease_ms
            self._queue.add((message.available_ms, message.seq))
            return True

    def _finish(self, message: _Message, token: str, success: bool) -> None:
        with self._lock:
            if self._closed or message.lease_token != token or message.seq not in self._messages:
                return  # the lease was lost: another listener owns the message now
            self._queue.remove((message.available_ms, message.seq))
            if success:
                del self._messages[message.seq]
                self._signal.bump()
            else:
                self._fail(message, self._now_ms(), "its handler failed")

    def _fail(self, message: _Message, now_ms: int, why: str) -> None:
        """Retries a failed delivery after the next backoff interval, or gives up on it.

        The message is out of ``_queue``; the caller holds the lock.
        """
        message.lease_token = None
        if message.backoff_ms:
            message.available_ms = now_ms + message.backoff_ms[0]
            message.backoff_ms = message.backoff_ms[1:]
            message.attempt += 1
            self._queue.add((message.available_ms, message.seq))
            self._signal.bump()
            return
        del self._messages[message.seq]
        if message.dead_letter_keys:
            # Every dead-letter key gets the value in one commit (one versionstamp).
            self._counter += 1
            versionstamp = versionstamp_from_counter(self._counter)
            for key in message.dead_letter_keys:
                self._data[key] = RawEntry(key, message.payload, message.encoding, versionstamp)
                self._expire_at.pop(key, None)
        log_undelivered(str(message.seq), message.attempt, message.dead_letter_keys, why)
        self._signal.bump()

    # -- snapshots -----------------------------------------------------------

    def open_snapshot(self) -> _MemorySnapshot:
        """A copy of every live entry and its deadline, taken under the lock."""
        with self._lock:
            self._check_open()
            now_ms = self._now_ms() if self._expire_at else 0
            expire_at = self._expire_at
            entries = [
                SnapshotEntry(entry, expire_at.get(key))
                for key, entry in self._data.items()
                if not (expire_at and expire_at.get(key, now_ms + 1) <= now_ms)
            ]
        return _MemorySnapshot(entries)

    # -- watch and close -----------------------------------------------------

    def watch(self, keys: Sequence[bytes]) -> PollingWatchStream:
        """Streams the entries of ``keys``, woken by every commit and by their expiry."""
        self._check_open()
        keys = list(keys)

        def read() -> list[RawEntry | None]:
            with self._lock:
                self._check_open()
                now_ms = self._now_ms()
                return [self._live(key, now_ms) for key in keys]

        def expiry_deadline() -> float | None:
            with self._lock:
                deadlines = [d for key in keys if (d := self._expire_at.get(key)) is not None]
            return min(deadlines) / 1000 if deadlines else None

        return PollingWatchStream(
            self._signal, read, clock=self.clock, expiry_deadline=expiry_deadline
        )

    def close(self) -> None:
        """Drops nothing (the data lives as long as the object) but refuses further calls."""
        with self._lock:
            self._closed = True
        self._signal.close()


class _MemorySnapshot:
    """A :class:`kvmodel.engines.base.Snapshot` over a sorted copy of the entries."""

    def __init__(self, entries: list[SnapshotEntry]) -> None:
        self._entries = entries
        self._keys = [e.entry.key for e in entries]

    def read(self, start: bytes, end: bytes, limit: int) -> list[SnapshotEntry]:
        lo = bisect.bisect_left(self._keys, start)
        hi = bisect.bisect_left(self._keys, end)
        return self._entries[lo : min(hi, lo + max(limit, 0))]

    def close(self) -> None:
        self._entries = []
        self._keys = []
