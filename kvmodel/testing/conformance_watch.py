"""Conformance tests of ``kv.watch`` and of the background expiry collector.

Every test runs on each engine through the ``kv`` and ``kv_store`` fixtures.
A watch may coalesce intermediate states, so the tests wait for each item
(``WatchIterator.poll`` with a bound) before making the next write; absence of
an item is checked with a short bounded poll, the only way to observe it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from kvmodel import (
    Entry,
    InvalidArgumentError,
    InvalidKeyError,
    Kv,
    KvClosedError,
    KvU64,
    LimitExceededError,
    WatchIterator,
)
from kvmodel.testing import KvStore
from kvmodel.testing.conformance_queue import (
    JOIN_TIMEOUT,
    WAIT_TIMEOUT,
    ShiftableClock,
    require_queue_delivery,
)
from kvmodel.testing.conformance_support import wait_until

__all__: list[str] = []

QUIET = 0.05
"""How long a watch is polled to show that no item comes (real time, kept short)."""


def _next(watch: WatchIterator, timeout: float = WAIT_TIMEOUT) -> list[Entry[Any]]:
    """The watch's next item; fails the test if none comes within ``timeout``."""
    entries: list[Entry[Any]] | None = watch.poll(timeout)
    if entries is None:
        pytest.fail(f"the watch emitted nothing within {timeout} s")
    return entries


def _values(entries: list[Entry[Any]]) -> list[Any]:
    return [e.value for e in entries]


def _until(watch: WatchIterator, predicate: Any, timeout: float = WAIT_TIMEOUT) -> list[Entry[Any]]:
    """Reads items until one satisfies ``predicate`` (earlier states may coalesce)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail("the watch never emitted the expected state")
        entries = watch.poll(remaining)
        if entries is not None and predicate(entries):
            return entries


# ---------------------------------------------------------------------------
# Items


def test_first_item_holds_the_current_entries(kv: Kv) -> None:
    """The first item has one Entry per key, in order; a missing key has value and stamp None."""
    stamp = kv.set(("a",), {"v": 1}).versionstamp
    kv.set(("unwatched",), 0)
    with kv.watch([("missing",), ("a",), ["b", 2]]) as watch:
        first = _next(watch, 0.5)
    assert first == [
        Entry(("missing",), None, None),
        Entry(("a",), {"v": 1}, stamp),
        Entry(("b", 2), None, None),
    ]


def test_an_item_follows_each_change_of_a_watched_key(kv: Kv) -> None:
    """set, delete, an atomic commit, sum and a versionstamped set each emit an item."""
    a, b = ("w", "a"), ("w", "b")
    with kv.watch([a, b]) as watch:
        assert _values(_next(watch)) == [None, None]

        stamp = kv.set(a, 1).versionstamp
        item = _next(watch)
        assert _values(item) == [1, None]
        assert item[0].versionstamp == stamp

        kv.set(a, 1)  # same value, new versionstamp: still a change
        item2 = _next(watch)
        assert _values(item2) == [1, None]
        assert item2[0].versionstamp != stamp

        result = kv.atomic().set(b, "x").delete(a).commit()
        assert _next(watch) == [Entry(a, None, None), Entry(b, "x", result.versionstamp)]

        kv.atomic().sum(a, KvU64(5)).commit()
        assert _values(_next(watch)) == [KvU64(5), "x"]

        kv.delete(b)
        assert _values(_next(watch)) == [KvU64(5), None]


def test_deleting_a_missing_watched_key_emits_nothing(kv: Kv) -> None:
    """A delete of a key that is already absent leaves its versionstamp None: no item."""
    with kv.watch([("gone",)]) as watch:
        _next(watch)
        kv.delete(("gone",))
        assert watch.poll(QUIET) is None


def test_unrelated_writes_do_not_emit(kv: Kv) -> None:
    """Writes to other keys (even sharing a prefix) emit nothing with raw=False."""
    with kv.watch([("w",)]) as watch:
        _next(watch)
        kv.set(("w", "child"), 1)
        kv.set(("other",), 1)
        kv.atomic().set(("x",), 1).delete(("y",)).commit()
        kv.enqueue("not a key")
        assert watch.poll(QUIET) is None
        kv.set(("w",), "now")
        assert _values(_next(watch)) == ["now"]


def test_raw_watch_reports_every_change_and_only_true_states(kv: Kv) -> None:
    """With raw=True every item holds the current entries; changes are never missed."""
    with kv.watch([("w",)], raw=True) as watch:
        assert _values(_next(watch)) == [None]
        kv.set(("unrelated",), 1)  # may or may not emit an item
        stamp = kv.set(("w",), 1).versionstamp
        item = _until(watch, lambda e: e[0].versionstamp is not None)
        assert item == [Entry(("w",), 1, stamp)]


def test_fast_writes_coalesce_to_the_latest_state(kv: Kv) -> None:
    """After many quick writes the watch always reaches the final state, in stamp order."""
    with kv.watch([("n",)]) as watch:
        _next(watch)
        last = None
        for i in range(100):
            last = kv.set(("n",), i).versionstamp
        stamps: list[str] = []
        while True:
            item = _next(watch)
            stamps.append(item[0].versionstamp or "")
            if item[0].versionstamp == last:
                assert item[0].value == 99
                break
    assert stamps == sorted(stamps)


def test_writes_from_another_kv_on_the_store_emit(kv_store: KvStore) -> None:
    """A watch sees commits made through another Kv on the same store."""
    watcher = kv_store.open()
    writer = kv_store.open()
    with watcher.watch([("shared",)]) as watch:
        _next(watch)
        stamp = writer.set(("shared",), "hello").versionstamp
        assert _next(watch) == [Entry(("shared",), "hello", stamp)]


def test_a_dead_letter_write_emits(kv: Kv) -> None:
    """The queue's dead-letter write is a change like any other commit."""
    require_queue_delivery(kv)
    with kv.watch([("dead",)]) as watch:
        _next(watch)
        kv.enqueue("m", keys_if_undelivered=[("dead",)], backoff_schedule=[])
        message = kv.engine.dequeue_next_message(WAIT_TIMEOUT)
        assert message is not None
        message.finish(False)
        assert _values(_next(watch)) == ["m"]


