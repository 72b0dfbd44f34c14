"""Fair writers: 4 processes hammering one SQLite file with commits all make progress.

Target: ``SqliteEngine``'s lock waiting (``_retry_busy``). SQLite's own busy
handler sleeps longer and longer while the writer holding the lock takes it
again right after each commit; one process then made 39,885 commits while
another made 1 and gave up with "stayed locked". Here every process commits
sums as fast as it can, with a short ``busy_timeout``, for the same wall-clock
time: every process's commit count must be within 5x of every other's, no
commit may raise, and the total must equal the acknowledged commits. The
counts, the longest wait of a commit and the throughput are printed.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

import kvmodel as km

from ._workers import LONG_TIMEOUT

PROCESSES = 4
BUSY_TIMEOUT = 5.0
"""Seconds; short next to the default 30, so a starved writer would fail here."""
KEY = ("total",)


def _hammer(path: str, seconds: float, start: Any, results: Any) -> None:
    """Commits sums until ``seconds`` after the common start; reports counts and longest wait."""
    commits = 0
    errors: list[str] = []
    longest = 0.0
    with km.open_kv(path, busy_timeout=BUSY_TIMEOUT) as kv:
        start.wait(60)
        end = time.monotonic() + seconds
        while True:
            began = time.monotonic()
            if began >= end:
                break
            try:
                if kv.atomic().sum(KEY, km.KvU64(1)).commit().ok:
                    commits += 1
            except km.KvError as exc:
                errors.append(repr(exc))
            longest = max(longest, time.monotonic() - began)
    results.put((commits, errors, longest))


@pytest.mark.timeout(LONG_TIMEOUT)
def test_every_writer_process_makes_progress(tmp_path: Path, torture_long: bool) -> None:
    """Each of 4 processes commits within 5x of every other's count, without an error."""
    seconds = 30.0 if torture_long else 3.0
    path = str(tmp_path / "fair.db")
    km.open_kv(path).close()
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_hammer, args=(path, seconds, start, results)) for _ in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    try:
        time.sleep(0.5)  # let every process open its Kv before the common start
        start.set()
        reports = [results.get(timeout=seconds + 120) for _ in procs]
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
    with km.open_kv(path) as kv:
        entry = kv.get(KEY)
    total = 0 if entry.value is None else entry.value.value
    counts = sorted(r[0] for r in reports)
    errors = [e for r in reports for e in r[1]]
    longest = max(r[2] for r in reports)
    print(
        f"\nfairness: processes={PROCESSES} seconds={seconds} busy_timeout={BUSY_TIMEOUT} "
        f"commits={counts} min/max={counts[0] / max(1, counts[-1]):.2f} "
        f"longest_wait={longest * 1000:.0f}ms errors={len(errors)} "
        f"throughput={sum(counts) / seconds:.0f}/s total={total}"
    )
    assert not errors, errors[:5]
    assert total == sum(counts)
    assert counts[0] * 5 >= counts[-1], counts
