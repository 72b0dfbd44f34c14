"""Tests of kvmodel.engines.etcd (EtcdEngine) at the engine protocol, on a real etcd."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from etcd_cluster import INSTALL_HINT, EtcdCluster, etcd_tests_skipped

from kvmodel.engines._etcd_transport import b64
from kvmodel.engines.base import (
    VALUE_ENCODING_LE64,
    AtomicWrite,
    Check,
    CommitOutcome,
    Consistency,
    Enqueue,
    Mutation,
    MutationKind,
    RawEntry,
    ReadRange,
    versionstamp_to_counter,
    versionstamped_key,
)
from kvmodel.engines.etcd import EtcdEngine
from kvmodel.errors import (
    EngineError,
    InvalidArgumentError,
    KvClosedError,
    KvTypeError,
    LimitExceededError,
)

pytestmark = [
    pytest.mark.etcd,
    pytest.mark.skipif(etcd_tests_skipped(), reason=INSTALL_HINT),
]


@pytest.fixture(scope="module", params=[1, 3], ids=["1-member", "3-members"])
def cluster(request: pytest.FixtureRequest) -> Iterator[EtcdCluster]:
    """A cluster shared by the module's tests, which keep apart by key prefix."""
    with EtcdCluster(request.param) as c:
        yield c


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def prefix() -> bytes:
    return f"t-{uuid.uuid4().hex[:10]}/".encode()


@pytest.fixture
def engine(cluster: EtcdCluster, prefix: bytes) -> Iterator[EtcdEngine]:
    e = EtcdEngine(cluster.endpoints, prefix=prefix, lease_timeout=2)
    yield e
    e.close()


def _set(key: bytes, value: bytes = b"v", **kw: object) -> Mutation:
    return Mutation(key, MutationKind.SET, value, **kw)  # type: ignore[arg-type]


def _sum(key: bytes, n: int) -> Mutation:
    return Mutation(key, MutationKind.SUM, struct.pack("<Q", n), VALUE_ENCODING_LE64)


def _get(engine: EtcdEngine, key: bytes) -> RawEntry | None:
    found = engine.snapshot_read([ReadRange(key, key + b"\x00", 1)])[0]
    return found[0] if found else None


def _commit(engine: EtcdEngine, *muts: Mutation, checks: tuple[Check, ...] = ()) -> CommitOutcome:
    return engine.atomic_write(AtomicWrite(checks=checks, mutations=muts))


# -- reads and commits --------------------------------------------------------


def test_versionstamps_are_the_commit_revisions_and_increase(engine: EtcdEngine) -> None:
    """Each commit, even an empty one, gets a fresh revision as its versionstamp."""
    a = _commit(engine, _set(b"a"))
    b = engine.atomic_write(AtomicWrite())
    assert a.versionstamp is not None and b.versionstamp is not None
    assert versionstamp_to_counter(b.versionstamp) > versionstamp_to_counter(a.versionstamp)
    entry = _get(engine, b"a")
    assert entry is not None and entry.versionstamp == a.versionstamp


def test_checks_pass_and_fail_and_name_the_failed_ones(engine: EtcdEngine) -> None:
    """Checks compare revisions; a failed commit lists the failed checks and writes nothing."""
    vs = _commit(engine, _set(b"a", b"1")).versionstamp
    ok = _commit(engine, _set(b"b"), checks=(Check(b"a", vs), Check(b"b", None)))
    assert ok.ok
    bad = _commit(
        engine,
        _set(b"c"),
        checks=(
            Check(b"a", vs),
            Check(b"b", None),
            Check(b"x", None),
            Check(b"a", ok.versionstamp),
        ),
    )
    assert bad == CommitOutcome(None, (1, 3))
    assert _get(engine, b"c") is None


def test_bookkeeping_is_invisible_and_prefixes_keep_databases_apart(
    cluster: EtcdCluster, engine: EtcdEngine
) -> None:
    """Markers, fence and queue keys stay out of reads; another prefix sees nothing."""
    engine.atomic_write(AtomicWrite(mutations=(_set(b"k"),), enqueues=(Enqueue(b"p", 1, 10**15),)))
    everything = engine.snapshot_read([ReadRange(b"", b"\xff", 100)])[0]
    assert [e.key for e in everything] == [b"k"]
    with EtcdEngine(cluster.endpoints, prefix=b"other-" + uuid.uuid4().hex.encode()) as other:
        assert other.snapshot_read([ReadRange(b"", b"\xff", 100)]) == [[]]


def test_ranges_read_at_one_revision_with_limits_and_reverse(engine: EtcdEngine) -> None:
    """Several ranges come from one revision; reverse returns the last keys first."""
    _commit(engine, *(_set(bytes([c])) for c in b"abcdef"))
    fwd, rev, empty = engine.snapshot_read(
        [ReadRange(b"b", b"f", 2), ReadRange(b"a", b"g", 3, True), ReadRange(b"x", b"x", 5)]
    )
    assert [e.key for e in fwd] == [b"b", b"c"]
    assert [e.key for e in rev] == [b"f", b"e", b"d"]
    assert empty == []


