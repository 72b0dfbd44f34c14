"""Tests of the ``kvmodel`` command line (kvmodel.cli, kvmodel.cli._app, _dump, _engine).

Commands run in-process through click's CliRunner (``invoke``) and as the
real console script in a subprocess (``script``), including dump | load
pipelines between SQLite and etcd.
"""

from __future__ import annotations

import enum
import io
import json
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import STORE_FACTORIES
from etcd_cluster import shared_cluster

import kvmodel as km
from kvmodel.cli import _dump as _cli_dump
from kvmodel.cli import main
from kvmodel.cli._app import cli
from kvmodel.engines.base import SnapshotSource
from kvmodel.testing import KvStore

SCRIPT = Path(sys.executable).with_name("kvmodel")


def invoke(*args: str, input: str | None = None) -> Any:
    """Runs a command in-process; errors are reported as main() reports them."""
    runner = CliRunner()
    return runner.invoke(cli, list(args), input=input, catch_exceptions=True)


def script(*args: str, input: str | None = None, cwd: Path | None = None) -> Any:
    """Runs the installed console script."""
    exe = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "kvmodel"]
    return subprocess.run(
        [*exe, *args], input=input, capture_output=True, text=True, timeout=120, cwd=cwd
    )


@pytest.fixture
def db(tmp_path: Path) -> str:
    """An empty SQLite store (read commands refuse a path with no store)."""
    path = str(tmp_path / "app.db")
    km.open_kv(path).close()
    return path


@pytest.mark.parametrize(
    "command",
    [
        ["ls", "{}", ""],
        ["get", "{}", "a"],
        ["stats", "{}"],
        ["dump", "{}"],
        ["watch", "{}", "a"],
        ["check", "{}", "kvmodel.examples.orders"],
        ["rm", "{}", "a"],
        ["vacuum", "{}"],
        ["ls", "deno:{}", ""],
    ],
)
def test_a_read_command_refuses_a_store_that_does_not_exist(
    tmp_path: Path, command: list[str]
) -> None:
    """A mistyped path is an error naming it, and no empty store appears there."""
    path = tmp_path / "typo.db"
    result = script(*(part.format(path) for part in command))
    assert result.returncode == 1
    assert f"There is no store at {str(path)!r}" in result.stderr
    assert not path.exists()


def test_a_write_command_creates_a_store_and_says_so(tmp_path: Path, db: str) -> None:
    """set, sum and load create a new store, with a note on stderr."""
    for command in (["set", "a", "1"], ["sum", "n", "1"]):
        path = tmp_path / f"{command[0]}.db"
        result = script(command[0], str(path), *command[1:])
        assert result.returncode == 0, result.stderr
        assert f"Created a new store at {str(path)!r}" in result.stderr
        assert path.exists()
    path = tmp_path / "load.db"
    result = script("load", str(path), "-", input=script("dump", db).stdout)
    assert result.returncode == 0, result.stderr
    assert "Created a new store" in result.stderr


# ---------------------------------------------------------------------------
# Keys and values


def test_set_get_ls_rm_round_trip_in_process(db: str) -> None:
    """set stores the parsed value, get and ls print it in the text form, rm deletes it."""
    assert (
        invoke("set", db, "users,ada", '{"name": "Ada", "big": 10000000000000000000000}').exit_code
        == 0
    )
    assert invoke("set", db, "users,bob", "--string", "Bob").exit_code == 0
    got = invoke("get", db, "users,ada")
    assert got.output.strip() == '{"name": "Ada", "big": 10000000000000000000000}'
    listing = invoke("ls", db, "users")
    assert listing.output.splitlines() == [
        'users,ada\t{"name": "Ada", "big": 10000000000000000000000}',
        'users,bob\t"Bob"',
    ]
    assert invoke("rm", db, "users,ada").exit_code == 0
    with km.open_kv(db) as kv:
        assert kv.get(("users", "ada")).value is None
        assert kv.get(("users", "bob")).value == "Bob"


