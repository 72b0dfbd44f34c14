"""Every decoder of stored bytes, fed random and adversarial input, within a budget.

A hostile writer (a Deno app on a shared file, a KV Connect client, another
program on the SQLite file) chooses the bytes kvmodel reads. Each decoder must
answer each input with a value or a kvmodel error, within a CPU time and a
memory budget far above what an honest value of that size costs (milliseconds
and kilobytes) and far below what a decompression bomb costs (seconds to
forever, gigabytes). The inputs are random bytes, random structures in each
format, and structures built to hurt: V8 back-references to earlier objects
(the shared-graph bomb), msgpack headers that claim millions of items, maps of
colliding or duplicate keys, deep nesting.

Quick in ``make test``; ``KVMODEL_TORTURE=long`` (``make torture``) runs many
more inputs.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import kvmodel as km
from kvmodel._values import decode_value
from kvmodel.engines.base import (
    check_stored_value,
    read_stored_backoff,
    read_stored_dead_letter_keys,
)
from kvmodel.keys import decode_key

sys.path.insert(0, str(Path(__file__).parent.parent))
from v8_bytes import HEADER, shared_dag, varint

LONG = os.environ.get("KVMODEL_TORTURE", "").lower() == "long"
FUZZ = settings(
    max_examples=5_000 if LONG else 150,
    deadline=None,  # the budget below is the bound that matters
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CPU_BUDGET = 1.0
"""Seconds of CPU one input may cost (honest values of up to 64 KiB cost milliseconds)."""
# tracemalloc makes v8serialize's pure-Python parser several times slower, so
# the structured V8 fuzz draws fewer inputs than the others in the quick setting.
V8_FUZZ = settings(FUZZ, max_examples=5_000 if LONG else 40)
MEMORY_BUDGET = 64 * 2**20
"""Bytes one input may allocate at its peak (a 64 KiB value expands to a few MiB at most)."""


@pytest.fixture(scope="module", autouse=True)
def _tracing() -> Iterator[None]:
    tracemalloc.start()
    yield
    tracemalloc.stop()


def within_budget(decode: Callable[[], object]) -> None:
    """Runs ``decode``: it returns or raises a KvError, within the CPU and memory budget."""
    tracemalloc.reset_peak()
    start = time.process_time()
    with contextlib.suppress(km.KvError):
        decode()
    spent = time.process_time() - start
    peak = tracemalloc.get_traced_memory()[1]
    assert spent < CPU_BUDGET, f"took {spent:.2f} s of CPU"
    assert peak < MEMORY_BUDGET, f"allocated {peak / 2**20:.0f} MiB at its peak"


# -- V8 ----------------------------------------------------------------------------


@st.composite
def v8_values(draw: st.DrawFn) -> bytes:
    """V8 serialisations built from tags, with references to any object written so far."""
    out = bytearray(HEADER)
    ids = 0

    def node(depth: int) -> None:
        nonlocal ids
        kinds = ["null", "int", "double", "string", "bigint", "ref", "junk"]
        if depth < 12:
            kinds += ["array", "object", "map", "set"] * 2
        kind = draw(st.sampled_from(kinds))
        if kind == "null":
            out.extend(draw(st.sampled_from([b"0", b"_", b"T", b"F", b"-"])))
        elif kind == "int":
            out.extend(b"I" + varint(draw(st.integers(0, 2**32))))
        elif kind == "double":
            out.extend(b"N" + struct.pack("<d", draw(st.floats(allow_nan=True))))
        elif kind == "string":
            text = draw(st.binary(max_size=40))
            claimed = draw(st.sampled_from([len(text), len(text), 2**20, 0]))
            out.extend(b'"' + varint(claimed) + text)
        elif kind == "bigint":
            digits = draw(st.binary(max_size=24))
            out.extend(b"Z" + varint(len(digits) * 2) + digits)
        elif kind == "ref":
            # Mostly an object already written (a DAG), sometimes one not yet.
            limit = max(ids + 2, 1)
            out.extend(b"^" + varint(draw(st.integers(0, limit))))
        elif kind == "junk":
            out.extend(draw(st.binary(min_size=1, max_size=8)))
        else:
            ids += 1
            count = draw(st.integers(0, 6))
            if kind == "array":
                out.extend(b"A" + varint(count))
                for _ in range(count):
                    node(depth + 1)
                out.extend(b"$\x00" + varint(count))
            elif kind == "object":
                out.extend(b"o")
                for i in range(count):
                    out.extend(b'"\x01' + bytes([97 + i]))
                    node(depth + 1)
                out.extend(b"{" + varint(count))
            elif kind == "map":
                out.extend(b";")
                for _ in range(count * 2):
                    node(depth + 1)
                out.extend(b":" + varint(count * 2))
            else:
                out.extend(b"'")
                for _ in range(count):
                    node(depth + 1)
                out.extend(b"," + varint(count))

    node(0)
    return bytes(out)


def repeated(data: bytes, times: int) -> bytes:
    """An array of ``times`` references to the first object ``data`` writes."""
    body = data[len(HEADER) :]
    return HEADER + b"A" + varint(times) + body + b"^\x01" * (times - 1) + b"$\x00" + varint(times)


@V8_FUZZ
@given(v8_values(), st.integers(1, 3000))
def test_v8_values_with_references_decode_within_budget(data: bytes, times: int) -> None:
    within_budget(lambda: decode_value(data, 4))
    within_budget(lambda: decode_value(repeated(data, times), 4))


@FUZZ
@example(b"r\x00")  # an error tag cut short: v8serialize raised IndexError
@given(st.binary(max_size=512))
def test_random_bytes_as_v8_decode_within_budget(data: bytes) -> None:
    within_budget(lambda: decode_value(HEADER + data, 4))
    within_budget(lambda: decode_value(b"\xff\x10" + data, 4))


@pytest.mark.parametrize(("levels", "width"), [(22, 2), (60, 2), (150, 2), (3, 1000), (2, 1000)])
def test_the_shared_graph_bombs_decode_within_budget(levels: int, width: int) -> None:
    within_budget(lambda: decode_value(shared_dag(levels, width), 4))


# -- msgpack -------------------------------------------------------------------------

msgpack_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
msgpack_trees = st.recursive(
    msgpack_leaves,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.text(max_size=5) | st.integers(-5, 5), inner, max_size=6)
    ),
    max_leaves=40,
)


@st.composite
def hostile_msgpack(draw: st.DrawFn) -> bytes:
    """msgpack that lies about its lengths, nests deeply or repeats its map keys."""
    kind = draw(st.sampled_from(["claims", "nesting", "duplicates", "ext", "tree"]))
    if kind == "claims":  # a header claiming far more items or bytes than follow
        tag = draw(st.sampled_from([b"\xdd", b"\xdf", b"\xdb", b"\xc6", b"\xc9"]))
        return tag + struct.pack(">I", draw(st.integers(2**16, 2**32 - 1))) + b"\x01" * 8
    if kind == "nesting":
        return draw(st.sampled_from([b"\x91", b"\x81\xa0"])) * draw(st.integers(1, 5000)) + b"\xc0"
    if kind == "duplicates":  # one key thousands of times over
        n = draw(st.integers(1, 20_000))
        return b"\xdf" + struct.pack(">I", n) + b"\xa1k\xc0" * n
    if kind == "ext":
        code = draw(st.integers(0, 127))
        payload = draw(st.binary(max_size=40))
        return msgpack.packb(msgpack.ExtType(code, payload))
    return msgpack.packb(draw(msgpack_trees), use_bin_type=True)


@FUZZ
@given(hostile_msgpack() | st.binary(max_size=512))
def test_msgpack_values_decode_within_budget(data: bytes) -> None:
    within_budget(lambda: decode_value(data, 1))


def test_a_map_of_colliding_big_int_keys_decodes_within_budget() -> None:
    """Python hashes ints without a seed: k + j * (2**61 - 1) all collide.

    The value limit bounds such a map to ~4,600 keys, so the quadratic insert
    is bounded (~0.1 s on a slow machine), not a hang.
    """
    p = 2**61 - 1
    n = (65536 - 5) // 14
    body = b"".join(
        b"\xc7\x0a\x01" + (2**72 + j * p).to_bytes(10, "big", signed=True) + b"\xc0"
        for j in range(1, n + 1)
    )
    within_budget(lambda: decode_value(b"\xdf" + struct.pack(">I", n) + body, 1))


# -- keys and queue rows -------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2048))
def test_stored_keys_decode_within_budget(data: bytes) -> None:
    within_budget(lambda: decode_key(data))


stored_columns: Any = (
    st.binary(max_size=256)
    | st.text(max_size=64)
    | st.integers(-(2**70), 2**70)
    | st.none()
    | st.floats()
    | hostile_msgpack()
)


@FUZZ
@given(stored_columns, stored_columns)
def test_stored_queue_and_value_columns_are_checked_within_budget(a: Any, b: Any) -> None:
    within_budget(lambda: check_stored_value("the key ('k',)", a, b))
    within_budget(lambda: read_stored_dead_letter_keys("message 1", a))
    within_budget(lambda: read_stored_backoff("message 1", a))
