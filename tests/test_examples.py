"""End-to-end tests of the examples: the orders demo (``kvmodel demo``) and the web API."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import kvmodel as km
from kvmodel_examples import orders
from kvmodel_examples.orders import Order, OrderItem


def test_demo_runs_the_whole_story_on_a_sqlite_file(tmp_path: Path) -> None:
    """The demo creates, fulfils, contests and pages orders, and the file holds the result."""
    lines: list[str] = []
    report = orders.run_demo(tmp_path / "orders.db", say=lines.append)
    assert report["orders"] == 5
    assert report["emails"] == 5
    assert report["contested_final"] in ("delivered", "returned")
    assert report["shipped"] == 4
    assert [len(page) for page in report["ada_pages"]] == [2, 1]
    assert any("watch" in line and "shipped" in line for line in lines)
    with km.open_kv(tmp_path / "orders.db") as kv:
        assert km.check_indexes(kv, Order).ok
        assert Order.by_status.count(kv, "pending") == 0


def test_kvmodel_demo_command_prints_a_report(tmp_path: Path) -> None:
    """`python -m kvmodel demo` runs end to end and says what happened."""
    result = subprocess.run(
        [sys.executable, "-m", "kvmodel", "demo", "--db", str(tmp_path / "d.db")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "5 orders, 5 emails" in result.stdout
    assert "page 2" in result.stdout


def test_customer_orders_are_listed_newest_first_with_pagination() -> None:
    """list_customer_orders pages through one customer's orders, newest first."""
    with km.open_kv() as kv:
        made = [orders.create_order(kv, "c1", [OrderItem("p", 1, 100)]) for _ in range(5)]
        orders.create_order(kv, "c2", [OrderItem("p", 1, 100)])
        seen: list[str] = []
        cursor = None
        while True:
            page, cursor = orders.list_customer_orders(kv, "c1", limit=2, cursor=cursor)
            seen += [o.id for o in page]
            if not cursor:
                break
        assert seen == [o.id for o in reversed(made)]


def test_status_transitions_are_checked() -> None:
    """update_order_status with expect refuses a transition from another status."""
    with km.open_kv() as kv:
        order = orders.create_order(kv, "c1", [OrderItem("p", 1, 100)])
        orders.update_order_status(kv, order.id, "processing", expect="pending")
        with pytest.raises(orders.InvalidTransitionError):
            orders.update_order_status(kv, order.id, "shipped", expect="pending")
        fetched = orders.get_order(kv, order.id)
        assert fetched is not None and fetched.status == "processing"


@pytest.fixture
def client(tmp_path: Path) -> Any:
    starlette_testclient = pytest.importorskip("starlette.testclient")
    from kvmodel_examples.web import create_app

    with (
        km.open_kv(tmp_path / "web.db") as kv,
        starlette_testclient.TestClient(create_app(kv)) as test_client,
    ):
        test_client.kv = kv
        yield test_client


def test_web_api_creates_reads_updates_and_lists_orders(client: Any) -> None:
    """The HTTP API exposes create, get, patch and the customer listing."""
    body = {"customer_id": "c9", "items": [{"product_id": "p", "quantity": 2, "price_cents": 150}]}
    created = client.post("/orders", json=body)
    assert created.status_code == 201
    order = created.json()
    assert order["total_cents"] == 300 and order["status"] == "pending"
    assert client.get(f"/orders/{order['id']}").json()["id"] == order["id"]
    assert client.get("/orders/nope").status_code == 404
    patched = client.patch(f"/orders/{order['id']}", json={"status": "shipped"})
    assert patched.json()["status"] == "shipped"
    listing = client.get("/customers/c9/orders", params={"limit": 10}).json()
    assert [o["id"] for o in listing["orders"]] == [order["id"]]
    assert client.post("/orders", json={"items": []}).status_code == 400
    assert client.get("/customers/c9/orders", params={"cursor": "!!"}).status_code == 400


def test_web_events_stream_status_changes(client: Any) -> None:
    """GET /orders/{id}/events streams the current status, then each change, until `until`."""
    body = {"customer_id": "c1", "items": [{"product_id": "p", "quantity": 1, "price_cents": 1}]}
    order_id = client.post("/orders", json=body).json()["id"]
    events: list[dict[str, Any]] = []

    def advance() -> None:
        # Wait until the stream delivered the first event, then change the status twice.
        while not events:
            threading.Event().wait(0.01)
        for status in ("processing", "shipped"):
            orders.update_order_status(client.kv, order_id, status)

    writer = threading.Thread(target=advance)
    writer.start()
    with client.stream("GET", f"/orders/{order_id}/events", params={"until": "shipped"}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    writer.join(timeout=10)
    statuses = [e["status"] for e in events]
    assert statuses[0] == "pending" and statuses[-1] == "shipped"
    assert statuses == sorted(set(statuses), key=statuses.index)  # no repeats
