"""Conformance tests of the durable queue: ``enqueue``, ``atomic().enqueue`` and ``listen_queue``.

Every test runs on each engine through the ``kv`` and ``kv_store`` fixtures
(see :mod:`kvmodel.testing`); engine differences are capability flags. Waits
are events (a handler that sets one, a watch on a dead-letter key), and every
wait has a bound, so a broken engine fails a test instead of hanging it.

Ordering is the usual tool to prove that something was *not* delivered: the
queue is FIFO for equal ready times, so once a sentinel enqueued afterwards
has been handled by a single listener, anything enqueued before it that was
going to be delivered already was.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest

from kvmodel import (
    Entry,
    InvalidArgumentError,
    InvalidKeyError,
    Kv,
    KvClosedError,
    KvTypeError,
    KvU64,
)
from kvmodel._values import decode_value
from kvmodel.testing import KvStore

__all__ = [
    "JOIN_TIMEOUT",
    "WAIT_TIMEOUT",
    "Recorder",
    "ShiftableClock",
    "listening",
]

WAIT_TIMEOUT = 10.0
"""Longest wait for an event that should happen (a failing engine fails, never hangs)."""
JOIN_TIMEOUT = 5.0
"""Longest wait for a listener or watcher thread to end after a close."""
CLOSE_BOUND = 2.0
"""How soon listen_queue must return after kv.close() (the listener polls at least every 1 s)."""


class Recorder:
    """A thread-safe list of delivered values that tests can wait on."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.times: list[float] = []
        self._cond = threading.Condition()

    def add(self, value: Any) -> None:
        """Records one delivery and wakes the waiters."""
        with self._cond:
            self.values.append(value)
            self.times.append(time.monotonic())
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = WAIT_TIMEOUT) -> list[Any]:
        """Waits until ``count`` values arrived; fails the test if they do not in time."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.values) >= count, timeout):
                pytest.fail(
                    f"only {len(self.values)} of {count} deliveries arrived within {timeout} s: "
                    f"{self.values!r}"
                )
            return list(self.values)

    def wait_for_value(self, value: Any, timeout: float = WAIT_TIMEOUT) -> list[Any]:
        """Waits until ``value`` was delivered; fails the test if it is not in time."""
        with self._cond:
            if not self._cond.wait_for(lambda: value in self.values, timeout):
                pytest.fail(f"{value!r} was not delivered within {timeout} s: {self.values!r}")
            return list(self.values)


class ShiftableClock:
    """A wall clock that runs with real time, optionally frozen or shifted by an offset.

    ``shifted`` moves the clock for the calling thread only, so a test can
    look at the store "from the past" without confusing background threads
    (the expiry collector, listeners) that read the same clock.
    """

    def __init__(self, start: float | None = None) -> None:
        self._frozen = start
        self._local = threading.local()

    def __call__(self) -> float:
        now = time.time() if self._frozen is None else self._frozen
        return now + float(getattr(self._local, "offset", 0.0))

    def advance(self, seconds: float) -> None:
        """Moves a frozen clock forward (for every thread)."""
        assert self._frozen is not None, "only a frozen clock can be advanced"
        self._frozen += seconds

    @contextmanager
    def shifted(self, seconds: float) -> Iterator[None]:
        """Shifts the clock by ``seconds`` for the calling thread, inside the block."""
        self._local.offset = seconds
        try:
            yield
        finally:
            self._local.offset = 0.0


def require_queue_delivery(target: Kv | KvStore) -> None:
    """Skips the test on an engine whose protocol only enqueues (``queue_delivery``)."""
    caps = target.capabilities if isinstance(target, KvStore) else target.engine.capabilities
    if not caps.queue_delivery:
        pytest.skip("the engine cannot deliver queue messages (capabilities.queue_delivery)")


@contextmanager
def listening(
    kv: Kv, handler: Callable[[Any], object], *, concurrency: int = 1
) -> Iterator[threading.Thread]:
    """Runs ``kv.listen_queue(handler)`` in a thread; on exit closes the Kv and joins it.

    Fails the test if listen_queue does not return within :data:`JOIN_TIMEOUT`
    of the close, or if it raised. Skips on an engine that cannot deliver.
    """
    require_queue_delivery(kv)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            kv.listen_queue(handler, concurrency=concurrency)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="conformance-listener", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        kv.close()
        thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive(), "listen_queue did not return after kv.close()"
    assert not errors, f"listen_queue raised {errors[0]!r}"


def _wait_dead_letters(kv: Kv, keys: Sequence[tuple[Any, ...]]) -> list[Entry[Any]]:
    """Waits (with a watch) until every key holds a value; returns the entries."""
    deadline = time.monotonic() + WAIT_TIMEOUT
    with kv.watch(keys) as watch:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"the dead-letter keys {keys!r} were not written in time")
            entries: list[Entry[Any]] | None = watch.poll(remaining)
            if entries is not None and all(e.versionstamp is not None for e in entries):
                return entries


# ---------------------------------------------------------------------------
# Delivery


QUEUE_VALUES: list[Any] = [
    "text",
    42,
    2**80,
    -1.5,
    None,
    True,
    b"\x00raw bytes",
    KvU64(7),
    [1, "two", [3.0]],
    {"nested": {"list": [1, 2], "bytes": b"\x01"}},
]


def test_enqueued_values_reach_the_handler_unchanged(kv: Kv) -> None:
    """Each enqueued value, of every storable type, reaches the handler as it was enqueued."""
    expected = QUEUE_VALUES
    if not kv.engine.capabilities.msgpack_values:
        # Deno's queue holds V8 values only, where a KvU64 is a plain object.
        expected = [v for v in QUEUE_VALUES if not isinstance(v, KvU64)]
    for value in expected:
        result = kv.enqueue(value)
        assert result.ok
        assert result.versionstamp is not None
    got = Recorder()
    with listening(kv, got.add):
        values = got.wait_for(len(expected))
    assert values == expected


def test_enqueue_is_a_commit_with_a_versionstamp(kv: Kv) -> None:
    """enqueue returns an ok CommitResult whose versionstamp follows the previous commit's."""
    first = kv.set(("a",), 1).versionstamp
    queued = kv.enqueue("m")
    last = kv.set(("a",), 2).versionstamp
    assert queued.ok
    assert first is not None and queued.versionstamp is not None and last is not None
    assert first < queued.versionstamp < last


