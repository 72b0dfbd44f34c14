"""Fault tests of kvmodel.engines.etcd (EtcdEngine) on a 3-member etcd cluster.

Members are killed with SIGKILL while two clients commit: the clients must
carry on with the survivors, no acknowledged commit may be lost, writes must
fail (never be acknowledged) without a quorum while eventual reads still work,
and writes must resume when the members come back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from etcd_cluster import INSTALL_HINT, EtcdCluster, etcd_tests_skipped

from kvmodel.engines.base import (
    AtomicWrite,
    Check,
    Consistency,
    Mutation,
    MutationKind,
    ReadRange,
)
from kvmodel.engines.etcd import EtcdEngine
from kvmodel.errors import EngineError

pytestmark = [
    pytest.mark.etcd,
    pytest.mark.slow,
    pytest.mark.skipif(etcd_tests_skipped(), reason=INSTALL_HINT),
]


@pytest.fixture
def cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster(3) as c:
        yield c


class Writer(threading.Thread):
    """Commits ("w", name, i) = i with an absence check, counting outcomes."""

    def __init__(self, engine: EtcdEngine, name: str) -> None:
        super().__init__(daemon=True)
        self.engine = engine
        self.name_ = name
        self.acknowledged: list[int] = []
        self.failed = 0
        self.stop = threading.Event()
        self.progress = threading.Condition()
        self.last_ack = time.monotonic()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            key = f"w/{self.name_}/{i:06d}".encode()
            write = AtomicWrite(
                checks=(Check(key, None),), mutations=(Mutation(key, MutationKind.SET, b"%d" % i),)
            )
            try:
                out = self.engine.atomic_write(write)
            except EngineError:
                self.failed += 1
                i += 1
                continue
            assert out.ok, f"commit {i} of {self.name_} failed its check: applied twice?"
            with self.progress:
                self.acknowledged.append(i)
                self.last_ack = time.monotonic()
                self.progress.notify_all()
            i += 1

    def wait_acks(self, count: int, timeout: float) -> bool:
        """Waits until ``count`` more commits are acknowledged."""
        with self.progress:
            goal = len(self.acknowledged) + count
            return self.progress.wait_for(lambda: len(self.acknowledged) >= goal, timeout)


def _engine(cluster: EtcdCluster, prefix: bytes) -> EtcdEngine:
    return EtcdEngine(cluster.endpoints, prefix=prefix, request_timeout=2.0, retry_timeout=4.0)


def test_leader_loss_then_quorum_loss_then_recovery(cluster: EtcdCluster) -> None:
    """Kill the leader mid-stream, then a second member, then restart both."""
    prefix = b"faults/"
    engines = [_engine(cluster, prefix) for _ in range(2)]
    writers = [Writer(e, f"c{n}") for n, e in enumerate(engines)]
    for w in writers:
        w.start()
    try:
        for w in writers:
            assert w.wait_acks(20, 10)

        # 1. SIGKILL the leader: both clients go on with the survivors within seconds.
        leader = cluster.leader()
        assert leader is not None
        cluster.kill(leader)
        killed_at = time.monotonic()
        for w in writers:
            assert w.wait_acks(20, 15), "a client did not recover after the leader died"
        recovery = max(w.last_ack for w in writers) - killed_at
        for w in writers:
            w.stop.set()
        for w in writers:
            w.join(15)
        ambiguous_applied = sum(e.ambiguous_applied for e in engines)
        ambiguous_not_applied = sum(e.ambiguous_not_applied for e in engines)

        # No acknowledged commit is lost, and none applied twice (the checks said so).
        for w in writers:
            stored = engines[0].snapshot_read(
                [ReadRange(f"w/{w.name_}/".encode(), f"w/{w.name_}0".encode(), 100_000)]
            )[0]
            values = {int(e.value) for e in stored}
            assert set(w.acknowledged) <= values
        acknowledged = sum(len(w.acknowledged) for w in writers)
        failed = sum(w.failed for w in writers)

        # 2. Kill a second member: no quorum, so writes fail with EngineError...
        second = next(i for i in range(3) if cluster.alive(i))
        cluster.kill(second)
        survivor = next(i for i in range(3) if cluster.alive(i))
        t0 = time.monotonic()
        with pytest.raises(EngineError):
            engines[0].atomic_write(
                AtomicWrite(mutations=(Mutation(b"no-quorum", MutationKind.SET, b"x"),))
            )
        refused_after = time.monotonic() - t0
        # ...while eventual reads still answer from the survivor.
        with EtcdEngine([cluster.endpoints[survivor]], prefix=prefix, retry_timeout=4.0) as reader:
            pass_through = reader.snapshot_read(
                [ReadRange(b"w/", b"w0", 5)], consistency=Consistency.EVENTUAL
            )[0]
            assert len(pass_through) == 5
        # (opening `reader` checked the survivor with a status call, which needs no quorum)

        # 3. Restart both: writes resume.
        cluster.restart(leader)
        cluster.restart(second)
        deadline = time.monotonic() + 20
        while True:
            try:
                out = engines[1].atomic_write(
                    AtomicWrite(mutations=(Mutation(b"back", MutationKind.SET, b"1"),))
                )
                assert out.ok
                break
            except EngineError:
                assert time.monotonic() < deadline, "writes did not resume after the restart"
        assert engines[0].snapshot_read([ReadRange(b"no-quorum", b"no-quorum\x00", 1)])[0] == []
        print(
            f"\netcd faults: acknowledged={acknowledged} failed={failed} "
            f"ambiguous-then-applied={ambiguous_applied} "
            f"ambiguous-then-not-applied={ambiguous_not_applied} "
            f"recovered-in={recovery:.2f}s refused-without-quorum-in={refused_after:.2f}s"
        )
    finally:
        for w in writers:
            w.stop.set()
        for e in engines:
            e.close()
