"""Bad input gets a clear kvmodel error and changes nothing.

Targets: ``kvmodel.keys.decode_key``, cursor decoding in ``Kv.list``,
``kvmodel._values.decode_value`` (hypothesis, arbitrary bytes and text), every
public ``Kv`` method with wrong types and out-of-range options (table-driven,
on a SQLite file that must stay byte-for-byte the same), and ``open_kv`` on
files kvmodel must refuse without touching them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import math
import os
import sqlite3
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kvmodel as km
from kvmodel._values import decode_value
from kvmodel.keys import decode_key, encode_key

LONG = os.environ.get("KVMODEL_TORTURE", "").lower() == "long"
FUZZ = settings(
    max_examples=20_000 if LONG else 300,
    deadline=2000,  # a hang would blow through this; a slow shared CPU does not
    suppress_health_check=[HealthCheck.too_slow],
)
TRIED: dict[str, int] = {}
"""Inputs tried per fuzz target (printed by the last test of the module)."""


@pytest.fixture(scope="module", autouse=True)
def _report_fuzz_counts() -> Iterator[None]:
    """Prints how many inputs each fuzz target tried, for the reliability figures."""
    yield
    print(f"\nbad-input fuzz: {TRIED}")


def _tried(name: str) -> None:
    TRIED[name] = TRIED.get(name, 0) + 1


@FUZZ
@given(st.binary(max_size=64) | st.builds(lambda k: encode_key(k) + b"\x02", st.just(("a", 1))))
def test_decode_key_raises_only_kvmodel_errors(data: bytes) -> None:
    """decode_key on arbitrary bytes returns a key or raises a KvError, nothing else."""
    _tried("decode_key")
    try:
        key = decode_key(data)
    except km.KvError:
        return
    assert isinstance(key, tuple)


@FUZZ
@given(
    st.binary(max_size=128),
    st.sampled_from([1, 2, 3]) | st.integers(min_value=-(2**70), max_value=2**70),
)
def test_decode_value_raises_only_kvmodel_errors(data: bytes, encoding: int) -> None:
    """decode_value on arbitrary bytes and encodings returns a value or raises a KvError."""
    _tried("decode_value")
    with contextlib.suppress(km.KvError):
        decode_value(data, encoding)


@pytest.fixture(scope="module")
def listing_kv() -> Any:
    """A memory Kv with a few keys under ("a",) for the cursor fuzz."""
    with km.open_kv() as kv:
        for i in range(5):
            kv.set(("a", i), i)
            kv.set(("a", str(i)), i)
        yield kv


@FUZZ
@given(
    cursor=st.text(max_size=40)
    | st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).decode()),
    ranged=st.booleans(),
    reverse=st.booleans(),
)
def test_cursor_decoding_raises_only_kvmodel_errors(
    listing_kv: km.Kv, cursor: str, ranged: bool, reverse: bool
) -> None:
    """A listing resumed from an arbitrary cursor yields entries or raises a KvError."""
    _tried("cursor")
    try:
        if ranged:
            it = listing_kv.list(start=("a", 1), end=("a", "3"), cursor=cursor, reverse=reverse)
        else:
            it = listing_kv.list(prefix=("a",), cursor=cursor, reverse=reverse)
        entries = list(it)
    except km.KvError:
        return
    assert all(e.key[0] == "a" for e in entries)


# -- the table of bad calls ----------------------------------------------------------

BIG = "x" * 3000
BAD_CALLS: list[tuple[str, Callable[[km.Kv], object]]] = [
    ("get int key", lambda kv: kv.get(5)),  # type: ignore[arg-type]
    ("get complex part", lambda kv: kv.get(("a", 3j))),
    ("get None part", lambda kv: kv.get(("a", None))),
    ("get consistency", lambda kv: kv.get(("a",), consistency="bogus")),
    ("get huge key", lambda kv: kv.get((BIG,))),
    ("get_many str", lambda kv: kv.get_many("abc")),
    ("get_many 11 keys", lambda kv: kv.get_many([("a", i) for i in range(11)])),
    ("get_many bad part", lambda kv: kv.get_many([("a", object())])),
    ("get_many consistency", lambda kv: kv.get_many([("a",)], consistency=1)),  # type: ignore[arg-type]
    ("set empty key", lambda kv: kv.set((), 1)),
    ("set set value", lambda kv: kv.set(("a",), {1, 2})),
    ("set object value", lambda kv: kv.set(("a",), object())),
    ("set negative expiry", lambda kv: kv.set(("a",), 1, expire_in=-1)),
    ("set nan expiry", lambda kv: kv.set(("a",), 1, expire_in=math.nan)),
    ("set inf expiry", lambda kv: kv.set(("a",), 1, expire_in=math.inf)),
    ("set str expiry", lambda kv: kv.set(("a",), 1, expire_in="1")),
    ("set huge key", lambda kv: kv.set((BIG,), 1)),
    ("set huge value", lambda kv: kv.set(("a",), b"x" * 70_000)),
    ("delete empty key", lambda kv: kv.delete(())),
    ("delete list part", lambda kv: kv.delete(("a", []))),
    ("delete int key", lambda kv: kv.delete(7)),  # type: ignore[arg-type]
    ("list start outside prefix", lambda kv: list(kv.list(prefix=("a",), start=("b",)))),
    ("list start alone", lambda kv: list(kv.list(start=("a",)))),
    ("list end alone", lambda kv: list(kv.list(end=("a",)))),
    ("list start after end", lambda kv: list(kv.list(start=("b",), end=("a",)))),
    (
        "list prefix start end",
        lambda kv: list(kv.list(prefix=("a",), start=("a", 1), end=("a", 2))),
    ),
    ("list limit 0", lambda kv: list(kv.list(prefix=("a",), limit=0))),
    ("list limit -1", lambda kv: list(kv.list(prefix=("a",), limit=-1))),
    ("list limit float", lambda kv: list(kv.list(prefix=("a",), limit=1.5))),  # type: ignore[arg-type]
    ("list batch 0", lambda kv: list(kv.list(prefix=("a",), batch_size=0))),
    ("list batch 2000", lambda kv: list(kv.list(prefix=("a",), batch_size=2000))),
    ("list bad cursor", lambda kv: list(kv.list(prefix=("a",), cursor="!!!"))),
    ("list consistency", lambda kv: list(kv.list(prefix=("a",), consistency="weak"))),
    ("list prefix int", lambda kv: list(kv.list(prefix=5))),  # type: ignore[arg-type]
    ("check bad stamp", lambda kv: kv.atomic().check((("a",), "nothex")).commit()),
    ("check int stamp", lambda kv: kv.atomic().check((("a",), 5)).commit()),  # type: ignore[arg-type]
    ("101 checks", lambda kv: kv.atomic().check(*[(("c", i), None) for i in range(101)]).commit()),
    ("sum negative", lambda kv: kv.atomic().sum(("n",), -1).commit()),
    ("sum 2**64", lambda kv: kv.atomic().sum(("n",), 2**64).commit()),
    ("sum float", lambda kv: kv.atomic().sum(("n",), 1.5).commit()),  # type: ignore[arg-type]
    ("min str", lambda kv: kv.atomic().min(("n",), "x").commit()),  # type: ignore[arg-type]
    ("sum on a str value", lambda kv: kv.atomic().set(("z",), 1).sum(("a", 0), 1).commit()),
    ("1001 mutations", lambda kv: _many_mutations(kv, 1001)),
    ("atomic set set value", lambda kv: kv.atomic().set(("z",), 1).set(("y",), {1}).commit()),
    ("enqueue negative delay", lambda kv: kv.enqueue(1, delay=-1)),
    ("enqueue 31 day delay", lambda kv: kv.enqueue(1, delay=31 * 86400)),
    ("enqueue 6 backoffs", lambda kv: kv.enqueue(1, backoff_schedule=[1] * 6)),
    ("enqueue negative backoff", lambda kv: kv.enqueue(1, backoff_schedule=[-1])),
    ("enqueue 2 h backoff", lambda kv: kv.enqueue(1, backoff_schedule=[7200])),
    ("enqueue str dead letters", lambda kv: kv.enqueue(1, keys_if_undelivered="abc")),
    ("enqueue empty dead letter", lambda kv: kv.enqueue(1, keys_if_undelivered=[()])),
    ("enqueue object", lambda kv: kv.enqueue(object())),
    (
        "atomic enqueue nan delay",
        lambda kv: kv.atomic().set(("z",), 1).enqueue(1, delay=math.nan).commit(),
    ),
    ("watch 11 keys", lambda kv: kv.watch([("w", i) for i in range(11)])),
    ("watch one bare key", lambda kv: kv.watch(("a", 1))),  # type: ignore[arg-type]
    ("watch str", lambda kv: kv.watch("abc")),
    ("watch bad part", lambda kv: kv.watch([("a", 3j)])),
    ("watch raw str", lambda kv: kv.watch([("a",)], raw="yes")),  # type: ignore[arg-type]
    ("listen concurrency 0", lambda kv: kv.listen_queue(print, concurrency=0)),
    ("listen concurrency -3", lambda kv: kv.listen_queue(print, concurrency=-3)),
    # Issue 11 item 5: edge arguments that raised untyped errors.
    ("set 1e17 s expiry", lambda kv: kv.set(("a",), 1, expire_in=1e17)),
    ("set timedelta.max expiry", lambda kv: kv.set(("a",), 1, expire_in=timedelta.max)),
    ("enqueue 10**400 delay", lambda kv: kv.enqueue(1, delay=10**400)),
    ("set part nested 1500 deep", lambda kv: kv.set(("a", _nested(1500)), 1)),
    ("get part nested 1500 deep", lambda kv: kv.get(("a", _nested(1500)))),
    ("check spaced stamp", lambda kv: kv.atomic().check((("a",), "00000000000000 01 00")).commit()),
    ("list 60 KB cursor", lambda kv: list(kv.list(prefix=("a",), cursor="A" * 60_000))),
    # Issue 11 item 2: values with no finite or no small encoding.
    ("set 601 shared lists", lambda kv: kv.set(("a",), _shared_lists(601))),
    ("set list holding itself twice", lambda kv: kv.set(("a",), _self_twice())),
]


def _many_mutations(kv: km.Kv, n: int) -> object:
    op = kv.atomic()
    for i in range(n):
        op.set(("m", i), i)
    return op.commit()


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def _shared_lists(n: int) -> list[Any]:
    """n lists, each holding the previous one twice: 2**n copies once encoded."""
    value: list[Any] = []
    for _ in range(n):
        value = [value, value]
    return value


def _self_twice() -> list[Any]:
    value: list[Any] = []
    value.extend([value, value])
    return value


def test_hostile_values_are_refused_in_bounded_time_and_memory() -> None:
    """Shared-reference and cyclic values are refused at once; prints time and peak memory."""
    # Before the bounding walk: 27 shared lists took 10.7 GiB and 71 s, 601
    # never finished, a list holding itself twice hung the error search.
    figures = []
    cases: list[tuple[str, Callable[[], object], type[km.KvError]]] = [
        ("27 shared lists", lambda: _shared_lists(27), km.LimitExceededError),
        ("601 shared lists", lambda: _shared_lists(601), km.LimitExceededError),
        ("list holding itself twice", _self_twice, km.EncodeError),
        ("100k nested lists", lambda: _nested(100_000), km.EncodeError),
        ("one 1 KB str 100k times", lambda: ["x" * 1000] * 100_000, km.LimitExceededError),
    ]
    with km.open_kv() as kv:
        for name, make, error in cases:
            value = make()
            started = time.perf_counter()
            with pytest.raises(error):
                kv.set(("k",), value)
            elapsed = time.perf_counter() - started
            tracemalloc.start()  # a second time, for memory (it slows Python down)
            try:
                with pytest.raises(error):
                    kv.set(("k",), value)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            figures.append(f"{name}: {elapsed * 1000:.1f} ms, peak {peak // 1024} KiB")
            assert peak < 16 * 65536, name  # a small multiple of the value limit
        assert kv.get(("k",)).versionstamp is None
    print("\nhostile values: " + "; ".join(figures))


def _file_digest(path: Path) -> str:
    """A hash of the database file after folding its WAL into it."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dump(kv: km.Kv) -> list[tuple[Any, Any, Any]]:
    return [(e.key, e.value, e.versionstamp) for e in kv.list(prefix=())]


