"""KV API throughput: kvmodel on both engines beside a bare sqlite3 table and a SortedDict.

    python benchmarks/kv_bench.py [--n 20000] [--sync FULL|NORMAL] [--json]
                                  [--stream-n 1000000] [--stream-sqlite-n 200000]

Four columns run the same workloads on the same data in the same order:

* ``sqlite3-bare``: stdlib sqlite3, one table ``kv(k BLOB PRIMARY KEY, v BLOB, version
  INTEGER) WITHOUT ROWID``, WAL, the same ``synchronous``, msgpack values, keys encoded
  with ``kvmodel.keys.encode_key``, ``BEGIN IMMEDIATE``/``COMMIT`` per commit and an
  in-process commit counter: the floor for a SQLite-backed key-value store in Python.
* ``kvmodel-sqlite``: ``kvmodel.open_kv(path)`` on a temporary file.
* ``sortedcontainers``: a SortedDict of encoded keys to (msgpack bytes, version): the
  floor for a pure-Python memory engine.
* ``kvmodel-memory``: ``kvmodel.open_kv()``.

Each column does each workload the way its users would write it (kvmodel through its
public API). Then a streaming check lists a large prefix on each kvmodel engine while
sampling the process's memory, to show that a full scan holds one batch at a time.
"""

from __future__ import annotations

import argparse
import gc
import os
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
from sortedcontainers import SortedDict

import kvmodel as km
from kvmodel.keys import decode_key, encode_key, prefix_range

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (
    Data,
    Report,
    Result,
    RssSampler,
    Target,
    add_common_args,
    bench_header,
    next_status,
    rss_bytes,
    run_interleaved,
)

_packb = msgpack.packb
_unpackb = msgpack.unpackb
_MASK64 = (1 << 64) - 1
_COUNTER = ("counters", "orders")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class KvColumn(Protocol):
    """What a column offers to the workloads: the KV operations, each done natively."""

    name: str

    def set(self, key: tuple[Any, ...], value: Any) -> None: ...
    def get(self, key: tuple[Any, ...]) -> Any: ...
    def get_many(self, keys: Sequence[tuple[Any, ...]]) -> list[Any]: ...
    def scan(
        self,
        prefix: tuple[Any, ...],
        start: tuple[Any, ...] | None = None,
        limit: int | None = None,
    ) -> Iterable[Any]: ...
    def create_order(self, order: dict[str, Any]) -> bool: ...
    def update_status(self, order_id: str) -> bool: ...
    def index_values(self, prefix: tuple[Any, ...]) -> list[Any]: ...
    def sum(self, key: tuple[Any, ...], n: int) -> None: ...
    def counter(self, key: tuple[Any, ...]) -> int: ...
    def close(self) -> None: ...


# -- the floors ------------------------------------------------------------------

UPSERT = (
    "INSERT INTO kv (k, v, version) VALUES (?, ?, ?) "
    "ON CONFLICT(k) DO UPDATE SET v = excluded.v, version = excluded.version"
)
SELECT_ONE = "SELECT v, version FROM kv WHERE k = ?"
SELECT_VERSION = "SELECT version FROM kv WHERE k = ?"
SELECT_RANGE = "SELECT k, v, version FROM kv WHERE k >= ? AND k < ? ORDER BY k LIMIT ?"
DELETE_ONE = "DELETE FROM kv WHERE k = ?"


