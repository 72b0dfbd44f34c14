"""End-to-end tests of the examples: the orders demo (``kvmodel demo``) and the web API."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import kvmodel as km
from kvmodel.examples import orders
from kvmodel.examples.orders import Order, OrderItem


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
    from kvmodel.examples.web import create_app

    before = set(threading.enumerate())
    with (
        km.open_kv(tmp_path / "web.db") as kv,
        starlette_testclient.TestClient(create_app(kv)) as test_client,
    ):
        test_client.kv = kv
        yield test_client
    # The app closes its AsyncKv when it shuts down, which joins its worker thread.
    leaked = [t.name for t in set(threading.enumerate()) - before if t.name.startswith("kvmodel")]
    assert leaked == []


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


def _post_order(client: Any, customer_id: str = "c1") -> dict[str, Any]:
    body = {
        "customer_id": customer_id,
        "items": [{"product_id": "p", "quantity": 1, "price_cents": 1}],
    }
    response = client.post("/orders", json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


_ITEM = {"product_id": "p", "quantity": 2, "price_cents": 150}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"items": [_ITEM]}).encode(), "customer_id"),
        (json.dumps({"customer_id": 7, "items": [_ITEM]}).encode(), "customer_id"),
        (json.dumps({"customer_id": "c", "items": []}).encode(), "items"),
        (json.dumps({"customer_id": "c", "items": "x"}).encode(), "items"),
        (json.dumps({"customer_id": "c", "items": [3]}).encode(), "Item 0"),
        (
            json.dumps({"customer_id": "c", "items": [{**_ITEM, "quantity": "two"}]}).encode(),
            "quantity",
        ),
        (
            json.dumps({"customer_id": "c", "items": [{**_ITEM, "quantity": True}]}).encode(),
            "quantity",
        ),
        (
            json.dumps({"customer_id": "c", "items": [{**_ITEM, "quantity": 0}]}).encode(),
            "quantity",
        ),
        (
            json.dumps({"customer_id": "c", "items": [{**_ITEM, "quantity": 1.5}]}).encode(),
            "quantity",
        ),
        (
            json.dumps({"customer_id": "c", "items": [{**_ITEM, "price_cents": -1}]}).encode(),
            "price_cents",
        ),
        (json.dumps({"customer_id": "c", "items": [_ITEM, {"quantity": 1}]}).encode(), "Item 1"),
    ],
)
def test_web_bad_orders_answer_422_with_a_json_error_and_write_nothing(
    client: Any, body: bytes, named: str
) -> None:
    """A POST /orders body that is not an order answers 422, names the fault, stores nothing."""
    response = client.post("/orders", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert named in response.json()["error"]
    assert list(client.kv.list(prefix=("orders",))) == []


def test_web_patch_refuses_unknown_statuses_and_bad_bodies(client: Any) -> None:
    """PATCH answers 422 for an unknown status or a non-JSON body and leaves the order as it was."""
    order = _post_order(client)
    url = f"/orders/{order['id']}"
    for body in (b'{"status": "teleported"}', b'{"status": 3}', b"{}", b"status=shipped"):
        response = client.patch(url, content=body)
        assert response.status_code == 422, body
        assert "error" in response.json()
    assert client.get(url).json()["status"] == "pending"
    assert client.patch("/orders/nope", json={"status": "shipped"}).status_code == 404
    assert client.patch(url, json={"status": "delivered"}).json()["status"] == "delivered"


@pytest.mark.parametrize(
    "params", [{"cursor": "!!"}, {"limit": "ten"}, {"limit": "0"}, {"limit": "100000"}]
)
def test_web_bad_listing_parameters_answer_422(client: Any, params: dict[str, str]) -> None:
    """A listing with a cursor or limit it cannot use answers 422 with a JSON error."""
    response = client.get("/customers/c9/orders", params=params)
    assert response.status_code == 422
    error = response.json()["error"]
    assert "invalid literal" not in error
    if "limit" in params:
        assert error == f"'limit' must be a whole number from 1 to 1000, not {params['limit']!r}."


def test_web_overlong_ids_answer_a_short_4xx_sentence(client: Any) -> None:
    """A 3,000-character customer, product or order id is a short 4xx sentence, never a
    500 traceback nor the id echoed back: 422 in a body or a listing, 404 for an order."""
    long_id = "c" * 3000
    for body in (
        {"customer_id": long_id, "items": [_ITEM]},
        {"customer_id": "c1", "items": [{**_ITEM, "product_id": long_id}]},
    ):
        created = client.post("/orders", json=body)
        assert created.status_code == 422
        assert "of 3,000 characters; ids are at most 256." in created.json()["error"]
        assert len(created.text) < 200
    assert list(client.kv.list(prefix=("orders",))) == []
    listing = client.get(f"/customers/{long_id}/orders")
    assert listing.status_code == 422
    assert listing.json()["error"] == (
        "The customer id in the path has 3,000 characters; ids are at most 256."
    )
    no_order = (
        "There is no such order: order ids are at most 256 characters, and this one has 3,000."
    )
    for method, url in (
        ("GET", f"/orders/{long_id}"),
        ("PATCH", f"/orders/{long_id}"),
        ("GET", f"/orders/{long_id}/events"),  # refused before the stream starts
    ):
        response = client.request(method, url, json={"status": "shipped"})
        assert response.status_code == 404, url
        assert response.json()["error"] == no_order


def test_web_order_too_large_for_a_value_answers_413(client: Any) -> None:
    """An order whose items make its document larger than a stored value may be answers
    413 with kvmodel's sentence, and nothing is written."""
    items = [{**_ITEM, "product_id": "p" * 200} for _ in range(400)]
    response = client.post("/orders", json={"customer_id": "c1", "items": items})
    assert response.status_code == 413
    assert "values are limited to 65536 bytes" in response.json()["error"]
    assert list(client.kv.list(prefix=("orders",))) == []