def test_eventual_reads_see_committed_data(engine: EtcdEngine) -> None:
    """consistency=EVENTUAL serves serializable reads of the data."""
    _commit(engine, _set(b"e", b"1"))
    deadline = time.monotonic() + 5
    while True:
        found = engine.snapshot_read(
            [ReadRange(b"e", b"e\x00", 1)], consistency=Consistency.EVENTUAL
        )[0]
        if found or time.monotonic() > deadline:
            break
    assert [e.value for e in found] == [b"1"]


def test_expired_keys_are_absent_for_reads_and_checks(cluster: EtcdCluster, prefix: bytes) -> None:
    """An expired key is hidden at once; a None check passes on it, a versionstamp check fails."""
    clock = FakeClock()
    with EtcdEngine(cluster.endpoints, prefix=prefix, clock=clock) as engine:
        deadline_ms = int(clock.now * 1000) + 60_000
        vs = _commit(engine, _set(b"x", expire_at_ms=deadline_ms), _set(b"y")).versionstamp
        assert _get(engine, b"x") is not None
        clock.now += 61
        assert _get(engine, b"x") is None
        assert [e.key for e in engine.snapshot_read([ReadRange(b"", b"\xff", 1)])[0]] == [b"y"]
        assert not _commit(engine, _set(b"z"), checks=(Check(b"x", vs),)).ok
        assert _commit(engine, _set(b"x", b"new"), checks=(Check(b"x", None),)).ok
        entry = _get(engine, b"x")
        assert entry is not None and entry.value == b"new"


def test_leases_delete_expired_keys(engine: EtcdEngine) -> None:
    """etcd deletes a key through its expiry bucket's lease (2 s minimum)."""
    _commit(engine, _set(b"gone", expire_at_ms=int(time.time() * 1000) + 100))
    raw = {"key": b64(engine.prefix + b"Dgone")}
    assert engine.transport.request("/v3/kv/range", raw).get("kvs"), "stored until the lease ends"
    deadline = time.monotonic() + 8
    while engine.transport.request("/v3/kv/range", raw).get("kvs"):
        assert time.monotonic() < deadline, "the lease did not delete the key"
        time.sleep(0.2)


def test_numeric_mutations_fold_and_reject_non_u64(engine: EtcdEngine) -> None:
    """sum/min/max read-modify-write; several on one key fold; a non-KvU64 writes nothing."""
    _commit(
        engine, _sum(b"n", 5), _sum(b"n", 7), _set(b"o", b"1"), Mutation(b"o", MutationKind.DELETE)
    )
    entry = _get(engine, b"n")
    assert entry is not None and struct.unpack("<Q", entry.value)[0] == 12
    assert _get(engine, b"o") is None
    _commit(engine, _set(b"s", b"text"))
    with pytest.raises(KvTypeError):
        _commit(engine, _set(b"t"), _sum(b"s", 1))
    assert _get(engine, b"t") is None