def test_queued_messages_stay_out_of_the_keyspace(kv: Kv) -> None:
    """Pending messages (ready or delayed) never appear in list(prefix=())."""
    kv.enqueue("now")
    kv.enqueue("later", delay=3600, keys_if_undelivered=[("dead",)])
    kv.atomic().enqueue("also").set(("user",), 1).commit()
    assert [e.key for e in kv.list(prefix=())] == [("user",)]
    assert [e.key for e in kv.list(prefix=(), reverse=True)] == [("user",)]


def test_listen_queue_blocks_until_close_then_returns(kv: Kv) -> None:
    """listen_queue keeps waiting while the queue is empty and returns soon after kv.close()."""
    got = Recorder()
    with listening(kv, got.add) as thread:
        kv.enqueue("first")
        got.wait_for(1)
        # The queue is now empty: the listener must still be waiting for more.
        assert thread.is_alive()
        closed_at = time.monotonic()
    assert time.monotonic() - closed_at < CLOSE_BOUND
    assert got.values == ["first"]


def test_listen_queue_with_concurrency_returns_after_close(kv: Kv) -> None:
    """A listener with concurrency=4 also returns soon after kv.close()."""
    got = Recorder()
    with listening(kv, got.add, concurrency=4):
        kv.enqueue("first")
        got.wait_for(1)
        closed_at = time.monotonic()
    assert time.monotonic() - closed_at < CLOSE_BOUND


def test_queue_calls_on_a_closed_kv_raise(kv: Kv) -> None:
    """After close(), enqueue, atomic().enqueue and listen_queue raise KvClosedError."""
    atomic = kv.atomic().enqueue("pending")
    kv.close()
    with pytest.raises(KvClosedError):
        kv.enqueue("late")
    with pytest.raises(KvClosedError):
        atomic.commit()
    with pytest.raises(KvClosedError):
        kv.listen_queue(lambda value: None)


@pytest.mark.parametrize("concurrency", [0, -1, 1.5, True, "2", None])
def test_listen_queue_rejects_a_bad_concurrency(kv: Kv, concurrency: Any) -> None:
    """concurrency must be a positive int; anything else is InvalidArgumentError at the call."""
    with pytest.raises(InvalidArgumentError):
        kv.listen_queue(lambda value: None, concurrency=concurrency)


def test_listen_queue_rejects_a_handler_that_is_not_a_plain_callable(kv: Kv) -> None:
    """A non-callable or a coroutine function is InvalidArgumentError (async handlers go to aio)."""

    async def coroutine_handler(value: Any) -> None:
        return None

    with pytest.raises(InvalidArgumentError):
        kv.listen_queue("not callable")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        kv.listen_queue(coroutine_handler)