def test_web_app_is_a_uvicorn_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """create_app() with no Kv opens $KVMODEL_ORDERS_DB, as uvicorn --factory calls it."""
    starlette_testclient = pytest.importorskip("starlette.testclient")
    from kvmodel.examples.web import create_app

    monkeypatch.setenv("KVMODEL_ORDERS_DB", str(tmp_path / "factory.db"))
    with starlette_testclient.TestClient(create_app()) as test_client:
        assert test_client.post("/orders", json={"customer_id": "c", "items": [_ITEM]}).is_success
    with km.open_kv(tmp_path / "factory.db") as kv:
        assert len(list(kv.list(prefix=("orders",)))) == 1


def test_web_example_without_its_extra_names_the_extra(tmp_path: Path) -> None:
    """python -m kvmodel.examples.web without starlette says to install kvmodel[web]."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('starlette', 'uvicorn'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(
        [sys.executable, "-m", "kvmodel.examples.web"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 1
    assert "pip install 'kvmodel[web]'" in result.stderr
    assert "Traceback" not in result.stderr


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_web_server_streams_over_http_and_stops_on_ctrl_c_with_a_stream_open(
    tmp_path: Path,
) -> None:
    """Under uvicorn as a real process, the event stream follows a PATCH, and SIGINT with the
    stream still open stops the server within 2 s."""
    httpx = pytest.importorskip("httpx")
    port = _free_loopback_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "kvmodel.examples.web", "--port", str(port)],
        cwd=tmp_path,  # the database is orders.db in the working directory
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:  # wait for the server to listen
            try:
                httpx.get(f"{base}/orders/none", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None, "the server exited at start"
                assert time.monotonic() < deadline, "the server did not listen within 30 s"
                time.sleep(0.1)
        with httpx.Client(base_url=base, timeout=10) as http:
            order = _post_order(http)
            with http.stream("GET", f"/orders/{order['id']}/events") as stream:
                lines = (line for line in stream.iter_lines() if line.startswith("data: "))
                assert json.loads(next(lines)[6:])["status"] == "pending"
                assert http.patch(f"/orders/{order['id']}", json={"status": "shipped"}).is_success
                assert json.loads(next(lines)[6:])["status"] == "shipped"
                server.send_signal(signal.SIGINT)
                server.wait(timeout=2)  # TimeoutExpired fails the test
                assert list(lines) == []  # the stream ended with the server
        assert server.returncode == 130
    finally:
        if server.poll() is None:
            server.kill()
        output = server.communicate()[0]
    assert "Traceback" not in output, output
