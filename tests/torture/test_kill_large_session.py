"""Kill -9 in the middle of one 10,000-object Session commit under limits="embedded".

Target: ``Session.commit`` on SQLite with the embedded limits, where one
commit holds 20,000 checks and 50,000 mutations (``_workers.Tagged``: a
unique and a multi-value index). A child process builds the session, prints
``ready`` and commits; the driver SIGKILLs it at a random moment of the commit
(calibrated by an unkilled first run). After each kill the store holds all
of the batch's objects and index entries or none of them, and
``check_indexes`` is clean. The memory engine, which a kill would erase, is
checked for the same all-or-nothing from a reader thread instead.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

import kvmodel as km
from kvmodel.engines.base import ReadRange
from kvmodel.keys import encode_key

from ._workers import LARGE_SESSION, LONG_TIMEOUT, Tagged, kill_all, spawn, tagged_batch, wait_ready


def batch_count(kv: km.Kv, batch: str) -> int:
    """Documents of ``batch`` in the store (their tag index counts them too)."""
    docs = sum(1 for _ in kv.list(start=("tagged", batch), end=("tagged", batch + "~")))
    assert Tagged.by_tag.count(kv, batch) == docs
    return docs


def commit_and_time(db: Path, batch: str) -> float:
    """Runs one worker to the end; returns the seconds from ``ready`` to ``committed``."""
    proc = spawn("large", db, batch)
    try:
        wait_ready(proc, timeout=60)
        start = time.monotonic()
        out, err = proc.communicate(timeout=120)
        assert "committed" in out, err[-2000:]
        return time.monotonic() - start
    finally:
        kill_all([proc])


@pytest.mark.timeout(LONG_TIMEOUT)
def test_a_killed_large_session_leaves_all_or_nothing(
    tmp_path: Path, seed: int, torture_long: bool
) -> None:
    """After every kill mid-commit, a batch is wholly there or wholly absent; indexes clean."""
    rng = random.Random(seed)
    rounds = 25 if torture_long else 4
    db = tmp_path / "large.db"
    km.open_kv(db).close()
    duration = commit_and_time(db, "calibrate")
    with km.open_kv(db) as kv:
        assert batch_count(kv, "calibrate") == LARGE_SESSION
    outcomes = {"all": 0, "none": 0}
    for r in range(rounds):
        batch = f"b{r:03d}"
        proc = spawn("large", db, batch)
        try:
            wait_ready(proc, timeout=60)
            time.sleep(rng.uniform(0.0, duration * 1.1))
            proc.kill()
        finally:
            kill_all([proc])
        with km.open_kv(db, limits="embedded") as kv:
            n = batch_count(kv, batch)
            assert n in (0, LARGE_SESSION), f"round {r}: {n} of {LARGE_SESSION} objects written"
            outcomes["all" if n else "none"] += 1
            report = km.check_indexes(kv, Tagged)
            assert report.ok, f"round {r}: {report}"
    # Both outcomes should occur over the rounds; none at all would mean no kill hit a commit.
    assert outcomes["none"] >= 1, outcomes


@pytest.mark.parametrize("where", ["memory", "sqlite"])
def test_readers_never_see_part_of_a_large_session(tmp_path: Path, where: str) -> None:
    """A reader's snapshots of a 10,000-object commit in flight hold all of it or none of it."""
    path = None if where == "memory" else tmp_path / "a.db"
    with km.open_kv(path, limits="embedded") as kv:
        objs = tagged_batch("x")
        first, last = objs[0], objs[-1]
        keys = [
            encode_key(("tagged", first.id)),
            encode_key(("tagged", last.id)),
            encode_key(("tagged_by_slug", last.slug)),
            encode_key(("tagged_by_tag", "x", last.id)),
        ]
        ranges = [ReadRange(k, k + b"\x00", 1) for k in keys]
        seen: set[tuple[bool, ...]] = set()
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                found = kv.engine.snapshot_read(ranges)
                seen.add(tuple(bool(f) for f in found))

        reader = threading.Thread(target=read)
        reader.start()
        try:
            with km.Session(kv) as s:
                s.add_all(objs)
        finally:
            time.sleep(0.05)
            stop.set()
            reader.join()
        assert seen <= {(False,) * 4, (True,) * 4}, seen
        assert (True,) * 4 in seen
        assert km.check_indexes(kv, Tagged).ok


@pytest.mark.parametrize("where", ["memory", "sqlite"])
def test_a_large_commit_that_fails_in_the_engine_writes_nothing(tmp_path: Path, where: str) -> None:
    """100,000 mutations whose last one meets a non-KvU64 value: KvTypeError, nothing written."""
    path = None if where == "memory" else tmp_path / "a.db"
    with km.open_kv(path, limits="embedded") as kv:
        kv.set(("text",), "not a number")
        op = kv.atomic()
        for i in range(99_999):
            op.set(("n", i), i)
        op.sum(("text",), 1)
        with pytest.raises(km.KvTypeError):
            op.commit()
        assert next(iter(kv.list(prefix=("n",))), None) is None
        assert kv.get(("text",)).value == "not a number"