def test_ls_json_limit_cursor_and_reverse(db: str) -> None:
    """--json prints typed JSON lines; --limit leaves a cursor that --cursor resumes from."""
    with km.open_kv(db) as kv:
        for i in range(5):
            kv.set(("n", i), {"i": i, "b": bytes([i])})
    first = invoke("ls", db, "n", "--limit", "2", "--json")
    rows = [json.loads(line) for line in first.stdout.splitlines()]
    assert [r["key"] for r in rows] == [["n", 0], ["n", 1]]
    assert rows[1]["value"] == {"i": 1, "b": {"$bytes": "AQ=="}}
    cursor = first.stderr.split("--cursor ")[1].strip()
    rest = invoke("ls", db, "n", "--cursor", cursor, "--keys-only")
    assert rest.stdout.splitlines() == ["n,2", "n,3", "n,4"]
    backwards = invoke("ls", db, "--start", "n,1", "--end", "n,4", "--reverse", "--keys-only")
    assert backwards.stdout.splitlines() == ["n,3", "n,2", "n,1"]


def test_sum_and_expire_in(db: str) -> None:
    """sum adds to a KvU64; set --expire-in gives the key a deadline."""
    assert invoke("sum", db, "hits", "5").stdout.strip() == "u64(5)"
    assert invoke("sum", db, "hits", "2").stdout.strip() == "u64(7)"
    assert invoke("set", db, "tmp", "1", "--expire-in", "300").exit_code == 0
    with km.open_kv(db) as kv:
        snapshot = _cli_dump.open_snapshot(kv)
        try:
            [entry] = [e for e in _cli_dump.snapshot_entries(snapshot) if e.expire_at_ms]
        finally:
            snapshot.close()
        assert 290_000 < entry.expire_at_ms - kv.now_ms() <= 300_000


def test_get_of_a_missing_key_exits_1(db: str) -> None:
    """A missing key is status 1 with a sentence on stderr, nothing on stdout."""
    result = script("get", db, "nobody")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == "kvmodel: the key nobody is not in the store."


def test_errors_are_one_line_and_debug_shows_the_traceback(db: str) -> None:
    """A bad value is one line on stderr with status 1; --debug adds the traceback."""
    result = script("set", db, "k", "hello")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("kvmodel: Cannot read the value 'hello'")
    debug = script("--debug", "set", db, "k", "hello")
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr


def test_usage_errors_exit_2() -> None:
    """An unknown command or a missing argument is click's usage error, status 2."""
    assert script("nonsense").returncode == 2
    assert script("get").returncode == 2


def test_version_and_help() -> None:
    """--version and version print the installed version; help lists every command."""
    assert script("--version").stdout.startswith("kvmodel ")
    assert script("version").stdout.startswith("kvmodel ")
    helptext = script("--help").stdout
    for command in (
        "ls", "get", "set", "rm", "sum", "watch", "dump", "load", "check",
        "rebuild-indexes", "migrate", "stats", "queue", "vacuum", "version", "demo",
    ):  # fmt: skip
        assert f"  {command} " in helptext or f"  {command}\n" in helptext, command


