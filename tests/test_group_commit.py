"""Tests of group commit: kvmodel/engines/_group_commit.py and SQLite's grouped commits."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kvmodel as km
from kvmodel.aio import open_kv as open_async
from kvmodel.engines._group_commit import GroupCommitter
from kvmodel.engines.base import (
    AtomicWrite,
    Check,
    CommitOutcome,
    Enqueue,
    Mutation,
    MutationKind,
    RawEntry,
    ReadRange,
    versionstamp_from_counter,
)
from kvmodel.engines.sqlite import SqliteEngine
from kvmodel.errors import EngineError, KvTypeError


def wait_until(condition: Callable[[], bool]) -> None:
    """Waits (bounded, generously) for another thread to reach a state."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the other threads never got there"
        time.sleep(0.001)


def u64(n: int) -> bytes:
    return n.to_bytes(8, "little")


def everything(engine: SqliteEngine) -> list[RawEntry]:
    return engine.snapshot_read([ReadRange(b"", b"\xff", 100_000)])[0]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[SqliteEngine]:
    eng = SqliteEngine(tmp_path / "g.db")
    yield eng
    eng.close()


# -- the committer on its own ----------------------------------------------------


class Gate:
    """A run_group whose first call blocks until released, recording every group."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, items: Sequence[int]) -> list[int | Exception]:
        self.groups.append(list(items))
        if len(self.groups) == 1:
            self.entered.set()
            self.release.wait(30)
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


def test_a_lone_commit_runs_at_once_as_a_group_of_one() -> None:
    """A submit with nobody else in the queue leads its own group immediately."""
    committer: GroupCommitter[int, int] = GroupCommitter()
    groups: list[list[int]] = []

    def run(items: Sequence[int]) -> list[int | Exception]:
        groups.append(list(items))
        return [i + 1 for i in items]

    assert [committer.submit(i, run) for i in range(3)] == [1, 2, 3]
    assert groups == [[0], [1], [2]]
    assert (committer.groups, committer.commits) == (3, 3)


def _run_behind_a_leader(
    committer: GroupCommitter[int, int], leader: int, followers: list[int]
) -> tuple[Gate, dict[int, object]]:
    """Submits ``leader``, holds its commit open while ``followers`` queue one by one
    behind it, then lets everything run; the gate's groups and each caller's result."""
    gate = Gate()
    results: dict[int, object] = {}

    def submit(i: int) -> None:
        try:
            results[i] = committer.submit(i, gate)
        except ValueError as exc:
            results[i] = str(exc)

    first = threading.Thread(target=submit, args=(leader,))
    first.start()
    gate.entered.wait(30)
    threads = []
    for n, i in enumerate(followers):
        t = threading.Thread(target=submit, args=(i,))
        t.start()
        threads.append(t)
        wait_until(lambda n=n: len(committer._queue) == n + 2)  # type: ignore[misc]
    gate.release.set()
    for t in [first, *threads]:
        t.join(30)
    return gate, results


def test_commits_arriving_during_a_commit_form_the_next_group_in_order() -> None:
    """Followers queued behind a running leader are served together by the next leader."""
    committer: GroupCommitter[int, int] = GroupCommitter()
    gate, results = _run_behind_a_leader(committer, 0, [1, 2, 3, 4, 5])
    assert gate.groups == [[0], [1, 2, 3, 4, 5]]
    # Each caller gets its own result; an exception in its place goes to it alone.
    assert results == {0: 0, 1: "odd 1", 2: 20, 3: "odd 3", 4: 40, 5: "odd 5"}
    assert not committer._queue


def test_a_group_stops_at_its_weight_budget_but_always_holds_its_leader() -> None:
    """With a weight budget, the next leader takes only the queue's head that fits it."""
    committer: GroupCommitter[int, int] = GroupCommitter(weight=lambda i: i, max_weight=100)
    # Queued behind the running commit: 40 + 50 fit 100, 60 starts a group of
    # its own, and 200 (over the budget alone) still runs, as a group of one.
    gate, results = _run_behind_a_leader(committer, 2, [40, 50, 60, 200, 10])
    assert gate.groups == [[2], [40, 50], [60], [200], [10]]
    assert results == {2: 20, 40: 400, 50: 500, 60: 600, 200: 2000, 10: 100}


