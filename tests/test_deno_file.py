"""Tests of kvmodel.engines.denofile against the real ``deno`` binary on one shared file.

One Deno process (tests/deno/kv_peer.ts) serves the whole module over stdin and
stdout. Without deno the tests skip locally and fail in CI (CI=true), like the
etcd tests: ``.ci/run`` installs deno from npm into .deno-cache/.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import kvmodel as km
from kvmodel._values import decode_value
from kvmodel.engines.denofile import DenoFileEngine, is_deno_kv_file

ROOT = Path(__file__).resolve().parent.parent
PEER = Path(__file__).resolve().parent / "deno" / "kv_peer.ts"


def find_deno() -> str | None:
    """The deno binary: $KVMODEL_DENO, deno on PATH, or the npm package in .deno-cache/."""
    found = os.environ.get("KVMODEL_DENO") or shutil.which("deno")
    if found:
        return found
    for path in sorted(glob.glob(str(ROOT / ".deno-cache/node_modules/@deno/*/deno"))):
        if os.access(path, os.X_OK):
            return path
    return None


class DenoPeer:
    """A running kv_peer.ts: send a command, read its JSON reply."""

    def __init__(self, deno: str, path: Path) -> None:
        self.proc = subprocess.Popen(
            [
                deno,
                "run",
                "--quiet",
                "--allow-read",
                "--allow-write",
                "--unstable-kv",
                str(PEER),
                str(path),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "NO_COLOR": "1", "DENO_NO_UPDATE_CHECK": "1"},
        )

    def send(self, **command: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"deno exited ({self.proc.poll()}) during {command}"
        reply = json.loads(line)
        assert not (isinstance(reply, dict) and "error" in reply), reply
        return reply

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # a listenQueue keeps Deno's loop alive
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def deno_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DenoPeer, Path]]:
    """A Deno process with the module's KV file open (Deno creates the file)."""
    deno = find_deno()
    if deno is None:
        message = "deno is not installed (npm install deno in .deno-cache/, see .ci/run)"
        if os.environ.get("CI") == "true" or os.environ.get("KVMODEL_REQUIRE_DENO"):
            pytest.fail(message)
        pytest.skip(message)
    path = tmp_path_factory.mktemp("deno") / "kv.sqlite3"
    peer = DenoPeer(deno, path)
    try:
        yield peer, path
    finally:
        peer.close()


def js(value: Any) -> Any:
    """Python's view of a value the peer printed as typed JSON."""
    if isinstance(value, list):
        return [js(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"bigint"}:
            return int(value["bigint"])
        if set(value) == {"u64"}:
            return km.KvU64(int(value["u64"]))
        if set(value) == {"bytes"}:
            return bytes(value["bytes"])
        if set(value) == {"date"}:
            return datetime.fromtimestamp(value["date"] / 1000, UTC)
        return {k: js(v) for k, v in value.items()}
    return value


def deno_list(peer: DenoPeer) -> dict[tuple[Any, ...], tuple[Any, str]]:
    return {tuple(js(e["key"])): (js(e["value"]), e["versionstamp"]) for e in peer.send(op="list")}


def test_python_reads_what_deno_wrote_with_the_same_versionstamps(
    deno_file: tuple[DenoPeer, Path],
) -> None:
    """Values, a summed KvU64, expiry and a failed check written by Deno read back in Python."""
    peer, path = deno_file
    assert peer.send(op="write") == {"first": True, "second": False}
    assert is_deno_kv_file(path)
    seen_by_deno = deno_list(peer)
    with km.open_kv(path) as kv:  # recognised as Deno's layout without the prefix
        assert isinstance(kv.engine, DenoFileEngine) and kv.values == "v8"
        ours = {e.key: (e.value, e.versionstamp) for e in kv.list(prefix=("d",))}
        assert ours[("d", "obj")][0] == {
            "name": "ada",
            "n": 1.0,
            "big": 10,
            "when": datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC),
            "tags": ["a"],
            "raw": b"\x01\x02",
            "nothing": None,
        }
        assert ours[("d", "u64")][0] == km.KvU64(8)
        assert ours[("d", "exp")][0] == "soon"
        assert ("d", "gone") not in ours  # expired: absent at once here
        assert ours[("d", "new")][0] == "x"
        for key, (_, versionstamp) in ours.items():
            assert seen_by_deno[key][1] == versionstamp
        # Deno's enqueue is in the shared queue table, readable here.
        message = kv.engine.dequeue_next_message(5)
        assert message is not None
        assert decode_value(message.payload, message.encoding) == {"job": 1.0}
        message.finish(True)


