"""Object mapper throughput: kvmodel's ORM beside SQLAlchemy 2.x ORM over SQLite.

    python benchmarks/orm_bench.py [--orders 5000] [--chunks 50] [--stores file,memory] [--json]

Needs SQLAlchemy (``pip install 'sqlalchemy>=2.0'``). One session per operation on
both sides, as a web request's unit of work would use them. The models are
equivalent: an order with a primary key, embedded items, a non-unique index on
``(customer_id, created_at)`` and one on ``status``, and an optimistic version
check (kvmodel: the versionstamp the session loaded; SQLAlchemy: ``version_id_col``).

Workloads:

* ``create``: a new order in its own session (kvmodel: one commit with a check that
  the key is absent, the primary and two index entries; SQLAlchemy: one INSERT);
* ``update_cas``: load an order, move its status on, bump ``updated_at``, commit with
  the optimistic check (kvmodel also moves the status index entry);
* ``get``: an order by primary key, in random order;
* ``list_by_customer``: a customer's orders through the ``(customer_id, created_at)``
  index, oldest first, as full objects.

Two pairings, each with the same durability on both sides:

* ``file``: kvmodel's SQLite engine vs SQLAlchemy on a SQLite file, both WAL with
  ``synchronous=FULL`` (``--sync NORMAL`` for both);
* ``memory``: kvmodel's memory engine vs SQLAlchemy on ``sqlite://`` (in memory).

The columns take turns slice by slice (``--chunks``), as in kv_bench.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import attrs

import kvmodel as km

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Report, Rng, Target, add_common_args, bench_header, next_status, run_interleaved

try:
    import sqlalchemy as sa
    from sqlalchemy import orm as sa_orm
    from sqlalchemy.pool import StaticPool
except ImportError:  # pragma: no cover - a hint, not a feature
    raise SystemExit(
        "orm_bench needs SQLAlchemy 2.x: .venv/bin/pip install 'sqlalchemy>=2.0'"
    ) from None

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


# -- the data -------------------------------------------------------------------


@dataclass
class OrderData:
    """Orders, customers and the access orders of one run, shared by every column."""

    n_orders: int
    orders: list[dict[str, Any]]
    customers: list[str]
    update_order: list[int]
    get_order: list[int]
    customer_picks: list[str]

    @classmethod
    def make(cls, n_orders: int, lists: int) -> OrderData:
        n_customers = max(1, n_orders // 10)
        customers = [f"cus{c:06d}" for c in range(n_customers)]
        orders = []
        for j in range(n_orders):
            items: list[dict[str, Any]] = [
                {"sku": f"sku{j % 97}", "qty": 1 + j % 3, "price_cents": 100 + j % 1000},
                {"sku": f"sku{(j * 7) % 97}", "qty": 1, "price_cents": 250 + j % 500},
            ]
            created = EPOCH + timedelta(seconds=j)
            orders.append(
                {
                    "id": f"ord{j:08d}",
                    "customer_id": customers[j % n_customers],
                    "status": "pending",
                    "total_cents": sum(int(i["qty"]) * int(i["price_cents"]) for i in items),
                    "items": items,
                    "created_at": created,
                    "updated_at": created,
                }
            )
        rng = Rng(0x5EED)
        return cls(
            n_orders,
            orders,
            customers,
            rng.permutation(n_orders),
            rng.permutation(n_orders),
            [customers[rng() % n_customers] for _ in range(lists)],
        )


# -- kvmodel --------------------------------------------------------------------


@attrs.define
class OrderItem:
    """One line of an order, embedded in the order's document."""

    sku: str
    qty: int
    price_cents: int


class KmOrder(km.Model, prefix="orders"):
    """The order as a kvmodel model (DESIGN section 3)."""

    id: str = km.field(primary_key=True)
    customer_id: str
    status: str = "pending"
    total_cents: int = 0
    items: list[OrderItem] = km.field(factory=list)
    created_at: datetime
    updated_at: datetime

    by_customer = km.Index("customer_id", "created_at")
    by_status = km.Index("status")