def test_a_closed_pipe_exits_quietly(db: str) -> None:
    """`kvmodel ls | head -1` prints one line and no BrokenPipeError."""
    with km.open_kv(db) as kv:
        for i in range(0, 5000, 500):
            op = kv.atomic()
            for j in range(i, i + 500):
                op.set(("k", j), "x" * 50)
            op.commit()
    exe = str(SCRIPT) if SCRIPT.exists() else f"{sys.executable} -m kvmodel"
    result = subprocess.run(
        f"{exe} ls {db} | head -1; echo status=${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.splitlines()[0].startswith("k,0\t")
    assert result.stdout.splitlines()[-1] == "status=0"
    assert result.stderr == ""


def test_without_the_extra_the_script_says_how_to_install_it(tmp_path: Path) -> None:
    """With click missing, a command prints the pip install line; --version still works."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["click"] = None  # as if the cli extra were not installed
        from kvmodel.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    missing = subprocess.run(
        [sys.executable, "-c", code, "ls", ":memory:"], capture_output=True, text=True
    )
    assert missing.returncode == 1
    assert "pip install 'kvmodel[cli]'" in missing.stderr
    version = subprocess.run(
        [sys.executable, "-c", code, "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0
    assert version.stdout.startswith("kvmodel ")


@pytest.mark.parametrize(
    ("blocked", "args", "extra"),
    [
        ("hypercorn", ["serve", ":memory:", "--port", "0", "--token", "t"], "connect"),
        ("google.protobuf", ["serve", ":memory:", "--port", "0", "--token", "t"], "connect"),
        ("httpx", ["ls", "http://127.0.0.1:9", ""], "connect"),
        ("rich", ["ls", ":memory:", ""], "cli"),
        (
            "v8serialize",
            ["serve", ":memory:", "--port", "0", "--token", "t", "--values", "v8"],
            "deno",
        ),
        ("v8serialize", ["get", "deno:{v8_file}", "a"], "deno"),
        ("v8serialize", ["set", "deno:{v8_file}", "b", "2"], "deno"),
    ],
)
def test_a_command_without_its_extra_names_the_extra(
    blocked: str, args: list[str], extra: str, tmp_path: Path
) -> None:
    """serve and KV Connect stores without the connect extra, a Deno file's V8 values
    or V8 serving without the deno extra, say what to install."""
    v8_file = tmp_path / "deno.sqlite3"
    with km.open_kv(f"deno:{v8_file}") as kv:
        kv.set(("a",), {"x": 1})  # a V8 value, as Deno stores it
    args = [a.format(v8_file=v8_file) for a in args]
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules[{blocked!r}] = None  # as if the extra were not installed
        from kvmodel.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert f"pip install 'kvmodel[{extra}]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_importing_kvmodel_does_not_import_click_or_rich() -> None:
    """The command line's libraries stay out of `import kvmodel`."""
    code = "import sys, kvmodel; print(sorted(m for m in ('click', 'rich') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_memory_store_and_main_in_process() -> None:
    """:memory: opens an empty store; main() returns the status instead of exiting."""
    assert main(["ls", ":memory:"]) == 0
    assert main(["get", ":memory:", "x"]) == 1


# ---------------------------------------------------------------------------
# Dump and load


def _fill(kv: km.Kv) -> None:
    kv.set(("users", "ada"), {"name": "Ada", "joined": km.utcnow(), "tags": ["a", 1, 2.5]})
    kv.set(("bytes", b"\x00\xff", -0.0, True, 10**30), b"\x00raw")
    kv.set(("counter",), km.KvU64(2**64 - 1))
    kv.set(("nan", float("nan")), float("nan"))
    kv.set(("expiring", 1), "soon", expire_in=600)
    op = kv.atomic()
    for i in range(300):
        op.set(("bulk", i), {"i": i, "pad": "p" * 100})
    op.commit()


class Tag(km.Model, prefix="cli_tags"):
    id: str = km.field(primary_key=True)
    name: str
    by_name = km.Unique("name")


def _content(kv: km.Kv) -> list[tuple[bytes, bytes, int, int | None]]:
    """Every entry's encoded key, value, encoding and deadline, from one snapshot."""
    snapshot = _cli_dump.open_snapshot(kv)
    try:
        return [
            (e.entry.key, e.entry.value, e.entry.encoding, e.expire_at_ms)
            for e in _cli_dump.snapshot_entries(snapshot)
        ]
    finally:
        snapshot.close()


@pytest.fixture
def store_pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[KvStore, KvStore]]:
    source_name, target_name = request.param
    (tmp_path / "s").mkdir()
    (tmp_path / "t").mkdir()
    with (
        STORE_FACTORIES[source_name](tmp_path / "s") as source,
        STORE_FACTORIES[target_name](tmp_path / "t") as target,
    ):
        yield source, target


ENGINES = ["memory", "sqlite", "etcd"]


@pytest.mark.parametrize(
    "store_pair", [(s, t) for s in ENGINES for t in ENGINES], indirect=True, ids=str
)
def test_dump_then_load_copies_a_store_between_every_pair_of_engines(
    store_pair: tuple[KvStore, KvStore],
) -> None:
    """Every entry, with its value bytes and deadline, and the model descriptions arrive."""
    source_store, target_store = store_pair
    source = source_store.open()
    _fill(source)
    with km.Session(source) as s:
        s.add(Tag(id="t1", name="red"))
    out = io.StringIO()
    count = _cli_dump.dump(source, out, engine_name="x", now_ms=source.now_ms(), progress=int)
    assert count == len(_content(source))
    target = target_store.open()
    report = _cli_dump.load(
        target, io.StringIO(out.getvalue()), mode="strict", batch_size=500, progress=id
    )
    assert report.complete and report.written == count and report.expired == 0
    assert _content(target) == _content(source)
    assert km.check_indexes(target, Tag).ok
    assert Tag.by_name.get(target, "red") is not None
    # Versionstamps are not carried: the target's commits made new ones.
    assert target.get(("counter",)).value == km.KvU64(2**64 - 1)


