"""The engine boundary: a small protocol of passive records, bytes only.

An engine stores encoded keys (bytes, ordered bytewise) with tagged values and
commits atomic writes. It never sees Python keys, values or models; the Kv
facade encodes, validates and enforces limits before it calls the engine.

The protocol follows denokv's five operations (``proto/interface.rs``), plus one
read for indexes:

* :meth:`Engine.snapshot_read` reads several ranges at one consistent point.
* :meth:`Engine.snapshot_read_linked` reads one range and the entries its
  values link to, at one consistent point (kvmodel's addition, for indexes).
* :meth:`Engine.atomic_write` evaluates checks and applies mutations and
  enqueues all-or-nothing, returning a :class:`CommitOutcome`.
* :meth:`Engine.dequeue_next_message` leases the next ready queue message;
  the caller settles it with :meth:`QueueMessage.finish`.
* :meth:`Engine.watch` returns a :class:`WatchStream` of the current entries of
  some keys, woken whenever they may have changed.
* :meth:`Engine.close` releases everything and wakes every blocked caller.

One optional capability sits beside the protocol: an engine that can read its
whole keyspace at one point, however long that takes, offers
``open_snapshot() -> Snapshot`` (see :class:`SnapshotSource`); ``kvmodel dump``
needs it and refuses engines without it rather than write a torn copy.

To write an engine, implement :class:`Engine` and run
``kvmodel.testing.run_conformance`` (or the pytest suite in
``kvmodel.testing.conformance``) against it. The helpers at the end of this
module (versionstamps, KvU64 arithmetic, :class:`ChangeSignal`,
:class:`PollingWatchStream`) are there so an engine only writes its storage.
"""

from __future__ import annotations

import enum
import logging
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import attrs

from kvmodel._text import brief_repr
from kvmodel.errors import DecodeError, KvClosedError, KvTypeError
from kvmodel.keys import decode_key
from kvmodel.limits import (
    MAX_BACKOFF_INTERVAL_SECONDS,
    MAX_BACKOFF_INTERVALS,
    MAX_KEY_SIZE,
    MAX_VALUE_SIZE,
    EngineLimits,
)

__all__ = [
    "VALUE_ENCODING_BYTES",
    "VALUE_ENCODING_LE64",
    "VALUE_ENCODING_MSGPACK",
    "VALUE_ENCODING_V8",
    "VALUE_ENCODINGS",
    "AtomicWrite",
    "ChangeSignal",
    "Check",
    "Clock",
    "CommitOutcome",
    "Consistency",
    "Engine",
    "EngineCapabilities",
    "EngineLimits",
    "Enqueue",
    "LeasedMessage",
    "Mutation",
    "MutationKind",
    "PollingWatchStream",
    "QueueMessage",
    "RawEntry",
    "ReadRange",
    "Snapshot",
    "SnapshotEntry",
    "SnapshotSource",
    "WatchStream",
    "apply_numeric_mutation",
    "check_stored_value",
    "describe_stored_key",
    "log_undelivered",
    "next_backoff",
    "read_stored_backoff",
    "read_stored_dead_letter_keys",
    "versionstamp_from_counter",
    "versionstamp_to_counter",
    "versionstamped_key",
]

# Value encodings, numbered as Deno's (denokv proto: V8 = 1, LE64 = 2, BYTES = 3);
# kvmodel stores msgpack where Deno stores V8. A Kv opened with values="v8"
# stores V8's format under its own number, 4, so no reader mistakes it for
# msgpack; the Deno file engine maps it to Deno's 1 on disk.
VALUE_ENCODING_MSGPACK = 1
VALUE_ENCODING_LE64 = 2
VALUE_ENCODING_BYTES = 3
VALUE_ENCODING_V8 = 4
VALUE_ENCODINGS = frozenset(
    (VALUE_ENCODING_MSGPACK, VALUE_ENCODING_LE64, VALUE_ENCODING_BYTES, VALUE_ENCODING_V8)
)

VERSIONSTAMP_SIZE = 10
_U64 = struct.Struct("<Q")

Clock = Callable[[], float]
"""A source of wall-clock time in seconds since the epoch (``time.time`` by default).

Engines read expiry deadlines, queue ready times and leases from it, so tests can
inject a controllable clock.
"""


class Consistency(enum.Enum):
    """How fresh a read must be."""

    STRONG = "strong"
    EVENTUAL = "eventual"


