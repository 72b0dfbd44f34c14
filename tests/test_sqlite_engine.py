"""Tests for kvmodel.engines.sqlite.SqliteEngine at the engine level (bytes records)."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

import kvmodel as km
from kvmodel.engines.base import (
    VALUE_ENCODING_BYTES,
    VALUE_ENCODING_LE64,
    AtomicWrite,
    Check,
    Enqueue,
    Mutation,
    MutationKind,
    RawEntry,
    ReadRange,
    versionstamp_to_counter,
    versionstamped_key,
)
from kvmodel.engines.sqlite import APPLICATION_ID, SCHEMA_VERSION, SqliteEngine
from kvmodel.errors import EngineError, InvalidArgumentError, KvClosedError, KvTypeError

REPO = Path(__file__).resolve().parent.parent
SEED = 20240611


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def k(name: str) -> bytes:
    """An encoded one-part str key."""
    return b"\x02" + name.encode() + b"\x00"


def point(key: bytes) -> ReadRange:
    """The read range of one key."""
    return ReadRange(key, key + b"\x00", 1)


def u64(n: int) -> bytes:
    """LE64 bytes of n."""
    return n.to_bytes(8, "little")


def set_(key: bytes, value: bytes = b"v", expire_at_ms: int | None = None) -> Mutation:
    """A SET mutation of raw bytes."""
    return Mutation(key, MutationKind.SET, value, VALUE_ENCODING_BYTES, expire_at_ms)


def get(engine: SqliteEngine, key: bytes) -> RawEntry | None:
    """The entry at key, or None."""
    [entries] = engine.snapshot_read([point(key)])
    return entries[0] if entries else None


def digest(path: Path) -> str:
    """The sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def directory_state(directory: Path) -> dict[str, tuple[str, int]]:
    """Every file of a directory: name -> (sha256, mtime in ns)."""
    return {f.name: (digest(f), f.stat().st_mtime_ns) for f in sorted(directory.iterdir())}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A path for a new database file."""
    return tmp_path / "kv.db"


@pytest.fixture
def clock() -> FakeClock:
    """A hand-moved clock."""
    return FakeClock()


@pytest.fixture
def engine(db: Path, clock: FakeClock) -> Iterator[SqliteEngine]:
    """An engine on a new file with a fake clock; its invariants are checked at the end."""
    e = SqliteEngine(db, clock=clock, lease_timeout=30.0)
    yield e
    if not getattr(e, "_closed", True):
        e._check()
    e.close()


def make_kvmodel_file(path: Path, keys: int = 0) -> None:
    """Creates a closed kvmodel file holding ``keys`` keys of 500 bytes."""
    with SqliteEngine(path) as e:
        if keys:
            e.atomic_write(
                AtomicWrite(mutations=tuple(set_(k(f"{i:05}"), b"x" * 500) for i in range(keys)))
            )


# ---------------------------------------------------------------------------
# Opening, schema and bad files


def test_new_file_gets_schema_application_id_and_version(db: Path) -> None:
    """A new file is initialised with the kv, counter and queue tables and kvmodel's marks."""
    SqliteEngine(db).close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"kv", "commit_counter", "queue"} <= tables
    finally:
        conn.close()


def test_empty_file_is_initialised(db: Path) -> None:
    """A zero-byte file is a new database, not an error."""
    db.write_bytes(b"")
    with SqliteEngine(db) as e:
        assert e.atomic_write(AtomicWrite(mutations=(set_(k("a")),))).ok


def test_reopen_keeps_data(db: Path) -> None:
    """A second engine on the same file sees the first one's data and migrates nothing."""
    make_kvmodel_file(db, keys=3)
    with SqliteEngine(db) as e:
        entry = get(e, k("00001"))
        assert entry is not None and entry.value == b"x" * 500
        e._check()


def test_newer_schema_is_refused_and_file_unchanged(db: Path) -> None:
    """A kvmodel file with a newer schema version raises EngineError; no file changes or appears."""
    make_kvmodel_file(db, keys=2)
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    before = directory_state(db.parent)
    with pytest.raises(EngineError, match="newer"):
        SqliteEngine(db)
    assert directory_state(db.parent) == before


def _garbage(path: Path) -> None:
    path.write_bytes(random.Random(SEED).randbytes(8192))


def _short_header(path: Path) -> None:
    make_kvmodel_file(path)
    path.write_bytes(path.read_bytes()[:60])


def _truncated(path: Path) -> None:
    make_kvmodel_file(path, keys=200)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])


def _truncated_at_page(path: Path) -> None:
    make_kvmodel_file(path, keys=200)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4096])


