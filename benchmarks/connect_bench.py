"""Deno's KV client against `kvmodel serve` vs against Deno's own local file store.

Runs benchmarks/deno/connect_ops.ts (set, get, get_many of 10, get + checked
set, sum, list pages of 20; one awaited operation at a time) with the real
deno binary on:

* ``deno-file``: ``Deno.openKv(path)``, Deno's SQLite store in the process;
* ``serve-sqlite``: ``Deno.openKv("http://127.0.0.1:PORT")`` to ``kvmodel serve``
  on a SQLite file (``--values v8``), over loopback HTTP/2;
* ``serve-memory``: the same on an in-memory store;
* ``py-client``: kvmodel's own ConnectEngine (HTTP/1.1, httpx) on the same
  server (``--python``), with the same workload in Python.

Prints ops/s per workload and each column's ratio to ``deno-file``; ``--json``
prints one JSON object instead. Deno is found as the tests find it
($KVMODEL_DENO, PATH, or .deno-cache/ from .ci/run).

    .venv/bin/python benchmarks/connect_bench.py [--n 500] [--python]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from connect_server import TOKEN, serve_process  # noqa: E402
from test_deno_file import find_deno  # noqa: E402

import kvmodel as km  # noqa: E402

SCRIPT = ROOT / "benchmarks" / "deno" / "connect_ops.ts"


def run_deno(deno: str, target: str, n: int) -> dict[str, float]:
    result = subprocess.run(
        [deno, "run", "-A", "--unstable-kv", str(SCRIPT), target, str(n)],
        env={
            "DENO_KV_ACCESS_TOKEN": TOKEN,
            "NO_COLOR": "1",
            "DENO_NO_UPDATE_CHECK": "1",
            "PATH": "/usr/bin:/bin",
            "HOME": str(Path.home()),
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        raise SystemExit(f"deno failed on {target}: {result.stderr}")
    out: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def run_python(url: str, n: int) -> dict[str, float]:
    results: dict[str, float] = {}
    with km.open_kv(url, token=TOKEN) as kv:
        prefix = f"py-{time.time_ns()}"

        def timed(name: str, ops: int, fn: Any) -> None:
            t0 = time.perf_counter()
            fn()
            results[name] = ops / (time.perf_counter() - t0)

        def sets() -> None:
            for i in range(n):
                kv.set((prefix, "u", i), {"name": f"user {i}", "n": i})

        def gets() -> None:
            for i in range(n):
                assert kv.get((prefix, "u", (i * 7919) % n)).value is not None

        def get_many() -> None:
            for i in range(n):
                kv.get_many([(prefix, "u", (i + j) % n) for j in range(10)])

        def check_set() -> None:
            for i in range(n):
                e = kv.get((prefix, "u", i))
                assert kv.atomic().check(e).set((prefix, "u", i), {"name": "x"}).commit().ok

        def sums() -> None:
            for _ in range(n):
                kv.atomic().sum((prefix, "counter"), km.KvU64(1)).commit()

        pages = max(1, n // 10)

        def list_pages() -> None:
            for _ in range(pages):
                assert len(list(kv.list(prefix=(prefix, "u"), limit=20))) == min(20, n)

        timed("set", n, sets)
        timed("get", n, gets)
        timed("get_many_10", n, get_many)
        timed("atomic_check_set", n, check_set)
        timed("sum", n, sums)
        timed("list_page_20", pages, list_pages)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="operations per workload")
    parser.add_argument("--python", action="store_true", help="add kvmodel's own client")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    deno = find_deno()
    if deno is None:
        raise SystemExit("deno is not installed (npm install deno in .deno-cache/, see .ci/run)")
    columns: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        columns["deno-file"] = run_deno(deno, str(Path(tmp) / "deno.sqlite3"), args.n)
        with serve_process(Path(tmp) / "served.db", "--values", "v8") as url:
            columns["serve-sqlite"] = run_deno(deno, url, args.n)
            if args.python:
                with serve_process(Path(tmp) / "py.db") as py_url:
                    columns["py-client"] = run_python(py_url, args.n)
        with serve_process(":memory:", "--values", "v8") as url:
            columns["serve-memory"] = run_deno(deno, url, args.n)
    if args.json:
        print(json.dumps({"n": args.n, "ops_per_second": columns}))
        return 0
    names = list(columns)
    print(f"Deno KV client, one operation at a time, n={args.n} (ops/s; ratio to deno-file)")
    print(f"{'workload':<18}" + "".join(f"{name:>22}" for name in names))
    for workload in columns["deno-file"]:
        base = columns["deno-file"][workload]
        cells = []
        for name in names:
            rate = columns[name].get(workload, float("nan"))
            cells.append(f"{rate:>12,.0f} ({rate / base:4.2f}x)")
        print(f"{workload:<18}" + "".join(f"{c:>22}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
