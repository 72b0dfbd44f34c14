"""The orders application, written with kvmodel: the main job of ``kvmodel demo``.

An online shop keeps orders with their line items. Each order is indexed by
customer (newest first) and by status. Creating an order enqueues a
fulfillment job in the same commit (the outbox pattern); a queue worker moves
the order from pending to processing to shipped and, in the commit that ships
it, enqueues an email job. A watch prints every status change as it happens.

Run it with ``kvmodel demo`` (or ``python -m kvmodel demo``, or
``python -m kvmodel.examples.orders``); ``--db PATH`` picks the SQLite file.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

import kvmodel as km

# Every status an order can have: the worker moves it along the first three, a
# clerk may later mark it delivered or returned. The web API accepts only these.
STATUSES = ("pending", "processing", "shipped", "delivered", "returned")


@attrs.define
class OrderItem:
    """One line of an order."""

    product_id: str
    quantity: int
    price_cents: int


class Order(km.Model, prefix="orders"):
    """An order: its items, its status, and when it was created."""

    id: str = km.field(primary_key=True, factory=km.new_id)
    customer_id: str
    status: str = "pending"
    total_cents: int = 0
    items: list[OrderItem] = km.field(factory=list)
    created_at: datetime = km.field(factory=km.utcnow)

    by_customer = km.Index("customer_id", "created_at")
    by_status = km.Index("status")


class InvalidTransitionError(km.KvError, ValueError):
    """An order cannot move from its status to the one asked for."""


# -- the application's operations -------------------------------------------------


def create_order(kv: km.Kv, customer_id: str, items: list[OrderItem]) -> Order:
    """Stores a new pending order and enqueues its fulfillment, in one commit."""
    order = Order(
        customer_id=customer_id,
        items=items,
        total_cents=sum(i.quantity * i.price_cents for i in items),
    )
    with km.Session(kv) as session:
        session.add(order)
        session.enqueue({"job": "fulfill", "order_id": order.id})
    return order


def get_order(kv: km.Kv, order_id: str) -> Order | None:
    """The order with this id, or None."""
    with km.Session(kv) as session:
        return session.get(Order, order_id)


def update_order_status(
    kv: km.Kv,
    order_id: str,
    status: str,
    *,
    expect: str | None = None,
    then_enqueue: dict[str, Any] | None = None,
) -> Order:
    """Moves an order to ``status``, retrying on conflict (optimistic concurrency).

    With ``expect``, the change only happens from that status; otherwise
    InvalidTransitionError. ``then_enqueue`` joins the same commit.
    """

    def change(session: km.Session) -> Order:
        order = session.get(Order, order_id)
        if order is None:
            raise KeyError(order_id)
        if expect is not None and order.status != expect:
            raise InvalidTransitionError(
                f"Order {order_id!r} is {order.status!r}, not {expect!r}; "
                f"cannot make it {status!r}."
            )
        order.status = status
        if then_enqueue is not None:
            session.enqueue(then_enqueue)
        return order

    return km.transaction(kv, change, retries=20)


def list_customer_orders(
    kv: km.Kv, customer_id: str, *, limit: int = 20, cursor: str | None = None
) -> tuple[list[Order], str]:
    """One page of a customer's orders, newest first, and the cursor of the next page."""
    page = Order.by_customer.find(kv, customer_id, limit=limit, reverse=True, cursor=cursor)
    return list(page), page.cursor


# -- the fulfillment worker ---------------------------------------------------------


class Worker:
    """Handles the queue: fulfillment jobs move orders along, email jobs are 'sent'."""

    def __init__(self, kv: km.Kv, say: Callable[[str], None]) -> None:
        self.kv = kv
        self.say = say
        self.emails: list[str] = []
        self.shipped = threading.Semaphore(0)

    def __call__(self, job: dict[str, Any]) -> None:
        if job["job"] == "fulfill":
            order_id = job["order_id"]
            update_order_status(self.kv, order_id, "processing", expect="pending")
            update_order_status(
                self.kv,
                order_id,
                "shipped",
                expect="processing",
                then_enqueue={"job": "email", "order_id": order_id, "template": "shipped"},
            )
        elif job["job"] == "email":
            self.emails.append(job["order_id"])
            self.say(f"  email  order {job['order_id']}: your order has shipped")
            self.shipped.release()