def _other_app(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.commit()
    conn.close()


def _other_app_id(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id = 1234")
    conn.commit()
    conn.close()


def _other_app_wal(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()


def _drop_table(name: str) -> object:
    def make(path: Path) -> None:
        make_kvmodel_file(path, keys=3)
        conn = sqlite3.connect(path)
        conn.execute(f"DROP TABLE {name}")
        conn.commit()
        conn.close()

    return make


def _kvmodel_id_version_0(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("CREATE TABLE kv (k BLOB PRIMARY KEY)")
    conn.commit()
    conn.close()


def _rollback_mode_without_kv(path: Path) -> None:
    _drop_table("kv")(path)  # type: ignore[operator]
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_garbage, "not a SQLite database"),
        (_short_header, "truncated"),
        (_truncated, "truncated"),
        (_truncated_at_page, "truncated"),
        (_other_app, "another application"),
        (_other_app_id, "another application"),
        (_other_app_wal, "another application"),
        (_drop_table("kv"), "damaged kvmodel database .*no table kv"),
        (_drop_table("queue"), "damaged kvmodel database .*no table queue"),
        (_drop_table("commit_counter"), "no table commit_counter"),
        (_kvmodel_id_version_0, "damaged kvmodel database .*schema version 0"),
        (_rollback_mode_without_kv, "no table kv"),
    ],
    ids=[
        "garbage",
        "short-header",
        "truncated",
        "truncated-at-page",
        "other-app",
        "other-app-id",
        "other-app-wal",
        "no-kv-table",
        "no-queue-table",
        "no-counter-table",
        "kvmodel-id-version-0",
        "rollback-mode-no-kv-table",
    ],
)
def test_bad_file_is_refused_and_unchanged(db: Path, make: object, message: str) -> None:
    """A file kvmodel must not use raises EngineError; no file beside it changes or appears."""
    make(db)  # type: ignore[operator]
    before = directory_state(db.parent)
    with pytest.raises(EngineError, match=message):
        SqliteEngine(db)
    assert directory_state(db.parent) == before
    with pytest.raises(EngineError, match=message):
        km.open_kv(db)
    assert directory_state(db.parent) == before


def test_refused_file_is_read_with_locks_while_a_writer_has_it_open(db: Path) -> None:
    """Another application's WAL database in use (-wal present) is refused, its data intact."""
    _other_app_wal(db)
    owner = sqlite3.connect(db, isolation_level=None)
    try:
        owner.execute("INSERT INTO users (name) VALUES ('ada')")  # lives in the -wal file
        with pytest.raises(EngineError, match="another application"):
            SqliteEngine(db)
        assert owner.execute("SELECT name FROM users").fetchall() == [("ada",)]
    finally:
        owner.close()


def test_second_engine_in_a_process_keeps_the_first_ones_locks(db: Path) -> None:
    """Opening a file a second time in one process does not drop the first engine's locks.

    Closing any descriptor of a file drops every POSIX lock the process holds
    on it, so the second open must not read the header through a descriptor
    of its own. While the first engine holds its shared lock, another process
    closing its connection cannot take the exclusive lock that lets it
    checkpoint and delete the -wal and -shm files under the first engine.
    """
    first = SqliteEngine(db)
    try:
        first.atomic_write(AtomicWrite(mutations=(set_(k("a")),)))
        SqliteEngine(db).close()
        code = "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('SELECT 1 FROM kv')"
        subprocess.run([sys.executable, "-c", code, str(db)], check=True)
        assert (db.parent / (db.name + "-wal")).exists()
        assert first.atomic_write(AtomicWrite(mutations=(set_(k("b")),))).ok
    finally:
        first.close()
    with SqliteEngine(db) as e:
        assert get(e, k("a")) is not None and get(e, k("b")) is not None


def test_read_only_file_is_refused_and_unchanged(db: Path) -> None:
    """A read-only file raises EngineError naming it, and is not modified."""
    make_kvmodel_file(db, keys=1)
    before = digest(db)
    db.chmod(stat.S_IRUSR | stat.S_IRGRP)
    try:
        with pytest.raises(EngineError, match="read-only"):
            SqliteEngine(db)
    finally:
        db.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert digest(db) == before


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    """A path in a directory that does not exist raises EngineError and creates nothing."""
    missing = tmp_path / "nope" / "kv.db"
    with pytest.raises(EngineError, match="does not exist"):
        SqliteEngine(missing)
    assert not missing.parent.exists()


@pytest.mark.parametrize("mode", ["OFF", "EXTRA", "", "full; DROP TABLE kv"])
def test_synchronous_rejects_other_modes(db: Path, mode: str) -> None:
    """Only FULL and NORMAL are accepted; the file is not created otherwise."""
    with pytest.raises(InvalidArgumentError, match="synchronous"):
        SqliteEngine(db, synchronous=mode)
    assert not db.exists()


@pytest.mark.parametrize(("mode", "level"), [("FULL", 2), ("NORMAL", 1), ("normal", 1)])
def test_synchronous_mode_is_applied(db: Path, mode: str, level: int) -> None:
    """The chosen synchronous level is set on the engine's connections."""
    with SqliteEngine(db, synchronous=mode) as e:
        conn = e._acquire()
        try:
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == level
        finally:
            e._release(conn)


@pytest.mark.parametrize("option", ["lease_timeout", "poll_interval", "busy_timeout"])
@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf")])
def test_durations_must_be_positive(db: Path, option: str, value: float) -> None:
    """Zero, negative, NaN and infinite durations are InvalidArgumentError."""
    with pytest.raises(InvalidArgumentError, match=option):
        SqliteEngine(db, **{option: value})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Reads and commits


def test_versionstamps_increase_across_reopen(db: Path) -> None:
    """Each commit gets a larger versionstamp than the last, also after reopening."""
    stamps = []
    for _ in range(3):
        with SqliteEngine(db) as e:
            for _ in range(2):
                outcome = e.atomic_write(AtomicWrite(mutations=(set_(k("a")),)))
                stamps.append(outcome.versionstamp)
            # A commit without mutations still gets a fresh versionstamp.
            stamps.append(e.atomic_write(AtomicWrite()).versionstamp)
    counters = [versionstamp_to_counter(s) for s in stamps if s is not None]
    assert counters == list(range(1, 10))


def test_range_reads_forward_reverse_and_limit(engine: SqliteEngine) -> None:
    """Ranges return keys in byte order, or the last ``limit`` keys highest first."""
    engine.atomic_write(AtomicWrite(mutations=tuple(set_(k(c), c.encode()) for c in "abcde")))
    fwd, rev, empty, zero = engine.snapshot_read(
        [
            ReadRange(k("b"), k("e"), 10),
            ReadRange(k("a"), k("e"), 2, reverse=True),
            ReadRange(k("c"), k("c"), 10),
            ReadRange(k("a"), k("z"), 0),
        ]
    )
    assert [e.value for e in fwd] == [b"b", b"c", b"d"]
    assert [e.value for e in rev] == [b"d", b"c"]
    assert empty == [] and zero == []


def test_checks_report_every_failed_index_and_write_nothing(engine: SqliteEngine) -> None:
    """Failed checks are all reported by index and none of the mutations is applied."""
    va = engine.atomic_write(AtomicWrite(mutations=(set_(k("a")),))).versionstamp
    vb = engine.atomic_write(AtomicWrite(mutations=(set_(k("b")),))).versionstamp
    outcome = engine.atomic_write(
        AtomicWrite(
            checks=(
                Check(k("a"), vb),  # stale
                Check(k("b"), vb),  # passes
                Check(k("c"), None),  # absent: passes
                Check(k("b"), None),  # present: fails
            ),
            mutations=(set_(k("c"), b"new"),),
        )
    )
    assert not outcome.ok and outcome.failed_checks == (0, 3)
    assert get(engine, k("c")) is None
    ok = engine.atomic_write(
        AtomicWrite(checks=(Check(k("a"), va), Check(k("c"), None)), mutations=(set_(k("c")),))
    )
    assert ok.ok and ok.failed_checks == ()


def test_mutations_apply_in_order_with_one_versionstamp(engine: SqliteEngine) -> None:
    """Several mutations to one key apply in order and every key gets the commit's stamp."""
    outcome = engine.atomic_write(
        AtomicWrite(
            mutations=(
                Mutation(k("n"), MutationKind.SUM, u64(5), VALUE_ENCODING_LE64),
                Mutation(k("n"), MutationKind.SUM, u64(2**64 - 1), VALUE_ENCODING_LE64),
                Mutation(k("n"), MutationKind.MAX, u64(10), VALUE_ENCODING_LE64),
                Mutation(k("n"), MutationKind.MIN, u64(7), VALUE_ENCODING_LE64),
                set_(k("gone")),
                Mutation(k("gone"), MutationKind.DELETE),
                Mutation(k("log"), MutationKind.SET_SUFFIX_VERSIONSTAMPED_KEY, b"l", 3),
            )
        )
    )
    assert outcome.versionstamp is not None
    n = get(engine, k("n"))
    assert n is not None and n.value == u64(7) and n.versionstamp == outcome.versionstamp
    assert get(engine, k("gone")) is None
    log = get(engine, versionstamped_key(k("log"), outcome.versionstamp))
    assert log is not None and log.value == b"l"


def test_kv_type_error_rolls_back_everything(engine: SqliteEngine) -> None:
    """SUM on a non-LE64 value raises KvTypeError and leaves no trace, not even a versionstamp."""
    first = engine.atomic_write(AtomicWrite(mutations=(set_(k("s"), b"text"),))).versionstamp
    assert first is not None
    with pytest.raises(KvTypeError):
        engine.atomic_write(
            AtomicWrite(
                mutations=(
                    set_(k("other")),
                    Mutation(k("s"), MutationKind.SUM, u64(1), VALUE_ENCODING_LE64),
                ),
                enqueues=(Enqueue(b"p", 3, 0),),
            )
        )
    assert get(engine, k("other")) is None
    assert engine.dequeue_next_message(0) is None
    after = engine.atomic_write(AtomicWrite()).versionstamp
    assert after is not None
    assert versionstamp_to_counter(after) == versionstamp_to_counter(first) + 1


def test_expired_keys_are_hidden_from_reads_and_checks(
    engine: SqliteEngine, clock: FakeClock
) -> None:
    """A key whose deadline passed is absent for point reads, ranges, checks and SUM."""
    now_ms = int(clock.now * 1000)
    engine.atomic_write(
        AtomicWrite(
            mutations=(
                set_(k("e"), b"soon", expire_at_ms=now_ms + 1000),
                Mutation(k("n"), MutationKind.SET, u64(5), VALUE_ENCODING_LE64, now_ms + 1000),
                set_(k("f"), b"keeps"),
            )
        )
    )
    entry = get(engine, k("e"))
    assert entry is not None
    clock.now += 1.0  # exactly at the deadline: expired
    assert get(engine, k("e")) is None
    [listed] = engine.snapshot_read([ReadRange(k("a"), k("z"), 10)])
    assert [x.key for x in listed] == [k("f")]
    assert engine.atomic_write(AtomicWrite(checks=(Check(k("e"), None),))).ok
    assert not engine.atomic_write(AtomicWrite(checks=(Check(k("e"), entry.versionstamp),))).ok
    engine.atomic_write(
        AtomicWrite(mutations=(Mutation(k("n"), MutationKind.SUM, u64(1), VALUE_ENCODING_LE64),))
    )
    n = get(engine, k("n"))
    assert n is not None and n.value == u64(1)
    clock.now += 3600  # SUM cleared the expiry
    assert get(engine, k("n")) is not None


def test_collect_expired_deletes_and_returns_next_deadline(
    engine: SqliteEngine, clock: FakeClock, db: Path
) -> None:
    """The collector deletes expired rows in batches and reports the next deadline."""
    now_ms = int(clock.now * 1000)
    engine.atomic_write(
        AtomicWrite(
            mutations=(
                *(set_(k(f"x{i:04}"), expire_at_ms=now_ms + 10) for i in range(2500)),
                set_(k("later"), expire_at_ms=now_ms + 60_000),
                set_(k("never")),
            )
        )
    )
    assert engine.collect_expired() == pytest.approx((now_ms + 10) / 1000)
    clock.now += 1
    seq = engine._signal.seq
    assert engine.collect_expired() == pytest.approx((now_ms + 60_000) / 1000)
    assert engine._signal.seq > seq
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT COUNT(*) FROM kv").fetchone()[0] == 2
    finally:
        conn.close()
    clock.now += 60
    assert engine.collect_expired() is None


def test_commit_storm_from_many_threads(engine: SqliteEngine) -> None:
    """Threads doing SUMs and check-and-set increments on one engine lose no update."""
    threads_n, per_thread = 6, 60
    stamps: list[bytes] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(per_thread):
            out = engine.atomic_write(
                AtomicWrite(
                    mutations=(Mutation(k("sum"), MutationKind.SUM, u64(1), VALUE_ENCODING_LE64),)
                )
            )
            assert out.versionstamp is not None
            while True:
                cur = get(engine, k("cas"))
                n = 0 if cur is None else int(cur.value)
                out = engine.atomic_write(
                    AtomicWrite(
                        checks=(Check(k("cas"), cur.versionstamp if cur else None),),
                        mutations=(set_(k("cas"), str(n + 1).encode()),),
                    )
                )
                if out.ok:
                    break
            with lock:
                stamps.append(out.versionstamp)  # type: ignore[arg-type]

    threads = [threading.Thread(target=work) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = threads_n * per_thread
    s, c = get(engine, k("sum")), get(engine, k("cas"))
    assert s is not None and s.value == u64(total)
    assert c is not None and int(c.value) == total
    assert len(set(stamps)) == total


def test_locked_file_waits_then_times_out_as_engine_error(db: Path) -> None:
    """A commit waits for another connection's lock, and gives EngineError past busy_timeout."""
    e = SqliteEngine(db, busy_timeout=0.3)
    e2 = SqliteEngine(db, busy_timeout=10)
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(EngineError, match="locked") as info:
            e.atomic_write(AtomicWrite(mutations=(set_(k("a")),)))
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        started = threading.Event()

        def release() -> None:
            started.wait()
            time.sleep(0.05)  # let the commit below block on the lock first
            other.execute("COMMIT")

        t = threading.Thread(target=release)
        t.start()
        started.set()
        assert e2.atomic_write(AtomicWrite(mutations=(set_(k("a")),))).ok
        t.join()
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
        e.close()
        e2.close()


# ---------------------------------------------------------------------------
# Queue


def enqueue(engine: SqliteEngine, payload: bytes, ready_at_ms: int, **kw: object) -> None:
    """Commits one message."""
    msg = Enqueue(payload, VALUE_ENCODING_BYTES, ready_at_ms, **kw)  # type: ignore[arg-type]
    assert engine.atomic_write(AtomicWrite(enqueues=(msg,))).ok


def test_queue_is_fifo_for_equal_ready_times_and_waits_for_delay(
    engine: SqliteEngine, clock: FakeClock
) -> None:
    """Messages come out by (ready time, enqueue order), and not before they are ready."""
    now_ms = int(clock.now * 1000)
    enqueue(engine, b"late", now_ms + 5000)
    for i in range(5):
        enqueue(engine, f"m{i}".encode(), now_ms)
    got = []
    for _ in range(5):
        m = engine.dequeue_next_message(0)
        assert m is not None and m.attempt == 1
        got.append(m.payload)
        m.finish(True)
        engine._check()
    assert got == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert engine.dequeue_next_message(0) is None
    clock.now += 5
    m = engine.dequeue_next_message(0)
    assert m is not None and m.payload == b"late"


def test_lease_holds_then_expires_and_message_is_redelivered(
    engine: SqliteEngine, clock: FakeClock
) -> None:
    """A leased message goes to nobody else until its lease ends; a stale finish does nothing."""
    # One retry left: the expired lease is a failed attempt that uses it.
    enqueue(engine, b"job", int(clock.now * 1000), backoff_schedule_ms=(0,))
    first = engine.dequeue_next_message(0)
    assert first is not None
    assert engine.dequeue_next_message(0) is None
    clock.now += 20
    assert first.renew_lease()  # now leased until +50 s
    clock.now += 29
    assert engine.dequeue_next_message(0) is None
    clock.now += 1  # the listener died: the lease ran out
    second = engine.dequeue_next_message(0)
    assert second is not None and second.payload == b"job"
    assert second.attempt == 2  # the abandoned delivery counts as an attempt
    assert not first.renew_lease()
    first.finish(True)  # stale token: ignored
    engine._check()
    assert engine.dequeue_next_message(0) is None
    second.finish(True)
    clock.now += 3600
    assert engine.dequeue_next_message(0) is None


def test_failed_message_is_retried_then_dead_lettered(
    engine: SqliteEngine, clock: FakeClock
) -> None:
    """Failures follow the backoff schedule, then the payload lands on every undelivered key."""
    enqueue(
        engine,
        b"pay",
        int(clock.now * 1000),
        keys_if_undelivered=(k("dead1"), k("dead2")),
        backoff_schedule_ms=(1000, 2000),
    )
    m = engine.dequeue_next_message(0)
    assert m is not None and m.attempt == 1
    m.finish(False)
    assert engine.dequeue_next_message(0) is None
    clock.now += 1
    m = engine.dequeue_next_message(0)
    assert m is not None and m.attempt == 2
    m.finish(False)
    clock.now += 1.999
    assert engine.dequeue_next_message(0) is None
    clock.now += 0.001
    m = engine.dequeue_next_message(0)
    assert m is not None and m.attempt == 3
    assert get(engine, k("dead1")) is None
    m.finish(False)
    d1, d2 = get(engine, k("dead1")), get(engine, k("dead2"))
    assert d1 is not None and d2 is not None
    assert d1.value == d2.value == b"pay" and d1.encoding == VALUE_ENCODING_BYTES
    assert d1.versionstamp == d2.versionstamp
    clock.now += 3600
    assert engine.dequeue_next_message(0) is None
    engine._check()


def test_messages_survive_reopen(db: Path, clock: FakeClock) -> None:
    """Enqueued and leased-but-unfinished messages are delivered after reopening."""
    with SqliteEngine(db, clock=clock) as e:
        # A retry left for the lease that runs out (an expired lease is a failed attempt).
        enqueue(e, b"a", int(clock.now * 1000), backoff_schedule_ms=(0,))
        enqueue(e, b"b", int(clock.now * 1000))
        assert e.dequeue_next_message(0) is not None  # leased, never finished
    clock.now += 31
    with SqliteEngine(db, clock=clock) as e:
        got = []
        while (m := e.dequeue_next_message(0)) is not None:
            got.append(m.payload)
            m.finish(True)
        # "a" comes back as a retry, ready after "b".
        assert got == [b"b", b"a"]


def test_each_message_goes_to_exactly_one_of_many_threads(engine: SqliteEngine) -> None:
    """Concurrent listeners on one engine split the messages with no duplicates."""
    now_ms = int(engine._clock() * 1000)
    for i in range(40):
        enqueue(engine, str(i).encode(), now_ms)
    got: list[bytes] = []
    lock = threading.Lock()

    def listen() -> None:
        while (m := engine.dequeue_next_message(0)) is not None:
            with lock:
                got.append(m.payload)
            m.finish(True)

    threads = [threading.Thread(target=listen) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got, key=int) == [str(i).encode() for i in range(40)]


def test_blocked_dequeue_wakes_on_commit_and_on_close(db: Path) -> None:
    """A blocked dequeue returns a message committed from another thread, and None on close."""
    e = SqliteEngine(db)
    results: list[object] = []
    waiting = threading.Event()

    def listen() -> None:
        waiting.set()
        results.append(e.dequeue_next_message(30))
        results.append(e.dequeue_next_message(30))

    t = threading.Thread(target=listen)
    t.start()
    waiting.wait()
    enqueue(e, b"hi", 0)
    deadline = time.monotonic() + 10
    while not results and time.monotonic() < deadline:
        time.sleep(0.005)
    assert results and results[0] is not None
    e.close()
    t.join(10)
    assert not t.is_alive() and results[1] is None
    assert e.dequeue_next_message(1) is None


# ---------------------------------------------------------------------------
# Watch, close, poller, vacuum


def test_watch_wakes_on_commit_and_on_expiry(db: Path) -> None:
    """A watch returns the current entries, then wakes for a commit and for an expiry."""
    with SqliteEngine(db) as e:
        e.atomic_write(AtomicWrite(mutations=(set_(k("a"), b"1"),)))
        stream = e.watch([k("a"), k("b")])
        first = stream.next()
        assert first is not None and first[0] is not None and first[1] is None
        # Quiet: the poller may report our own commit once (spurious wake-ups are allowed).
        assert None in [stream.next(timeout=0.05) for _ in range(3)]
        e.atomic_write(
            AtomicWrite(mutations=(set_(k("b"), b"2", expire_at_ms=int(time.time() * 1000) + 150),))
        )
        second = stream.next(timeout=10)
        assert second is not None and second[1] is not None and second[1].value == b"2"
        started = time.monotonic()
        third = stream.next(timeout=10)
        while third is not None and third[1] is not None:  # a spurious wake-up
            third = stream.next(timeout=10)
        assert third is not None and third[1] is None
        assert time.monotonic() - started < 5
        stream.close()
        with pytest.raises(KvClosedError):
            stream.next()


def test_close_is_idempotent_and_later_calls_raise(db: Path) -> None:
    """close() twice is fine; then reads, writes, watch and collect raise KvClosedError."""
    e = SqliteEngine(db)
    stream = e.watch([k("a")])
    stream.next()
    e.close()
    e.close()
    with pytest.raises(KvClosedError):
        e.snapshot_read([point(k("a"))])
    with pytest.raises(KvClosedError):
        e.atomic_write(AtomicWrite())
    with pytest.raises(KvClosedError):
        e.watch([k("a")])
    with pytest.raises(KvClosedError):
        e.collect_expired()
    with pytest.raises(KvClosedError):
        stream.next(timeout=1)


def test_idle_engine_has_no_poller_and_poller_sleeps_when_nobody_waits(db: Path) -> None:
    """The poller thread starts only for a waiter and has no waiter once the wait ends."""
    with SqliteEngine(db) as e:
        e.atomic_write(AtomicWrite(mutations=(set_(k("a")),)))
        e.snapshot_read([point(k("a"))])
        assert e._poller._thread is None
        assert e.dequeue_next_message(0.02) is None
        assert e._poller._thread is not None and e._poller.waiters == 0
        thread = e._poller._thread
    thread.join(5)
    assert not thread.is_alive()


def test_vacuum_reclaims_space(db: Path) -> None:
    """vacuum() shrinks the file after large deletions and keeps the data."""
    with SqliteEngine(db) as e:
        e.atomic_write(
            AtomicWrite(mutations=tuple(set_(k(f"{i:05}"), b"x" * 4000) for i in range(500)))
        )
        e.atomic_write(
            AtomicWrite(
                mutations=tuple(Mutation(k(f"{i:05}"), MutationKind.DELETE) for i in range(499))
            )
        )
        e.vacuum()
        size = db.stat().st_size
        assert size < 200_000
        assert get(e, k("00499")) is not None
        e._check()


# ---------------------------------------------------------------------------
# Several processes

CHILD = """
import sys
from kvmodel.engines.base import AtomicWrite, Check, Mutation, MutationKind, ReadRange
from kvmodel.engines.sqlite import SqliteEngine
path, n = sys.argv[1], int(sys.argv[2])
key = b"\\x02cas\\x00"
with SqliteEngine(path) as e:
    for _ in range(n):
        e.atomic_write(AtomicWrite(mutations=(
            Mutation(b"\\x02sum\\x00", MutationKind.SUM, (1).to_bytes(8, "little"), 2),)))
        while True:
            [found] = e.snapshot_read([ReadRange(key, key + b"\\x00", 1)])
            cur = found[0] if found else None
            value = int(cur.value) + 1 if cur else 1
            out = e.atomic_write(AtomicWrite(
                checks=(Check(key, cur.versionstamp if cur else None),),
                mutations=(Mutation(key, MutationKind.SET, str(value).encode(), 3),)))
            if out.ok:
                break
"""

NOTIFY_CHILD = """
import sys
from kvmodel.engines.base import AtomicWrite, Mutation, MutationKind
from kvmodel.engines.sqlite import SqliteEngine
with SqliteEngine(sys.argv[1]) as e:
    print("ready", flush=True)
    sys.stdin.readline()
    e.atomic_write(AtomicWrite(mutations=(Mutation(b"\\x02w\\x00", MutationKind.SET, b"x", 3),)))
"""


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
def test_two_processes_commit_to_one_file_without_lost_updates(db: Path) -> None:
    """Two processes doing SUMs and check-and-set increments on one file lose nothing."""
    SqliteEngine(db).close()
    n = 150
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(n)], env=_child_env(), cwd=REPO)
        for _ in range(2)
    ]
    for p in procs:
        assert p.wait(timeout=90) == 0
    with SqliteEngine(db) as e:
        s, c = get(e, k("sum")), get(e, k("cas"))
        assert s is not None and s.value == u64(2 * n)
        assert c is not None and int(c.value) == 2 * n
        assert c.versionstamp is not None and versionstamp_to_counter(c.versionstamp) == 4 * n
        e._check()


