"""Several processes on one SQLite file: optimistic increments and KvU64 sums lose nothing."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

import kvmodel
from kvmodel import KvU64

PROCESSES = 4
INCREMENTS = 100

pytestmark = pytest.mark.slow

# Spawned children import this module by name and run the functions below;
# spawn (not fork) so no SQLite handle or thread of the parent leaks into them.
_spawn = multiprocessing.get_context("spawn")


def _increment_with_checks(path: str, start: Any, results: Any) -> None:
    """Adds 1 to ("counter",) INCREMENTS times with get + check + set, retrying conflicts."""
    conflicts = 0
    with kvmodel.open_kv(path) as kv:
        start.wait(timeout=60)  # every process is ready: their commits really interleave
        for _ in range(INCREMENTS):
            while True:
                entry = kv.get(("counter",))
                result = kv.atomic().check(entry).set(("counter",), (entry.value or 0) + 1).commit()
                if result.ok:
                    break
                conflicts += 1
    results.put(conflicts)


def _sum(path: str, start: Any, amount: int) -> None:
    """Adds ``amount`` to ("total",) INCREMENTS times with atomic sum (never conflicts)."""
    with kvmodel.open_kv(path) as kv:
        start.wait(timeout=60)
        for _ in range(INCREMENTS):
            assert kv.atomic().sum(("total",), KvU64(amount)).commit().ok


def _join_all(processes: list[Any]) -> list[int | None]:
    """Waits for the processes (killing any still running after 90 s) and returns exit codes."""
    for process in processes:
        process.join(timeout=90)
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    return [process.exitcode for process in processes]


def test_concurrent_checked_increments_lose_no_update(tmp_path: Path) -> None:
    """4 processes x 100 check-and-set increments of one counter end at exactly 400."""
    path = str(tmp_path / "kv.db")
    with kvmodel.open_kv(path) as kv:
        kv.set(("counter",), 0)
    start = _spawn.Barrier(PROCESSES)
    results = _spawn.Queue()
    procs_args = [(path, start, results) for _ in range(PROCESSES)]
    processes = [_spawn.Process(target=_increment_with_checks, args=a) for a in procs_args]
    for process in processes:
        process.start()
    try:
        conflicts = [results.get(timeout=90) for _ in processes]
    finally:
        exit_codes = _join_all(processes)
    assert exit_codes == [0] * PROCESSES
    with kvmodel.open_kv(path) as kv:
        assert kv.get(("counter",)).value == PROCESSES * INCREMENTS
    # Not asserted (scheduling decides), but shown with -rA for the curious.
    print(f"conflicts retried per process: {conflicts}")


def test_concurrent_sums_are_exact(tmp_path: Path) -> None:
    """Atomic KvU64 sums from 4 processes add up exactly, wrapping included."""
    path = str(tmp_path / "kv.db")
    initial = 2**64 - 50  # so the total wraps around 2**64 on the way
    with kvmodel.open_kv(path) as kv:
        kv.set(("total",), KvU64(initial))
    amounts = [1, 2, 3, 2**40]
    start = _spawn.Barrier(len(amounts))
    processes = [_spawn.Process(target=_sum, args=(path, start, a)) for a in amounts]
    for process in processes:
        process.start()
    assert _join_all(processes) == [0] * len(amounts)
    expected = (initial + INCREMENTS * sum(amounts)) % 2**64
    with kvmodel.open_kv(path) as kv:
        assert kv.get(("total",)).value == KvU64(expected)
