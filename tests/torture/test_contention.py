"""Contention: 8 threads and 4 processes hammering one SQLite file with commits.

Target: ``SqliteEngine``'s locking (``BEGIN IMMEDIATE``, the busy handler and
its retry loop). No "database is locked" (or any other error) may escape a
commit, nothing may deadlock, and every acknowledged increment must be in the
final counts. Throughput is printed.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import kvmodel as km

from ._workers import LONG_TIMEOUT, contention_loop, kill_all, number, spawn, wait_ready

THREADS = 8
PROCESSES = 4


@pytest.mark.timeout(LONG_TIMEOUT)
def test_threads_and_processes_commit_without_lock_errors(
    tmp_path: Path, seed: int, torture_long: bool
) -> None:
    """Every commit of 8 threads and 4 processes succeeds or conflicts; none errors or hangs."""
    seconds = 60.0 if torture_long else 2.0
    rng = random.Random(seed)
    db = tmp_path / "hot.db"
    km.open_kv(db).close()
    totals: Counter[str] = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    procs = [
        spawn("contention", db, seconds, rng.randrange(2**32), f"p{i}") for i in range(PROCESSES)
    ]
    try:
        for proc in procs:
            wait_ready(proc)
        with km.open_kv(db) as kv:

            def run(writer: str, thread_seed: int) -> None:
                counts = contention_loop(kv, seconds, thread_seed, writer, errors.append)
                with lock:
                    totals.update(counts)

            threads = [
                threading.Thread(target=run, args=(f"t{i}", rng.randrange(2**32)))
                for i in range(THREADS)
            ]
            started = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join(seconds + 60)
                assert not t.is_alive(), "a writer thread is stuck (deadlock?)"
            for proc in procs:
                out, err = proc.communicate(timeout=seconds + 60)
                assert proc.returncode == 0, err
                result = json.loads(out.strip().splitlines()[-1])
                errors.extend(result.pop("error_texts"))
                totals.update(result)
            elapsed = time.monotonic() - started
            counter = kv.get(("counter",)).value
            hot = sum(number(e) for e in kv.list(prefix=("hot",)))
    finally:
        kill_all(procs)
    commits = totals["sum"] + totals["rcw"]
    print(
        f"\ncontention: seed={seed} seconds={seconds} threads={THREADS} processes={PROCESSES} "
        f"commits={commits} conflicts_retried={totals['conflict']} errors={totals['errors']} "
        f"throughput={commits / elapsed:.0f}/s"
    )
    assert not errors, errors[:10]
    assert counter is not None and counter.value == totals["sum"]
    assert hot == totals["rcw"]
    assert commits > 0