def test_concurrent_sums_retry_and_never_lose_an_increment(
    cluster: EtcdCluster, prefix: bytes
) -> None:
    """Sums racing on one key from several engines all land (a moved counter is retried)."""
    engines = [EtcdEngine(cluster.endpoints, prefix=prefix) for _ in range(4)]

    def work(e: EtcdEngine) -> None:
        for _ in range(15):
            assert _commit(e, _sum(b"ctr", 1)).ok

    threads = [threading.Thread(target=work, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entry = _get(engines[0], b"ctr")
    assert entry is not None and struct.unpack("<Q", entry.value)[0] == 60
    for e in engines:
        e.close()


def test_a_failed_user_check_beside_a_sum_is_reported(engine: EtcdEngine) -> None:
    """A sum with a failing check returns the failed check instead of retrying."""
    _commit(engine, _set(b"taken"))
    out = _commit(engine, _sum(b"ctr", 1), checks=(Check(b"taken", None),))
    assert out == CommitOutcome(None, (0,))


def test_versionstamped_keys_carry_the_commit_versionstamp(engine: EtcdEngine) -> None:
    """A SET_SUFFIX_VERSIONSTAMPED_KEY key ends in the commit's own versionstamp."""
    _commit(engine, _set(b"warm"))
    out = _commit(engine, Mutation(b"log", MutationKind.SET_SUFFIX_VERSIONSTAMPED_KEY, b"x"))
    assert out.versionstamp is not None
    entry = _get(engine, versionstamped_key(b"log", out.versionstamp))
    assert entry is not None and entry.versionstamp == out.versionstamp


def test_limits_are_declared_and_checked_before_sending(
    cluster: EtcdCluster, prefix: bytes
) -> None:
    """The engine declares etcd's 128 txn operations and refuses a bigger txn itself."""
    with EtcdEngine(cluster.endpoints, prefix=prefix) as engine:
        assert engine.limits.name == "etcd"
        assert engine.limits.max_operations == 126
        assert engine.limits.max_request_size == 1572864
        with pytest.raises(LimitExceededError) as info:
            _commit(engine, *(_set(b"k%d" % i) for i in range(127)))
        assert info.value.limit == 128 and "--max-txn-ops" in str(info.value)
        assert engine.snapshot_read([ReadRange(b"", b"\xff", 10)]) == [[]]


def test_urls_and_bad_arguments(cluster: EtcdCluster) -> None:
    """etcd:// URLs name endpoints and a prefix; bad URLs and dead clusters raise typed errors."""
    e = EtcdEngine.from_url(cluster.url("app"))
    assert e.prefix == b"app/"
    e.close()
    with pytest.raises(KvClosedError):
        e.snapshot_read([ReadRange(b"a", b"b", 1)])
    with pytest.raises(InvalidArgumentError):
        EtcdEngine.from_url("http://localhost:2379")
    with pytest.raises(InvalidArgumentError):
        EtcdEngine(["no-port"])
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    with pytest.raises(EngineError, match="accepts connections"):
        EtcdEngine([f"127.0.0.1:{port}"], connect_timeout=0.3)


# -- ambiguous commits ---------------------------------------------------------


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class CuttingProxy:
    """A loopback TCP proxy to etcd that can cut the next txn's connection.

    ``mode`` "after" forwards the request, waits for etcd's answer and drops
    it (the commit applied, the client never hears); "before" drops the
    request unsent.
    """

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.mode: str | None = None
        self.cuts = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self._server.getsockname()[1]}"
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        drop_answer = threading.Event()

        def answers() -> None:
            try:
                while data := upstream.recv(1 << 16):
                    if drop_answer.is_set():
                        return  # etcd answered: the commit applied; the client never hears
                    client.sendall(data)
            except OSError:
                pass
            finally:
                _shut(client)
                _shut(upstream)

        threading.Thread(target=answers, daemon=True).start()
        buf = b""
        try:
            while data := client.recv(1 << 16):
                buf += data
                # Forward whole HTTP requests only, so one can be judged by its body.
                while b"\r\n\r\n" in buf:
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    if len(rest) < length:
                        break
                    request, buf = head + b"\r\n\r\n" + rest[:length], rest[length:]
                    cut = self.mode is not None and b"/v3/kv/txn" in head
                    cut = cut and b"compare" in rest[:length]
                    if cut:
                        mode, self.mode = self.mode, None
                        self.cuts += 1
                        if mode == "before":
                            return
                        drop_answer.set()
                    upstream.sendall(request)
        except OSError:
            pass
        finally:
            if not drop_answer.is_set():
                _shut(upstream)
            _shut(client)

    def close(self) -> None:
        self._stop = True
        self._server.close()


@pytest.mark.parametrize("mode", ["after", "before"])
def test_a_commit_whose_connection_is_cut_applies_exactly_once(
    cluster: EtcdCluster, prefix: bytes, mode: str
) -> None:
    """A lost answer is resolved by the marker: never reported failed if applied, never doubled."""
    proxy = CuttingProxy(cluster.endpoints[0])
    try:
        with EtcdEngine([proxy.endpoint], prefix=prefix) as engine:
            _commit(engine, _set(b"warm"))
            proxy.mode = mode
            out = _commit(engine, _sum(b"ctr", 1), _set(b"k", b"v"))
            assert proxy.cuts == 1
            assert out.ok
            entry = _get(engine, b"ctr")
            assert entry is not None and struct.unpack("<Q", entry.value)[0] == 1
            assert entry.versionstamp == out.versionstamp
            if mode == "after":
                assert (engine.ambiguous_applied, engine.ambiguous_not_applied) == (1, 0)
            else:
                assert engine.ambiguous_applied == 0
    finally:
        proxy.close()


def test_a_cut_commit_with_a_failing_check_still_fails(cluster: EtcdCluster, prefix: bytes) -> None:
    """A lost answer to a commit whose check failed is retried and reports the failed check."""
    proxy = CuttingProxy(cluster.endpoints[0])
    try:
        with EtcdEngine([proxy.endpoint], prefix=prefix) as engine:
            _commit(engine, _set(b"taken"))
            proxy.mode = "after"
            out = _commit(engine, _set(b"new"), checks=(Check(b"taken", None),))
            assert out == CommitOutcome(None, (0,))
            assert _get(engine, b"new") is None
    finally:
        proxy.close()


# -- queue -----------------------------------------------------------------------


def _enqueue(engine: EtcdEngine, payload: bytes, **kw: object) -> None:
    ready = kw.pop("ready_at_ms", int(engine.clock() * 1000))
    engine.atomic_write(AtomicWrite(enqueues=(Enqueue(payload, 1, ready, **kw),)))  # type: ignore[arg-type]


def test_queue_delivers_in_fifo_order_and_settles(engine: EtcdEngine) -> None:
    """Messages with the same ready time come in enqueue order; success drops them."""
    now = int(time.time() * 1000)
    for p in (b"1", b"2", b"3"):
        _enqueue(engine, p, ready_at_ms=now)
    got = []
    for _ in range(3):
        m = engine.dequeue_next_message(2)
        assert m is not None and m.attempt == 1
        got.append(m.payload)
        m.finish(True)
    assert got == [b"1", b"2", b"3"]
    assert engine.dequeue_next_message(0.2) is None


def test_queue_backoff_then_dead_letters_in_one_commit(engine: EtcdEngine) -> None:
    """A failing message is retried after its backoff, then written to keys_if_undelivered."""
    dl1, dl2 = b"\x02dl1\x00", b"\x02dl2\x00"  # dead-letter keys must be encoded keys
    _enqueue(engine, b"p", keys_if_undelivered=(dl1, dl2), backoff_schedule_ms=(100,))
    m = engine.dequeue_next_message(2)
    assert m is not None
    m.finish(False)
    t0 = time.monotonic()
    m = engine.dequeue_next_message(3)
    assert m is not None and m.attempt == 2 and time.monotonic() - t0 >= 0.05
    m.finish(False)
    a, b = _get(engine, dl1), _get(engine, dl2)
    assert a is not None and b is not None
    assert a.value == b"p" and a.versionstamp == b.versionstamp
    assert engine.dequeue_next_message(0.2) is None


def test_a_message_whose_listener_died_is_delivered_again(
    cluster: EtcdCluster, prefix: bytes
) -> None:
    """A claim lives on a lease; when the listener stops renewing, another listener gets it."""
    with (
        EtcdEngine(cluster.endpoints, prefix=prefix, lease_timeout=2) as dying,
        EtcdEngine(cluster.endpoints, prefix=prefix, lease_timeout=2) as other,
    ):
        _enqueue(dying, b"job", backoff_schedule_ms=(0,))  # a retry for the expired claim
        first = dying.dequeue_next_message(2)
        assert first is not None and first.renew_lease()
        assert other.dequeue_next_message(0.3) is None  # claimed
        again = other.dequeue_next_message(8)  # the claim's lease runs out
        assert again is not None and again.payload == b"job"
        again.finish(True)
        assert not first.renew_lease()


def test_a_listener_in_another_engine_wakes_on_enqueue(cluster: EtcdCluster, prefix: bytes) -> None:
    """A blocked dequeue wakes through its etcd watch when another engine enqueues."""
    with (
        EtcdEngine(cluster.endpoints, prefix=prefix) as listener,
        EtcdEngine(cluster.endpoints, prefix=prefix) as producer,
    ):
        got: list[bytes] = []

        def listen() -> None:
            m = listener.dequeue_next_message(10)
            if m is not None:
                got.append(m.payload)
                m.finish(True)

        t = threading.Thread(target=listen)
        t.start()
        time.sleep(0.3)  # let the listener block first: the point is the wake-up
        t0 = time.monotonic()
        _enqueue(producer, b"hello")
        t.join(10)
        assert got == [b"hello"] and time.monotonic() - t0 < 2


# -- watch ---------------------------------------------------------------------------


def test_watch_sees_commits_from_other_engines_and_closes(
    cluster: EtcdCluster, prefix: bytes
) -> None:
    """The first item is current; a commit elsewhere wakes the stream; close ends it."""
    with (
        EtcdEngine(cluster.endpoints, prefix=prefix) as a,
        EtcdEngine(cluster.endpoints, prefix=prefix) as b,
    ):
        stream = a.watch([b"w1", b"w2"])
        assert stream.next() == [None, None]
        out = _commit(b, _set(b"w2", b"x"))
        item = stream.next(5)
        assert item is not None and item[1] is not None
        assert item[1].versionstamp == out.versionstamp
        stream.close()
        with pytest.raises(KvClosedError):
            stream.next(0.1)


def test_watch_wakes_when_a_watched_key_expires(cluster: EtcdCluster, prefix: bytes) -> None:
    """An expiry is a change: the stream wakes at the deadline and shows the key gone."""
    with EtcdEngine(cluster.endpoints, prefix=prefix) as e:
        _commit(e, _set(b"t", expire_at_ms=int(time.time() * 1000) + 300))
        stream = e.watch([b"t"])
        first = stream.next()
        assert first[0] is not None  # type: ignore[index]
        item = stream.next(3)
        assert item == [None]
        stream.close()