# ---------------------------------------------------------------------------
# Atomic enqueue


def test_atomic_enqueue_is_written_only_when_the_commit_succeeds(kv: Kv) -> None:
    """An enqueue in a commit whose check fails is never delivered; one in a passing commit is."""
    kv.set(("guard",), 1)
    failed = kv.atomic().check((("guard",), None)).enqueue("lost").set(("x",), 1).commit()
    assert not failed.ok
    passed = kv.atomic().check((("missing",), None)).enqueue("kept").set(("y",), 1).commit()
    assert passed.ok
    kv.enqueue("sentinel")
    got = Recorder()
    with listening(kv, got.add):
        got.wait_for_value("sentinel")
        assert kv.get(("x",)).versionstamp is None
        assert kv.get(("y",)).value == 1
    assert got.values == ["kept", "sentinel"]


def test_atomic_enqueue_is_dropped_when_the_commit_raises(kv: Kv) -> None:
    """A commit that raises KvTypeError (sum on a non-KvU64) enqueues nothing."""
    kv.set(("text",), "not a number")
    with pytest.raises(KvTypeError):
        kv.atomic().enqueue("lost").sum(("text",), KvU64(1)).commit()
    kv.enqueue("sentinel")
    got = Recorder()
    with listening(kv, got.add):
        got.wait_for_value("sentinel")
    assert got.values == ["sentinel"]


def test_several_enqueues_in_one_commit_are_all_delivered(kv: Kv) -> None:
    """Every enqueue of one atomic commit is delivered, with the commit's other writes."""
    op = kv.atomic().set(("batch",), "done")
    for i in range(10):
        op.enqueue(i)
    assert op.commit().ok
    got = Recorder()
    with listening(kv, got.add):
        assert got.wait_for(10) == list(range(10))
        assert kv.get(("batch",)).value == "done"


# ---------------------------------------------------------------------------
# Delay and order


def test_a_delayed_message_is_not_delivered_before_its_delay(kv: Kv) -> None:
    """A message enqueued with delay=d reaches the handler no sooner than d seconds later."""
    delay = 0.25
    got = Recorder()
    with listening(kv, got.add):
        enqueued_at = time.monotonic()
        kv.enqueue("delayed", delay=delay)
        kv.enqueue("now")
        got.wait_for(2)
    assert got.values == ["now", "delayed"]
    # Ready times are whole milliseconds of the wall clock: allow 2 ms of rounding.
    assert got.times[1] - enqueued_at >= delay - 0.002


def test_delay_accepts_a_timedelta(kv: Kv) -> None:
    """delay may be a timedelta, with the same meaning as seconds."""
    got = Recorder()
    with listening(kv, got.add):
        enqueued_at = time.monotonic()
        kv.enqueue("delayed", delay=timedelta(milliseconds=150))
        got.wait_for(1)
    assert got.times[0] - enqueued_at >= 0.148


def test_delay_follows_an_injected_clock(kv_store: KvStore) -> None:
    """With an injected clock, a delayed message becomes ready exactly when that clock says so."""
    require_queue_delivery(kv_store)
    # A frozen clock far from real time: any mix-up with time.time() shows.
    clock = ShiftableClock(start=1_000_000_000.0)
    kv = kv_store.open(clock=clock)
    kv.enqueue("in ten seconds", delay=10)
    engine = kv.engine
    assert engine.dequeue_next_message(0) is None
    clock.advance(9.9)
    assert engine.dequeue_next_message(0) is None
    clock.advance(0.1)
    message = engine.dequeue_next_message(0)
    assert message is not None, "the message was not ready once the injected clock passed its delay"
    assert message.attempt == 1
    message.finish(True)
    assert engine.dequeue_next_message(0) is None


def test_messages_of_one_commit_are_delivered_in_enqueue_order(kv: Kv) -> None:
    """50 messages enqueued in one atomic commit (equal ready times) arrive in enqueue order."""
    op = kv.atomic()
    for i in range(50):
        op.enqueue(i)
    op.commit()
    got = Recorder()
    with listening(kv, got.add):
        assert got.wait_for(50) == list(range(50))