@contextmanager
def running(target: Callable[[], object], name: str) -> Iterator[threading.Thread]:
    """Runs ``target`` in a daemon thread for the duration of the block."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    yield thread


class StatusWatch:
    """Prints each status change of some orders, as Order.watch_many reports it, until Kv close."""

    def __init__(self, kv: km.Kv, order_ids: list[str], say: Callable[[str], None]) -> None:
        self.kv = kv
        self.order_ids = order_ids
        self.say = say
        self.last: dict[str, str] = {}
        self._changed = threading.Condition()

    def __call__(self) -> None:
        # The typed watch: a list of Orders (None for a missing one) now and after each change.
        for orders in Order.watch_many(self.kv, self.order_ids):
            for order in orders:
                if order is None:
                    continue
                order_id, status = order.id, order.status
                if self.last.get(order_id) != status:
                    self.say(f"  watch  order {order_id} is {status}")
                    with self._changed:
                        self.last[order_id] = status
                        self._changed.notify_all()

    def wait_for(self, order_id: str, status: str, timeout: float = 10) -> bool:
        """Waits until the watch has printed ``status`` for the order."""
        with self._changed:
            return self._changed.wait_for(lambda: self.last.get(order_id) == status, timeout)


# -- the demo -------------------------------------------------------------------------


def run_demo(db_path: str | Path, *, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the whole story on a SQLite file and returns what happened, for the report."""
    started = time.perf_counter()
    report: dict[str, Any] = {"db": str(db_path)}
    with km.open_kv(db_path) as kv:
        say(f"kvmodel orders demo on {db_path}")
        say("")
        say("1. Three customers place five orders; each commit also enqueues its fulfillment.")
        carts = [
            ("cus_ada", [OrderItem("book", 2, 1500), OrderItem("pen", 3, 250)]),
            ("cus_bob", [OrderItem("lamp", 1, 4900)]),
            ("cus_ada", [OrderItem("ink", 5, 300)]),
            ("cus_cy", [OrderItem("desk", 1, 25000), OrderItem("chair", 1, 12000)]),
            ("cus_ada", [OrderItem("paper", 10, 90)]),
        ]
        orders = [create_order(kv, customer, items) for customer, items in carts]
        for order in orders:
            say(f"  create order {order.id} for {order.customer_id}: {order.total_cents / 100:.2f}")
        ids = [o.id for o in orders]

        say("")
        say("2. A worker takes the queue; a watch prints each status change.")
        worker = Worker(kv, say)
        watch = StatusWatch(kv, ids, say)
        with (
            running(lambda: kv.listen_queue(worker), "orders-worker"),
            running(watch, "orders-watch"),
        ):
            for _ in orders:
                if not worker.shipped.acquire(timeout=30):
                    raise RuntimeError("The worker did not ship every order within 30 s.")
            for order_id in ids:
                watch.wait_for(order_id, "shipped")

        say("")
        say("3. Two clerks update one order at once; optimistic checks retry the loser.")
        contested = ids[1]
        clerks = [
            threading.Thread(target=update_order_status, args=(kv, contested, status))
            for status in ("delivered", "returned")
        ]
        for clerk in clerks:
            clerk.start()
        for clerk in clerks:
            clerk.join()
        final = get_order(kv, contested)
        assert final is not None
        watch.wait_for(contested, final.status)
        by_status = {s: Order.by_status.count(kv, s) for s in ("delivered", "returned")}
        say(f"  order {contested} ended {final.status!r}; index entries: {by_status}")

        say("")
        say("4. Ada's orders, newest first, two per page.")
        pages: list[list[str]] = []
        cursor: str | None = None
        while True:
            page, cursor = list_customer_orders(kv, "cus_ada", limit=2, cursor=cursor)
            if not page:
                break
            pages.append([o.id for o in page])
            say(
                f"  page {len(pages)}: "
                + ", ".join(f"{o.id} ({o.total_cents / 100:.2f})" for o in page)
            )
            if not cursor:
                break

        report.update(
            orders=len(orders),
            shipped=Order.by_status.count(kv, "shipped"),
            emails=len(worker.emails),
            contested_final=final.status,
            ada_pages=pages,
            seconds=round(time.perf_counter() - started, 2),
        )
    say("")
    say(
        f"Done in {report['seconds']} s: {report['orders']} orders, {report['emails']} emails, "
        f"{report['shipped']} still shipped, every change in one atomic commit."
    )
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``kvmodel demo``."""
    parser = argparse.ArgumentParser(prog="kvmodel demo", description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="SQLite file to use (default: a new file in a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.db:
        run_demo(args.db)
    else:
        with tempfile.TemporaryDirectory(prefix="kvmodel-demo-") as tmp:
            run_demo(Path(tmp) / "orders.db")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
