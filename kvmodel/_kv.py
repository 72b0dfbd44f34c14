"""The Kv facade: Deno KV's API in Python over any engine.

The Kv validates and encodes everything, enforces the limits, and hands the
engine passive records (:mod:`kvmodel.engines.base`). The asyncio facade
(:mod:`kvmodel.aio`) runs these same methods off the event loop, so the
semantics live here once.
"""

from __future__ import annotations

import builtins
import inspect
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from kvmodel._accel import speedups
from kvmodel._atomic import (
    AtomicOperation,
    reject_empty_key,
    validate_backoff_schedule,
    validate_delay,
)
from kvmodel._list import ListIterator, ListState
from kvmodel._options import parse_consistency, positive_int
from kvmodel._records import VERSIONSTAMP, CommitResult, Entry
from kvmodel._text import brief_repr
from kvmodel._values import decode_value, encode_message_v8, encode_value, encode_value_v8
from kvmodel._watch import WatchIterator
from kvmodel.engines.base import (
    AtomicWrite,
    Consistency,
    Engine,
    Enqueue,
    Mutation,
    MutationKind,
    RawEntry,
    ReadRange,
)
from kvmodel.errors import (
    InvalidArgumentError,
    KvClosedError,
    LimitExceededError,
)
from kvmodel.keys import encode_key
from kvmodel.limits import (
    DEFAULT_LIMITS,
    MAX_GET_MANY_KEYS,
    MAX_READ_KEY_SIZE,
    MAX_WATCH_KEYS,
    EngineLimits,
)

if TYPE_CHECKING:
    from kvmodel._queue import QueueDelivery, QueueListener

__all__ = ["Kv", "open_kv"]

_STRONG = Consistency.STRONG
# The value formats a Kv can write: (value encoder, queue message encoder).
# Reads decode any of them by the stored encoding number.
_VALUE_FORMATS: dict[str, tuple[Callable[[object], tuple[bytes, int]], ...]] = {
    "msgpack": (encode_value, encode_value),
    "v8": (encode_value_v8, encode_message_v8),
}
_PLAIN_PARTS = frozenset((str, int, bytes, float, bool))


# The numeric limits a request may set, with the words errors use for them.
_LIMIT_FIELDS = (
    ("max_key_size", "bytes of a written key"),
    ("max_value_size", "bytes of a value"),
    ("max_checks", "checks per commit"),
    ("max_mutations", "mutations and enqueues per commit"),
    ("max_total_mutation_size", "bytes of total mutation size per commit"),
    ("max_total_key_size", "bytes of total key size per commit"),
    ("max_list_batch", "entries per list batch"),
)


def requested_limits(limits: object, where: str) -> EngineLimits:
    """The EngineLimits that ``limits=`` names: None or "deno" (Deno's), "embedded", or one."""
    if limits is None or limits == "deno":
        return DEFAULT_LIMITS
    if limits == "embedded":
        return EngineLimits.embedded()
    if isinstance(limits, EngineLimits):
        return limits
    raise InvalidArgumentError(
        f"{where} takes limits='deno' (the default), limits='embedded' or a "
        f"kvmodel.EngineLimits, not {brief_repr(limits)}."
    )