def test_dump_reads_one_snapshot_while_commits_go_on(kv: km.Kv, monkeypatch: Any) -> None:
    """Two keys always written together are equal in the dump, whatever commits meanwhile."""
    if not isinstance(kv.engine, SnapshotSource):
        # Engines without snapshots are refused; the next test but one checks that.
        pytest.skip(f"{type(kv.engine).__name__} offers no open_snapshot")
    monkeypatch.setattr(_cli_dump, "_PAGE", 3)  # many pages, so commits land between them
    for i in range(30):
        kv.set(("pad", i), i)
    kv.atomic().set(("a",), 0).set(("z",), 0).commit()
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            kv.atomic().set(("a",), n).set(("z",), n).commit()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(3):
            out = io.StringIO()
            _cli_dump.dump(kv, out, engine_name="x", now_ms=0, progress=int)
            rows = {
                tuple(r["key"]): r["value"]
                for r in map(json.loads, out.getvalue().splitlines())
                if "key" in r
            }
            assert rows[("a",)] == rows[("z",)]
    finally:
        stop.set()
        thread.join()


def test_load_modes_and_resume(db: str, tmp_path: Path) -> None:
    """Strict stops at a present key, --if-absent resumes, --overwrite replaces; cut dumps fail."""
    with km.open_kv(db) as kv:
        for i in range(50):
            kv.set(("k", i), i)
    dump = script("dump", db)
    assert dump.returncode == 0
    lines = dump.stdout.splitlines()
    target = str(tmp_path / "t.db")
    cut = "\n".join(lines[:20]) + "\n"  # header and 19 entries, no trailer
    partial = script("load", target, input=cut)
    assert partial.returncode == 1
    assert "cut short" in partial.stderr
    again = script("load", target, input=dump.stdout)
    assert again.returncode == 1
    assert "is already in the target store" in again.stderr
    resumed = script("load", target, "--if-absent", input=dump.stdout)
    assert resumed.returncode == 0, resumed.stderr
    assert "31 written, 19 already present" in resumed.stderr
    with km.open_kv(target) as kv:
        kv.set(("k", 0), "changed")
    assert script("load", target, "--overwrite", input=dump.stdout).returncode == 0
    with km.open_kv(target) as kv:
        assert [e.value for e in kv.list(prefix=("k",))] == list(range(50))


def test_load_skips_entries_that_expired_since_the_dump(db: str, tmp_path: Path) -> None:
    """An entry whose deadline passed is not written."""
    header = json.dumps({"kvmodel_dump": 1, "engine": "sqlite", "dumped_at_ms": 0})
    gone = json.dumps({"key": ["old"], "value": 1, "versionstamp": "0" * 20, "expire_at_ms": 1})
    kept = json.dumps({"key": ["new"], "value": 2, "versionstamp": "0" * 20, "expire_at_ms": None})
    end = json.dumps({"kvmodel_dump_end": True, "entries": 2})
    result = script("load", db, input="\n".join([header, gone, kept, end]) + "\n")
    assert result.returncode == 0, result.stderr
    assert "1 written, 0 already present, 1 expired" in result.stderr
    with km.open_kv(db) as kv:
        assert [e.key for e in kv.list(prefix=())] == [("new",)]


def test_load_refuses_what_is_not_a_dump(db: str) -> None:
    """Input without the header is refused before anything is written."""
    result = script("load", db, input='{"key": ["a"], "value": 1}\n')
    assert result.returncode == 1
    assert "is not a kvmodel dump" in result.stderr


def test_dump_refuses_an_engine_without_snapshots() -> None:
    """An engine without open_snapshot gets a clear error instead of a torn dump."""

    class NoSnapshots:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            if name == "open_snapshot":
                raise AttributeError(name)
            return getattr(self._inner, name)

    kv = km.Kv(NoSnapshots(km.open_kv().engine))  # type: ignore[arg-type]
    with pytest.raises(_cli_dump.DumpError, match="could be torn"):
        _cli_dump.dump(kv, io.StringIO(), engine_name="x", now_ms=0, progress=int)