# ---------------------------------------------------------------------------
# Records. All are frozen attrs classes holding bytes and ints only.


@attrs.frozen
class RawEntry:
    """A stored key: its encoded key, tagged value and 10-byte versionstamp."""

    key: bytes
    value: bytes
    encoding: int
    versionstamp: bytes


@attrs.frozen
class ReadRange:
    """Keys ``start <= k < end`` in byte order, at most ``limit`` of them.

    With ``reverse`` the engine returns the *last* ``limit`` keys of the range,
    highest first.
    """

    start: bytes
    end: bytes
    limit: int
    reverse: bool = False


@attrs.frozen
class Check:
    """Passes iff the key's current versionstamp equals ``versionstamp`` (None: absent).

    An expired key counts as absent.
    """

    key: bytes
    versionstamp: bytes | None


class MutationKind(enum.Enum):
    """What a :class:`Mutation` does to its key."""

    SET = "set"
    DELETE = "delete"
    SUM = "sum"
    MIN = "min"
    MAX = "max"
    # Set at ``key + versionstamp part``: the engine appends the commit's
    # versionstamp as a str key part (see :func:`versionstamped_key`).
    SET_SUFFIX_VERSIONSTAMPED_KEY = "set_suffix_versionstamped_key"


@attrs.frozen
class Mutation:
    """One change to one key.

    ``value``/``encoding`` are the stored value for SET, and the LE64 operand for
    SUM/MIN/MAX; both are ignored for DELETE. ``expire_at_ms`` (SET only) is an
    absolute deadline in milliseconds since the epoch; SUM/MIN/MAX and SET
    without it clear any expiry.
    """

    key: bytes
    kind: MutationKind
    value: bytes = b""
    encoding: int = VALUE_ENCODING_MSGPACK
    expire_at_ms: int | None = None


@attrs.frozen
class Enqueue:
    """A queue message written by a commit.

    ``ready_at_ms`` is when it may first be delivered. ``backoff_schedule_ms``
    holds the delays before each retry (the Kv fills in the default schedule);
    when a delivery fails and no delay is left, the engine writes the payload to
    every key of ``keys_if_undelivered`` in one commit and drops the message.
    """

    payload: bytes
    encoding: int
    ready_at_ms: int
    keys_if_undelivered: tuple[bytes, ...] = ()
    backoff_schedule_ms: tuple[int, ...] = ()


@attrs.frozen
class AtomicWrite:
    """Everything one commit does: checks first, then mutations in order, then enqueues."""

    checks: tuple[Check, ...] = ()
    mutations: tuple[Mutation, ...] = ()
    enqueues: tuple[Enqueue, ...] = ()


@attrs.frozen
class CommitOutcome:
    """The result of :meth:`Engine.atomic_write`.

    ``versionstamp`` is the commit's versionstamp, or None when a check failed
    (then nothing was written). ``failed_checks`` holds the indexes (into
    ``AtomicWrite.checks``) of the checks that failed, when the engine can tell.
    """

    versionstamp: bytes | None
    failed_checks: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the commit was applied."""
        return self.versionstamp is not None


@attrs.frozen
class EngineCapabilities:
    """What an engine can do; the conformance suite picks its tests by these flags."""

    durable: bool = False
    """Data survives closing and reopening (a file or a server)."""
    cross_process: bool = False
    """Several processes can share the data, including queue and watch."""
    eventual_reads: bool = False
    """``Consistency.EVENTUAL`` may read a replica instead of the leader."""
    queue_delivery: bool = True
    """``dequeue_next_message`` delivers messages; False for a protocol that can only
    enqueue (KV Connect), where a process on the server's store delivers them."""
    msgpack_values: bool = True
    """The engine stores kvmodel's msgpack values (all of Python's value types).

    False on a Deno KV file, which holds Deno's encodings only (V8, LE64,
    bytes): its Kvs write V8's format, where a datetime is a UTC instant in
    whole milliseconds and a KvU64 keeps its type only as a whole value.
    """


# ---------------------------------------------------------------------------
# Protocols