@pytest.mark.slow
def test_watch_wakes_on_another_process_commit(db: Path) -> None:
    """A commit by another process wakes a blocked watch through the data_version poller."""
    with (
        SqliteEngine(db) as e,
        subprocess.Popen(
            [sys.executable, "-c", NOTIFY_CHILD, str(db)],
            env=_child_env(),
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as proc,
    ):
        try:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().strip() == "ready"
            stream = e.watch([k("w")])
            assert stream.next() == [None]
            proc.stdin.write("go\n")
            proc.stdin.flush()
            entries = stream.next(timeout=20)
            while entries == [None]:  # a wake-up before the commit landed
                entries = stream.next(timeout=20)
            assert entries is not None and entries[0] is not None and entries[0].value == b"x"
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.slow
def test_dequeue_across_processes_gets_enqueued_message(db: Path) -> None:
    """A message enqueued by one engine is leased once by another on the same file."""
    producer = SqliteEngine(db)
    consumer = SqliteEngine(db)
    try:
        enqueue(producer, b"x", 0)
        m = consumer.dequeue_next_message(5)
        assert m is not None and m.payload == b"x"
        assert producer.dequeue_next_message(0) is None
        m.finish(True)
        assert producer.dequeue_next_message(0) is None
    finally:
        producer.close()
        consumer.close()


def test_queue_payload_columns_round_trip(db: Path) -> None:
    """Undelivered keys and the backoff schedule are stored as msgpack lists."""
    with SqliteEngine(db) as e:
        enqueue(e, b"p", 0, keys_if_undelivered=(k("a"),), backoff_schedule_ms=(5, 6))
    conn = sqlite3.connect(db)
    try:
        keys, schedule = conn.execute(
            "SELECT keys_if_undelivered, backoff_schedule FROM queue"
        ).fetchone()
    finally:
        conn.close()
    assert msgpack.unpackb(keys) == [k("a")] and msgpack.unpackb(schedule) == [5, 6]


# ---------------------------------------------------------------------------
# Closing and forking


def _kvmodel_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("kvmodel")]