@pytest.mark.parametrize("direction", ["sqlite-to-etcd", "etcd-to-sqlite"])
def test_dump_pipe_load_between_sqlite_and_etcd_with_the_real_script(
    direction: str, tmp_path: Path
) -> None:
    """`kvmodel dump A | kvmodel load B` in subprocesses copies everything, expiring keys too."""
    cluster = shared_cluster(1)
    url = cluster.url(f"cli-{os.getpid()}-{direction}")
    ops = ["-o", f"max_txn_ops={cluster.max_txn_ops}"]
    db = str(tmp_path / "app.db")
    source, target = (db, url) if direction == "sqlite-to-etcd" else (url, db)
    src_opts = ops if source == url else []
    dst_opts = ops if target == url else []
    with km.open_kv(
        source, **({"max_txn_ops": cluster.max_txn_ops} if source == url else {})
    ) as kv:
        _fill(kv)
        expected = _content(kv)
    exe = str(SCRIPT) if SCRIPT.exists() else f"{sys.executable} -m kvmodel"
    command = (
        f"set -o pipefail; {exe} {' '.join(src_opts)} dump '{source}' | "
        f"{exe} {' '.join(dst_opts)} load '{target}'"
    )
    result = subprocess.run(
        command, shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert f"{len(expected)} written" in result.stderr
    with km.open_kv(
        target, **({"max_txn_ops": cluster.max_txn_ops} if target == url else {})
    ) as kv:
        assert _content(kv) == expected


# ---------------------------------------------------------------------------
# Stats, queue, vacuum


def test_stats_counts_prefixes_queue_and_files(db: str) -> None:
    """stats --json has keys and bytes per first part, queue states and file sizes."""
    with km.open_kv(db) as kv:
        kv.set(("users", "a"), "x")
        kv.set(("users", "b"), "y")
        kv.set(("orders", 1), {"n": 1})
        kv.enqueue("later", delay=3600)
        kv.enqueue("now")
    result = invoke("stats", db, "--json")
    figures = json.loads(result.stdout)
    by_prefix = {p["prefix"]: p for p in figures["prefixes"]}
    assert by_prefix["users"]["keys"] == 2 and by_prefix["orders"]["keys"] == 1
    assert figures["keys"] == 3
    assert figures["queue"] == {"ready": 1, "delayed": 1, "leased": 0, "quarantined": 0}
    assert figures["files"][db] > 0
    plain = invoke("stats", db)
    assert "users" in plain.stdout and "1 delayed" in plain.stdout


def test_queue_ls_and_requeue_of_a_dead_letter(db: str) -> None:
    """queue ls shows waiting messages; requeue enqueues a dead letter and deletes its key."""
    with km.open_kv(db) as kv:
        kv.enqueue({"job": 1}, delay=3600, keys_if_undelivered=[("failed", 1)])
        kv.set(("failed", 2), {"job": 2})
    listing = invoke("queue", "ls", db)
    assert listing.exit_code == 0
    [line] = listing.stdout.splitlines()
    assert "\tdelayed\t" in line and '{"job": 1}' in line and "failed,1" in line
    assert invoke("queue", "requeue", db, "failed,2").exit_code == 0
    with km.open_kv(db) as kv:
        assert kv.get(("failed", 2)).value is None
    states = [
        json.loads(x)["state"] for x in invoke("queue", "ls", db, "--json").stdout.splitlines()
    ]
    assert sorted(states) == ["delayed", "ready"]


def test_vacuum_shrinks_a_sqlite_file_and_refuses_memory(db: str) -> None:
    """vacuum reclaims deleted space; on :memory: it says why it cannot."""
    with km.open_kv(db) as kv:
        for i in range(0, 2000, 500):
            op = kv.atomic()
            for j in range(i, i + 500):
                op.set(("k", j), "x" * 1000)
            op.commit()
        for i in range(0, 2000, 500):
            op = kv.atomic()
            for j in range(i, i + 500):
                op.delete(("k", j))
            op.commit()
    before = os.path.getsize(db)
    assert script("vacuum", db).returncode == 0
    assert os.path.getsize(db) < before
    result = script("vacuum", ":memory:")
    assert result.returncode == 1
    assert "vacuum works on SQLite files" in result.stderr


# ---------------------------------------------------------------------------
# Object mapper upkeep


MODELS = """
import kvmodel as km

class Note(km.Model, prefix="notes", version=VERSION):
    id: str = km.field(primary_key=True)
    author: str
    words: int = 0
    by_author = km.Index("author")

if VERSION == 2:
    @km.upgrade(Note, from_version=1)
    def count_words(doc):
        doc["words"] = len(doc.pop("text", "").split())
        return doc
"""


def _write_models(directory: Path, name: str, version: int) -> None:
    (directory / f"{name}.py").write_text(MODELS.replace("VERSION", str(version)))


def test_check_rebuild_and_migrate_take_a_module(db: str, tmp_path: Path) -> None:
    """check finds a missing index entry, rebuild-indexes fixes it, migrate upgrades documents."""
    with km.open_kv(db) as kv:
        for i in range(5):  # written without the model: no index entries
            kv.set(("notes", f"n{i}"), {"id": f"n{i}", "author": "ada", "text": "a b c"})
    _write_models(tmp_path, "notes_v1", 1)
    _write_models(tmp_path, "notes_v2", 2)
    bad = script("check", db, "notes_v1", cwd=tmp_path)
    assert bad.returncode == 1
    assert "missing" in bad.stdout
    fixed = script("rebuild-indexes", db, "notes_v1:Note", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    assert "Repaired Note.by_author: 5 added, 0 corrected, 0 removed." in fixed.stdout
    again = script("rebuild-indexes", db, "notes_v1:Note", cwd=tmp_path)
    assert "Repaired" not in again.stdout
    assert script("check", db, "notes_v1", cwd=tmp_path).returncode == 0
    migrated = script("migrate", db, "notes_v2", cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert "5 upgraded" in migrated.stdout
    with km.open_kv(db) as kv:
        assert kv.get(("notes", "n0")).value["words"] == 3
    missing = script("check", db, "no_such_module", cwd=tmp_path)
    assert missing.returncode == 1
    assert "Cannot import the module 'no_such_module'" in missing.stderr
    nope = script("check", db, "notes_v1:Nope", cwd=tmp_path)
    assert nope.returncode == 1
    assert "The module 'notes_v1' has no 'Nope'; its models are Note." in nope.stderr
    not_a_model = script("check", db, "notes_v1:km", cwd=tmp_path)
    assert "'notes_v1:km' is a module, not a km.Model subclass." in not_a_model.stderr


def test_check_reports_a_row_no_read_reaches(db: str, tmp_path: Path) -> None:
    """A key another program stored as TEXT: check names it once and exits 1."""
    import sqlite3

    with km.open_kv(db) as kv:
        kv.set(("notes", "n0"), {"id": "n0", "author": "ada"})
    _write_models(tmp_path, "notes_v1", 1)
    script("rebuild-indexes", db, "notes_v1", cwd=tmp_path)
    assert script("check", db, "notes_v1", cwd=tmp_path).returncode == 0
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO kv VALUES ('notes', X'c0', 1, 1, NULL)")
    conn.close()
    bad = script("check", db, "notes_v1", cwd=tmp_path)
    assert bad.returncode == 1
    assert bad.stdout.count("1 stored rows no read can reach:") == 1, bad.stdout
    assert "'notes'" in bad.stdout and "stored as TEXT" in bad.stdout, bad.stdout


def test_watch_prints_changes_until_interrupted(db: str) -> None:
    """watch prints the current value, then each change; SIGINT ends it with status 130."""
    import signal
    import time

    exe = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "kvmodel"]
    proc = subprocess.Popen(
        [*exe, "watch", db, "w"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.rstrip().endswith("w\t(absent)")
        with km.open_kv(db) as kv:
            kv.set(("w",), "hello")
        second = proc.stdout.readline()
        assert second.rstrip().endswith('w\t"hello"')
    finally:
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "Traceback" not in err


# ---------------------------------------------------------------------------
# Keys of the object mapper's models, as their stored descriptions explain them


class _Tier(enum.Enum):
    GOLD = "gold"


class Visit(km.Model, prefix="visits"):
    """Index key parts of every converted form: datetime, date, UUID, Enum."""

    id: uuid.UUID = km.field(primary_key=True)
    at: datetime
    day: date | None = None
    tier: _Tier = _Tier.GOLD

    by_at = km.Index("at", "day")
    by_tier = km.Unique("tier", "at")


_VISIT = uuid.UUID("00000000-0000-0000-0000-000000000007")
_VISIT_TEXT = 'uuid("00000000-0000-0000-0000-000000000007")'


def test_ls_and_get_show_index_key_parts_and_values_readably(db: str) -> None:
    """ls of an index keyspace shows datetimes, dates and UUIDs as typed literals and
    each entry's value as the key of its document, and what it prints pastes back."""
    at = datetime(2024, 5, 1, 12, tzinfo=UTC)
    with km.open_kv(db) as kv, km.Session(kv) as s:
        s.add(Visit(id=_VISIT, at=at, day=date(2024, 5, 1)))
    pointer = f"key(visits,{_VISIT_TEXT})"
    listing = invoke("ls", db, "visits_by_at")
    assert listing.exit_code == 0, listing.output
    noon = 'datetime("2024-05-01T12:00:00+00:00")'
    key_text = f'visits_by_at,{noon},date("2024-05-01"),{_VISIT_TEXT}'
    assert listing.output.splitlines() == [f"{key_text}\t{pointer}"]
    assert invoke("ls", db, "visits_by_tier").output.splitlines() == [
        f'visits_by_tier,gold,datetime("2024-05-01T12:00:00+00:00")\t{pointer}'
    ]
    assert invoke("get", db, key_text).output.strip() == pointer
    assert invoke("ls", db, "visits", "--keys-only").output.splitlines() == [
        f"visits,{_VISIT_TEXT}"
    ]
    # A bound written the same way: the visits of May 1st from noon on.
    ranged = invoke(
        "ls", db, "--start", 'visits_by_at,datetime("2024-05-01T14:00:00+02:00")',
        "--end", 'visits_by_at,datetime("2024-05-02T00:00:00+00:00")', "--keys-only",
    )  # fmt: skip
    assert ranged.output.splitlines() == [key_text]
    # --json keeps the stored form exactly: the int, the ordinal, the bytes.
    [line] = invoke("ls", db, "visits_by_at", "--json").output.splitlines()
    stored = json.loads(line)
    assert stored["key"] == [
        "visits_by_at",
        1_714_564_800_000_000,
        739_007,
        {"$bytes": "AAAAAAAAAAAAAAAAAAAABw=="},
    ]
    assert stored["value"]["$bytes"]


def test_keys_that_do_not_fit_their_description_print_as_stored(db: str) -> None:
    """A part of another type than described, another length, or an undescribed
    keyspace prints raw, so ls never hides what is stored."""
    with km.open_kv(db) as kv:
        with km.Session(kv) as s:
            s.add(Visit(id=_VISIT, at=datetime(2024, 5, 1, tzinfo=UTC)))
        kv.set(("visits_by_at", "not a time", 1, b"x"), b"\x00 not a key")
        kv.set(("visits_by_at", 5), b"")
        kv.set(("elsewhere", 1_714_564_800_000_000), "plain")
    lines = invoke("ls", db).output.splitlines()
    assert 'elsewhere,1714564800000000\t"plain"' in lines
    assert 'visits_by_at,"not a time",date("0001-01-01"),x"78"\tx"00206e6f742061206b6579"' in lines
    assert 'visits_by_at,5\tx""' in lines


def test_descriptions_that_cannot_be_read_leave_keys_as_stored() -> None:
    """A store that refuses kvmodel's reserved range, or a damaged description, gives
    no decoding: keys and values print in the plain text form."""
    from kvmodel.cli._described import Descriptions
    from kvmodel.engines.base import AtomicWrite, Mutation, MutationKind
    from kvmodel.orm._catalog import description_key

    class Refusing:
        def read_range(self, *args: Any) -> Any:
            raise km.EngineError("The server refused the range.")

    assert not Descriptions.read(Refusing())  # type: ignore[arg-type]
    with km.open_kv() as kv:
        data, encoding = kv.encode_value(["not", "a", "description"])
        damaged = Mutation(description_key("visits"), MutationKind.SET, data, encoding)
        kv.commit_write(AtomicWrite((), (damaged,), ()), [])
        described = Descriptions.read(kv)
        assert not described
        assert described.format_key(("visits", b"\x00" * 16)) == 'visits,x"' + "00" * 16 + '"'


def test_watch_shows_an_index_entry_as_its_description_explains(db: str) -> None:
    """watch prints a watched index entry's key and value with the typed literals ls uses."""
    import signal

    with km.open_kv(db) as kv, km.Session(kv) as s:
        s.add(Visit(id=_VISIT, at=datetime(2024, 5, 1, 12, tzinfo=UTC)))
    key_text = 'visits_by_tier,gold,datetime("2024-05-01T12:00:00+00:00")'
    exe = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "kvmodel"]
    proc = subprocess.Popen(
        [*exe, "watch", db, key_text], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.rstrip().endswith(f"\t{key_text}\tkey(visits,{_VISIT_TEXT})")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 130