def enforced_limits(requested: EngineLimits, capacity: EngineLimits) -> EngineLimits:
    """The limits a Kv enforces: the requested ones, tightened by the engine's capacity.

    Raises:
        InvalidArgumentError: the request asks for more than the engine can
            hold; the message names the limit and the engine's maximum.
    """
    tighter = False
    numbers: dict[str, int] = {}
    for field, words in _LIMIT_FIELDS:
        want, most = getattr(requested, field), getattr(capacity, field)
        if not (isinstance(want, int) and not isinstance(want, bool) and want > 0):
            raise InvalidArgumentError(
                f"The limit {field}={want!r} of {requested.name} is not a positive int."
            )
        if want > most:
            also = ""
            if capacity.max_operations is not None:
                also = f" and {capacity.max_operations:,} operations per transaction"
            raise InvalidArgumentError(
                f"The engine ({capacity.name}) cannot lift the limit of {words} to "
                f"{want:,} ({field}); "
                f"it holds at most {most:,}{also}. Open it with the default limits, or "
                "keep the data on an engine that can hold larger commits (SQLite or memory)."
            )
        tighter = tighter or want < most
        numbers[field] = want
    for field in ("max_operations", "max_request_size"):
        want = getattr(requested, field)
        if want is not None and not (
            isinstance(want, int) and not isinstance(want, bool) and want > 0
        ):
            raise InvalidArgumentError(
                f"The limit {field}={want!r} of {requested.name} is not a positive int or None."
            )
    operations = _smaller(requested.max_operations, capacity.max_operations)
    request_size = _smaller(requested.max_request_size, capacity.max_request_size)
    tighter = tighter or (
        (operations, request_size) != (capacity.max_operations, capacity.max_request_size)
    )
    # Errors name who imposes the limits: the request when it is the tighter
    # anywhere, else the engine (its numbers are all in force).
    advice = capacity.operations_advice if operations == capacity.max_operations else ""
    return EngineLimits(
        name=requested.name if tighter else capacity.name,
        max_operations=operations,
        max_request_size=request_size,
        operations_advice=advice or requested.operations_advice,
        **numbers,
    )