def test_close_ends_every_kvmodel_thread_and_connection(db: Path) -> None:
    """Kv.close() returns once the collector, poller and lease threads and all connections ended."""
    # Threads of Kvs that earlier tests (or doctests) left open are not this Kv's.
    before = {t.ident for t in threading.enumerate()}
    kv = km.open_kv(db, lease_timeout=0.3)
    engine = kv.engine
    assert isinstance(engine, SqliteEngine)
    kv.set(("soon",), 1, expire_in=0.01)
    kv.set(("later",), 1, expire_in=3600)  # the collector then sleeps until this one
    handling = threading.Event()
    release = threading.Event()

    def handler(value: object) -> None:
        handling.set()
        release.wait(10)

    kv.enqueue("m")
    listener = threading.Thread(target=kv.listen_queue, args=(handler,))
    listener.start()
    stream = kv.watch([("w",)])
    next(stream)
    watcher = threading.Thread(target=lambda: list(stream))  # blocks on the poller
    watcher.start()
    assert handling.wait(10)
    names = set(_kvmodel_threads())
    assert {"kvmodel-expiry", "kvmodel-sqlite-poller", "kvmodel-lease"} <= names, names
    kv.close()
    mine = [
        t.name
        for t in threading.enumerate()
        if t.ident not in before and t.name.startswith("kvmodel")
    ]
    assert mine == []
    assert engine._conns == set() and engine._pool == []
    release.set()
    listener.join(10)
    watcher.join(10)
    assert not listener.is_alive() and not watcher.is_alive()