def test_small_commits_go_on_while_a_large_one_commits(tmp_path: Path) -> None:
    """Threads' single sets around a 99,000-mutation commit all succeed, and all are stored."""
    with km.open_kv(tmp_path / "g.db", limits="embedded") as kv:
        engine = kv.engine
        assert isinstance(engine, SqliteEngine)
        stop = threading.Event()
        done: list[int] = []

        def writer(w: int) -> None:
            n = 0
            while not stop.is_set():
                assert kv.set(("small", w, n), n).ok
                n += 1
            done.append(n)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        op = kv.atomic()
        for i in range(99_000):
            op.set(("big", i), i)
        assert op.commit().ok
        time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(30)
        assert sum(1 for _ in kv.list(prefix=("big",))) == 99_000
        assert sum(1 for _ in kv.list(prefix=("small",))) == sum(done)


def test_an_error_of_the_whole_group_reaches_every_caller() -> None:
    """When run_group raises, every commit of the group raises (each its own copy)."""
    committer: GroupCommitter[int, int] = GroupCommitter()
    started = threading.Event()
    release = threading.Event()
    calls = 0

    def run(items: Sequence[int]) -> list[int | Exception]:
        nonlocal calls
        calls += 1
        if calls == 1:
            started.set()
            release.wait(30)
            return [0]
        raise EngineError(f"disk on fire under {list(items)}")

    errors: list[BaseException] = []

    def submit(i: int) -> None:
        try:
            committer.submit(i, run)
        except EngineError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(4)]
    threads[0].start()
    started.wait(30)
    for n, t in enumerate(threads[1:], start=2):
        t.start()
        wait_until(lambda n=n: len(committer._queue) == n)  # type: ignore[misc]
    release.set()
    for t in threads:
        t.join(30)
    assert len(errors) == 3
    assert len({id(e) for e in errors}) == 3
    assert {str(e) for e in errors} == {"disk on fire under [1, 2, 3]"}


def test_an_interrupted_follower_keeps_its_place_so_the_queue_never_stalls() -> None:
    """Ctrl-C while queued is raised after the commit is served, and later commits still run."""
    committer: GroupCommitter[int, int] = GroupCommitter()
    gate = Gate()
    leader = threading.Thread(target=committer.submit, args=(0, gate))
    leader.start()
    gate.entered.wait(30)
    main = threading.get_ident()

    def interrupt_then_release() -> None:
        wait_until(lambda: len(committer._queue) == 2)
        signal.pthread_kill(main, signal.SIGINT)
        time.sleep(0.05)  # the interrupt reaches the waiting main thread first
        gate.release.set()

    helper = threading.Thread(target=interrupt_then_release)
    helper.start()
    with pytest.raises(KeyboardInterrupt):
        committer.submit(2, gate)
    helper.join(30)
    leader.join(30)
    assert gate.groups == [[0], [2]]  # the interrupted commit was still served
    assert committer.submit(4, gate) == 40  # and the queue moves on
    assert not committer._queue


# -- grouped commits on SQLite ---------------------------------------------------


def set_(key: bytes, value: bytes = b"v") -> Mutation:
    # An 8-byte value is stored as a KvU64 (encoding 2), anything else as msgpack.
    return Mutation(key, MutationKind.SET, value, 2 if len(value) == 8 else 3)


def test_a_group_gives_each_applied_write_its_own_versionstamp(engine: SqliteEngine) -> None:
    """Versionstamps of a group's writes follow each other, skipping refused writes."""
    engine.atomic_write(AtomicWrite(mutations=(set_(b"a"),)))
    results = engine._commit_writes(
        [
            AtomicWrite(mutations=(set_(b"b"),)),
            AtomicWrite(checks=(Check(b"a", None),), mutations=(set_(b"c"),)),
            AtomicWrite(mutations=(set_(b"d"),)),
        ]
    )
    assert results == [
        CommitOutcome(versionstamp_from_counter(2)),
        CommitOutcome(None, (0,)),
        CommitOutcome(versionstamp_from_counter(3)),
    ]
    assert [(e.key, e.versionstamp) for e in everything(engine)] == [
        (b"a", versionstamp_from_counter(1)),
        (b"b", versionstamp_from_counter(2)),
        (b"d", versionstamp_from_counter(3)),
    ]
    engine.atomic_write(AtomicWrite(mutations=(set_(b"e"),)))
    assert everything(engine)[-1].versionstamp == versionstamp_from_counter(4)
    engine._check()


