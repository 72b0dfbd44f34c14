"""Bulk writes: km.bulk_save beside one session commit per order and SQLAlchemy's add_all.

    python benchmarks/bulk_bench.py [--n 100000] [--single 5000] [--sync FULL,NORMAL] [--json]

Needs SQLAlchemy (the ``bench`` extra). The orders and both models are
orm_bench's (``OrderData``, ``KmOrder``, ``SaOrder``): a primary key, two
embedded items, a non-unique index on ``(customer_id, created_at)`` and one on
``status``. Each column writes the same ``--n`` new orders into a fresh SQLite
file (WAL, the given ``synchronous``), building the objects from the same dicts
inside the timed region:

* ``bulk_save``: ``km.bulk_save(kv, orders)``, which reads the keys first (an
  upsert) and packs the orders into as few checked commits as the limits allow;
* ``session_each``: one ``km.Session`` commit per order, as a web request would
  write it; timed on the first ``--single`` orders only (a full 100k run at
  ``synchronous=FULL`` takes minutes) and reported as that rate;
* ``sqlalchemy_add_all``: ``session.add_all(orders)`` and ONE ``commit()``, a
  single transaction with no per-row check beyond the primary key.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

import kvmodel as km

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Report, Result, add_common_args, bench_header
from orm_bench import KmOrder, OrderData, OrderItem, SaOrder, sa, sa_orm, sqlalchemy_engine


def km_order(order: dict[str, Any]) -> KmOrder:
    """The kvmodel object of one order dict (as orm_bench builds it)."""
    return KmOrder(
        id=order["id"],
        customer_id=order["customer_id"],
        status=order["status"],
        total_cents=order["total_cents"],
        items=[OrderItem(**i) for i in order["items"]],
        created_at=order["created_at"],
        updated_at=order["updated_at"],
    )


def run_bulk_save(path: str, sync: str, orders: list[dict[str, Any]]) -> tuple[float, int]:
    """Seconds for bulk_save of every order, and the commits it took."""
    with km.open_kv(path, synchronous=sync) as kv:
        start = time.perf_counter()
        report = km.bulk_save(kv, (km_order(o) for o in orders))
        secs = time.perf_counter() - start
        if report.saved != len(orders):
            raise SystemExit(f"bulk_save did not save every order: {report}")
        return secs, report.commits


def run_session_each(path: str, sync: str, orders: list[dict[str, Any]]) -> float:
    """Seconds for one session commit per order."""
    with km.open_kv(path, synchronous=sync) as kv:
        start = time.perf_counter()
        for o in orders:
            with km.Session(kv) as s:
                s.add(km_order(o))
        return time.perf_counter() - start


def run_sqlalchemy(path: str, sync: str, orders: list[dict[str, Any]]) -> float:
    """Seconds for SQLAlchemy's add_all of every order and one commit."""
    engine = sqlalchemy_engine(path, sync)
    try:
        start = time.perf_counter()
        with sa_orm.Session(engine) as s:
            s.add_all([SaOrder(**o) for o in orders])
            s.commit()
        secs = time.perf_counter() - start
        with sa_orm.Session(engine) as s:
            count = s.scalar(sa.select(sa.func.count()).select_from(SaOrder))
        if count != len(orders):
            raise SystemExit(f"SQLAlchemy stored {count} orders, not {len(orders)}")
        return secs
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="orders per bulk column")
    parser.add_argument("--single", type=int, default=5000, help="orders for session_each")
    parser.add_argument("--sync", default="FULL,NORMAL", help="comma-separated: FULL, NORMAL")
    add_common_args(parser)
    args = parser.parse_args(argv)

    report = Report("bulk_bench", json_lines=args.json)
    bench_header(report, orders=args.n, single=args.single, sqlalchemy=sa.__version__)
    data = OrderData.make(args.n, 0)
    single = min(args.single, args.n)
    rows: list[list[str]] = []
    for sync in args.sync.split(","):
        with tempfile.TemporaryDirectory(prefix="bulkbench-") as tmp:
            secs, commits = run_bulk_save(os.path.join(tmp, "bulk.db"), sync, data.orders)
            bulk = report.add(
                Result(f"write_{sync}", "bulk_save", args.n, "order", secs, {"commits": commits})
            )
            secs = run_session_each(os.path.join(tmp, "each.db"), sync, data.orders[:single])
            each = report.add(Result(f"write_{sync}", "session_each", single, "order", secs))
            secs = run_sqlalchemy(os.path.join(tmp, "sa.db"), sync, data.orders)
            alch = report.add(Result(f"write_{sync}", "sqlalchemy_add_all", args.n, "order", secs))
        rows.append(
            [
                sync,
                f"{bulk.rate:,.0f} ({bulk.secs:.1f} s, {commits} commits)",
                f"{each.rate:,.0f} (~{args.n / each.rate:.0f} s for {args.n})",
                f"{alch.rate:,.0f} ({alch.secs:.1f} s)",
                f"{bulk.rate / each.rate:.1f}x",
                f"{bulk.rate / alch.rate:.2f}x",
            ]
        )
    report.table(
        f"{args.n} new orders on a SQLite file, WAL (orders/s)",
        [
            "synchronous",
            "bulk_save",
            f"session per order ({single})",
            "SQLAlchemy add_all",
            "vs per order",
            "vs add_all",
        ],
        rows,
    )
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