@runtime_checkable
class QueueMessage(Protocol):
    """A leased queue message; exactly one of the callers settles it with ``finish``."""

    @property
    def payload(self) -> bytes:
        """The encoded value."""
        ...

    @property
    def encoding(self) -> int:
        """The value's encoding (``VALUE_ENCODING_*``)."""
        ...

    @property
    def attempt(self) -> int:
        """1 for the first delivery, 2 for the first retry, ..."""
        ...

    @property
    def id(self) -> str:
        """Names the message: the same on every attempt, never reused by the database.

        Handlers key "already done" markers by it to make their effects happen once.
        """
        ...

    def renew_lease(self) -> bool:
        """Extends the lease while a handler runs; False if the lease was lost."""
        ...

    def finish(self, success: bool) -> None:
        """Settles the message: drop it on success; on failure retry or dead-letter it."""
        ...


@runtime_checkable
class WatchStream(Protocol):
    """The current entries of a fixed list of keys, each time they may have changed."""

    def next(self, timeout: float | None = None) -> list[RawEntry | None] | None:
        """Returns the entries (None for an absent key), in the order of the keys.

        The first call returns at once. Later calls block until a commit or an
        expiry may have changed one of the keys (spurious wake-ups are allowed;
        the Kv filters them by versionstamp), and return None if ``timeout``
        seconds pass first. Raises :class:`KvClosedError` once the stream or the
        engine is closed, which also wakes a blocked call.
        """
        ...

    def close(self) -> None:
        """Ends the stream; a blocked ``next`` raises KvClosedError."""
        ...


@runtime_checkable
class Engine(Protocol):
    """A transactional ordered byte store with a queue; see the module docstring."""

    @property
    def limits(self) -> EngineLimits:
        """The most one commit on this engine can hold (``DEFAULT_LIMITS`` for Deno's).

        A Kv enforces Deno's limits by default, tightened by these; opened with
        larger ones (``limits="embedded"``), it enforces those only if every
        number fits here, and refuses at open otherwise. An engine that can
        hold larger commits declares larger numbers (the memory and SQLite
        engines declare ``EngineLimits.embedded()``); one that holds less
        declares smaller numbers, or ``max_operations``/``max_request_size``.
        """
        ...

    @property
    def capabilities(self) -> EngineCapabilities:
        """What the engine can do."""
        ...

    @property
    def clock(self) -> Clock:
        """The engine's time source; the Kv computes deadlines (expiry, delays) with it."""
        ...

    @property
    def lease_timeout(self) -> float:
        """Seconds a dequeued message stays leased; listeners renew a third of the way in."""
        ...

    def snapshot_read(
        self, ranges: Sequence[ReadRange], *, consistency: Consistency = Consistency.STRONG
    ) -> list[list[RawEntry]]:
        """Reads every range at one consistent point, hiding expired keys."""
        ...

    def snapshot_read_linked(
        self, read: ReadRange, *, consistency: Consistency = Consistency.STRONG
    ) -> list[tuple[RawEntry, RawEntry | None]]:
        """Reads one range and, at the same consistent point, the entry each one links to.

        An entry whose value is bytes-encoded (``VALUE_ENCODING_BYTES``) links
        to the key those bytes spell; its pair is the entry stored there, or
        None when that key is absent or expired. Entries of other encodings
        pair with None. Expired keys of the range are hidden, as in
        :meth:`snapshot_read`. The object mapper reads an index page and its
        documents this way, in one snapshot, so no entry is paired with a
        document written after it.
        """
        ...

    def atomic_write(self, write: AtomicWrite) -> CommitOutcome:
        """Applies a write all-or-nothing, or reports the failed checks.

        Raises :class:`kvmodel.KvTypeError` (and writes nothing) when SUM, MIN
        or MAX meets a stored value that is not LE64.
        """
        ...

    def dequeue_next_message(self, timeout: float) -> QueueMessage | None:
        """Leases the next ready message, waiting up to ``timeout`` seconds for one.

        Returns None on timeout or once the engine is closed.
        """
        ...

    def watch(self, keys: Sequence[bytes]) -> WatchStream:
        """Starts watching ``keys``."""
        ...

    def collect_expired(self) -> float | None:
        """Deletes expired keys (waking watchers); returns the next deadline in epoch seconds."""
        ...

    def close(self) -> None:
        """Releases the engine; blocked calls return or raise KvClosedError."""
        ...


@attrs.frozen
class SnapshotEntry:
    """An entry read from a :class:`Snapshot`, with its expiry deadline (ms) or None."""

    entry: RawEntry
    expire_at_ms: int | None