def test_messages_enqueued_in_sequence_are_delivered_in_order(kv: Kv) -> None:
    """50 messages enqueued one commit at a time arrive in enqueue order at one listener."""
    for i in range(50):
        kv.enqueue(i)
    got = Recorder()
    with listening(kv, got.add):
        assert got.wait_for(50) == list(range(50))


def test_equal_ready_times_from_different_delays_keep_enqueue_order(kv_store: KvStore) -> None:
    """Messages whose delays make their ready times equal are delivered in enqueue order."""
    require_queue_delivery(kv_store)
    clock = ShiftableClock(start=1_000_000_000.0)
    kv = kv_store.open(clock=clock)
    kv.enqueue("b", delay=5)
    clock.advance(2)
    kv.enqueue("c", delay=3)
    clock.advance(1)
    kv.enqueue("d", delay=2)
    kv.enqueue("a-earlier", delay=1)
    clock.advance(10)
    engine = kv.engine
    order = []
    for _ in range(4):
        message = engine.dequeue_next_message(0)
        assert message is not None
        order.append(decode_value(message.payload, message.encoding))
        message.finish(True)
    assert order == ["a-earlier", "b", "c", "d"]


# ---------------------------------------------------------------------------
# Retries and dead letters


def test_a_failing_handler_is_retried_once_per_backoff_interval(kv: Kv) -> None:
    """An always-raising handler runs 1 + len(schedule) times, then its value is dead-lettered."""
    schedule = [0.01, 0.01, 0.02]
    dead = [("dead", 1), ("dead", 2), ("other", "dead")]
    attempts = Recorder()

    def handler(value: Any) -> None:
        attempts.add(value)
        raise RuntimeError("handler failure for the test")

    with listening(kv, handler):
        enqueued_at = time.monotonic()
        kv.enqueue({"job": 7}, keys_if_undelivered=dead, backoff_schedule=schedule)
        entries = _wait_dead_letters(kv, dead)
        # The message was dropped: a sentinel enqueued now is the next delivery,
        # so by the time it arrives no fifth attempt can still be pending.
        kv.enqueue("sentinel")
        attempts.wait_for_value("sentinel")
    assert attempts.values == [{"job": 7}] * 4 + ["sentinel"]
    assert attempts.times[3] - enqueued_at >= sum(schedule) - 0.003
    assert [e.value for e in entries] == [{"job": 7}] * 3
    assert len({e.versionstamp for e in entries}) == 1


def test_dead_letter_keys_are_written_once_in_one_commit(kv: Kv) -> None:
    """The dead-letter write is one commit: a watch sees the keys change together, once."""
    dead = [("dl", "a"), ("dl", "b")]
    with kv.watch(dead) as watch:
        assert [e.versionstamp for e in next(watch)] == [None, None]
        attempts = Recorder()

        def handler(value: Any) -> None:
            attempts.add(value)
            raise ValueError("always fails")

        with listening(kv, handler):
            kv.enqueue("payload", keys_if_undelivered=dead, backoff_schedule=[0.01])
            changed = watch.poll(WAIT_TIMEOUT)
            assert changed is not None
            kv.enqueue("sentinel")
            attempts.wait_for_value("sentinel")
            # Nothing else writes these keys: a second write would show here.
            assert watch.poll(0.05) is None
    assert [e.value for e in changed] == ["payload", "payload"]
    stamps = {e.versionstamp for e in changed}
    assert len(stamps) == 1 and None not in stamps
    assert attempts.values == ["payload", "payload", "sentinel"]


def test_no_dead_letter_when_a_retry_succeeds(kv: Kv) -> None:
    """A handler that fails twice and then succeeds leaves keys_if_undelivered untouched."""
    attempts = Recorder()

    def handler(value: Any) -> None:
        attempts.add(value)
        if value == "flaky" and attempts.values.count("flaky") < 3:
            raise RuntimeError("transient failure")

    with listening(kv, handler):
        kv.enqueue(
            "flaky", keys_if_undelivered=[("dead",)], backoff_schedule=[0.01, 0.01, 0.01, 0.01]
        )
        attempts.wait_for(3)
        kv.enqueue("sentinel")
        attempts.wait_for_value("sentinel")
        assert kv.get(("dead",)).versionstamp is None
    assert attempts.values == ["flaky", "flaky", "flaky", "sentinel"]