class OrmColumn(Protocol):
    """The four workloads' operations, each in its own session."""

    name: str

    def create(self, order: dict[str, Any]) -> None: ...
    def update_status(self, order_id: str) -> None: ...
    def get(self, order_id: str) -> bool: ...
    def list_by_customer(self, customer_id: str) -> int: ...
    def close(self) -> None: ...


class KvmodelOrm:
    """kvmodel's object mapper, written as its documentation shows."""

    def __init__(self, name: str, kv: km.Kv) -> None:
        self.name = name
        self.kv = kv

    def create(self, order: dict[str, Any]) -> None:
        with km.Session(self.kv) as s:
            s.add(
                KmOrder(
                    id=order["id"],
                    customer_id=order["customer_id"],
                    status=order["status"],
                    total_cents=order["total_cents"],
                    items=[OrderItem(**i) for i in order["items"]],
                    created_at=order["created_at"],
                    updated_at=order["updated_at"],
                )
            )

    def update_status(self, order_id: str) -> None:
        with km.Session(self.kv) as s:
            o = s.get(KmOrder, order_id)
            assert o is not None
            o.status = next_status(o.status)
            o.updated_at += timedelta(microseconds=1)

    def get(self, order_id: str) -> bool:
        with km.Session(self.kv) as s:
            return s.get(KmOrder, order_id) is not None

    def list_by_customer(self, customer_id: str) -> int:
        with km.Session(self.kv) as s:
            return len(list(KmOrder.by_customer.find(s, customer_id)))

    def close(self) -> None:
        self.kv.close()


# -- SQLAlchemy -----------------------------------------------------------------


class Base(sa_orm.DeclarativeBase):
    """SQLAlchemy's declarative base of the benchmark."""


class SaOrder(Base):
    """The equivalent order table: the same indexes and an optimistic version column."""

    __tablename__ = "orders"
    id: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String, primary_key=True)
    customer_id: sa_orm.Mapped[str]
    status: sa_orm.Mapped[str]
    total_cents: sa_orm.Mapped[int]
    items: sa_orm.Mapped[list[dict[str, Any]]] = sa_orm.mapped_column(sa.JSON)
    created_at: sa_orm.Mapped[datetime]
    updated_at: sa_orm.Mapped[datetime]
    version_id: sa_orm.Mapped[int] = sa_orm.mapped_column(nullable=False)

    __mapper_args__ = {"version_id_col": version_id}  # noqa: RUF012 - SQLAlchemy's idiom
    __table_args__ = (
        sa.Index("orders_by_customer", "customer_id", "created_at"),
        sa.Index("orders_by_status", "status"),
    )