@runtime_checkable
class Snapshot(Protocol):
    """One fixed point of an engine's data, read in as many pages as needed.

    Every :meth:`read` sees the same commits (none half), however many
    commits happen meanwhile; keys that had expired when the snapshot was
    opened are hidden. The reserved keyspace (keys starting with 0xFF, where
    the object mapper keeps its descriptions) is readable too.
    """

    def read(self, start: bytes, end: bytes, limit: int) -> list[SnapshotEntry]:
        """The first ``limit`` entries with ``start <= key < end``, in key order."""
        ...

    def close(self) -> None:
        """Releases what the snapshot holds (a read transaction, a copy); idempotent."""
        ...


@runtime_checkable
class SnapshotSource(Protocol):
    """An engine that can open a :class:`Snapshot` (the optional capability)."""

    def open_snapshot(self) -> Snapshot:
        """Pins the data as it is now; close the snapshot before closing the engine."""
        ...


# ---------------------------------------------------------------------------
# Helpers shared by engines.


class LeasedMessage:
    """A base for :class:`QueueMessage` implementations: the delivered value, read-only.

    Subclasses add how to renew and settle their lease.
    """

    __slots__ = ("_attempt", "_encoding", "_message_id", "_payload")

    def __init__(self, payload: bytes, encoding: int, attempt: int, *, message_id: str) -> None:
        self._payload = payload
        self._encoding = encoding
        self._attempt = attempt
        self._message_id = message_id

    @property
    def payload(self) -> bytes:
        """The encoded value."""
        return self._payload

    @property
    def encoding(self) -> int:
        """The value's encoding (``VALUE_ENCODING_*``)."""
        return self._encoding

    @property
    def attempt(self) -> int:
        """1 for the first delivery, 2 for the first retry, ..."""
        return self._attempt

    @property
    def id(self) -> str:
        """Names the message: the same on every attempt, never reused by the database."""
        return self._message_id

    def renew_lease(self) -> bool:
        """Extends the lease while a handler runs; False if the lease was lost."""
        raise NotImplementedError

    def finish(self, success: bool) -> None:
        """Settles the message: drop it on success; on failure retry or dead-letter it."""
        raise NotImplementedError


def versionstamp_from_counter(counter: int) -> bytes:
    """Deno's versionstamp layout: an 8-byte big-endian commit counter, then 2 zero bytes."""
    return counter.to_bytes(8, "big") + b"\x00\x00"


def versionstamp_to_counter(versionstamp: bytes) -> int:
    """The commit counter inside a versionstamp made by :func:`versionstamp_from_counter`."""
    return int.from_bytes(versionstamp[:8], "big")


def versionstamped_key(key_prefix: bytes, versionstamp: bytes) -> bytes:
    """The key a SET_SUFFIX_VERSIONSTAMPED_KEY mutation writes.

    The versionstamp becomes a last str key part of 20 lowercase hex characters,
    so the key decodes to ``(*prefix, "0000000000000001" "0000")``.
    """
    return key_prefix + b"\x02" + versionstamp.hex().encode("ascii") + b"\x00"


_U64_MASK = (1 << 64) - 1


def apply_numeric_mutation(
    kind: MutationKind, current: tuple[bytes, int] | None, operand: bytes
) -> bytes:
    """The LE64 bytes a SUM, MIN or MAX leaves, given the current ``(value, encoding)``.

    A missing key takes the operand. Raises :class:`KvTypeError` when the stored
    value is not a KvU64 (the engine must then write nothing).
    """
    if current is None:
        return operand
    value, encoding = current
    if encoding != VALUE_ENCODING_LE64 or len(value) != 8:
        raise KvTypeError(
            f"Cannot apply {kind.value} to a stored value that is not a KvU64; "
            "store a KvU64 at that key first."
        )
    old = _U64.unpack(value)[0]
    new = _U64.unpack(operand)[0]
    if kind is MutationKind.SUM:
        result = (old + new) & _U64_MASK
    elif kind is MutationKind.MIN:
        result = min(old, new)
    elif kind is MutationKind.MAX:
        result = max(old, new)
    else:  # pragma: no cover - callers pass numeric kinds only
        raise ValueError(f"{kind} is not a numeric mutation")
    return _U64.pack(result)


# ---------------------------------------------------------------------------
# Reading back what an engine stored. A file or a cluster can hold rows written
# by something other than kvmodel (a damaged file, a hand edit, another
# program): every column is type-checked and bounded by the limits before it
# is used, so bad data raises DecodeError naming the key or the message
# instead of a TypeError, an OverflowError or a 300 MB allocation.