def test_an_empty_backoff_schedule_dead_letters_after_one_failure(kv: Kv) -> None:
    """backoff_schedule=[] means no retry: one failed attempt, then the dead-letter write."""
    attempts = Recorder()

    def handler(value: Any) -> None:
        attempts.add(value)
        if value != "sentinel":
            raise RuntimeError("fails")

    with listening(kv, handler):
        kv.enqueue("once", keys_if_undelivered=[("dead",)], backoff_schedule=[])
        entries = _wait_dead_letters(kv, [("dead",)])
        kv.enqueue("sentinel")
        attempts.wait_for_value("sentinel")
    assert attempts.values == ["once", "sentinel"]
    assert entries[0].value == "once"


def test_a_failing_message_without_dead_letter_keys_is_dropped(kv: Kv) -> None:
    """After the schedule is exhausted a message without keys_if_undelivered is simply dropped."""
    attempts = Recorder()

    def handler(value: Any) -> None:
        attempts.add(value)
        if value != "sentinel":
            raise RuntimeError("fails")

    with listening(kv, handler):
        kv.enqueue("doomed", backoff_schedule=[0.01])
        attempts.wait_for(2)
        kv.enqueue("sentinel")
        attempts.wait_for_value("sentinel")
        assert list(kv.list(prefix=())) == []
    assert attempts.values == ["doomed", "doomed", "sentinel"]


def test_handler_exceptions_are_logged(kv: Kv, caplog: pytest.LogCaptureFixture) -> None:
    """A handler's exception is logged on the "kvmodel.queue" logger with its traceback."""
    caplog.set_level(logging.WARNING, logger="kvmodel.queue")
    attempts = Recorder()

    def handler(value: Any) -> None:
        attempts.add(value)
        if len(attempts.values) == 1:
            raise ValueError("boom-8317")

    with listening(kv, handler):
        kv.enqueue("job", backoff_schedule=[0.01])
        attempts.wait_for(2)
    failures = [
        r
        for r in caplog.records
        if r.name == "kvmodel.queue" and r.exc_info and isinstance(r.exc_info[1], ValueError)
    ]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]
    record = failures[0]
    assert record.levelno >= logging.ERROR
    assert "boom-8317" in str(record.exc_info[1])  # type: ignore[index]
    assert "1" in record.getMessage()  # names the attempt


# ---------------------------------------------------------------------------
# Validation of the queue options


BAD_QUEUE_OPTIONS: dict[str, dict[str, Any]] = {
    "6 intervals": {"backoff_schedule": [0.1] * 6},
    "interval over an hour": {"backoff_schedule": [3600.001]},
    "timedelta interval over an hour": {"backoff_schedule": [timedelta(hours=1, seconds=1)]},
    "negative interval": {"backoff_schedule": [1, -0.5]},
    "NaN interval": {"backoff_schedule": [math.nan]},
    "infinite interval": {"backoff_schedule": [math.inf]},
    "str interval": {"backoff_schedule": ["1"]},
    "bool interval": {"backoff_schedule": [True]},
    "None interval": {"backoff_schedule": [None]},
    "schedule is a str": {"backoff_schedule": "1"},
    "schedule is a number": {"backoff_schedule": 1},
    "delay over 30 days": {"delay": 30 * 24 * 3600 + 1},
    "timedelta delay over 30 days": {"delay": timedelta(days=30, seconds=1)},
    "negative delay": {"delay": -1},
    "negative timedelta delay": {"delay": timedelta(seconds=-1)},
    "NaN delay": {"delay": math.nan},
    "infinite delay": {"delay": math.inf},
    "str delay": {"delay": "5"},
    "bool delay": {"delay": True},
    "keys_if_undelivered is a str": {"keys_if_undelivered": "dead"},
}


@pytest.mark.parametrize("options", BAD_QUEUE_OPTIONS.values(), ids=list(BAD_QUEUE_OPTIONS))
def test_bad_queue_options_raise_and_enqueue_nothing(kv: Kv, options: dict[str, Any]) -> None:
    """A bad delay, backoff schedule or key list is InvalidArgumentError; nothing is queued."""
    with pytest.raises(InvalidArgumentError) as raised:
        kv.enqueue("bad", **options)
    assert isinstance(raised.value, ValueError)
    # The builder rejects the enqueue at the call, leaving the operation usable.
    op = kv.atomic().set(("ok",), 1)
    with pytest.raises(InvalidArgumentError):
        op.enqueue("bad in atomic", **options)
    assert op.commit().ok
    kv.enqueue("sentinel")
    got = Recorder()
    with listening(kv, got.add):
        got.wait_for_value("sentinel")
    assert got.values == ["sentinel"]