class BareSqlite:
    """The floor: a hand-written key-value table on stdlib sqlite3."""

    name = "sqlite3-bare"

    def __init__(self, path: str, synchronous: str) -> None:
        self.db = db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute(
            "CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL, version INTEGER NOT NULL)"
            " WITHOUT ROWID"
        )
        # An in-process commit counter: the cheapest versionstamp there is (kvmodel
        # keeps it in the file so that several processes agree).
        self.version = 0

    def _commit(
        self, checks: Sequence[tuple[bytes, int | None]], run: Callable[[int], None]
    ) -> bool:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for key, expected in checks:
                row = db.execute(SELECT_VERSION, (key,)).fetchone()
                if (row[0] if row else None) != expected:
                    db.execute("ROLLBACK")
                    return False
            self.version += 1
            run(self.version)
            db.execute("COMMIT")
            return True
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def set(self, key: tuple[Any, ...], value: Any) -> None:
        k, v = encode_key(key), _packb(value)

        def run(ver: int) -> None:
            self.db.execute(UPSERT, (k, v, ver))

        self._commit((), run)

    def _get(self, key: tuple[Any, ...]) -> tuple[Any, int] | None:
        row = self.db.execute(SELECT_ONE, (encode_key(key),)).fetchone()
        return None if row is None else (_unpackb(row[0]), row[1])

    def get(self, key: tuple[Any, ...]) -> Any:
        found = self._get(key)
        return None if found is None else found[0]

    def get_many(self, keys: Sequence[tuple[Any, ...]]) -> list[Any]:
        encoded = [encode_key(k) for k in keys]
        marks = ",".join("?" * len(encoded))
        rows = {
            k: (v, ver)
            for k, v, ver in self.db.execute(
                f"SELECT k, v, version FROM kv WHERE k IN ({marks})", encoded
            )
        }
        out = []
        for k in encoded:
            row = rows.get(k)
            out.append(None if row is None else (_unpackb(row[0]), row[1]))
        return out

    def scan(
        self,
        prefix: tuple[Any, ...],
        start: tuple[Any, ...] | None = None,
        limit: int | None = None,
    ) -> Iterable[Any]:
        lo, hi = prefix_range(prefix)
        if start is not None:
            lo = max(lo, encode_key(start))
        for k, v, ver in self.db.execute(SELECT_RANGE, (lo, hi, -1 if limit is None else limit)):
            yield decode_key(k), _unpackb(v), ver

    def create_order(self, order: dict[str, Any]) -> bool:
        oid = order["id"]
        primary = encode_key(("orders", oid))
        rows = [
            (primary, _packb(order)),
            (
                encode_key(("orders_by_customer", order["customer_id"], order["created_at"], oid)),
                _packb(oid),
            ),
            (encode_key(("orders_by_status", order["status"], oid)), _packb(oid)),
        ]

        def run(ver: int) -> None:
            self.db.executemany(UPSERT, [(k, v, ver) for k, v in rows])

        return self._commit(((primary, None),), run)

    def update_status(self, order_id: str) -> bool:
        primary = encode_key(("orders", order_id))
        found = self._get(("orders", order_id))
        assert found is not None
        order, version = found
        nxt = next_status(order["status"])
        new = dict(order, status=nxt, updated_at=order["updated_at"] + 1)
        old_index = encode_key(("orders_by_status", order["status"], order_id))
        new_index = encode_key(("orders_by_status", nxt, order_id))

        def run(ver: int) -> None:
            db = self.db
            db.execute(UPSERT, (primary, _packb(new), ver))
            db.execute(DELETE_ONE, (old_index,))
            db.execute(UPSERT, (new_index, _packb(order_id), ver))

        return self._commit(((primary, version),), run)

    def index_values(self, prefix: tuple[Any, ...]) -> list[Any]:
        ids = [v for _, v, _ in self.scan(prefix)]
        out: list[Any] = []
        for i in range(0, len(ids), 10):
            out += self.get_many([("orders", oid) for oid in ids[i : i + 10]])
        return out

    def sum(self, key: tuple[Any, ...], n: int) -> None:
        k = encode_key(key)

        def run(ver: int) -> None:
            row = self.db.execute(SELECT_ONE, (k,)).fetchone()
            current = _unpackb(row[0]) if row else 0
            self.db.execute(UPSERT, (k, _packb((current + n) & _MASK64), ver))

        self._commit((), run)

    def counter(self, key: tuple[Any, ...]) -> int:
        value = self.get(key)
        return int(value)

    def close(self) -> None:
        self.db.close()


