"""The orders API over HTTP, with a live status stream (Server-Sent Events) via ``Order.watch``.

Needs the ``web`` extra (``pip install 'kvmodel[web]'``). Run it with::

    python examples/web.py --db orders.db          # serves on http://127.0.0.1:8000

Routes:

- ``POST /orders`` with ``{"customer_id": ..., "items": [...]}``, each item
  ``{"product_id": ..., "quantity": ..., "price_cents": ...}``
- ``GET /orders/{id}``
- ``PATCH /orders/{id}`` with ``{"status": ...}`` (optimistic retries inside)
- ``GET /customers/{customer_id}/orders?limit=20&cursor=...`` (newest first;
  ``has_more`` says whether another page exists, and the reply's ``cursor``
  fetches it)
- ``GET /orders/{id}/events?until=shipped``: one ``data:`` line per status change,
  starting with the current one; it ends at ``until`` (if given) or when the server stops.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from typing import Any

import attrs
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import kvmodel as km
from kvmodel import aio

try:  # run as a script or imported as kvmodel_examples.web
    from kvmodel_examples.orders import (
        Order,
        OrderItem,
        create_order,
        get_order,
        list_customer_orders,
        update_order_status,
    )
except ImportError:  # pragma: no cover - python examples/web.py without an install
    from orders import (  # type: ignore[no-redef]
        Order,
        OrderItem,
        create_order,
        get_order,
        list_customer_orders,
        update_order_status,
    )


def order_json(order: Order) -> dict[str, Any]:
    """An order as JSON: attrs fields, with the timestamp in ISO 8601."""
    data = attrs.asdict(order)
    data["created_at"] = order.created_at.isoformat()
    return data


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def create_app(kv: km.Kv) -> Starlette:
    """The ASGI app serving the orders of ``kv`` (the caller opens and closes ``kv``)."""
    akv = aio.AsyncKv(kv)

    async def post_order(request: Request) -> Response:
        body = await request.json()
        try:
            items = [OrderItem(**item) for item in body["items"]]
            customer_id = str(body["customer_id"])
        except (KeyError, TypeError) as exc:
            return _bad_request(f"An order needs customer_id and items: {exc}.")
        order = await akv.run(create_order, kv, customer_id, items)
        return JSONResponse(order_json(order), status_code=201)

    async def get_one(request: Request) -> Response:
        order = await akv.run(get_order, kv, request.path_params["order_id"])
        if order is None:
            return JSONResponse({"error": "no such order"}, status_code=404)
        return JSONResponse(order_json(order))

    async def patch_one(request: Request) -> Response:
        body = await request.json()
        status = body.get("status")
        if not isinstance(status, str):
            return _bad_request("PATCH needs a status string.")
        try:
            order = await akv.run(update_order_status, kv, request.path_params["order_id"], status)
        except KeyError:
            return JSONResponse({"error": "no such order"}, status_code=404)
        return JSONResponse(order_json(order))

    async def customer_orders(request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "20"))
            orders, cursor = await akv.run(
                list_customer_orders,
                kv,
                request.path_params["customer_id"],
                limit=limit,
                cursor=request.query_params.get("cursor") or None,
            )
        except (ValueError, km.InvalidArgumentError) as exc:
            return _bad_request(str(exc))
        # A page's cursor is "" exactly when no further page exists (Page.has_more),
        # so a client stops without fetching an empty page.
        return JSONResponse(
            {"orders": [order_json(o) for o in orders], "cursor": cursor, "has_more": bool(cursor)}
        )

    async def events(request: Request) -> Response:
        order_id = request.path_params["order_id"]
        until = request.query_params.get("until")

        async def stream() -> AsyncIterator[str]:
            # The typed watch: an Order (or None once it is gone) now and after each change.
            async with Order.watch(akv, order_id) as changes:
                async for order in changes:
                    status = None if order is None else order.status
                    payload = {"order_id": order_id, "status": status}
                    yield f"data: {json.dumps(payload)}\n\n"
                    if status is None or status == until:
                        return

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/orders", post_order, methods=["POST"]),
            Route("/orders/{order_id}", get_one, methods=["GET"]),
            Route("/orders/{order_id}", patch_one, methods=["PATCH"]),
            Route("/orders/{order_id}/events", events, methods=["GET"]),
            Route("/customers/{customer_id}/orders", customer_orders, methods=["GET"]),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Serves the API with uvicorn."""
    import uvicorn

    parser = argparse.ArgumentParser(description="kvmodel orders API")
    parser.add_argument("--db", default="orders.db")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    with km.open_kv(args.db) as kv:
        uvicorn.run(create_app(kv), host="127.0.0.1", port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