def test_a_bad_dead_letter_key_raises_and_enqueues_nothing(kv: Kv) -> None:
    """An invalid key in keys_if_undelivered raises InvalidKeyError; nothing is queued."""
    with pytest.raises(InvalidKeyError):
        kv.enqueue("bad", keys_if_undelivered=[("ok",), ("bad", 3j)])
    with pytest.raises(InvalidKeyError):
        kv.enqueue("bad", keys_if_undelivered=[()])
    kv.enqueue("sentinel")
    got = Recorder()
    with listening(kv, got.add):
        got.wait_for_value("sentinel")
    assert got.values == ["sentinel"]


def test_queue_limits_are_inclusive(kv: Kv) -> None:
    """Exactly 5 intervals of exactly 1 hour and a delay of exactly 30 days are accepted."""
    assert kv.enqueue("max", delay=30 * 24 * 3600, backoff_schedule=[3600] * 5).ok
    assert kv.enqueue("max", delay=timedelta(days=30), backoff_schedule=[timedelta(hours=1)]).ok
    assert kv.atomic().enqueue("zero", delay=0, backoff_schedule=[0]).commit().ok


# ---------------------------------------------------------------------------
# Several listeners


def _ids_handler(
    counts: Counter[int], lock: threading.Lock, done: threading.Event, total: int
) -> Callable[[Any], None]:
    """A handler counting deliveries per message id; sets ``done`` once all ids arrived."""

    def handler(value: Any) -> None:
        with lock:
            counts[value] += 1
            if len(counts) == total:
                done.set()

    return handler


def test_listener_threads_share_messages_each_delivered_once(kv_store: KvStore) -> None:
    """Three listeners (one Kv each, on one store) share 200 messages; each is handled once."""
    total = 200
    counts: Counter[int] = Counter()
    lock = threading.Lock()
    done = threading.Event()
    handler = _ids_handler(counts, lock, done, total)
    writer = kv_store.open()
    kvs = [kv_store.open() for _ in range(3)]
    with listening(kvs[0], handler), listening(kvs[1], handler), listening(kvs[2], handler):
        for start in range(0, total, 50):
            op = writer.atomic()
            for i in range(start, start + 25):
                op.enqueue(i)
            op.commit()
            for i in range(start + 25, start + 50):
                writer.enqueue(i)
        assert done.wait(WAIT_TIMEOUT), f"only {len(counts)} of {total} messages delivered"
    assert sorted(counts) == list(range(total))
    assert set(counts.values()) == {1}, {k: n for k, n in counts.items() if n != 1}


def test_concurrency_shares_messages_each_delivered_once(kv: Kv) -> None:
    """One listen_queue with concurrency=4 handles 200 messages, each exactly once."""
    total = 200
    counts: Counter[int] = Counter()
    lock = threading.Lock()
    done = threading.Event()
    handler = _ids_handler(counts, lock, done, total)
    with listening(kv, handler, concurrency=4):
        for i in range(total):
            kv.enqueue(i)
        assert done.wait(WAIT_TIMEOUT), f"only {len(counts)} of {total} messages delivered"
    assert sorted(counts) == list(range(total))
    assert set(counts.values()) == {1}


def test_concurrency_runs_handlers_at_the_same_time(kv: Kv) -> None:
    """With concurrency=4, four handlers run at once (they meet at a barrier)."""
    barrier = threading.Barrier(4, timeout=WAIT_TIMEOUT)
    got = Recorder()

    def handler(value: Any) -> None:
        barrier.wait()  # BrokenBarrierError (a failure, logged) unless 4 run together
        got.add(value)

    for i in range(4):
        kv.enqueue(i)
    with listening(kv, handler, concurrency=4):
        assert sorted(got.wait_for(4)) == [0, 1, 2, 3]


def test_concurrency_is_a_limit(kv: Kv) -> None:
    """With concurrency=2, never more than two handlers run at once."""
    running = 0
    peak = 0
    lock = threading.Lock()
    got = Recorder()

    def handler(value: Any) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.005)
        with lock:
            running -= 1
        got.add(value)

    for i in range(20):
        kv.enqueue(i)
    with listening(kv, handler, concurrency=2):
        got.wait_for(20)
    assert peak <= 2


# ---------------------------------------------------------------------------
# Durability and leases