class SortedFloor:
    """The floor of a memory engine: a SortedDict of encoded keys, msgpack values, no lock."""

    name = "sortedcontainers"

    def __init__(self) -> None:
        self.data: Any = SortedDict()
        self.version = 0

    def set(self, key: tuple[Any, ...], value: Any) -> None:
        self.version += 1
        self.data[encode_key(key)] = (_packb(value), self.version)

    def get(self, key: tuple[Any, ...]) -> Any:
        found = self.data.get(encode_key(key))
        return None if found is None else _unpackb(found[0])

    def get_many(self, keys: Sequence[tuple[Any, ...]]) -> list[Any]:
        data = self.data
        out = []
        for key in keys:
            found = data.get(encode_key(key))
            out.append(None if found is None else (_unpackb(found[0]), found[1]))
        return out

    def scan(
        self,
        prefix: tuple[Any, ...],
        start: tuple[Any, ...] | None = None,
        limit: int | None = None,
    ) -> Iterable[Any]:
        lo, hi = prefix_range(prefix)
        if start is not None:
            lo = max(lo, encode_key(start))
        data = self.data
        for i, k in enumerate(data.irange(lo, hi, inclusive=(True, False))):
            if limit is not None and i >= limit:
                return
            v, ver = data[k]
            yield decode_key(k), _unpackb(v), ver

    def create_order(self, order: dict[str, Any]) -> bool:
        oid = order["id"]
        primary = encode_key(("orders", oid))
        data = self.data
        if primary in data:
            return False
        self.version += 1
        ver = self.version
        data[primary] = (_packb(order), ver)
        key = ("orders_by_customer", order["customer_id"], order["created_at"], oid)
        data[encode_key(key)] = (_packb(oid), ver)
        data[encode_key(("orders_by_status", order["status"], oid))] = (_packb(oid), ver)
        return True

    def update_status(self, order_id: str) -> bool:
        primary = encode_key(("orders", order_id))
        data = self.data
        packed, version = data[primary]
        order = _unpackb(packed)
        nxt = next_status(order["status"])
        new = dict(order, status=nxt, updated_at=order["updated_at"] + 1)
        if data[primary][1] != version:
            return False
        self.version += 1
        ver = self.version
        data[primary] = (_packb(new), ver)
        data.pop(encode_key(("orders_by_status", order["status"], order_id)), None)
        data[encode_key(("orders_by_status", nxt, order_id))] = (_packb(order_id), ver)
        return True

    def index_values(self, prefix: tuple[Any, ...]) -> list[Any]:
        ids = [v for _, v, _ in self.scan(prefix)]
        out: list[Any] = []
        for i in range(0, len(ids), 10):
            out += self.get_many([("orders", oid) for oid in ids[i : i + 10]])
        return out

    def sum(self, key: tuple[Any, ...], n: int) -> None:
        k = encode_key(key)
        found = self.data.get(k)
        current = _unpackb(found[0]) if found else 0
        self.version += 1
        self.data[k] = (_packb((current + n) & _MASK64), self.version)

    def counter(self, key: tuple[Any, ...]) -> int:
        return int(self.get(key))

    def close(self) -> None:
        self.data.clear()


# -- kvmodel -------------------------------------------------------------------


class KvmodelColumn:
    """kvmodel through its public API, as a user would write each workload."""

    def __init__(self, name: str, kv: km.Kv) -> None:
        self.name = name
        self.kv = kv

    def set(self, key: tuple[Any, ...], value: Any) -> None:
        self.kv.set(key, value)

    def get(self, key: tuple[Any, ...]) -> Any:
        return self.kv.get(key).value

    def get_many(self, keys: Sequence[tuple[Any, ...]]) -> list[Any]:
        return self.kv.get_many(keys)

    def scan(
        self,
        prefix: tuple[Any, ...],
        start: tuple[Any, ...] | None = None,
        limit: int | None = None,
    ) -> Iterable[Any]:
        return self.kv.list(prefix, start=start, limit=limit)

    def create_order(self, order: dict[str, Any]) -> bool:
        oid = order["id"]
        primary = ("orders", oid)
        return (
            self.kv.atomic()
            .check((primary, None))
            .set(primary, order)
            .set(("orders_by_customer", order["customer_id"], order["created_at"], oid), oid)
            .set(("orders_by_status", order["status"], oid), oid)
            .commit()
            .ok
        )

    def update_status(self, order_id: str) -> bool:
        primary = ("orders", order_id)
        entry = self.kv.get(primary)
        order = entry.value
        assert order is not None
        nxt = next_status(order["status"])
        return (
            self.kv.atomic()
            .check(entry)
            .set(primary, dict(order, status=nxt, updated_at=order["updated_at"] + 1))
            .delete(("orders_by_status", order["status"], order_id))
            .set(("orders_by_status", nxt, order_id), order_id)
            .commit()
            .ok
        )

    def index_values(self, prefix: tuple[Any, ...]) -> list[Any]:
        ids = [e.value for e in self.kv.list(prefix)]
        out: list[Any] = []
        for i in range(0, len(ids), 10):
            out += self.kv.get_many([("orders", oid) for oid in ids[i : i + 10]])
        return out

    def sum(self, key: tuple[Any, ...], n: int) -> None:
        self.kv.atomic().sum(key, n).commit()

    def counter(self, key: tuple[Any, ...]) -> int:
        value = self.kv.get(key).value
        assert value is not None
        return int(value)

    def close(self) -> None:
        self.kv.close()