# ---------------------------------------------------------------------------
# Expiry


def test_an_expiring_key_emits_when_it_expires(kv: Kv) -> None:
    """A watched key emits an absent entry when it expires, not before."""
    with kv.watch([("e",), ("keep",)]) as watch:
        _next(watch)
        written_at = time.monotonic()
        kv.set(("e",), "soon gone", expire_in=0.2)
        kv.set(("keep",), 1)
        item = _until(watch, lambda e: e[1].value == 1)
        if item[0].value is not None:
            item = _next(watch)
        assert item[0] == Entry(("e",), None, None)
        # Deadlines are whole milliseconds of the wall clock: 2 ms of rounding.
        assert time.monotonic() - written_at >= 0.198


def test_the_collector_deletes_expired_keys_in_the_background(kv_store: KvStore) -> None:
    """An expired key vanishes from reads at once and from the engine's storage soon after."""
    clock = ShiftableClock()
    kv = kv_store.open(clock=clock)
    kv.set(("e",), "expiring", expire_in=0.1)
    kv.set(("keep",), 1)

    def stored() -> bool:
        # Seen from an hour ago, a key that is still stored has not expired yet.
        with clock.shifted(-3600):
            return kv.get(("e",)).versionstamp is not None

    assert stored()
    assert wait_until(lambda: kv.get(("e",)).versionstamp is None, timeout=WAIT_TIMEOUT)
    assert [e.key for e in kv.list(prefix=())] == [("keep",)]
    # Nobody calls collect_expired here: only the background collector can delete it.
    assert wait_until(lambda: not stored(), timeout=WAIT_TIMEOUT), "the expired key is still stored"
    assert kv.engine.collect_expired() is None


def test_a_reopened_store_collects_keys_an_earlier_kv_left_expiring(kv_store: KvStore) -> None:
    """A Kv opened on a durable store deletes expired keys it did not write itself."""
    if not kv_store.capabilities.durable:
        pytest.skip("engine is not durable")
    clock = ShiftableClock()
    writer = kv_store.open(clock=clock)
    writer.set(("e",), "expiring", expire_in=0.1)
    writer.close()
    kv = kv_store.open(clock=clock)

    def stored() -> bool:
        with clock.shifted(-3600):
            return kv.get(("e",)).versionstamp is not None

    assert wait_until(lambda: not stored(), timeout=WAIT_TIMEOUT), "the expired key is still stored"


def test_an_expiry_written_through_another_kv_wakes_a_watcher(kv_store: KvStore) -> None:
    """A watcher on one Kv sees a key expire that another Kv of the store wrote."""
    writer = kv_store.open()
    watcher = kv_store.open()
    writer.set(("e",), 1, expire_in=0.15)
    with watcher.watch([("e",)]) as watch:
        assert _values(_next(watch)) == [1]
        assert _values(_next(watch)) == [None]