queue_logger = logging.getLogger("kvmodel.queue")
"""The queue's logger; engines log dead-lettered, dropped and quarantined messages here."""

_MAX_BACKOFF_MS = MAX_BACKOFF_INTERVAL_SECONDS * 1000


def describe_stored_key(key: object) -> str:
    """A stored key for an error message: the decoded tuple when it decodes, else its repr."""
    if type(key) is bytes and len(key) <= MAX_KEY_SIZE + 1:
        try:
            return repr(decode_key(key))
        except DecodeError:
            pass
    if isinstance(key, bytes | str) and len(key) > MAX_KEY_SIZE:
        # Slice before repr: a hostile column can be hundreds of megabytes.
        return f"{brief_repr(key[:64])} (cut; {len(key)} long)"
    return brief_repr(key)


def _type_name(value: object) -> str:
    return type(value).__name__


def check_stored_value(where: str, value: object, encoding: object) -> tuple[bytes, int]:
    """Returns ``(value, encoding)`` when they are a value kvmodel could have written.

    ``where`` names the row in the message ("the key ('a',)", "queue message 7").

    Raises:
        DecodeError: the value is not bytes, is longer than the value limit, or
            the encoding is not one of ``VALUE_ENCODING_*``.
    """
    if type(value) is not bytes:
        raise DecodeError(
            f"The stored value of {where} is a {_type_name(value)}, not bytes; "
            "the database was written by something other than kvmodel: delete or rewrite it."
        )
    if len(value) > MAX_VALUE_SIZE:
        raise DecodeError(
            f"The stored value of {where} is {len(value)} bytes, more than any value can be "
            f"({MAX_VALUE_SIZE}); the database was written by something other than kvmodel: "
            "delete or rewrite it."
        )
    if type(encoding) is not int or encoding not in VALUE_ENCODINGS:
        raise DecodeError(
            f"The stored value of {where} has the unknown encoding {encoding!r}; "
            "the database was written by something other than kvmodel: delete or rewrite it."
        )
    return value, encoding


def read_stored_dead_letter_keys(where: str, keys: object) -> tuple[bytes, ...]:
    """Validates the dead-letter keys of a stored message before anything writes them.

    Each must be a canonical key encoding of at most ``MAX_KEY_SIZE`` bytes, so
    a damaged message can never write outside the user's keyspace.

    Raises:
        DecodeError: ``keys`` is not a list of such keys.
    """
    if not isinstance(keys, list | tuple):
        raise DecodeError(
            f"The dead-letter keys of {where} are a {_type_name(keys)}, not a list of keys."
        )
    for key in keys:
        if type(key) is not bytes or not 0 < len(key) <= MAX_KEY_SIZE:
            raise DecodeError(
                f"The dead-letter key {describe_stored_key(key)} of {where} is not an encoded "
                f"key of 1 to {MAX_KEY_SIZE} bytes."
            )
        try:
            decode_key(key)
        except DecodeError as exc:
            raise DecodeError(
                f"The dead-letter key {describe_stored_key(key)} of {where} is not a valid "
                f"key encoding: {exc}"
            ) from exc
    return tuple(keys)


def read_stored_backoff(where: str, schedule: object) -> tuple[int, ...]:
    """Validates the remaining backoff schedule of a stored message (milliseconds).

    Raises:
        DecodeError: ``schedule`` is not a list of at most ``MAX_BACKOFF_INTERVALS``
            ints between 0 and one hour.
    """
    if not isinstance(schedule, list | tuple) or len(schedule) > MAX_BACKOFF_INTERVALS:
        what = (
            f"a list of {len(schedule)}"
            if isinstance(schedule, list | tuple)
            else f"a {_type_name(schedule)}"
        )
        raise DecodeError(
            f"The backoff schedule of {where} is {what}, not a list of at most "
            f"{MAX_BACKOFF_INTERVALS} intervals."
        )
    for delay in schedule:
        if type(delay) is not int or not 0 <= delay <= _MAX_BACKOFF_MS:
            raise DecodeError(
                f"The backoff schedule of {where} holds {describe_stored_key(delay)}, "
                f"not a number of milliseconds between 0 and {_MAX_BACKOFF_MS}."
            )
    return tuple(schedule)