def test_a_write_sees_the_writes_before_it_in_its_group(engine: SqliteEngine) -> None:
    """Checks and sums inside a group read what the earlier writes of the group wrote."""
    vs_first = versionstamp_from_counter(1)
    results = engine._commit_writes(
        [
            AtomicWrite(checks=(Check(b"x", None),), mutations=(set_(b"x", u64(5)),)),
            AtomicWrite(checks=(Check(b"x", None),), mutations=(set_(b"x", u64(9)),)),
            AtomicWrite(
                checks=(Check(b"x", vs_first),),
                mutations=(Mutation(b"x", MutationKind.SUM, u64(2), 2),),
            ),
        ]
    )
    assert [r.versionstamp if isinstance(r, CommitOutcome) else r for r in results] == [
        vs_first,
        None,
        versionstamp_from_counter(2),
    ]
    [entry] = everything(engine)
    assert entry.value == u64(7)


def test_a_sum_type_error_fails_that_write_alone(engine: SqliteEngine) -> None:
    """A sum over a non-LE64 value rolls back its own write; the others of the group commit."""
    engine.atomic_write(AtomicWrite(mutations=(set_(b"text", b"\xa3abc"),)))
    results = engine._commit_writes(
        [
            AtomicWrite(mutations=(set_(b"p"),)),
            AtomicWrite(
                mutations=(set_(b"q"), Mutation(b"text", MutationKind.SUM, u64(1), 2)),
            ),
            AtomicWrite(mutations=(set_(b"r"),)),
        ]
    )
    assert isinstance(results[1], KvTypeError)
    assert results[0] == CommitOutcome(versionstamp_from_counter(2))
    assert results[2] == CommitOutcome(versionstamp_from_counter(3))
    assert [e.key for e in everything(engine)] == [b"p", b"r", b"text"]


def test_enqueues_of_a_group_are_delivered_and_its_commit_wakes_watchers(
    engine: SqliteEngine,
) -> None:
    """A grouped commit's messages reach the queue and a watcher sees the change."""
    stream = engine.watch([b"w"])
    assert stream.next(0) == [None]
    message = Enqueue(b"\xa1m", 3, 0)
    engine._commit_writes(
        [AtomicWrite(mutations=(set_(b"w"),)), AtomicWrite(enqueues=(message, message))]
    )
    [entry] = stream.next(5) or [None]
    assert entry is not None and entry.value == b"v"
    stream.close()
    for _ in range(2):
        leased = engine.dequeue_next_message(5)
        assert leased is not None and leased.payload == b"\xa1m"
        leased.finish(True)
    assert engine.dequeue_next_message(0) is None


def test_threads_committing_together_share_transactions(tmp_path: Path) -> None:
    """Commits queued while the file is locked are all served by the next group, each counted."""
    db = tmp_path / "t.db"
    with km.open_kv(db) as kv:
        committer = kv.engine._committer  # type: ignore[attr-defined]
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process's writer, as far as kvmodel knows
        stamps: list[str] = []

        def add() -> None:
            result = kv.atomic().sum(("n",), km.KvU64(1)).commit()
            assert result.versionstamp is not None
            stamps.append(result.versionstamp)

        threads = [threading.Thread(target=add) for _ in range(8)]
        for t in threads:
            t.start()
        wait_until(lambda: len(committer._queue) == 8)
        blocker.execute("ROLLBACK")
        blocker.close()
        for t in threads:
            t.join(30)
        assert kv.get(("n",)).value == km.KvU64(8)
        assert (committer.groups, committer.commits) == (2, 8)
        assert sorted(stamps) == [versionstamp_from_counter(i).hex() for i in range(1, 9)]


