"""Hostile stored values: a few hundred bytes that describe millions of objects.

V8's format lets a value name an object it already wrote, so 159 stored bytes
can be a binary tree of 2**22 nodes. Before kvmodel kept such objects shared and
bounded their expansion, reading one took seconds to forever and gigabytes. Each
test stores the values of ``v8_bytes.HOSTILE_DAGS`` as another program would
(raw bytes through the engine) and reads them back on one path that decodes V8:
each read must refuse with a DecodeError naming the key, and return at all.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from v8_bytes import HOSTILE_DAGS, shared_dag

import kvmodel as km
from kvmodel._v8 import MAX_EXPANDED_SIZE, decode_v8
from kvmodel.engines.base import VALUE_ENCODING_V8, AtomicWrite, Mutation, MutationKind
from kvmodel.keys import encode_key

pytest.importorskip("v8serialize")

DAGS = pytest.mark.parametrize("data", list(HOSTILE_DAGS.values()), ids=list(HOSTILE_DAGS))


def store_raw(kv: km.Kv, key: tuple[Any, ...], data: bytes) -> None:
    """Writes ``data`` as a V8 value under ``key``, past every encoder (as Deno could)."""
    mutation = Mutation(encode_key(key), MutationKind.SET, data, VALUE_ENCODING_V8)
    assert kv.engine.atomic_write(AtomicWrite(mutations=(mutation,))).ok


def refused(exc: pytest.ExceptionInfo[km.DecodeError], key: tuple[Any, ...]) -> None:
    message = str(exc.value)
    assert f"The value stored at the key {key!r} cannot be read" in message, message
    assert "expands to more than" in message, message


@DAGS
def test_the_decoder_refuses_a_shared_graph_that_expands_past_the_bound(data: bytes) -> None:
    with pytest.raises(km.DecodeError, match="expands to more than"):
        decode_v8(data)


def test_shared_objects_within_the_bound_read_once_and_stay_shared() -> None:
    """A DAG of 2**10 leaves reads, and its repeated references are one Python object."""
    value: Any = decode_v8(shared_dag(10, 2))
    assert value[0] is value[1]
    leaves = value
    for _ in range(10):
        leaves = leaves[0]
    assert leaves == {}


def test_the_bound_counts_repeated_strings_too() -> None:
    """An object holding a 32 KiB string, referenced nine times, expands past the bound."""
    from v8_bytes import HEADER, varint

    text = "x" * 32_768
    inner = b"o" + b'"\x01a' + b'"' + varint(len(text)) + text.encode() + b"{\x01"
    copies = MAX_EXPANDED_SIZE // len(text) + 1
    data = HEADER + b"A" + varint(copies) + inner + b"^\x01" * (copies - 1)
    data += b"$\x00" + varint(copies)
    with pytest.raises(km.DecodeError, match="expands to more than"):
        decode_v8(data)
    assert decode_v8(HEADER + b"A\x01" + inner + b"$\x00\x01") == [{"a": text}]


@pytest.fixture(params=["deno", "sqlite", "memory"])
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[km.Kv]:
    """Every engine that holds V8 values: Deno's file, kvmodel's SQLite file, memory."""
    target = {
        "deno": f"deno:{tmp_path / 'deno.sqlite3'}",
        "sqlite": str(tmp_path / "kv.db"),
        "memory": None,
    }[request.param]
    with km.open_kv(target) as opened:
        yield opened


@DAGS
def test_get_get_many_list_and_watch_refuse_naming_the_key(kv: km.Kv, data: bytes) -> None:
    key = ("bomb", 1)
    kv.set(("fine",), "ok")
    store_raw(kv, key, data)
    with pytest.raises(km.DecodeError) as exc:
        kv.get(key)
    refused(exc, key)
    with pytest.raises(km.DecodeError) as exc:
        kv.get_many([("fine",), key])
    refused(exc, key)
    with pytest.raises(km.DecodeError) as exc:
        list(kv.list(prefix=()))
    refused(exc, key)
    with kv.watch([key]) as stream, pytest.raises(km.DecodeError) as exc:
        next(stream)
    refused(exc, key)
    assert kv.get(("fine",)).value == "ok"


class Note(km.Model, prefix="notes"):
    id: str = km.field(primary_key=True)
    text: str = ""


def test_the_object_mapper_refuses_a_hostile_document_naming_its_key(kv: km.Kv) -> None:
    with km.Session(kv) as session:
        session.add(Note(id="a", text="fine"))
        session.add(Note(id="b", text="to be replaced"))
    store_raw(kv, ("notes", "b"), HOSTILE_DAGS["binary DAG 60 deep"])
    with km.Session(kv) as session, pytest.raises(km.DecodeError) as exc:
        session.get(Note, "b")
    refused(exc, ("notes", "b"))
    with pytest.raises(km.DecodeError) as exc:
        list(Note.all(kv))
    refused(exc, ("notes", "b"))


def test_the_kv_connect_client_refuses_naming_the_key() -> None:
    """A KV Connect client reading a hostile value held by `kvmodel serve`'s store."""
    pytest.importorskip("hypercorn")
    from connect_server import TOKEN, ThreadServer

    with km.open_kv() as store:
        store_raw(store, ("bomb",), HOSTILE_DAGS["binary DAG 150 deep"])
        server = ThreadServer(store).start()
        try:
            with km.open_kv(server.url, token=TOKEN) as client:
                with pytest.raises(km.DecodeError) as exc:
                    client.get(("bomb",))
                refused(exc, ("bomb",))
                with pytest.raises(km.DecodeError) as exc:
                    list(client.list(prefix=()))
                refused(exc, ("bomb",))
        finally:
            server.stop()


def test_the_command_line_refuses_a_hostile_value_naming_its_key(tmp_path: Path) -> None:
    """`get` and `dump` refuse, naming the key, instead of hanging."""
    from kvmodel.cli._app import cli

    path = tmp_path / "deno.sqlite3"
    with km.open_kv(f"deno:{path}") as kv:
        store_raw(kv, ("bomb",), HOSTILE_DAGS["3 levels x 1000 wide"])
        kv.set(("fine",), "ok")
    got = subprocess.run(
        [sys.executable, "-m", "kvmodel", "get", f"deno:{path}", "bomb"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert got.returncode == 1
    assert "The value stored at the key ('bomb',) cannot be read" in got.stderr
    assert "Traceback" not in got.stderr
    # Deno's file has no snapshots to dump from; kvmodel's SQLite file does.
    db = tmp_path / "kv.db"
    with km.open_kv(db) as kv:
        store_raw(kv, ("bomb",), HOSTILE_DAGS["3 levels x 1000 wide"])
        kv.set(("fine",), "ok")
    dumped = CliRunner().invoke(cli, ["dump", str(db)])
    assert isinstance(dumped.exception, km.DecodeError)
    assert "The value stored at the key ('bomb',)" in str(dumped.exception)