def test_messages_survive_reopen(kv_store: KvStore) -> None:
    """Ready and delayed messages of a durable store are delivered after it is reopened."""
    if not kv_store.capabilities.durable:
        pytest.skip("engine is not durable")
    kv = kv_store.open()
    enqueued_at = time.monotonic()
    kv.enqueue("delayed", delay=0.3)
    kv.enqueue("ready", keys_if_undelivered=[("dead",)], backoff_schedule=[0.01])
    kv.close()
    reopened = kv_store.open()
    got = Recorder()
    with listening(reopened, got.add):
        got.wait_for(2)
    assert got.values == ["ready", "delayed"]
    assert got.times[1] - enqueued_at >= 0.298


def test_retry_state_survives_reopen(kv_store: KvStore) -> None:
    """A message that failed before a reopen keeps its attempt count and remaining schedule."""
    require_queue_delivery(kv_store)
    if not kv_store.capabilities.durable:
        pytest.skip("engine is not durable")
    kv = kv_store.open()
    kv.enqueue("job", keys_if_undelivered=[("dead",)], backoff_schedule=[0.01])
    message = kv.engine.dequeue_next_message(WAIT_TIMEOUT)
    assert message is not None and message.attempt == 1
    message.finish(False)
    kv.close()
    reopened = kv_store.open()
    message = reopened.engine.dequeue_next_message(WAIT_TIMEOUT)
    assert message is not None and message.attempt == 2
    message.finish(False)
    assert reopened.get(("dead",)).value == "job"


def _lease_bound(kv: Kv, asked: float) -> float:
    """How long a lease may really last: engines may round a short lease up."""
    return max(asked, float(getattr(kv.engine, "lease_timeout", asked)))


def test_a_message_whose_lease_expired_is_delivered_again(kv_store: KvStore) -> None:
    """A message taken and never finished is delivered again after the lease timeout."""
    require_queue_delivery(kv_store)
    kv = kv_store.open(lease_timeout=0.2)
    lease = _lease_bound(kv, 0.2)
    kv.enqueue("orphan", keys_if_undelivered=[("dead",)])
    taken_at = time.monotonic()
    abandoned = kv.engine.dequeue_next_message(WAIT_TIMEOUT)
    assert abandoned is not None and abandoned.attempt == 1
    # Leased: nobody else gets it while the lease lasts.
    assert kv.engine.dequeue_next_message(0.05) is None
    again = kv.engine.dequeue_next_message(lease + WAIT_TIMEOUT)
    assert again is not None, "the message was not delivered again after its lease expired"
    assert time.monotonic() - taken_at >= 0.19
    # The abandoned delivery counts as an attempt, as a failed one would.
    assert again.attempt == 2
    # Settling through the stale handle must not touch the message the new holder owns.
    abandoned.finish(False)
    again.finish(True)
    assert kv.engine.dequeue_next_message(0.05) is None
    assert kv.get(("dead",)).versionstamp is None


def test_a_listener_gets_a_message_whose_lease_expired(kv_store: KvStore) -> None:
    """A listener receives a message another consumer leased and abandoned."""
    require_queue_delivery(kv_store)
    kv = kv_store.open(lease_timeout=0.2)
    kv.enqueue("orphan")
    abandoned = kv.engine.dequeue_next_message(WAIT_TIMEOUT)
    assert abandoned is not None
    got = Recorder()
    with listening(kv, got.add):
        got.wait_for(1, timeout=_lease_bound(kv, 0.2) + WAIT_TIMEOUT)
    assert got.values == ["orphan"]


def test_a_long_handler_keeps_its_lease(kv_store: KvStore) -> None:
    """A handler running longer than the lease timeout is not delivered to a second listener."""
    require_queue_delivery(kv_store)
    kv = kv_store.open(lease_timeout=0.2)
    other = kv_store.open()
    lease = _lease_bound(kv, 0.2)
    got = Recorder()
    started = threading.Event()
    finished = threading.Event()

    def slow(value: Any) -> None:
        got.add(value)
        started.set()
        # Twice the lease: unless the listener renews it, the message is free
        # for the other listener halfway through.
        time.sleep(2 * lease)
        finished.set()

    kv.enqueue("long job")
    with listening(kv, slow):
        assert started.wait(WAIT_TIMEOUT)
        with listening(other, got.add):
            kv.enqueue("sentinel")  # shows that the other listener is taking messages
            got.wait_for_value("sentinel")
            assert finished.wait(WAIT_TIMEOUT)
    assert got.values.count("long job") == 1, got.values