def test_bad_calls_raise_typed_errors_and_leave_the_file_unchanged(tmp_path: Path) -> None:
    """Every bad call raises a KvError that is a TypeError or ValueError, and writes nothing."""
    db = tmp_path / "kv.db"
    with km.open_kv(db) as kv:
        for i in range(3):
            kv.set(("a", i), f"v{i}")
        last = kv.set(("n",), km.KvU64(1)).versionstamp
    before = _file_digest(db)
    wrong: list[str] = []
    with km.open_kv(db) as kv:
        dump = _dump(kv)
        for name, call in BAD_CALLS:
            try:
                call(kv)
            except km.KvError as exc:
                if not isinstance(exc, TypeError | ValueError):
                    wrong.append(f"{name}: {exc!r} is neither TypeError nor ValueError")
            except Exception as exc:
                wrong.append(f"{name}: {exc!r} is not a KvError")
            else:
                wrong.append(f"{name}: no error")
        assert _dump(kv) == dump
    after = _file_digest(db)
    print(
        f"\nbad-calls: tried={len(BAD_CALLS)} wrong={len(wrong)} file_unchanged={before == after}"
    )
    assert not wrong, "\n".join(wrong)
    assert after == before
    # No commit consumed a versionstamp: the next one follows the last good one.
    with km.open_kv(db) as kv:
        assert int(kv.set(("probe",), 1).versionstamp or "", 16) == int(last or "", 16) + 2**16


