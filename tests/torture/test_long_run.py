"""Long run: a million keys and 100k expiring keys, with memory flat while listing and collecting.

Targets: ``kv.list`` (``ListIterator``'s batches over ``SqliteEngine`` and
``MemoryEngine``), ``SqliteEngine.collect_expired`` (the pass the Kv's
background collector runs, in batches of ``COLLECT_BATCH`` keys) and
``SqliteEngine.vacuum`` (the documented maintenance call). Python memory is
measured with ``tracemalloc`` (peak of the measured block) and the process's
resident set size (largest growth seen by a sampler thread); the file size
(database plus WAL) is measured before and after ``vacuum``.

The expiring keys are written to expire in an hour and collected by a Kv whose
clock runs two hours ahead, so the test waits for nothing and no collector
runs before the measured pass.
"""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

import kvmodel as km
from kvmodel.engines.sqlite import SqliteEngine
from kvmodel.keys import encode_key

from ._workers import LONG_TIMEOUT

BATCH = 1000
"""Mutations per commit while filling and deleting (the per-commit limit)."""
PEAK_BOUND = 4 * 2**20
"""Most Python memory a listing or a collection may hold at once.

About ten batches of entries; listing even the quick setting's 20,000 keys
into memory would hold several times more, so a leak fails both settings.
"""
RSS_BOUND = 64 * 2**20
"""Most the resident set may grow while listing or collecting."""
KEPT_EVERY = 10
"""One permanent key in this many survives the deletion before ``vacuum``."""


def sizes(torture_long: bool) -> tuple[int, int]:
    """(permanent keys, expiring keys) of the setting."""
    return (1_000_000, 100_000) if torture_long else (20_000, 2_000)


def rss() -> int | None:
    """The resident set size of this process in bytes (None where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


class MemoryProbe:
    """Measures a block: the tracemalloc peak and the largest growth of the resident set."""

    def __init__(self) -> None:
        self.peak = 0
        self.rss_growth: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._start_rss: int | None = None
        self._max_rss = 0

    def _sample(self) -> None:
        # The resident set has no event to wait on: sample it every 10 ms.
        while True:
            now = rss()
            if now is not None:
                self._max_rss = max(self._max_rss, now)
            if self._stop.wait(0.01):
                return

    def __enter__(self) -> MemoryProbe:
        self._start_rss = rss()
        self._max_rss = self._start_rss or 0
        tracemalloc.start()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        end = rss()
        if self._start_rss is not None and end is not None:
            self.rss_growth = max(self._max_rss, end) - self._start_rss

    def figures(self, what: str) -> str:
        """The measured figures as text for the report."""
        growth = "n/a" if self.rss_growth is None else f"{self.rss_growth / 2**20:.1f}MiB"
        return f"{what}_peak={self.peak / 2**20:.2f}MiB {what}_rss_growth={growth}"

    def check(self, what: str) -> None:
        """Asserts that the block stayed within PEAK_BOUND and RSS_BOUND."""
        assert self.peak < PEAK_BOUND, f"{what}: Python memory peaked at {self.peak} bytes"
        if self.rss_growth is not None:
            assert self.rss_growth < RSS_BOUND, f"{what}: RSS grew by {self.rss_growth} bytes"


def fill(kv: km.Kv, prefix: str, count: int, *, expire_in: float | None = None) -> None:
    """Writes ``count`` keys ``(prefix, i)`` in commits of BATCH sets."""
    for first in range(0, count, BATCH):
        op = kv.atomic()
        for i in range(first, min(first + BATCH, count)):
            op.set((prefix, i), {"n": i, "pad": "x" * 40}, expire_in=expire_in)
        assert op.commit().ok


def list_all(kv: km.Kv, prefix: str) -> int:
    """Lists every key under ``(prefix,)``, checking their order; returns how many there were."""
    count = 0
    previous = b""
    for entry in kv.list(prefix=(prefix,)):
        encoded = encode_key(entry.key)
        assert encoded > previous, f"{entry.key!r} is out of order"
        previous = encoded
        count += 1
    return count


def file_size(db: Path) -> int:
    """Bytes on disk of the database and its WAL."""
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Runs ``fn``; returns its result and the seconds it took."""
    t0 = time.monotonic()
    result = fn()
    return result, time.monotonic() - t0


@pytest.mark.timeout(LONG_TIMEOUT)
def test_sqlite_lists_and_collects_in_flat_memory_and_vacuum_shrinks_the_file(
    tmp_path: Path, torture_long: bool
) -> None:
    """Listing all keys and collecting expired ones hold flat memory; vacuum gives space back."""
    keys, expiring = sizes(torture_long)
    db = tmp_path / "long.db"
    with km.open_kv(db) as kv:

        def fill_both() -> None:
            fill(kv, "k", keys)
            fill(kv, "e", expiring, expire_in=3600)

        _, fill_s = timed(fill_both)
    size_filled = file_size(db)

    with km.open_kv(db) as kv, MemoryProbe() as listing:
        listed, list_s = timed(lambda: list_all(kv, "k"))
    assert listed == keys

    # A clock two hours ahead: every "e" key has expired by it.
    with km.open_kv(db, clock=lambda: time.time() + 7200) as kv:
        assert not list(kv.list(prefix=("e",), limit=1)), "expired keys are still visible"
        with MemoryProbe() as collecting:
            next_deadline, collect_s = timed(kv.engine.collect_expired)
    assert next_deadline is None, "keys with a deadline are left after collecting"
    with km.open_kv(db) as kv:  # the real clock: only deletion can hide the "e" keys now
        assert not list(kv.list(prefix=("e",), limit=1)), "expired keys were not deleted"

        for first in range(0, keys, BATCH):
            op = kv.atomic()
            for i in range(first, min(first + BATCH, keys)):
                if i % KEPT_EVERY:
                    op.delete(("k", i))
            assert op.commit().ok
        size_deleted = file_size(db)
        engine = kv.engine
        assert isinstance(engine, SqliteEngine)
        _, vacuum_s = timed(engine.vacuum)
        size_vacuumed = file_size(db)
        assert list_all(kv, "k") == keys // KEPT_EVERY
        assert kv.get(("k", KEPT_EVERY)).value == {"n": KEPT_EVERY, "pad": "x" * 40}

    print(
        f"\nlong-run[sqlite]: keys={keys} expiring={expiring} fill_s={fill_s:.1f} "
        f"list_s={list_s:.1f} {listing.figures('list')} collect_s={collect_s:.1f} "
        f"{collecting.figures('collect')} size_filled={size_filled / 2**20:.1f}MiB "
        f"size_after_deleting_90%={size_deleted / 2**20:.1f}MiB "
        f"size_after_vacuum={size_vacuumed / 2**20:.1f}MiB vacuum_s={vacuum_s:.1f}"
    )
    listing.check("list")
    collecting.check("collect")
    assert size_vacuumed < size_deleted / 2, "vacuum did not give the deleted keys' space back"


@pytest.mark.timeout(LONG_TIMEOUT)
def test_memory_engine_lists_in_flat_memory(torture_long: bool) -> None:
    """Listing every key of a large in-memory Kv holds only a batch or so at a time."""
    keys, _ = sizes(torture_long)
    with km.open_kv() as kv:
        _, fill_s = timed(lambda: fill(kv, "k", keys))
        with MemoryProbe() as listing:
            listed, list_s = timed(lambda: list_all(kv, "k"))
    assert listed == keys
    print(
        f"\nlong-run[memory]: keys={keys} fill_s={fill_s:.1f} list_s={list_s:.1f} "
        f"{listing.figures('list')}"
    )
    listing.check("list")