def _abandon(kv: Kv, lease: float) -> int:
    """Takes the next message and never settles it, as a listener killed by its handler.

    Returns the attempt it was delivered as. Waits up to a lease for it, since a
    message whose earlier lease just ran out becomes ready after that.
    """
    require_queue_delivery(kv)
    message = kv.engine.dequeue_next_message(lease + WAIT_TIMEOUT)
    assert message is not None, "the message was not delivered"
    return message.attempt


def test_an_expired_lease_counts_as_a_failed_attempt(
    kv_store: KvStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A message whose deliveries are all abandoned follows its schedule and is dead-lettered.

    Each expired lease is one failed attempt (as in Deno's queue_cleanup), so
    a message that kills every listener ends in keys_if_undelivered after
    1 + len(backoff_schedule) deliveries instead of coming back for ever, and
    giving up on it is logged at WARNING with the keys written.
    """
    require_queue_delivery(kv_store)
    caplog.set_level(logging.WARNING, logger="kvmodel.queue")
    kv = kv_store.open(lease_timeout=0.2)
    lease = _lease_bound(kv, 0.2)
    dead = [("poison", "dead")]
    kv.enqueue("poison", keys_if_undelivered=dead, backoff_schedule=[0.01])
    assert _abandon(kv, lease) == 1
    assert _abandon(kv, lease) == 2  # the first lease ran out: the one retry
    got = Recorder()
    with listening(kv, got.add):
        entries = _wait_dead_letters(kv, dead)
        kv.enqueue("sentinel")
        got.wait_for_value("sentinel")
    # The listener never saw a third delivery: the schedule was used up.
    assert got.values == ["sentinel"]
    assert entries[0].value == "poison"
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "kvmodel.queue" and r.levelno == logging.WARNING
    ]
    assert any("lease expired" in m and "('poison', 'dead')" in m for m in warnings), warnings


def _wait_for_log(caplog: pytest.LogCaptureFixture, text: str) -> str:
    """Waits (bounded) until a "kvmodel.queue" WARNING containing ``text`` is logged."""
    deadline = time.monotonic() + WAIT_TIMEOUT
    while time.monotonic() < deadline:
        for record in list(caplog.records):
            if record.name == "kvmodel.queue" and text in record.getMessage():
                return record.getMessage()
        time.sleep(0.01)
    pytest.fail(f"no queue warning containing {text!r} within {WAIT_TIMEOUT} s")


def test_an_abandoned_message_without_dead_letter_keys_is_dropped(
    kv_store: KvStore, caplog: pytest.LogCaptureFixture
) -> None:
    """With no retry left, an expired lease drops a message that has no keys_if_undelivered."""
    require_queue_delivery(kv_store)
    caplog.set_level(logging.WARNING, logger="kvmodel.queue")
    kv = kv_store.open(lease_timeout=0.2)
    lease = _lease_bound(kv, 0.2)
    kv.enqueue("poison", backoff_schedule=[])
    assert _abandon(kv, lease) == 1
    got = Recorder()
    with listening(kv, got.add):
        message = _wait_for_log(caplog, "dropped")
        kv.enqueue("sentinel")
        got.wait_for_value("sentinel")
        assert list(kv.list(prefix=())) == []
    assert got.values == ["sentinel"]
    assert "1 attempt" in message and "lease expired" in message


def test_giving_up_on_a_failing_message_is_logged(kv: Kv, caplog: pytest.LogCaptureFixture) -> None:
    """Dead-lettering and dropping after the last failed attempt are WARNINGs naming the keys."""
    caplog.set_level(logging.WARNING, logger="kvmodel.queue")
    attempts = Recorder()

    def handler(value: Any) -> None:
        attempts.add(value)
        if value != "sentinel":
            raise RuntimeError("fails")

    with listening(kv, handler):
        kv.enqueue("lettered", keys_if_undelivered=[("dl", 1), ("dl", 2)], backoff_schedule=[])
        kv.enqueue("dropped", backoff_schedule=[])
        _wait_dead_letters(kv, [("dl", 1), ("dl", 2)])
        kv.enqueue("sentinel")
        attempts.wait_for_value("sentinel")
    given_up = [
        r.getMessage()
        for r in caplog.records
        if r.name == "kvmodel.queue" and r.levelno == logging.WARNING and not r.exc_info
    ]
    assert len(given_up) == 2, given_up
    assert "('dl', 1)" in given_up[0] and "('dl', 2)" in given_up[0]
    assert "dropped" in given_up[1]
    assert all("handler failed" in m and "1 attempt" in m for m in given_up)


__all__ += [name for name in dir() if name.startswith("test_")]
