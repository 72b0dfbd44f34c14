"""Fork safety: a parent opens and closes a Kv, then forks (and spawns) workers that sum.

Target: ``Kv.close`` (it joins the expiry collector, the poller and the lease
thread and closes every SQLite connection before it returns) and the SQLite
engine's fork handling. Each round the parent opens the file, leaves its
background threads busy (an expiring key for the collector, a watch for the
poller), closes it, and at once starts workers with ``multiprocessing``'s
fork or spawn method. Every worker opens its own Kv, and some fork again
from inside: it closes its Kv, forks a grandchild that opens its own, and
reopens. The invariant: the final sum equals the number of commits that
returned ``ok=True``, with no error, over every round.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

import kvmodel as km

from ._workers import LONG_TIMEOUT

KEY = ("total",)


def _sums(path: str, n: int) -> tuple[int, list[str]]:
    """Opens a Kv, commits n sums of 1, closes it; returns the acknowledged count and errors."""
    acked = 0
    errors: list[str] = []
    with km.open_kv(path) as kv:
        for _ in range(n):
            try:
                if kv.atomic().sum(KEY, km.KvU64(1)).commit().ok:
                    acked += 1
            except km.KvError as exc:
                errors.append(repr(exc))
    return acked, errors


def _worker(path: str, n: int, refork: bool, results: Any) -> None:
    """Sums in up to three sessions; with ``refork`` the middle one runs in a forked grandchild."""
    acked, errors = _sums(path, n)
    if refork:
        # The Kv above is closed: nothing of it may cross this fork.
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            code = 0
            try:
                child_acked, child_errors = _sums(path, n)
                os.write(write, f"{child_acked} {len(child_errors)}".encode())
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read) as pipe:
            reply = pipe.read()
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0 or not reply:
            errors.append(f"grandchild exited with status {status}")
        else:
            child_acked, child_errors = map(int, reply.split())
            acked += child_acked
            errors.extend(["grandchild error"] * child_errors)
        more, more_errors = _sums(path, n)
        acked += more
        errors.extend(more_errors)
    results.put((acked, errors))


def _parent_round(path: str, round_no: int) -> None:
    """Opens and closes the file twice, the second time with its threads still busy.

    The first Kv leaves an expiring key and runs a watch (the poller); the
    second is closed at once, while its collector, started by the open, is
    still collecting: the fork follows immediately.
    """
    with km.open_kv(path) as kv:
        kv.set(("expiring", round_no), 1, expire_in=0.001)
        with kv.watch([KEY]) as stream:
            next(iter(stream))
    km.open_kv(path).close()


@pytest.mark.timeout(LONG_TIMEOUT)
def test_forked_and_spawned_workers_lose_no_acknowledged_commit(
    tmp_path: Path, seed: int, torture_long: bool
) -> None:
    """Over many close-then-fork rounds, the total equals the acknowledged commits."""
    rounds, workers, sums = (40, 6, 200) if torture_long else (4, 4, 40)
    rng = random.Random(seed)
    path = str(tmp_path / "fork.db")
    acked = 0
    errors: list[str] = []
    forks = 0
    started = time.monotonic()
    for round_no in range(rounds):
        method = "fork" if round_no % 2 == 0 else "spawn"
        ctx = multiprocessing.get_context(method)
        _parent_round(path, round_no)
        results = ctx.Queue()
        procs = []
        for _ in range(workers):
            refork = method == "fork" and rng.random() < 0.5
            forks += 1 + refork
            procs.append(ctx.Process(target=_worker, args=(path, sums, refork, results)))
        for proc in procs:
            proc.start()
        for _ in procs:
            worker_acked, worker_errors = results.get(timeout=300)
            acked += worker_acked
            errors.extend(worker_errors)
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0, f"a {method} worker exited with {proc.exitcode}"
        results.close()
    elapsed = time.monotonic() - started
    with km.open_kv(path) as kv:
        entry = kv.get(KEY)
    total = 0 if entry.value is None else entry.value.value
    print(
        f"\nfork: seed={seed} rounds={rounds} workers_per_round={workers} forks={forks} "
        f"acknowledged={acked} total={total} lost={acked - total} errors={len(errors)} "
        f"elapsed={elapsed:.1f}s"
    )
    assert not errors, errors[:10]
    assert total == acked
