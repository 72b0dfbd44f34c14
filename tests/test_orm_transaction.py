"""Tests of kvmodel.orm._transaction: optimistic retries, across threads and processes."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

import kvmodel.orm as km
from kvmodel import Kv, open_kv
from kvmodel.errors import ConflictError, InvalidArgumentError, UniqueViolationError


class Counter(km.Model, prefix="counters"):
    name: str = km.field(primary_key=True)
    n: int = 0


class Handle(km.Model, prefix="handles"):
    id: str = km.field(primary_key=True)
    handle: str
    by_handle = km.Unique("handle")


def bump(s: km.Session) -> int:
    """Increments the "hits" counter, creating it on first use."""
    c = s.get(Counter, "hits")
    if c is None:
        c = Counter(name="hits")
        s.add(c)
    c.n += 1
    return c.n


def worker(path: str, times: int) -> None:
    """One process: increments the counter ``times`` times through transactions."""
    with open_kv(path) as kv:
        for _ in range(times):
            km.transaction(kv, bump, retries=200)


def test_transaction_returns_the_result(kv: Kv) -> None:
    """transaction commits fn's changes and returns what fn returned."""
    assert km.transaction(kv, bump) == 1
    assert km.transaction(kv, bump) == 2


def test_transaction_retries_conflicts_then_gives_up(kv: Kv) -> None:
    """A function that always conflicts runs 1 + retries times, then the ConflictError escapes."""
    km.transaction(kv, bump)
    calls = 0

    def always_stale(s: km.Session) -> None:
        nonlocal calls
        calls += 1
        c = s.get(Counter, "hits")
        assert c is not None
        c.n += 1
        kv.set(("counters", "hits"), {"name": "hits", "n": 100 + calls})  # a rival commit

    with pytest.raises(ConflictError):
        km.transaction(kv, always_stale, retries=3, base_delay=0.0)
    assert calls == 4


def test_transaction_recovers_after_a_conflict(kv: Kv) -> None:
    """A conflict on the first attempt is retried with fresh data."""
    km.transaction(kv, bump)
    calls = 0

    def stale_once(s: km.Session) -> int:
        nonlocal calls
        calls += 1
        n = bump(s)
        if calls == 1:
            kv.set(("counters", "hits"), {"name": "hits", "n": 10})
        return n

    assert km.transaction(kv, stale_once, base_delay=0.0) == 11
    assert calls == 2


def test_unique_violations_are_not_retried(kv: Kv) -> None:
    """A UniqueViolationError escapes at once: rerunning cannot free the value."""
    km.transaction(kv, lambda s: s.add(Handle(id="a", handle="ada")))
    calls = 0

    def take(s: km.Session) -> None:
        nonlocal calls
        calls += 1
        s.add(Handle(id="b", handle="ada"))

    with pytest.raises(UniqueViolationError):
        km.transaction(kv, take)
    assert calls == 1


def test_bad_retries_are_rejected(kv: Kv) -> None:
    """retries must be a non-negative int."""
    with pytest.raises(InvalidArgumentError):
        km.transaction(kv, bump, retries=-1)


@pytest.mark.slow
def test_concurrent_increments_across_processes(tmp_path: Path) -> None:
    """Processes incrementing one counter through transactions lose no update."""
    path = str(tmp_path / "counter.db")
    open_kv(path).close()
    procs, times = 4, 25
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=worker, args=(path, times)) for _ in range(procs)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
        assert p.exitcode == 0
    with open_kv(path) as kv:
        final = km.Session(kv).get(Counter, "hits")
    assert final is not None and final.n == procs * times