def sqlalchemy_engine(path: str | None, sync: str) -> sa.Engine:
    """An engine on a SQLite file (WAL, ``sync``) or, for ``None``, on one in-memory database."""
    if path is None:
        engine = sa.create_engine(
            "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        engine = sa.create_engine(f"sqlite:///{path}")

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute(f"PRAGMA synchronous={sync}")

    Base.metadata.create_all(engine)
    return engine


class SqlalchemyOrm:
    """SQLAlchemy 2.x ORM, one Session per operation."""

    def __init__(self, name: str, engine: sa.Engine) -> None:
        self.name = name
        self.engine = engine

    def create(self, order: dict[str, Any]) -> None:
        with sa_orm.Session(self.engine) as s:
            s.add(SaOrder(**order))
            s.commit()  # a duplicate key would raise IntegrityError: the check-absent

    def update_status(self, order_id: str) -> None:
        with sa_orm.Session(self.engine) as s:
            o = s.get(SaOrder, order_id)
            assert o is not None
            o.status = next_status(o.status)
            o.updated_at += timedelta(microseconds=1)
            s.commit()  # UPDATE ... WHERE id = ? AND version_id = ?

    def get(self, order_id: str) -> bool:
        with sa_orm.Session(self.engine) as s:
            return s.get(SaOrder, order_id) is not None

    def list_by_customer(self, customer_id: str) -> int:
        with sa_orm.Session(self.engine) as s:
            query = (
                sa.select(SaOrder)
                .where(SaOrder.customer_id == customer_id)
                .order_by(SaOrder.created_at)
            )
            return len(s.scalars(query).all())

    def close(self) -> None:
        self.engine.dispose()


# -- running --------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """A workload over ``items`` items, run as ``step(column, lo, hi)`` on slices."""

    name: str
    unit: str
    items: int
    step: Callable[[OrmColumn, int, int], int]

    @property
    def ops(self) -> int:
        """One operation per item."""
        return self.items


def workloads(d: OrderData) -> list[Workload]:
    """The workloads in run order; each step returns a count all columns must agree on."""

    def w_create(c: OrmColumn, lo: int, hi: int) -> int:
        for o in d.orders[lo:hi]:
            c.create(o)
        return hi - lo

    def w_update(c: OrmColumn, lo: int, hi: int) -> int:
        orders = d.orders
        for j in d.update_order[lo:hi]:
            c.update_status(orders[j]["id"])
        return hi - lo

    def w_get(c: OrmColumn, lo: int, hi: int) -> int:
        orders = d.orders
        return sum(c.get(orders[j]["id"]) for j in d.get_order[lo:hi])

    def w_list(c: OrmColumn, lo: int, hi: int) -> int:
        return sum(c.list_by_customer(cust) for cust in d.customer_picks[lo:hi])

    return [
        Workload("create", "commit", d.n_orders, w_create),
        Workload("update_cas", "commit", d.n_orders, w_update),
        Workload("get", "op", d.n_orders, w_get),
        Workload("list_by_customer", "call", len(d.customer_picks), w_list),
    ]


def run(
    report: Report,
    columns: list[OrmColumn],
    d: OrderData,
    *,
    chunks: int,
    profile: str | None,
) -> None:
    """Runs each workload on every column, the columns taking turns slice by slice."""
    run_interleaved(
        report,
        workloads(d),
        columns,
        chunks=chunks,
        profile=profile,
        profiled=lambda name: name.startswith("kvmodel"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--lists", type=int, default=1000, help="list_by_customer calls")
    parser.add_argument("--sync", default="FULL", choices=["FULL", "NORMAL"])
    parser.add_argument("--stores", default="file,memory", help="comma-separated: file, memory")
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument(
        "--profile", metavar="WORKLOAD", help="print cProfile's hot spots of kvmodel's columns"
    )
    add_common_args(parser)
    args = parser.parse_args(argv)

    report = Report("orm_bench", json_lines=args.json)
    bench_header(
        report,
        orders=args.orders,
        synchronous=args.sync,
        sqlalchemy=sa.__version__,
        kvmodel=km.__version__,
    )
    d = OrderData.make(args.orders, args.lists)
    stores = set(args.stores.split(","))
    names = [w.name for w in workloads(d)]
    with tempfile.TemporaryDirectory(prefix="ormbench-") as tmp:
        columns: list[OrmColumn] = []
        if "file" in stores:
            columns += [
                SqlalchemyOrm(
                    "sqlalchemy-file", sqlalchemy_engine(os.path.join(tmp, "sa.db"), args.sync)
                ),
                KvmodelOrm(
                    "kvmodel-sqlite",
                    km.open_kv(os.path.join(tmp, "km.db"), synchronous=args.sync),
                ),
            ]
        if "memory" in stores:
            columns += [
                SqlalchemyOrm("sqlalchemy-memory", sqlalchemy_engine(None, args.sync)),
                KvmodelOrm("kvmodel-memory", km.open_kv()),
            ]
        run(report, columns, d, chunks=args.chunks, profile=args.profile)
        for c in columns:
            c.close()
    if "file" in stores:
        report.comparison(
            f"SQLite file, WAL, synchronous={args.sync} (ops/s)",
            "sqlalchemy-file",
            "kvmodel-sqlite",
            names,
            dict.fromkeys(names, Target(min_ratio=2.0)),
        )
    if "memory" in stores:
        report.comparison(
            "In memory (ops/s)",
            "sqlalchemy-memory",
            "kvmodel-memory",
            names,
            dict.fromkeys(names, Target(min_ratio=4.0)),
        )
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