def test_deno_reads_what_python_wrote(deno_file: tuple[DenoPeer, Path]) -> None:
    """Python's values (V8, KvU64, bytes, versionstamped keys, expiry) read back in Deno."""
    peer, path = deno_file
    when = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    with km.open_kv(f"deno:{path}") as kv:
        a = kv.set(("p", "obj"), {"s": "x", "i": 2**70, "f": 1.5, "l": [True, None], "t": when})
        kv.set(("p", "u"), km.KvU64(41))
        kv.atomic().sum(("p", "u"), km.KvU64(1)).commit()
        kv.set(("p", "raw"), b"\x00\xff")
        kv.set(("p", "later"), "soon", expire_in=60)
        stamped = kv.set(("p", "log", km.VERSIONSTAMP), "entry")
        assert a.ok and stamped.ok
    seen = deno_list(peer)
    assert seen[("p", "obj")] == (
        {"s": "x", "i": 2**70, "f": 1.5, "l": [True, None], "t": when},
        a.versionstamp,
    )
    assert seen[("p", "u")][0] == km.KvU64(42)
    assert seen[("p", "raw")][0] == b"\x00\xff"
    assert seen[("p", "later")][0] == "soon"
    assert seen[("p", "log", stamped.versionstamp)] == ("entry", stamped.versionstamp)
    # Versionstamps of both sides are ordered together.
    assert max(vs for _, vs in seen.values()) == stamped.versionstamp


def test_a_check_fails_after_a_write_from_the_other_side(deno_file: tuple[DenoPeer, Path]) -> None:
    """An atomic check from either side fails once the other side wrote the key."""
    peer, path = deno_file
    with km.open_kv(f"deno:{path}") as kv:
        mine = kv.set(("c", "k"), "python")
        moved = peer.send(op="check", key=["c", "k"], versionstamp=mine.versionstamp, value="deno")
        assert moved["ok"]
        stale = kv.atomic().check((("c", "k"), mine.versionstamp)).set(("c", "k"), "late").commit()
        assert not stale.ok
        assert kv.get(("c", "k")).value == "deno"
        fresh = kv.set(("c", "k"), "python again")
        refused = peer.send(
            op="check", key=["c", "k"], versionstamp=moved["versionstamp"], value="x"
        )
        assert refused == {"ok": False, "versionstamp": None}
        assert kv.get(("c", "k")).versionstamp == fresh.versionstamp


def test_deno_handles_a_message_python_enqueued(deno_file: tuple[DenoPeer, Path]) -> None:
    """A message enqueued here reaches Deno's listenQueue (it dequeues on start)."""
    peer, path = deno_file
    with km.open_kv(f"deno:{path}") as kv:
        kv.enqueue({"hello": "deno", "n": 3})
    started = time.monotonic()
    got = peer.send(op="listen")
    assert js(got["value"]) == {"hello": "deno", "n": 3}
    assert time.monotonic() - started < 30


def test_a_session_round_trips_on_a_deno_file(tmp_path: Path) -> None:
    """The object mapper works on a V8 Kv: str-keyed forms, datetimes, lists, indexes."""

    class Note(km.Model, prefix="notes"):
        id: str = km.field(primary_key=True, factory=km.new_id)
        owner: str
        tags: list[str] = km.field(factory=list)
        at: datetime = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
        by_owner = km.Index("owner", "at")

    with km.open_kv(f"deno:{tmp_path / 'kv.sqlite3'}") as kv:
        with km.Session(kv) as s:
            note = Note(owner="ada", tags=["x", "y"])
            s.add(note)
        with km.Session(kv) as s:
            read = s.get(Note, note.id)
            assert read is not None
            assert (read.owner, read.tags, read.at) == ("ada", ["x", "y"], note.at)
            assert [n.id for n in Note.by_owner.find(s, "ada")] == [note.id]
