"""Concurrent writers: kvmodel's group commit beside peers that pay one fsync per commit.

    python benchmarks/group_bench.py [--n 2000] [--writers 1,4,16,64] [--tasks 64,256]
        [--repeat 3] [--deno PATH] [--plot benchmarks/group_bench.png] [--json]
    python benchmarks/group_bench.py --latency [--n 2000]

W writers commit n operations between them (writer w takes operations w, w + W, ...),
every column at ``synchronous=FULL`` in WAL mode on a fresh file per cell:

* ``kvmodel``: one ``kvmodel.open_kv(path)`` shared by W threads;
  ``kvmodel-async``: one ``kvmodel.aio.open_kv(path)`` and W asyncio tasks (``--tasks``);
* ``sqlite3``: bare stdlib sqlite3, one connection per thread, ``BEGIN IMMEDIATE`` per
  commit, SQLite's busy handler (timeout 60 s) for lock waits;
* ``sqlalchemy``: SQLAlchemy 2.x ORM, a Session per operation on W threads, a pool of W
  connections (``create`` only: the ORM peer);
* ``denokv``: the real Deno KV (the ``deno`` npm package, as in the peer benchmark), W
  concurrent async loops of awaited commits on one ``Deno.openKv(path)``.

Workloads: ``set`` (one key per commit), ``atomic_order`` (check the order is absent, the
order and two index keys) and ``create`` (kvmodel's object mapper: one Session per order,
orm_bench's model; SQLAlchemy: one Session per order, one INSERT).
Each cell is the median of ``--repeat`` runs. Targets at W = 16: kvmodel ``set`` and
``atomic_order`` at least 4x sqlite3 and 4x Deno KV, ``create`` at least 5x SQLAlchemy.

``--latency`` times single-writer commits (``kv.set``) one by one and prints the median
and p99; run it with ``PYTHONPATH`` at another checkout to compare two versions.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from orm_bench import KmOrder, KvmodelOrm, OrderData, SaOrder

import kvmodel as km
import kvmodel.aio
from kvmodel.keys import encode_key

try:
    import sqlalchemy as sa
    from sqlalchemy import orm as sa_orm
except ImportError:  # pragma: no cover - a hint, not a feature
    raise SystemExit(
        "group_bench needs SQLAlchemy 2.x: .venv/bin/pip install -e '.[bench]'"
    ) from None

import msgpack

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DENO = "/tmp/bench-peers/node_modules/.bin/deno"
TARGET_W = 16
TARGETS = {
    ("set", "sqlite3"): 4.0,
    ("set", "denokv"): 4.0,
    ("atomic_order", "sqlite3"): 4.0,
    ("atomic_order", "denokv"): 4.0,
    ("create", "sqlalchemy"): 5.0,
}
WORKLOADS = ("set", "atomic_order", "create")
_ = KmOrder  # registered with orm_bench's import; create() uses it


def user(i: int) -> dict[str, Any]:
    return {"name": f"user{i}", "email": f"user{i}@example.com", "age": 18 + i % 60}


def order_doc(order: dict[str, Any]) -> dict[str, Any]:
    """An order as a plain document (datetimes as epoch milliseconds, as Deno stores it)."""
    return dict(
        order,
        created_at=int(order["created_at"].timestamp() * 1000),
        updated_at=int(order["updated_at"].timestamp() * 1000),
    )


def run_threads(writers: int, n: int, op: Callable[[int], object]) -> float:
    """Runs op(i) for i in range(n) on ``writers`` threads; returns the seconds taken."""
    start = threading.Barrier(writers + 1)
    errors: list[BaseException] = []

    def work(w: int) -> None:
        start.wait()
        try:
            for i in range(w, n, writers):
                op(i)
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return elapsed


# -- columns: each returns (seconds, extra facts) for one cell -------------------


def kvmodel_cell(workload: str, writers: int, n: int, path: str, d: OrderData) -> tuple[float, str]:
    kv = km.open_kv(path)
    try:
        orm = KvmodelOrm("kvmodel", kv)
        orders = d.orders
        if workload == "set":

            def op(i: int) -> object:
                return kv.set(("users", i), user(i))

        elif workload == "atomic_order":
            docs = [order_doc(o) for o in orders[:n]]

            def op(i: int) -> object:
                o = docs[i]
                primary = ("orders", o["id"])
                result = (
                    kv.atomic()
                    .check((primary, None))
                    .set(primary, o)
                    .set(
                        ("orders_by_customer", o["customer_id"], o["created_at"], o["id"]), o["id"]
                    )
                    .set(("orders_by_status", o["status"], o["id"]), o["id"])
                    .commit()
                )
                assert result.ok
                return result

        else:

            def op(i: int) -> object:
                orm.create(orders[i])
                return None

        seconds = run_threads(writers, n, op)
        committer = kv.engine._committer  # type: ignore[attr-defined]
        group = committer.commits / max(1, committer.groups)
        return seconds, f"{group:.1f} commits/transaction"
    finally:
        kv.close()


def kvmodel_async_cell(
    workload: str, tasks: int, n: int, path: str, d: OrderData
) -> tuple[float, str]:
    if workload != "set":
        return float("nan"), ""

    async def main() -> tuple[float, str]:
        async with await kvmodel.aio.open_kv(path) as kv:

            async def loop(w: int) -> None:
                for i in range(w, n, tasks):
                    await kv.set(("users", i), user(i))

            t0 = time.perf_counter()
            await asyncio.gather(*(loop(w) for w in range(tasks)))
            seconds = time.perf_counter() - t0
            committer = kv.sync.engine._committer  # type: ignore[attr-defined]
            return (
                seconds,
                f"{committer.commits / max(1, committer.groups):.1f} commits/transaction",
            )

    return asyncio.run(main())


UPSERT = (
    "INSERT INTO kv (k, v, version) VALUES (?, ?, ?) "
    "ON CONFLICT(k) DO UPDATE SET v = excluded.v, version = excluded.version"
)


def sqlite3_cell(workload: str, writers: int, n: int, path: str, d: OrderData) -> tuple[float, str]:
    if workload == "create":
        return float("nan"), ""
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB, version INTEGER) WITHOUT ROWID")
    setup.close()
    local = threading.local()
    conns: list[sqlite3.Connection] = []
    versions = itertools.count(1)  # next() on a count is atomic under the GIL

    def db() -> sqlite3.Connection:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = sqlite3.connect(
                path, isolation_level=None, timeout=60, check_same_thread=False
            )
            conn.execute("PRAGMA synchronous=FULL")
            conns.append(conn)
        return conn

    def commit(checks: list[bytes], rows: list[tuple[bytes, bytes]]) -> bool:
        conn = db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for key in checks:
                if conn.execute("SELECT 1 FROM kv WHERE k = ?", (key,)).fetchone() is not None:
                    conn.execute("ROLLBACK")
                    return False
            version = next(versions)
            conn.executemany(UPSERT, [(k, v, version) for k, v in rows])
            conn.execute("COMMIT")
            return True
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    docs = [order_doc(o) for o in d.orders[:n]] if workload == "atomic_order" else []

    def op(i: int) -> object:
        if workload == "set":
            return commit([], [(encode_key(("users", i)), msgpack.packb(user(i)))])
        o = docs[i]
        primary = encode_key(("orders", o["id"]))
        rows = [
            (primary, msgpack.packb(o)),
            (
                encode_key(("orders_by_customer", o["customer_id"], o["created_at"], o["id"])),
                msgpack.packb(o["id"]),
            ),
            (encode_key(("orders_by_status", o["status"], o["id"])), msgpack.packb(o["id"])),
        ]
        assert commit([primary], rows)
        return None

    try:
        return run_threads(writers, n, op), ""
    finally:
        for conn in conns:
            conn.close()


def sqlalchemy_cell(
    workload: str, writers: int, n: int, path: str, d: OrderData
) -> tuple[float, str]:
    if workload != "create":
        return float("nan"), ""
    engine = sa.create_engine(
        f"sqlite:///{path}",
        pool_size=writers,
        max_overflow=0,
        connect_args={"timeout": 60, "check_same_thread": False},
    )

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=FULL")

    SaOrder.metadata.create_all(engine)
    orders = d.orders

    def op(i: int) -> object:
        with sa_orm.Session(engine) as s:
            s.add(SaOrder(**orders[i]))
            s.commit()
        return None

    try:
        return run_threads(writers, n, op), ""
    finally:
        engine.dispose()


DENO_SCRIPT = r"""
const [workload, path] = [Deno.args[0], Deno.args[3]];
const [W, N] = [Number(Deno.args[1]), Number(Deno.args[2])];
const NCUST = Math.max(1, Math.floor(N / 10));
const user = (i) => ({ name: `user${i}`, email: `user${i}@example.com`, age: 18 + (i % 60) });
const pad = (x, w) => String(x).padStart(w, "0");
function order(j) {
  const items = [
    { sku: `sku${j % 97}`, qty: 1 + (j % 3), price_cents: 100 + (j % 1000) },
    { sku: `sku${(j * 7) % 97}`, qty: 1, price_cents: 250 + (j % 500) },
  ];
  const created = 1704067200000 + j * 1000;
  return { id: `ord${pad(j, 8)}`, customer_id: `cus${pad(j % NCUST, 6)}`, status: "pending",
    total_cents: items[0].qty * items[0].price_cents + items[1].qty * items[1].price_cents,
    items, created_at: created, updated_at: created };
}
const kv = await Deno.openKv(path);
const docs = workload === "atomic_order" ? Array.from({ length: N }, (_, j) => order(j)) : [];
const t = performance.now();
await Promise.all(Array.from({ length: W }, async (_, w) => {
  for (let i = w; i < N; i += W) {
    if (workload === "set") {
      await kv.set(["users", i], user(i));
    } else {
      const o = docs[i];
      const r = await kv.atomic()
        .check({ key: ["orders", o.id], versionstamp: null })
        .set(["orders", o.id], o)
        .set(["orders_by_customer", o.customer_id, o.created_at, o.id], o.id)
        .set(["orders_by_status", o.status, o.id], o.id)
        .commit();
      if (!r.ok) throw new Error("check failed");
    }
  }
}));
console.log(JSON.stringify({ seconds: (performance.now() - t) / 1000, deno: Deno.version.deno }));
kv.close();
"""


def deno_cell(
    deno: str, script: str, workload: str, writers: int, n: int, path: str
) -> tuple[float, str]:
    if workload == "create":
        return float("nan"), ""
    out = subprocess.run(
        [deno, "run", "--unstable-kv", "-A", script, workload, str(writers), str(n), path],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, DENO_NO_UPDATE_CHECK="1"),
    )
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    return float(facts["seconds"]), f"deno {facts['deno']}"


# -- the run ---------------------------------------------------------------------


def measure(cell: Callable[[str], tuple[float, str]], repeat: int) -> tuple[float, str]:
    """The median rate (ops/s) of ``repeat`` runs of ``cell`` on fresh files."""
    rates = []
    extra = ""
    for _ in range(repeat):
        directory = tempfile.mkdtemp(prefix="group_bench_")
        try:
            seconds, extra = cell(os.path.join(directory, "db.sqlite"))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        if seconds != seconds:  # NaN: the column has no such workload
            return float("nan"), ""
        rates.append(seconds)
    return statistics.median(rates), extra


def latency(n: int) -> None:
    """Single-writer commit latency: n kv.set calls one after another, each timed."""
    directory = tempfile.mkdtemp(prefix="group_bench_")
    try:
        with km.open_kv(os.path.join(directory, "db.sqlite")) as kv:
            for i in range(200):  # warm up
                kv.set(("warm", i), user(i))
            samples = []
            for i in range(n):
                value = user(i)
                t0 = time.perf_counter()
                kv.set(("users", i), value)
                samples.append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    samples.sort()
    print(
        json.dumps(
            {
                "kvmodel": os.path.dirname(km.__file__),
                "n": n,
                "median_us": round(statistics.median(samples) * 1e6, 1),
                "mean_us": round(statistics.fmean(samples) * 1e6, 1),
                "p99_us": round(samples[int(0.99 * (n - 1))] * 1e6, 1),
            }
        )
    )


def plot(results: dict[tuple[str, str, int], float], writers: list[int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(WORKLOADS), figsize=(5 * len(WORKLOADS), 4), sharey=False)
    for ax, workload in zip(axes, WORKLOADS, strict=True):
        for column in ("kvmodel", "sqlite3", "sqlalchemy", "denokv"):
            ys = [results.get((workload, column, w), float("nan")) for w in writers]
            if all(y != y for y in ys):
                continue
            ax.plot(writers, ys, marker="o", label=column)
        ax.set_xscale("log", base=2)
        ax.set_xticks(writers, [str(w) for w in writers])
        ax.set_xlabel("concurrent writers (threads; Deno: async loops)")
        ax.set_ylabel("commits/s (synchronous=FULL)")
        ax.set_title(workload)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {os.path.relpath(path, REPO)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="operations per cell")
    parser.add_argument("--writers", default="1,4,16,64")
    parser.add_argument("--tasks", default="64,256", help="asyncio task counts ('' for none)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--deno", default=os.environ.get("DENO", DEFAULT_DENO))
    parser.add_argument("--plot", default=os.path.join(REPO, "benchmarks", "group_bench.png"))
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    parser.add_argument("--latency", action="store_true", help="single-writer latency only")
    args = parser.parse_args(argv)
    if args.latency:
        latency(args.n)
        return 0
    n = args.n
    writers = [int(w) for w in args.writers.split(",") if w]
    tasks = [int(t) for t in args.tasks.split(",") if t]
    workloads = [w for w in args.workloads.split(",") if w]
    d = OrderData.make(n, 0)
    deno = args.deno if shutil.which(args.deno) or os.path.exists(args.deno) else None
    script_dir = tempfile.mkdtemp(prefix="group_bench_deno_")
    script = os.path.join(script_dir, "group_bench.js")
    with open(script, "w", encoding="utf-8") as f:
        f.write(DENO_SCRIPT)
    if deno is None:
        print(f"Deno not found at {args.deno!r} (see --deno): the denokv column is skipped.")
    print(
        f"group_bench: n={n} per cell, median of {args.repeat}, synchronous=FULL, "
        f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, "
        f"SQLAlchemy {sa.__version__}, {os.cpu_count()} CPUs"
    )
    results: dict[tuple[str, str, int], float] = {}
    extras: dict[tuple[str, str, int], str] = {}
    columns: dict[str, Callable[[str, int, str], tuple[float, str]]] = {
        "kvmodel": lambda wl, w, p: kvmodel_cell(wl, w, n, p, d),
        "sqlite3": lambda wl, w, p: sqlite3_cell(wl, w, n, p, d),
        "sqlalchemy": lambda wl, w, p: sqlalchemy_cell(wl, w, n, p, d),
    }
    if deno is not None:
        columns["denokv"] = lambda wl, w, p: deno_cell(deno, script, wl, w, n, p)
    for workload in workloads:
        for w in writers:
            for name, column in columns.items():
                seconds, extra = measure(
                    lambda p, c=column, wl=workload, w=w: c(wl, w, p),  # type: ignore[misc]
                    args.repeat,
                )
                if seconds == seconds:
                    results[(workload, name, w)] = n / seconds
                    extras[(workload, name, w)] = extra
                    if args.json:
                        print(
                            json.dumps(
                                {
                                    "workload": workload,
                                    "column": name,
                                    "writers": w,
                                    "ops_per_sec": round(n / seconds),
                                    "note": extra,
                                }
                            )
                        )
        if workload == "set":
            for t in tasks:
                seconds, extra = measure(
                    lambda p, t=t: kvmodel_async_cell("set", t, n, p, d),  # type: ignore[misc]
                    args.repeat,
                )
                results[("set", "kvmodel-async", t)] = n / seconds
                extras[("set", "kvmodel-async", t)] = extra
                if args.json:
                    print(
                        json.dumps(
                            {
                                "workload": "set",
                                "column": "kvmodel-async",
                                "writers": t,
                                "ops_per_sec": round(n / seconds),
                                "note": extra,
                            }
                        )
                    )
    shutil.rmtree(script_dir, ignore_errors=True)
    if not args.json:
        print_table(results, extras, workloads, writers, tasks)
    if args.plot:
        plot(results, writers, args.plot)
    return 0


def print_table(
    results: dict[tuple[str, str, int], float],
    extras: dict[tuple[str, str, int], str],
    workloads: list[str],
    writers: list[int],
    tasks: list[int],
) -> None:
    def rate(x: float | None) -> str:
        if x is None:
            return "-"
        return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"

    print()
    print(
        "| workload | writers | kvmodel (op/s) | commits/transaction | sqlite3 | SQLAlchemy "
        "| Deno KV | kvmodel / sqlite3 | kvmodel / Deno KV | kvmodel / SQLAlchemy "
        "| target at W=16 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for workload in workloads:
        rows: list[tuple[str, int]] = [("kvmodel", w) for w in writers]
        if workload == "set":
            rows += [("kvmodel-async", t) for t in tasks]
        for column, w in rows:
            mine = results.get((workload, column, w))
            label = f"{w}" if column == "kvmodel" else f"{w} tasks"
            peers = {
                p: (results.get((workload, p, w)) if column == "kvmodel" else None)
                for p in ("sqlite3", "sqlalchemy", "denokv")
            }
            ratios = []
            verdicts = []
            for p in ("sqlite3", "denokv", "sqlalchemy"):
                peer = peers[p]
                if mine is None or peer is None:
                    ratios.append("")
                    continue
                ratio = mine / peer
                ratios.append(f"{ratio:.1f}x")
                target = TARGETS.get((workload, p))
                if target is not None and w == TARGET_W and column == "kvmodel":
                    verdicts.append(f">= {target:g}x {p} {'ok' if ratio >= target else 'MISSED'}")
            note = extras.get((workload, column, w), "").replace(" commits/transaction", "")
            print(
                f"| {workload} | {label} | {rate(mine)} | {note} | {rate(peers['sqlite3'])} "
                f"| {rate(peers['sqlalchemy'])} | {rate(peers['denokv'])} | "
                + " | ".join(ratios)
                + f" | {'; '.join(verdicts)} |"
            )


if __name__ == "__main__":
    raise SystemExit(main())