def test_asyncio_tasks_share_transactions(tmp_path: Path) -> None:
    """Concurrent tasks on one AsyncKv commit side by side, so their commits can be grouped."""
    db = tmp_path / "a.db"

    async def main() -> tuple[int, int, object]:
        async with await open_async(db) as kv:
            committer = kv.sync.engine._committer  # type: ignore[attr-defined]
            blocker = sqlite3.connect(db, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            tasks = [
                asyncio.ensure_future(kv.atomic().sum(("n",), km.KvU64(1)).commit())
                for _ in range(6)
            ]
            await asyncio.to_thread(wait_until, lambda: len(committer._queue) == 6)
            blocker.execute("ROLLBACK")
            blocker.close()
            await asyncio.gather(*tasks)
            return committer.groups, committer.commits, (await kv.get(("n",))).value

    assert asyncio.run(main()) == (2, 6, km.KvU64(6))


def test_closing_while_threads_commit_ends_every_commit_and_keeps_the_acknowledged(
    tmp_path: Path,
) -> None:
    """close() amid grouped commits: each returns ok (and is on disk) or raises KvClosedError."""
    db = tmp_path / "c.db"
    kv = km.open_kv(db)
    acknowledged: list[tuple[int, int]] = []
    outcomes: list[str] = []
    started = threading.Barrier(9)

    def writer(t: int) -> None:
        started.wait()
        for i in range(10_000):
            try:
                kv.set(("w", t, i), i)
            except km.KvClosedError:
                outcomes.append("closed")
                return
            acknowledged.append((t, i))
        outcomes.append("finished")

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    started.wait()
    wait_until(lambda: len(acknowledged) >= 200)
    kv.close()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert len(outcomes) == 8
    with km.open_kv(db) as again:
        stored = {tuple(e.key[1:]) for e in again.list(prefix=("w",))}
    assert set(acknowledged) <= stored


# -- property: a group equals its writes committed one by one -------------------

KEYS = [b"k0", b"k1", b"k2", b"t"]
VALUES = st.sampled_from([u64(1), u64(7), b"\xa1x"])
STAMPS = st.sampled_from([None, *(versionstamp_from_counter(i) for i in range(1, 6))])


@st.composite
def writes(draw: st.DrawFn) -> AtomicWrite:
    checks = draw(st.lists(st.builds(Check, st.sampled_from(KEYS), STAMPS), max_size=2))
    mutations = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(list(MutationKind)))
        key = draw(st.sampled_from(KEYS))
        if kind in (MutationKind.SUM, MutationKind.MIN, MutationKind.MAX):
            mutations.append(Mutation(key, kind, u64(draw(st.integers(0, 9))), 2))
        elif kind is MutationKind.DELETE:
            mutations.append(Mutation(key, kind))
        else:
            value = draw(VALUES)
            mutations.append(Mutation(key, kind, value, 2 if len(value) == 8 else 3))
    enqueues = draw(st.lists(st.just(Enqueue(b"\xa1q", 3, 0)), max_size=1))
    return AtomicWrite(tuple(checks), tuple(mutations), tuple(enqueues))


def describe(result: CommitOutcome | Exception) -> object:
    return type(result).__name__ if isinstance(result, Exception) else result


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(prefix=st.lists(writes(), max_size=3), group=st.lists(writes(), min_size=1, max_size=8))
def test_a_group_equals_its_writes_committed_one_by_one(
    tmp_path_factory: pytest.TempPathFactory,
    prefix: list[AtomicWrite],
    group: list[AtomicWrite],
) -> None:
    """Committing writes as one group gives the results and data of committing them in order."""
    directory = tmp_path_factory.mktemp("prop")
    with (
        SqliteEngine(directory / "grouped.db") as grouped,
        SqliteEngine(directory / "alone.db") as alone,
    ):
        # "t" starts as text, so sums on it meet the wrong type often.
        text = AtomicWrite(mutations=(Mutation(b"t", MutationKind.SET, b"\xa1x", 3),))
        for engine in (grouped, alone):
            for write in [text, *prefix]:
                with contextlib.suppress(KvTypeError):
                    engine.atomic_write(write)
        one_by_one: list[CommitOutcome | Exception] = []
        for write in group:
            try:
                one_by_one.append(alone.atomic_write(write))
            except KvTypeError as exc:
                one_by_one.append(exc)
        together: list[CommitOutcome | Exception]
        try:
            together = grouped._commit_writes(group)
        except KvTypeError as exc:  # a group of one raises as a lone commit does
            together = [exc]
        assert [describe(r) for r in together] == [describe(r) for r in one_by_one]
        assert everything(grouped) == everything(alone)
        counter = "SELECT counter FROM commit_counter"
        assert grouped._run(lambda c: c.execute(counter).fetchone(), "") == alone._run(
            lambda c: c.execute(counter).fetchone(), ""
        )
        queued = "SELECT COUNT(*) FROM queue"
        assert grouped._run(lambda c: c.execute(queued).fetchone(), "") == alone._run(
            lambda c: c.execute(queued).fetchone(), ""
        )
        grouped._check()