# -- workloads -----------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """A workload over ``items`` items, run as ``step(column, lo, hi)`` on slices of them.

    ``ops`` items make ``ops`` operations of ``unit`` (a full scan counts its entries).
    """

    name: str
    ops: int
    unit: str
    items: int
    step: Callable[[KvColumn, int, int], int]


def workloads(d: Data) -> list[Workload]:
    """The workloads in run order; each step returns a count that all columns must agree on."""
    n = d.n

    def w_set(c: KvColumn, lo: int, hi: int) -> int:
        users = d.users
        for i in range(lo, hi):
            c.set(("users", i), users[i])
        return hi - lo

    def w_get(c: KvColumn, lo: int, hi: int) -> int:
        return sum(c.get(("users", i)) is not None for i in d.get_order[lo:hi])

    def w_get_many(c: KvColumn, lo: int, hi: int) -> int:
        order = d.get_many_order
        found = 0
        for call in range(lo, hi):
            keys = [("users", i) for i in order[call * 10 : call * 10 + 10]]
            found += len(c.get_many(keys))
        return found

    def w_list_full(c: KvColumn, lo: int, hi: int) -> int:
        return sum(1 for _ in range(lo, hi) for _ in c.scan(("users",)))

    def w_list_page(c: KvColumn, lo: int, hi: int) -> int:
        seen = 0
        for start in d.page_starts[lo:hi]:
            seen += sum(1 for _ in c.scan(("users",), start=("users", start), limit=20))
        return seen

    def w_atomic_order(c: KvColumn, lo: int, hi: int) -> int:
        return sum(c.create_order(o) for o in d.orders[lo:hi])

    def w_update_cas(c: KvColumn, lo: int, hi: int) -> int:
        orders = d.orders
        return sum(c.update_status(orders[j]["id"]) for j in d.update_order[lo:hi])

    def w_list_by_customer(c: KvColumn, lo: int, hi: int) -> int:
        return sum(
            len(c.index_values(("orders_by_customer", cust))) for cust in d.customer_picks[lo:hi]
        )

    def w_sum(c: KvColumn, lo: int, hi: int) -> int:
        for _ in range(lo, hi):
            c.sum(_COUNTER, 1)
        return c.counter(_COUNTER) if hi == n else 0

    return [
        Workload("set", n, "op", n, w_set),
        Workload("get", n, "op", n, w_get),
        Workload("get_many", n // 10, "call", n // 10, w_get_many),
        Workload("list_full", 3 * n, "entry", 3, w_list_full),
        Workload("list_page", len(d.page_starts), "page", len(d.page_starts), w_list_page),
        Workload("atomic_order", len(d.orders), "commit", len(d.orders), w_atomic_order),
        Workload("update_cas", len(d.orders), "commit", len(d.orders), w_update_cas),
        Workload(
            "list_by_customer",
            len(d.customer_picks),
            "call",
            len(d.customer_picks),
            w_list_by_customer,
        ),
        Workload("sum", n, "commit", n, w_sum),
    ]


SQLITE_TARGETS = {
    "set": Target(min_ratio=0.75),
    "get": Target(min_ratio=0.5),
    "get_many": Target(min_ratio=0.5),
    "list_full": Target(min_ratio=0.5),
    "list_page": Target(min_ratio=0.5),
    "atomic_order": Target(min_ratio=0.75),
    "update_cas": Target(min_ratio=0.75),
    "list_by_customer": Target(min_ratio=0.5),
    "sum": Target(min_ratio=0.75),
}
MEMORY_TARGETS = {
    "set": Target(min_ratio=0.3, min_rate=100_000),
    "get": Target(min_ratio=0.3, min_rate=100_000),
}


def run_workloads(
    report: Report, columns: list[KvColumn], d: Data, *, chunks: int, profile: str | None = None
) -> None:
    """Runs the KV workloads on every column, interleaved (see ``run_interleaved``)."""
    run_interleaved(report, workloads(d), columns, chunks=chunks, profile=profile)


# -- streaming check -------------------------------------------------------------


def stream_check(report: Report, kv: km.Kv, label: str, count: int) -> list[str]:
    """Loads ``count`` keys, then lists them all while measuring the memory the listing holds."""
    batch = 1000
    start = time.perf_counter()
    for base in range(0, count, batch):
        op = kv.atomic()
        for i in range(base, min(base + batch, count)):
            op.set(("big", i), {"i": i, "name": f"item{i:08d}"})
        op.commit()
    load_secs = time.perf_counter() - start
    gc.collect()

    # Pass 1: the live Python memory allocated by the iteration, at its peak.
    tracemalloc.start()
    tracemalloc.reset_peak()
    seen = 0
    for _ in kv.list(("big",)):
        seen += 1
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    gc.collect()

    # Pass 2: untraced, the RSS sampled every 10 ms, and the scan rate.
    with RssSampler() as rss:
        t = time.perf_counter()
        seen2 = sum(1 for _ in kv.list(("big",)))
        secs = time.perf_counter() - t
    assert seen == seen2 == count, (seen, seen2, count)
    report.add(
        Result(
            f"stream_{label}",
            f"kvmodel-{label}",
            count,
            "entry",
            secs,
            {
                "load_secs": round(load_secs, 2),
                "traced_peak_bytes": traced_peak,
                "rss_before": rss.start,
                "rss_peak": rss.peak,
                "rss_after": rss.end,
            },
        )
    )
    mib = 1024 * 1024
    return [
        f"kvmodel-{label}",
        f"{count:,}",
        f"{count / secs:,.0f}",
        f"{traced_peak / 1024:,.0f} KiB",
        f"{rss.start / mib:,.0f} MiB",
        f"{(rss.peak - rss.start) / mib:+,.1f} MiB",
        f"{traced_peak / count:.2f} B",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="users (orders: n/4)")
    parser.add_argument("--sync", default="FULL", choices=["FULL", "NORMAL"])
    parser.add_argument("--stream-n", type=int, default=1_000_000, help="0 skips")
    parser.add_argument("--stream-sqlite-n", type=int, default=200_000, help="0 skips")
    parser.add_argument(
        "--engines",
        default="sqlite,memory",
        help="comma-separated: sqlite (bare table vs SqliteEngine), memory (SortedDict vs Memory)",
    )
    parser.add_argument(
        "--chunks", type=int, default=100, help="slices the columns take turns on (1: one go)"
    )
    parser.add_argument(
        "--profile",
        metavar="WORKLOAD",
        help="run only the kvmodel columns and print cProfile's hot spots of this workload",
    )
    add_common_args(parser)
    args = parser.parse_args(argv)

    report = Report("kv_bench", json_lines=args.json)
    bench_header(report, n=args.n, synchronous=args.sync, kvmodel=km.__version__)
    d = Data(args.n)
    with tempfile.TemporaryDirectory(prefix="kvbench-") as tmp:
        engines = set(args.engines.split(","))
        columns: list[KvColumn] = []
        if "sqlite" in engines:
            kv_file = km.open_kv(os.path.join(tmp, "kvmodel.db"), synchronous=args.sync)
            columns += [
                BareSqlite(os.path.join(tmp, "bare.db"), args.sync),
                KvmodelColumn("kvmodel-sqlite", kv_file),
            ]
        if "memory" in engines:
            columns += [SortedFloor(), KvmodelColumn("kvmodel-memory", km.open_kv())]
        if args.profile:
            columns = [c for c in columns if isinstance(c, KvmodelColumn)]
            run_workloads(report, columns, d, chunks=args.chunks, profile=args.profile)
            for c in columns:
                c.close()
            return 0
        run_workloads(report, columns, d, chunks=args.chunks)
        for c in columns:
            c.close()
        names = [w.name for w in workloads(d)]
        if "sqlite" in engines:
            report.comparison(
                f"SQLite file, synchronous={args.sync} (ops/s)",
                "sqlite3-bare",
                "kvmodel-sqlite",
                names,
                SQLITE_TARGETS,
            )
        if "memory" in engines:
            report.comparison(
                "Memory (ops/s)", "sortedcontainers", "kvmodel-memory", names, MEMORY_TARGETS
            )

        rows = []
        if args.stream_n and "memory" in engines:
            with km.open_kv() as kv:
                rows.append(stream_check(report, kv, "memory", args.stream_n))
        if args.stream_sqlite_n and "sqlite" in engines:
            with km.open_kv(os.path.join(tmp, "stream.db"), synchronous=args.sync) as kv:
                rows.append(stream_check(report, kv, "sqlite", args.stream_sqlite_n))
        if rows:
            report.table(
                "Streaming full scan (memory held by the iteration: tracemalloc peak; RSS sampled)",
                [
                    "engine",
                    "keys",
                    "entries/s",
                    "traced peak",
                    "RSS before",
                    "RSS growth",
                    "peak/key",
                ],
                rows,
            )
    report.say(f"\nRSS at exit: {rss_bytes() / 2**20:,.0f} MiB")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