def log_undelivered(message: str, attempts: int, keys: Sequence[bytes], why: str) -> None:
    """Logs, at WARNING, a message given up on: dead-lettered to ``keys``, or dropped.

    ``why`` says what ended it ("its handler failed", "its lease expired").
    """
    if keys:
        queue_logger.warning(
            "Queue message %s was not delivered after %d attempt(s) (the last: %s); "
            "its value was written to the keys_if_undelivered %s.",
            message,
            attempts,
            why,
            ", ".join(describe_stored_key(k) for k in keys),
        )
    else:
        queue_logger.warning(
            "Queue message %s was not delivered after %d attempt(s) (the last: %s) "
            "and is dropped: it has no keys_if_undelivered.",
            message,
            attempts,
            why,
        )


def next_backoff(schedule_ms: Sequence[int]) -> tuple[int, tuple[int, ...]] | None:
    """Splits a backoff schedule into (next delay, rest), or None when it is exhausted."""
    if not schedule_ms:
        return None
    return schedule_ms[0], tuple(schedule_ms[1:])


class ChangeSignal:
    """A counter that engines bump on every commit and waiters block on.

    Watch streams and queue listeners wait for the counter to move instead of
    polling, so an idle waiter costs no CPU. ``close`` wakes every waiter for good.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._seq = 0
        self._waiters = 0
        self._closed = False

    @property
    def seq(self) -> int:
        """The current value of the counter."""
        return self._seq

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def bump(self) -> None:
        """Moves the counter and wakes every waiter.

        The lock is only taken when someone waits: a commit with no watcher or
        listener pays one increment. A waiter registers itself under the lock
        before it reads the counter, and the counter moves before ``_waiters``
        is read here, so a wake-up cannot be lost. Two racing increments may
        move the counter by one instead of two; waiters only need it to move.
        """
        self._seq += 1
        if self._waiters:
            with self._cond:
                self._cond.notify_all()

    def wait(self, seen: int, timeout: float | None) -> int:
        """Blocks until the counter differs from ``seen``, the timeout passes, or close.

        Returns the counter's value at return (equal to ``seen`` on timeout).
        """
        with self._cond:
            self._waiters += 1
            try:
                if self._seq == seen and not self._closed:
                    self._cond.wait_for(lambda: self._seq != seen or self._closed, timeout)
            finally:
                self._waiters -= 1
            return self._seq

    def close(self) -> None:
        """Wakes every waiter; later waits return at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class PollingWatchStream:
    """A :class:`WatchStream` for engines that signal every commit with a ChangeSignal.

    Each wake-up re-reads the watched keys with ``read`` (one snapshot read);
    the Kv drops wake-ups that changed nothing. ``deadline`` (optional) returns
    the earliest expiry deadline among the keys so an expiry also wakes the
    stream, even before the collector deletes the key.
    """

    def __init__(
        self,
        signal: ChangeSignal,
        read: Callable[[], list[RawEntry | None]],
        *,
        clock: Clock = time.time,
        expiry_deadline: Callable[[], float | None] | None = None,
    ) -> None:
        self._signal = signal
        self._read = read
        self._clock = clock
        self._expiry_deadline = expiry_deadline
        self._seen: int | None = None
        self._closed = False

    def next(self, timeout: float | None = None) -> list[RawEntry | None] | None:
        """See :meth:`WatchStream.next`."""
        self._raise_if_closed()
        if self._seen is None:
            self._seen = self._signal.seq
            return self._read()
        # Sleep until a commit bumps the signal, the caller's timeout passes, or
        # the earliest expiry among the keys arrives (an expiry is a change too).
        wait = timeout
        woken_by_expiry = False
        if self._expiry_deadline is not None:
            deadline = self._expiry_deadline()
            if deadline is not None:
                until = max(0.0, deadline - self._clock())
                if wait is None or until < wait:
                    wait, woken_by_expiry = until, True
        seq = self._signal.wait(self._seen, wait)
        self._raise_if_closed()
        if seq == self._seen and not woken_by_expiry:
            return None
        self._seen = seq
        return self._read()

    def close(self) -> None:
        """See :meth:`WatchStream.close`."""
        self._closed = True
        self._signal.bump()  # wake a next() blocked in another thread

    def _raise_if_closed(self) -> None:
        if self._closed or self._signal.closed:
            raise KvClosedError("The watch stream is closed.")
