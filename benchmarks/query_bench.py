"""Model.query beside SQLAlchemy 2.x on SQLite: an AND over two indexes, and a residual filter.

    python benchmarks/query_bench.py [--orders 20000] [--queries 300] [--rounds 5] [--json]

Both sides store the same orders in a SQLite file (WAL, synchronous=NORMAL) and
run the same queries in the same order, returning full objects:

* ``and_two_indexes``: ``status == s AND customer == c`` (about 20 rows each).
  kvmodel has one index on ``status`` and one on ``customer`` and intersects
  them on the primary key (a streaming merge); SQLAlchemy has the composite
  index ``(status, customer)``, which SQLite reads directly.
* ``residual_filter``: ``status == s AND title LIKE 'a%'``, the first 20 in
  primary key order. Both sides have an index on ``status`` only, so the title
  condition is checked row by row (kvmodel: in Python, on the documents the
  index scan reads).

The columns take turns round by round, so a burst of load falls on both. Needs
SQLAlchemy (``pip install 'sqlalchemy>=2.0'``); without it the SQLAlchemy
column is skipped and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable

import kvmodel as km

try:
    import sqlalchemy as sa
    from sqlalchemy import orm as sa_orm
except ImportError:  # pragma: no cover - the bench extra is optional
    sa = None  # type: ignore[assignment]

STATUSES = ("pending", "paid", "shipped", "void", "refunded")
CUSTOMERS = 200


class Order(km.Model, prefix="orders"):
    """The kvmodel side: one index per field the AND compares."""

    id: int = km.field(primary_key=True)
    status: str
    customer: str
    total_cents: int
    title: str
    by_status = km.Index("status")
    by_customer = km.Index("customer")


def _rows(n: int) -> list[dict[str, object]]:
    rng = random.Random(7)
    return [
        {
            "id": i,
            "status": STATUSES[rng.randrange(len(STATUSES))],
            "customer": f"c{rng.randrange(CUSTOMERS):03d}",
            "total_cents": rng.randrange(100_000),
            "title": rng.choice("abcdefghij") + f"-{i}",
        }
        for i in range(n)
    ]


def _queries(n: int) -> list[tuple[str, str]]:
    rng = random.Random(11)
    return [
        (STATUSES[rng.randrange(len(STATUSES))], f"c{rng.randrange(CUSTOMERS):03d}")
        for _ in range(n)
    ]


def kvmodel_side(path: str, rows: list[dict[str, object]]) -> dict[str, Callable[..., int]]:
    kv = km.open_kv(path)
    km.bulk_save(kv, [Order(**r) for r in rows])  # type: ignore[arg-type]

    def and_two_indexes(status: str, customer: str) -> int:
        return len(list(Order.query(kv, status=status, customer=customer)))

    def residual_filter(status: str, _: str) -> int:
        page = Order.query(kv, km.F("title").startswith("a"), status=status).page(limit=20)
        return len(page)

    return {"and_two_indexes": and_two_indexes, "residual_filter": residual_filter}


def sqlalchemy_side(path: str, rows: list[dict[str, object]]) -> dict[str, Callable[..., int]]:
    class Base(sa_orm.DeclarativeBase):
        pass

    class SaOrder(Base):
        __tablename__ = "orders"
        id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
        status: sa_orm.Mapped[str]
        customer: sa_orm.Mapped[str]
        total_cents: sa_orm.Mapped[int]
        title: sa_orm.Mapped[str]
        __table_args__ = (
            sa.Index("ix_status_customer", "status", "customer"),
            sa.Index("ix_status", "status"),
        )

    engine = sa.create_engine(f"sqlite:///{path}")

    @sa.event.listens_for(engine, "connect")
    def _pragmas(conn: object, _: object) -> None:
        cur = conn.cursor()  # type: ignore[attr-defined]
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    Base.metadata.create_all(engine)
    with sa_orm.Session(engine) as s, s.begin():
        s.execute(sa.insert(SaOrder), rows)

    def and_two_indexes(status: str, customer: str) -> int:
        with sa_orm.Session(engine) as s:
            stmt = sa.select(SaOrder).where(SaOrder.status == status, SaOrder.customer == customer)
            return len(s.scalars(stmt.order_by(SaOrder.id)).all())

    def residual_filter(status: str, _: str) -> int:
        with sa_orm.Session(engine) as s:
            stmt = (
                sa.select(SaOrder)
                .where(SaOrder.status == status, SaOrder.title.like("a%"))
                .order_by(SaOrder.id)
                .limit(20)
            )
            return len(s.scalars(stmt).all())

    return {"and_two_indexes": and_two_indexes, "residual_filter": residual_filter}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = _rows(args.orders)
    queries = _queries(args.queries)
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"kvmodel-sqlite": kvmodel_side(os.path.join(tmp, "kv.db"), rows)}
        if sa is None:
            print(
                "SQLAlchemy is not installed: the sqlalchemy-sqlite column is skipped "
                "(pip install 'sqlalchemy>=2.0').",
                file=sys.stderr,
            )
        else:
            sides["sqlalchemy-sqlite"] = sqlalchemy_side(os.path.join(tmp, "sa.db"), rows)
        elapsed: dict[tuple[str, str], float] = {}
        counts: dict[tuple[str, str], int] = {}
        per_round = max(1, len(queries) // args.rounds)
        for r in range(args.rounds):
            chunk = queries[r * per_round : (r + 1) * per_round]
            for workload in ("and_two_indexes", "residual_filter"):
                for name, fns in sides.items():
                    fn = fns[workload]
                    t0 = time.perf_counter()
                    n = sum(fn(status, customer) for status, customer in chunk)
                    key = (name, workload)
                    elapsed[key] = elapsed.get(key, 0.0) + time.perf_counter() - t0
                    counts[key] = counts.get(key, 0) + n
        for workload in ("and_two_indexes", "residual_filter"):
            got = {counts[(name, workload)] for name in sides}
            if len(got) != 1:
                raise SystemExit(f"the columns returned different rows for {workload}: {got}")
        total = per_round * args.rounds
        print(
            f"# query_bench: {args.orders} orders, {total} queries per workload, "
            f"kvmodel {km.__version__} (accelerated={km.accelerated})"
            + ("" if sa is None else f", SQLAlchemy {sa.__version__}")
        )
        for workload in ("and_two_indexes", "residual_filter"):
            rates = {name: total / elapsed[(name, workload)] for name in sides}
            if args.json:
                print(json.dumps({"workload": workload, "queries_per_s": rates}))
                continue
            line = f"{workload:18}" + "".join(f"  {n}: {q:8.0f} q/s" for n, q in rates.items())
            if "sqlalchemy-sqlite" in rates:
                line += f"  ratio {rates['kvmodel-sqlite'] / rates['sqlalchemy-sqlite']:.2f}x"
            rows_per = counts[("kvmodel-sqlite", workload)] / total
            print(line + f"  ({rows_per:.1f} rows/query)")


if __name__ == "__main__":
    main()