def _smaller(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def key_tuple(key: Sequence[Any]) -> tuple[Any, ...]:
    """The key as it reads back: a tuple with bytes-like parts as bytes."""
    t = tuple(key)
    for part in t:
        if type(part) not in _PLAIN_PARTS:
            return tuple(bytes(p) if isinstance(p, bytearray | memoryview) else p for p in t)
    return t


# The references above and Entry itself; the accelerator's twins when it runs.
key_tuple_py = key_tuple
_new_entry: Callable[[tuple[Any, ...], Any, str | None], Entry[Any]] = Entry
if speedups is not None:
    speedups.install_key_tuple(key_tuple=key_tuple_py)
    key_tuple = speedups.key_tuple
    _new_entry = speedups.new_entry


class Kv:
    """A Deno KV database: ordered keys, versionstamps, atomic commits, a queue and watches.

    Open one with :func:`open_kv`, or wrap an engine: ``Kv(MemoryEngine())``.

        >>> import kvmodel as km
        >>> with km.open_kv() as kv:
        ...     kv.set(("users", "ada"), {"name": "Ada"}).ok
        ...     kv.get(("users", "ada")).value
        True
        {'name': 'Ada'}
    """

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], float] | None = None,
        values: str | None = None,
        limits: str | EngineLimits | None = None,
    ) -> None:
        # limits: None or "deno" (Deno KV's, the default), "embedded" (see
        # EngineLimits.embedded) or an EngineLimits; refused at once when the
        # engine cannot hold them (Engine.limits is the most it holds).
        enforced = enforced_limits(requested_limits(limits, "Kv"), engine.limits)
        # values: "msgpack" (kvmodel's format) or "v8" (Deno's); by default
        # the engine's preference (``default_values``, "v8" on a Deno file).
        if values is None:
            values = getattr(engine, "default_values", "msgpack")
        if values not in _VALUE_FORMATS:
            raise InvalidArgumentError(
                f"values={values!r} is not a value format; use 'msgpack' or 'v8'."
            )
        self.values: str = values
        self._encode, self._encode_message = _VALUE_FORMATS[values]
        self._engine = engine
        # An engine's optional strong point read, get's hot path (see the protocol).
        self._read_point: Callable[[bytes], RawEntry | None] | None = getattr(
            engine, "read_point", None
        )
        self._clock = clock or engine.clock
        self.limits: EngineLimits = enforced
        self._closed = False
        self._close_lock = threading.Lock()
        self._collector: _ExpiryCollector | None = None
        self._listeners: set[QueueListener] = set()
        _LIVE_KVS.add(self)
        if engine.capabilities.durable:
            # A durable store may hold expiring keys that other Kvs (or an
            # earlier run) wrote: collect them too, not only our own.
            self._expiry_scheduled(self._clock())

    # -- helpers shared with the atomic builder and the async facade ---------------

    @property
    def engine(self) -> Engine:
        """The engine this Kv runs on."""
        return self._engine

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise KvClosedError("This Kv is closed; open a new one with kvmodel.open_kv().")

    def now_ms(self) -> int:
        """The clock's current time in milliseconds since the epoch."""
        return int(self._clock() * 1000)

    def write_key(self, key: Sequence[Any], *, extra: int = 0) -> bytes:
        """Encodes a key to be written: non-empty and within the key size limit."""
        encoded = encode_key(key)
        if not encoded and not extra:  # a versionstamp suffix alone is a whole key
            reject_empty_key(key)
        limit = self.limits.max_key_size
        if len(encoded) + extra > limit:
            raise LimitExceededError(
                f"Key {brief_repr(key)} is {len(encoded) + extra} bytes encoded; "
                f"{self.limits.name} allows at most {limit} for a written key.",
                limit=limit,
                actual=len(encoded) + extra,
            )
        return encoded

    def read_key(self, key: Sequence[Any]) -> bytes:
        """Encodes a key to be read: within the read key size limit."""
        encoded = encode_key(key)
        if len(encoded) > MAX_READ_KEY_SIZE:
            raise LimitExceededError(
                f"Key {brief_repr(key)} is {len(encoded)} bytes encoded; "
                f"reads allow at most {MAX_READ_KEY_SIZE}.",
                limit=MAX_READ_KEY_SIZE,
                actual=len(encoded),
            )
        return encoded

    def encode_value(self, value: object) -> tuple[bytes, int]:
        """Encodes a value in this Kv's value format and checks the value size limit."""
        return self._limit_size(self._encode(value))

    def _limit_size(self, encoded: tuple[bytes, int]) -> tuple[bytes, int]:
        data, encoding = encoded
        limit = self.limits.max_value_size
        if len(data) > limit:
            raise LimitExceededError(
                f"The value is {len(data)} bytes encoded; "
                f"{self.limits.name} allows at most {limit}.",
                limit=limit,
                actual=len(data),
            )
        return data, encoding

    def make_enqueue(
        self,
        value: object,
        *,
        delay: object,
        keys_if_undelivered: Iterable[Sequence[Any]],
        backoff_schedule: Sequence[object] | None,
    ) -> Enqueue:
        """Validates the options of an enqueue and builds its engine record."""
        data, encoding = self._limit_size(self._encode_message(value))
        delay_ms = validate_delay(delay)
        schedule = validate_backoff_schedule(backoff_schedule)
        if isinstance(keys_if_undelivered, str | bytes) or not isinstance(
            keys_if_undelivered, Iterable
        ):
            raise InvalidArgumentError(
                f"keys_if_undelivered must be a sequence of keys, not {keys_if_undelivered!r}."
            )
        dead_letter_keys = tuple(self.write_key(k) for k in keys_if_undelivered)
        return Enqueue(data, encoding, self.now_ms() + delay_ms, dead_letter_keys, schedule)

    def commit_write(self, write: AtomicWrite, check_keys: Sequence[Any]) -> CommitResult:
        """Sends a built commit to the engine and reports the outcome."""
        self._check_open()
        outcome = self._engine.atomic_write(write)
        if outcome.versionstamp is None:
            failed = tuple(tuple(check_keys[i]) for i in outcome.failed_checks)
            return CommitResult(False, None, failed)
        for m in write.mutations:
            if m.expire_at_ms is not None:
                self._expiry_scheduled(m.expire_at_ms / 1000)
        return CommitResult(True, outcome.versionstamp.hex())

    # -- reads -------------------------------------------------------------------

    def get(self, key: Sequence[Any], *, consistency: str = "strong") -> Entry[Any]:
        """Reads one key; a missing key gives ``Entry(key, None, None)``."""
        if self._closed:
            self._check_open()
        encoded = encode_key(key)
        if len(encoded) > MAX_READ_KEY_SIZE:
            self.read_key(key)  # raises the size error
        read_point = self._read_point
        if read_point is not None and consistency == "strong":
            raw = read_point(encoded)
        else:
            level = _STRONG if consistency == "strong" else parse_consistency(consistency)
            found = self._engine.snapshot_read(
                (ReadRange(encoded, encoded + b"\x00", 1),), consistency=level
            )[0]
            raw = found[0] if found else None
        if raw is None:
            return _new_entry(key_tuple(key), None, None)
        value = decode_value(raw.value, raw.encoding, raw.key)
        return _new_entry(key_tuple(key), value, raw.versionstamp.hex())

    def get_many(
        self, keys: Iterable[Sequence[Any]], *, consistency: str = "strong"
    ) -> list[Entry[Any]]:
        """Reads up to 10 keys at one consistent point, in the order given."""
        self._check_open()
        if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
            raise InvalidArgumentError(f"get_many takes a list of keys, not {brief_repr(keys)}.")
        if not isinstance(keys, Sequence):
            keys = list(keys)
        if len(keys) > MAX_GET_MANY_KEYS:
            raise LimitExceededError(
                f"get_many was given {len(keys)} keys; at most {MAX_GET_MANY_KEYS} are allowed.",
                limit=MAX_GET_MANY_KEYS,
                actual=len(keys),
            )
        level = _STRONG if consistency == "strong" else parse_consistency(consistency)
        encoded = [self.read_key(k) for k in keys]
        if not encoded:
            return []
        results = self._engine.snapshot_read(
            [ReadRange(e, e + b"\x00", 1) for e in encoded], consistency=level
        )
        out: list[Entry[Any]] = []
        for key, found in zip(keys, results, strict=True):
            if found:
                raw = found[0]
                value = decode_value(raw.value, raw.encoding, raw.key)
                out.append(_new_entry(key_tuple(key), value, raw.versionstamp.hex()))
            else:
                out.append(_new_entry(key_tuple(key), None, None))
        return out

    def list_state(
        self,
        prefix: Sequence[Any] | None,
        start: Sequence[Any] | None,
        end: Sequence[Any] | None,
        limit: int | None,
        reverse: bool,
        cursor: str | None,
        batch_size: int | None,
        consistency: str,
    ) -> ListState:
        """Validates the arguments of :meth:`list` into a paging state."""
        if limit is not None:
            limit = positive_int("limit", limit)
        if batch_size is not None:
            batch_size = positive_int("batch_size", batch_size)
        return ListState(
            prefix,
            start,
            end,
            limit=limit,
            reverse=reverse,
            cursor=cursor,
            batch_size=batch_size,
            consistency=parse_consistency(consistency),
            max_batch=self.limits.max_list_batch,
        )

    def read_range(self, read: ReadRange, consistency: Consistency) -> list[RawEntry]:
        """One engine read of one range (used by the list iterators)."""
        self._check_open()
        return self._engine.snapshot_read((read,), consistency=consistency)[0]

    def read_linked(
        self, read: ReadRange, consistency: Consistency
    ) -> list[tuple[RawEntry, RawEntry | None]]:
        """One engine read of a range and the entries its bytes values link to.

        The object mapper's index pages: an index entry's value is the encoded
        primary key of its document, so one snapshot gives both.
        """
        self._check_open()
        return self._engine.snapshot_read_linked(read, consistency=consistency)

    def list(
        self,
        prefix: Sequence[Any] | None = None,
        *,
        start: Sequence[Any] | None = None,
        end: Sequence[Any] | None = None,
        limit: int | None = None,
        reverse: bool = False,
        cursor: str | None = None,
        batch_size: int | None = None,
        consistency: str = "strong",
    ) -> ListIterator:
        """Lists the entries of a prefix or a range in key order, fetched in batches.

        Args:
            prefix: list the keys that start with these parts (the prefix itself excluded).
            start: first key (inclusive); with a prefix it must lie inside it.
            end: end key (exclusive); with a prefix it must lie inside it.
            limit: stop after this many entries.
            reverse: highest keys first.
            cursor: resume where an earlier listing's ``.cursor`` left off.
            batch_size: entries per engine read (at most 1000).
            consistency: "strong" or "eventual".

        Returns:
            An iterator of :class:`Entry`; its ``.cursor`` says where to resume.
        """
        self._check_open()
        state = self.list_state(prefix, start, end, limit, reverse, cursor, batch_size, consistency)
        return ListIterator(state, self.read_range, cursor)

    # -- writes ------------------------------------------------------------------

    def atomic(self) -> AtomicOperation:
        """Starts an atomic operation: checks, mutations and enqueues in one commit."""
        self._check_open()
        return AtomicOperation(self)

    def set(self, key: Sequence[Any], value: object, *, expire_in: object = None) -> CommitResult:
        """Sets one key; ``expire_in`` (seconds or timedelta) makes it expire."""
        if expire_in is not None or (
            isinstance(key, tuple | list) and key and key[-1] is VERSIONSTAMP
        ):
            return self.atomic().set(key, value, expire_in=expire_in).commit()
        # The common case skips the builder: one key and one value within their
        # size limits cannot break a commit-wide limit.
        self._check_open()
        data, encoding = self.encode_value(value)
        mutation = Mutation(self.write_key(key), MutationKind.SET, data, encoding)
        return self.commit_write(AtomicWrite((), (mutation,)), ())

    def delete(self, key: Sequence[Any]) -> None:
        """Deletes one key; deleting a missing key is fine."""
        self._check_open()
        mutation = Mutation(self.write_key(key), MutationKind.DELETE)
        self.commit_write(AtomicWrite((), (mutation,)), ())

    def enqueue(
        self,
        value: object,
        *,
        delay: object = 0,
        keys_if_undelivered: Iterable[Sequence[Any]] = (),
        backoff_schedule: Sequence[object] | None = None,
    ) -> CommitResult:
        """Queues a value for ``listen_queue`` (see :meth:`AtomicOperation.enqueue`)."""
        return (
            self.atomic()
            .enqueue(
                value,
                delay=delay,
                keys_if_undelivered=keys_if_undelivered,
                backoff_schedule=backoff_schedule,
            )
            .commit()
        )

    # -- queue and watch ---------------------------------------------------------

    def listen_queue(
        self,
        handler: Callable[[Any], object] | Callable[[Any, QueueDelivery], object],
        *,
        concurrency: int = 1,
    ) -> None:
        """Delivers queued values to ``handler`` until the Kv is closed.

        A handler with a second positional parameter also gets a
        :class:`kvmodel.QueueDelivery`: the message's id and attempt number.

        A handler that raises is retried after each interval of the message's
        backoff schedule; when the schedule is exhausted the value is written to
        the message's ``keys_if_undelivered``. Delivery is at least once: a
        message whose listener died is delivered again after the engine's lease
        timeout. With ``concurrency`` > 1, up to that many handlers run at once in
        worker threads.
        """
        from kvmodel._queue import QueueListener

        self._check_open()
        concurrency = positive_int("concurrency", concurrency)
        listener = QueueListener(self, handler, concurrency=concurrency)
        with self._close_lock:
            self._check_open()
            self._listeners.add(listener)  # so close() can join its lease thread
        try:
            listener.run()
        finally:
            with self._close_lock:
                self._listeners.discard(listener)

    def watch(self, keys: Sequence[Sequence[Any]], *, raw: bool = False) -> WatchIterator:
        """Streams the entries of up to 10 keys: now, then after every change.

        Returns an iterator of ``list[Entry]`` (also a context manager with
        ``close()``); it ends when the Kv closes.
        """
        self._check_open()
        encoded, key_tuples = self.watch_keys(keys)
        if not isinstance(raw, bool):
            raise InvalidArgumentError(f"raw must be a bool, not {raw!r}.")
        return WatchIterator(self._engine.watch(encoded), key_tuples, raw=raw)

    def watch_keys(
        self, keys: Sequence[Sequence[Any]]
    ) -> tuple[builtins.list[bytes], builtins.list[tuple[Any, ...]]]:
        """Validates the keys of a watch."""
        if isinstance(keys, str | bytes) or not isinstance(keys, Sequence):
            raise InvalidArgumentError(f"watch takes a sequence of keys, not {keys!r}.")
        if keys and not isinstance(keys[0], tuple | list):
            raise InvalidArgumentError(
                f"watch takes a list of keys, not {keys!r}; to watch one key, "
                f"pass [{tuple(keys)!r}]."
            )
        if len(keys) > MAX_WATCH_KEYS:
            raise LimitExceededError(
                f"watch was given {len(keys)} keys; at most {MAX_WATCH_KEYS} are allowed.",
                limit=MAX_WATCH_KEYS,
                actual=len(keys),
            )
        return [self.read_key(k) for k in keys], [key_tuple(k) for k in keys]

    # -- expiry ------------------------------------------------------------------

    def _expiry_scheduled(self, deadline: float) -> None:
        """Makes sure the background collector deletes a key expiring at ``deadline``."""
        collector = self._collector
        if collector is None:
            with self._close_lock:
                if self._collector is None and not self._closed:
                    self._collector = _ExpiryCollector(self._engine, self._clock)
                    self._collector.start()
                collector = self._collector
        if collector is not None:
            collector.wake(deadline)

    # -- lifetime ----------------------------------------------------------------

    def close(self) -> None:
        """Closes the Kv: watches and listeners end, later calls raise KvClosedError.

        When it returns, the Kv's background threads (expiry collection, lease
        renewal, the engine's own) have ended and the engine's connections are
        closed, so the process may fork. ``listen_queue`` calls return soon
        after, in their own threads.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            collector = self._collector
            listeners = list(self._listeners)
        if collector is not None:
            collector.stop()
        # The engine first: it interrupts a collection or a lease renewal in
        # flight, so the joins below do not wait for a lock or a busy timeout.
        self._engine.close()
        current = threading.current_thread()
        if collector is not None and collector is not current:
            collector.join()
        for listener in listeners:
            listener.stop_leases()

    def __enter__(self) -> Kv:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<kvmodel.Kv {type(self._engine).__name__} {state}>"


_LIVE_KVS: weakref.WeakSet[Kv] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Only the forking thread survives a fork: locks other threads held stay
    # held for ever, and the collector and lease threads are gone. A Kv that
    # crossed the fork gets fresh locks and no threads; the engine decides
    # whether it still works (SqliteEngine refuses, MemoryEngine is a copy).
    for kv in list(_LIVE_KVS):
        kv._close_lock = threading.Lock()
        kv._collector = None
        kv._listeners = set()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _ExpiryCollector(threading.Thread):
    """Deletes expired keys in the background, sleeping until the next deadline.

    :meth:`Kv.close` stops it and joins it after closing the engine, whose
    calls then raise at once, so the join is short.
    """

    # Without a known deadline, look again now and then for keys that other
    # processes wrote.
    IDLE_INTERVAL = 60.0

    def __init__(self, engine: Engine, clock: Callable[[], float]) -> None:
        super().__init__(name="kvmodel-expiry", daemon=True)
        self._engine = engine
        self._clock = clock
        self._cond = threading.Condition()
        self._next: float | None = None
        self._stopped = False

    def wake(self, deadline: float) -> None:
        """Makes sure the collector runs by ``deadline`` (epoch seconds)."""
        with self._cond:
            if self._next is None or deadline < self._next:
                self._next = deadline
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def run(self) -> None:
        while True:
            try:
                next_deadline = self._engine.collect_expired()
            except Exception:  # closed or failing engine: the next Kv will collect
                return
            with self._cond:
                if self._stopped:
                    return
                self._next = next_deadline
                wait = self.IDLE_INTERVAL
                if next_deadline is not None:
                    wait = min(wait, max(0.0, next_deadline - self._clock()) + 0.001)
                self._cond.wait(wait)
                if self._stopped:
                    return


def _is_deno_kv_file(target: str) -> bool:
    # Only an existing file is looked into; a new path stays a kvmodel file.
    if not os.path.isfile(target):
        return False
    from kvmodel.engines.denofile import is_deno_kv_file

    return is_deno_kv_file(target)


def open_kv(path: str | os.PathLike[str] | None = None, **options: Any) -> Kv:
    """Opens a Kv: in memory (``None`` or ``":memory:"``), a SQLite file, ``etcd[s]://...``,
    or a KV Connect server at ``http[s]://...`` (``token=`` or ``$DENO_KV_ACCESS_TOKEN``).

    ``"deno:PATH"`` opens (or creates) a file in the layout of Deno's
    ``Deno.openKv(PATH)``, beside a running Deno (see
    :class:`kvmodel.engines.denofile.DenoFileEngine`); an existing file in
    that layout is recognised without the prefix.

    Args:
        path: where the data lives.
        options: engine options, e.g. ``synchronous="NORMAL"`` for SQLite,
            ``clock=`` or ``lease_timeout=`` for any engine; and
            ``values="msgpack"`` (kvmodel's value format, the default) or
            ``values="v8"`` (V8's, as Deno stores values; the default on a
            ``deno:`` file; needs the ``deno`` extra); and ``limits="deno"``
            (Deno KV's limits, the default), ``limits="embedded"`` (commits of
            up to 50,000 checks, 100,000 mutations and 64 MiB, on SQLite and
            in memory; see :meth:`kvmodel.EngineLimits.embedded`) or an
            :class:`kvmodel.EngineLimits`.

    Raises:
        InvalidArgumentError: an option the engine does not take, or limits
            the engine cannot hold (etcd, KV Connect and Deno's file hold
            Deno's at most).
        EngineError: the file or the cluster cannot be used.
    """
    target = None if path is None else os.fspath(path)
    shown = target
    values = options.pop("values", None)
    limits = options.pop("limits", None)
    factory: Callable[..., Engine]
    if target is None or target == ":memory:":
        from kvmodel.engines.memory import MemoryEngine

        factory = MemoryEngine
        args: tuple[Any, ...] = ()
    elif target.startswith(("etcd://", "etcds://")):
        from kvmodel.engines.etcd import EtcdEngine, redact_url

        factory = EtcdEngine.from_url
        args = (target,)
        shown = redact_url(target)  # the URL may hold a password
    elif target.startswith("deno:") or _is_deno_kv_file(target):
        from kvmodel.engines.denofile import DenoFileEngine

        factory = DenoFileEngine
        args = (target.removeprefix("deno:"),)
    elif target.startswith(("http://", "https://")):
        # A KV Connect server (Deno Deploy, denokv, kvmodel serve): the connect extra.
        from kvmodel.engines.connect import ConnectEngine

        factory = ConnectEngine
        args = (target,)
    else:
        from kvmodel.engines.sqlite import SqliteEngine

        factory = SqliteEngine
        args = (target,)
    accepted = {
        name
        for name, p in inspect.signature(factory).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    for name in options:
        if name not in accepted:
            raise InvalidArgumentError(
                f"open_kv({shown!r}) does not take the option {name!r}; "
                f"it takes {', '.join(sorted(accepted | {'limits', 'values'}))}."
            )
    if values is not None and values not in _VALUE_FORMATS:
        raise InvalidArgumentError(
            f"open_kv({shown!r}) takes values='msgpack' or values='v8', not {values!r}."
        )
    requested = requested_limits(limits, f"open_kv({shown!r})")
    engine = factory(*args, **options)
    try:
        return Kv(engine, values=values, limits=requested)
    except BaseException:
        engine.close()  # refused (limits the engine cannot hold): release it
        raise