# -- files kvmodel must refuse ---------------------------------------------------


def _kvmodel_file(path: Path) -> None:
    with km.open_kv(path) as kv:
        for i in range(200):
            kv.set(("k", i), "v" * 200)


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 64)


def _truncated_header(path: Path) -> None:
    _kvmodel_file(path)
    path.write_bytes(path.read_bytes()[:60])


def _truncated_pages(path: Path) -> None:
    _kvmodel_file(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _other_application(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.commit()
    conn.close()


def _read_only(path: Path) -> None:
    _kvmodel_file(path)
    path.chmod(0o444)


REFUSED: list[tuple[str, Callable[[Path], None]]] = [
    ("garbage", _garbage),
    ("truncated header", _truncated_header),
    ("truncated pages", _truncated_pages),
    ("another application", _other_application),
    ("read-only", _read_only),
]


@pytest.mark.parametrize("name, make", REFUSED, ids=[n for n, _ in REFUSED])
def test_refused_files_give_engine_error_and_stay_unmodified(
    tmp_path: Path, name: str, make: Callable[[Path], None]
) -> None:
    """open_kv refuses a file that is not a usable kvmodel database, and leaves it as it was."""
    path = tmp_path / "kv.db"
    make(path)
    listing = sorted(os.listdir(tmp_path))
    data = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    with pytest.raises(km.EngineError):
        km.open_kv(path).close()
    assert path.read_bytes() == data
    assert path.stat().st_mtime_ns == mtime
    assert sorted(os.listdir(tmp_path)) == listing, "no -wal or -shm file may appear"


def test_missing_directory_gives_engine_error_and_creates_nothing(tmp_path: Path) -> None:
    """open_kv in a directory that does not exist raises EngineError and creates no directory."""
    with pytest.raises(km.EngineError):
        km.open_kv(tmp_path / "missing" / "kv.db").close()
    assert not (tmp_path / "missing").exists()