def test_set_without_expiry_cancels_the_expiry_for_watchers(kv: Kv) -> None:
    """A key re-set without expire_in never emits an expiry."""
    kv.set(("e",), 1, expire_in=0.1)
    with kv.watch([("e",)]) as watch:
        _next(watch)
        stamp = kv.set(("e",), 2).versionstamp
        assert _next(watch) == [Entry(("e",), 2, stamp)]
        assert watch.poll(0.15) is None
        assert kv.get(("e",)).value == 2


# ---------------------------------------------------------------------------
# Arguments and limits


def test_more_than_ten_keys_raise_at_the_call(kv: Kv) -> None:
    """watch with 11 keys raises LimitExceededError at once; 10 keys are fine."""
    with pytest.raises(LimitExceededError) as raised:
        kv.watch([("k", i) for i in range(11)])
    assert (raised.value.limit, raised.value.actual) == (10, 11)
    with kv.watch([("k", i) for i in range(10)]) as watch:
        assert len(_next(watch)) == 10


def test_bad_watch_arguments_raise(kv: Kv) -> None:
    """A bad key is InvalidKeyError, a non-sequence InvalidArgumentError, a non-bool raw too."""
    with pytest.raises(InvalidKeyError):
        kv.watch([("ok",), ("bad", 1j)])
    with pytest.raises(InvalidArgumentError):
        kv.watch("abc")
    with pytest.raises(InvalidArgumentError):
        kv.watch([("ok",)], raw="yes")  # type: ignore[arg-type]


def test_an_empty_watch_yields_one_empty_item(kv: Kv) -> None:
    """watch([]) is allowed: its first item is an empty list."""
    with kv.watch([]) as watch:
        assert _next(watch, 0.5) == []


def test_watch_on_a_closed_kv_raises(kv: Kv) -> None:
    """watch after close() raises KvClosedError."""
    kv.close()
    with pytest.raises(KvClosedError):
        kv.watch([("a",)])


# ---------------------------------------------------------------------------
# Ending a watch


def _iterate_in_thread(watch: WatchIterator) -> tuple[threading.Thread, list[Any], threading.Event]:
    """Runs ``for item in watch`` in a thread; returns it, the items and a first-item event."""
    items: list[Any] = []
    first = threading.Event()

    def run() -> None:
        try:
            for item in watch:
                items.append(item)
                first.set()
        except BaseException as exc:
            items.append(exc)
            first.set()

    thread = threading.Thread(target=run, name="conformance-watcher", daemon=True)
    thread.start()
    return thread, items, first


def test_close_from_another_thread_ends_a_blocked_iteration(kv: Kv) -> None:
    """WatchIterator.close() wakes a for-loop blocked in another thread, which ends cleanly."""
    watch = kv.watch([("a",)])
    thread, items, first = _iterate_in_thread(watch)
    assert first.wait(WAIT_TIMEOUT)
    closed_at = time.monotonic()
    watch.close()
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive(), "the watch kept blocking after close()"
    assert time.monotonic() - closed_at < 1.0
    assert len(items) == 1 and isinstance(items[0], list)
    kv.set(("a",), 1)  # the Kv is still usable
    with pytest.raises(StopIteration):
        next(watch)


def test_closing_the_kv_ends_a_blocked_iteration(kv: Kv) -> None:
    """kv.close() ends a watch blocked in another thread, without an exception."""
    watch = kv.watch([("a",)])
    thread, items, first = _iterate_in_thread(watch)
    assert first.wait(WAIT_TIMEOUT)
    closed_at = time.monotonic()
    kv.close()
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive(), "the watch kept blocking after kv.close()"
    assert time.monotonic() - closed_at < 1.0
    assert len(items) == 1 and isinstance(items[0], list)
    with pytest.raises(StopIteration):
        next(watch)
    with pytest.raises(StopIteration):
        watch.poll(0)


def test_the_context_manager_closes_the_watch(kv: Kv) -> None:
    """Leaving ``with kv.watch(...)`` closes it; later next() raises StopIteration."""
    with kv.watch([("a",)]) as watch:
        assert isinstance(watch, WatchIterator)
        _next(watch)
    kv.set(("a",), 1)
    with pytest.raises(StopIteration):
        next(watch)


def test_closing_a_watch_twice_is_harmless(kv: Kv) -> None:
    """close() on a closed watch, or after kv.close(), does nothing."""
    watch = kv.watch([("a",)])
    watch.close()
    watch.close()
    other = kv.watch([("b",)])
    kv.close()
    other.close()


__all__ += [name for name in dir() if name.startswith("test_")]