def test_close_interrupts_a_commit_waiting_for_the_lock(db: Path) -> None:
    """A commit waiting for a lock raises KvClosedError when the engine closes."""
    engine = SqliteEngine(db, busy_timeout=60)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    outcome: list[BaseException] = []

    def commit() -> None:
        try:
            engine.atomic_write(AtomicWrite(mutations=(set_(k("a")),)))
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=commit)
    t.start()
    try:
        while not engine._conns - set(engine._pool) - {engine._poller_conn}:
            time.sleep(0.001)  # until the commit holds a connection
        engine.close()
        assert engine._conns == set()
        t.join(10)
        assert not t.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], KvClosedError)
    finally:
        other.execute("ROLLBACK")
        other.close()


def _in_child(body: object) -> int:
    """Runs ``body()`` in a forked child; returns its exit code (0: it returned normally)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()  # type: ignore[operator]
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_kv_open_at_fork_raises_in_the_child_and_keeps_working_in_the_parent(db: Path) -> None:
    """In a forked child, a Kv open at the fork and its file raise EngineError; close() works."""
    kv = km.open_kv(db)
    kv.set(("a",), 1)
    stream = kv.watch([("a",)])
    next(stream)

    def child() -> None:
        calls = (
            lambda: kv.get(("a",)),
            lambda: kv.set(("a",), 2),
            lambda: next(stream),  # would wait for ever: nothing wakes it in the child
            lambda: km.open_kv(db),
        )
        for call in calls:
            with pytest.raises(EngineError, match="fork"):
                call()
        with pytest.raises(EngineError, match="fork"):
            kv.listen_queue(lambda value: None)
        kv.close()
        assert kv.closed

    try:
        assert _in_child(child) == 0
        assert kv.get(("a",)).value == 1
        stream.close()
        assert kv.set(("a",), 3).ok
    finally:
        kv.close()
    with km.open_kv(db) as again:
        assert again.get(("a",)).value == 3


def test_kv_closed_before_fork_lets_the_child_open_the_file(db: Path) -> None:
    """After close(), forked children open the file afresh and every acknowledged sum counts."""
    kv = km.open_kv(db)
    kv.set(("n",), km.KvU64(0), expire_in=0.001)  # keeps the collector busy
    kv.close()

    def child() -> None:
        with pytest.raises(KvClosedError):  # closed, not "crossed a fork"
            kv.engine.collect_expired()
        with km.open_kv(db) as mine:
            for _ in range(20):
                assert mine.atomic().sum(("n",), km.KvU64(1)).commit().ok

    codes = [_in_child(child) for _ in range(3)]
    assert codes == [0, 0, 0]
    with km.open_kv(db) as kv:
        assert kv.get(("n",)).value == km.KvU64(60)
