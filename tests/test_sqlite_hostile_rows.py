"""Damaged rows in a SQLite file (kvmodel.engines.sqlite): typed errors, and a queue that goes on.

Each test writes a kvmodel file, closes it, damages rows with the raw
``sqlite3`` module (as another program, a hand edit or a bad restore could),
and opens the file with kvmodel again. SQLite keeps any type in any column, so
every column kvmodel reads must be checked before it is used.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

import kvmodel as km
from kvmodel.engines.sqlite import SqliteEngine
from kvmodel.keys import encode_key
from kvmodel.testing.conformance_queue import WAIT_TIMEOUT, Recorder, listening

KEY = ("doc", 1)
ENC_KEY = encode_key(KEY)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A closed kvmodel file holding ("doc", 1) = "fine" and ("other",) = 1."""
    p = tmp_path / "hostile.db"
    with km.open_kv(p) as kv:
        kv.set(KEY, "fine")
        kv.set(("other",), 1)
    return p


def damage(path: Path, sql: str, *params: object) -> None:
    """Runs one statement on the closed file with the raw sqlite3 module."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def reopen(path: Path) -> Iterator[Callable[[], km.Kv]]:
    """Opens the (damaged) file with kvmodel; closes every Kv at teardown."""
    opened: list[km.Kv] = []

    def open_() -> km.Kv:
        kv = km.open_kv(path)
        opened.append(kv)
        return kv

    yield open_
    for kv in opened:
        kv.close()


DAMAGED_KV_COLUMNS = [
    pytest.param("v = 'text'", "str, not bytes", id="text-value"),
    pytest.param("v = 1.5", "float, not bytes", id="real-value"),
    pytest.param("v = 300000000, v_encoding = 3", "int, not bytes", id="int-value-300MB"),
    pytest.param("v = 1099511627776, v_encoding = 3", "int, not bytes", id="int-value-2**40"),
    pytest.param("v = zeroblob(70000)", "70000 bytes", id="long-value"),
    pytest.param("v_encoding = 99", "unknown encoding 99", id="unknown-encoding"),
    pytest.param("v_encoding = 'x'", "unknown encoding 'x'", id="text-encoding"),
    pytest.param("version = 'x'", "version", id="text-version"),
    pytest.param("version = -5", "version", id="negative-version"),
    pytest.param("expiration_ms = 'soon'", "expiry", id="text-expiry"),
    pytest.param("expiration_ms = 1e300", "expiry", id="real-expiry"),
]


@pytest.mark.parametrize(("change", "says"), DAMAGED_KV_COLUMNS)
def test_every_read_of_a_damaged_kv_row_raises_decode_error_naming_the_key(
    path: Path, reopen: Callable[[], km.Kv], change: str, says: str
) -> None:
    """get, get_many, list, watch, check and sum on a damaged row raise DecodeError."""
    damage(path, f"UPDATE kv SET {change} WHERE k = ?", ENC_KEY)
    kv = reopen()
    reads: list[Callable[[], object]] = [
        lambda: kv.get(KEY),
        lambda: kv.get_many([KEY, ("other",)]),
        lambda: list(kv.list(prefix=("doc",))),
        lambda: list(kv.list(prefix=("doc",), limit=1)),
        lambda: next(iter(kv.watch([KEY]))),
    ]
    if "version" not in change:
        # sum reads the value and its expiry, and overwrites the version.
        reads.append(lambda: kv.atomic().sum(KEY, km.KvU64(1)).commit())
    if "version" in change or "expiration" in change:
        # A check reads only these two columns of the row.
        reads.append(lambda: kv.atomic().check((KEY, None)).set(("x",), 1).commit())
    for read in reads:
        with pytest.raises(km.DecodeError) as info:
            read()
        message = str(info.value)
        assert "('doc', 1)" in message and says in message, message
    # The rest of the file is unharmed, and the failed commits wrote nothing.
    assert kv.get(("other",)).value == 1
    assert kv.get(("x",)).versionstamp is None


def test_a_damaged_expiry_does_not_stop_the_expiry_collector(
    path: Path, reopen: Callable[[], km.Kv]
) -> None:
    """A text expiration_ms is no deadline for the collector; expiring keys still expire."""
    damage(path, "UPDATE kv SET expiration_ms = 'soon' WHERE k = ?", ENC_KEY)
    kv = reopen()
    engine = kv.engine
    assert isinstance(engine, SqliteEngine)
    assert engine.collect_expired() is None
    kv.set(("short",), 1, expire_in=3600)
    deadline = engine.collect_expired()
    assert deadline is not None and deadline > 0


def test_a_stored_key_longer_than_any_key_raises_in_a_listing(
    path: Path, reopen: Callable[[], km.Kv]
) -> None:
    """A listing that meets a stored key longer than 2049 bytes raises DecodeError."""
    long_key = encode_key(("doc", "x" * 3000))
    damage(
        path,
        "INSERT INTO kv (k, v, v_encoding, version) VALUES (?, X'c0', 1, 1)",
        long_key,
    )
    kv = reopen()
    with pytest.raises(km.DecodeError, match="longer than any key"):
        list(kv.list(prefix=("doc",)))


# ---------------------------------------------------------------------------
# Queue rows


def enqueue_and_close(path: Path, *values: str, **options: Any) -> None:
    with km.open_kv(path) as kv:
        for value in values:
            kv.enqueue(value, **options)


def first_message_id(path: Path) -> int:
    return int(rows(path, "SELECT MIN(id) FROM queue")[0][0])


def deliveries_after_damage(
    reopen: Callable[[], km.Kv], caplog: pytest.LogCaptureFixture
) -> tuple[Recorder, list[str]]:
    """Listens until "next" (enqueued after the damaged message) is delivered.

    Returns the deliveries and the queue warnings logged.
    """
    caplog.set_level(logging.WARNING, logger="kvmodel.queue")
    kv = reopen()
    got = Recorder()
    with listening(kv, got.add):
        got.wait_for_value("next")
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "kvmodel.queue" and r.levelno == logging.WARNING
    ]
    return got, warnings


@pytest.mark.parametrize(
    "schedule",
    [b"\xc1", msgpack.packb("text"), msgpack.packb([-1]), msgpack.packb([1] * 6), b"\x00" * 9],
    ids=["invalid-msgpack", "not-a-list", "negative", "too-long", "trailing-bytes"],
)
def test_a_message_with_a_damaged_schedule_is_dead_lettered_and_the_listener_goes_on(
    path: Path,
    reopen: Callable[[], km.Kv],
    caplog: pytest.LogCaptureFixture,
    schedule: bytes,
) -> None:
    """A bad backoff_schedule with sound dead-letter keys: dead-lettered, never delivered."""
    dead = ("dead", "job")
    enqueue_and_close(path, "job", keys_if_undelivered=[dead])
    enqueue_and_close(path, "next")
    message_id = first_message_id(path)
    damage(path, "UPDATE queue SET backoff_schedule = ? WHERE id = ?", schedule, message_id)
    got, warnings = deliveries_after_damage(reopen, caplog)
    assert got.values == ["next"]
    assert rows(path, f"SELECT COUNT(*) FROM queue WHERE id = {message_id}") == [(0,)]
    with km.open_kv(path) as again:
        assert again.get(dead).value == "job"
    assert any(
        f"queue message {message_id}" in w and "backoff" in w and repr(dead) in w for w in warnings
    ), warnings


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("keys_if_undelivered", b"\xc1"),
        ("keys_if_undelivered", msgpack.packb([b"\xff\xff"])),
        ("keys_if_undelivered", msgpack.packb([b"\x02" + b"a" * 3000 + b"\x00"])),
        ("keys_if_undelivered", msgpack.packb(["text key"])),
        ("payload", "text payload"),
        ("payload", 300000000),
        ("encoding", 42),
    ],
    ids=[
        "keys-invalid-msgpack",
        "keys-not-a-key-encoding",
        "keys-too-long",
        "keys-str",
        "payload-text",
        "payload-int",
        "encoding-unknown",
    ],
)
def test_a_message_that_cannot_be_dead_lettered_is_quarantined(
    path: Path,
    reopen: Callable[[], km.Kv],
    caplog: pytest.LogCaptureFixture,
    column: str,
    value: object,
) -> None:
    """Bad dead-letter keys or a bad value: moved verbatim to queue_quarantine, nothing written."""
    enqueue_and_close(path, "job", keys_if_undelivered=[("dead", "job")])
    enqueue_and_close(path, "next")
    message_id = first_message_id(path)
    damage(path, f"UPDATE queue SET {column} = ? WHERE id = ?", value, message_id)
    got, warnings = deliveries_after_damage(reopen, caplog)
    assert got.values == ["next"]
    # ("next" may still be leased: the Kv closed right after its handler ran.)
    assert rows(path, f"SELECT COUNT(*) FROM queue WHERE id = {message_id}") == [(0,)]
    quarantined = rows(path, f"SELECT id, reason, {column} FROM queue_quarantine")
    assert len(quarantined) == 1
    assert quarantined[0][0] == message_id and quarantined[0][2] == value
    assert f"queue message {message_id}" in quarantined[0][1]
    with km.open_kv(path) as again:
        # No user listing sees the quarantine, and no dead-letter key was written.
        assert [e.key for e in again.list(prefix=())] == [("doc", 1), ("other",)]
    assert any("queue_quarantine" in w and f"queue message {message_id}" in w for w in warnings)


def test_a_message_with_a_damaged_attempt_count_is_dead_lettered(
    path: Path, reopen: Callable[[], km.Kv], caplog: pytest.LogCaptureFixture
) -> None:
    """A text attempt count is damage too: the message goes to its dead-letter keys."""
    enqueue_and_close(path, "job", keys_if_undelivered=[("dead",)])
    enqueue_and_close(path, "next")
    damage(path, "UPDATE queue SET attempt = 'many' WHERE id = ?", first_message_id(path))
    got, warnings = deliveries_after_damage(reopen, caplog)
    assert got.values == ["next"]
    with km.open_kv(path) as again:
        assert again.get(("dead",)).value == "job"
    assert any("attempt count" in w for w in warnings), warnings


def test_a_row_damaged_while_leased_is_moved_aside_when_it_fails(
    path: Path, reopen: Callable[[], km.Kv], caplog: pytest.LogCaptureFixture
) -> None:
    """Damage between delivery and settling: the failed message is quarantined, not left leased."""
    caplog.set_level(logging.WARNING, logger="kvmodel.queue")
    enqueue_and_close(path, "job", keys_if_undelivered=[("dead",)], backoff_schedule=[0.01])
    kv = reopen()
    message = kv.engine.dequeue_next_message(WAIT_TIMEOUT)
    assert message is not None
    # Another connection damages the row while its handler runs (WAL lets it write).
    damage(path, "UPDATE queue SET keys_if_undelivered = X'c1'")
    message.finish(False)
    assert rows(path, "SELECT COUNT(*) FROM queue") == [(0,)]
    assert len(rows(path, "SELECT id FROM queue_quarantine")) == 1
    assert kv.get(("dead",)).versionstamp is None


def test_two_listeners_both_go_on_past_a_damaged_message(
    path: Path, reopen: Callable[[], km.Kv]
) -> None:
    """Neither of two listeners is poisoned by a damaged row: every sound message is delivered."""
    enqueue_and_close(path, "bad", keys_if_undelivered=[("dead",)])
    enqueue_and_close(path, *(f"m{i}" for i in range(20)))
    damage(path, "UPDATE queue SET payload = 12 WHERE id = ?", first_message_id(path))
    got = Recorder()
    lock = threading.Lock()

    def handler(value: Any) -> None:
        with lock:
            got.add(value)

    a, b = reopen(), reopen()
    with listening(a, handler), listening(b, handler):
        got.wait_for(20)
    assert sorted(got.values) == sorted(f"m{i}" for i in range(20))


# ---------------------------------------------------------------------------
# Rows no read reaches


@pytest.mark.parametrize(
    ("key", "says"),
    [
        pytest.param("doc", "stored as TEXT", id="text-key"),
        pytest.param(7, "stored as INTEGER", id="int-key"),
        pytest.param(1.5, "stored as REAL", id="real-key"),
        pytest.param(b"\x7f\xfe", "do not decode", id="undecodable-key"),
    ],
)
def test_unreachable_rows_names_each_row_no_read_reaches(
    path: Path, reopen: Callable[[], km.Kv], key: object, says: str
) -> None:
    """A key no get or list can find (or decode) is reported by SqliteEngine.unreachable_rows."""
    damage(path, "INSERT INTO kv VALUES (?, X'c0', 1, 1, NULL)", key)
    kv = reopen()
    engine = kv.engine
    assert isinstance(engine, SqliteEngine)
    if not isinstance(key, bytes):  # (a listing that meets undecodable bytes raises)
        assert [e.key for e in kv.list(prefix=())] == [("doc", 1), ("other",)]
    found = engine.unreachable_rows()
    assert len(found) == 1 and says in str(found[0]) and "delete" in str(found[0]), found


def test_a_kvmodel_file_has_no_unreachable_rows(reopen: Callable[[], km.Kv]) -> None:
    engine = reopen().engine
    assert isinstance(engine, SqliteEngine)
    assert engine.unreachable_rows() == []


def test_a_text_encoding_in_an_untyped_table_is_refused_not_read_as_none(
    path: Path, reopen: Callable[[], km.Kv]
) -> None:
    """'1' stays TEXT only in a kv table declared without types: every read refuses it."""
    damage(path, "ALTER TABLE kv RENAME TO kv_typed")
    damage(path, "CREATE TABLE kv (k PRIMARY KEY, v, v_encoding, version, expiration_ms)")
    damage(path, "INSERT INTO kv SELECT * FROM kv_typed")
    damage(path, "DROP TABLE kv_typed")
    damage(path, "UPDATE kv SET v_encoding = '1' WHERE k = ?", ENC_KEY)
    assert rows(path, "SELECT typeof(v_encoding) FROM kv ORDER BY k")[0] == ("text",)
    kv = reopen()
    reads: list[Callable[[], object]] = [
        lambda: kv.get(KEY),
        lambda: kv.get_many([KEY, ("other",)]),
        lambda: list(kv.list(prefix=("doc",))),
        lambda: next(iter(kv.watch([KEY]))),
    ]
    for read in reads:
        with pytest.raises(km.DecodeError, match=r"\('doc', 1\).*unknown encoding '1'"):
            read()


def test_deno_files_report_unreachable_rows_too(tmp_path: Path) -> None:
    """Deno's layout has the same key column, and the same check: a TEXT key is reported."""
    pytest.importorskip("v8serialize")
    from kvmodel.engines.denofile import DenoFileEngine

    path = tmp_path / "deno.sqlite3"
    with km.open_kv(f"deno:{path}") as kv:
        kv.set(KEY, "fine")
    damage(path, "INSERT INTO kv (k, v, v_encoding, version) VALUES ('doc', X'01', 3, 1)")
    with km.open_kv(f"deno:{path}") as kv:
        engine = kv.engine
        assert isinstance(engine, DenoFileEngine)
        assert [e.key for e in kv.list(prefix=())] == [KEY]
        found = engine.unreachable_rows()
        assert len(found) == 1 and "stored as TEXT" in str(found[0]), found
        report = km.check_documents(kv)
        assert not report.ok and any("stored as TEXT" in line for line in report.unreachable)
