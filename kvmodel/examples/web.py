"""The orders API over HTTP, with a live status stream (Server-Sent Events) via ``Order.watch``.

Needs the ``web`` extra (``pip install 'kvmodel[web]'``). Run it with::

    python -m kvmodel.examples.web --db orders.db    # serves on http://127.0.0.1:8000

or with any ASGI server, for example ``uvicorn --factory kvmodel.examples.web:create_app``
(the file is ``$KVMODEL_ORDERS_DB``, ``orders.db`` by default).

Routes:

- ``POST /orders`` with ``{"customer_id": ..., "items": [...]}``, each item
  ``{"product_id": ..., "quantity": ..., "price_cents": ...}``
- ``GET /orders/{id}``
- ``PATCH /orders/{id}`` with ``{"status": ...}``, one of :data:`STATUSES`
  (optimistic retries inside)
- ``GET /customers/{customer_id}/orders?limit=20&cursor=...`` (newest first;
  the reply's ``cursor`` fetches the next page)
- ``GET /orders/{id}/events?until=shipped``: one ``data:`` line per status change,
  starting with the current one; it ends at ``until`` (if given), when the order
  is deleted, or when the server stops.

Bad input (a body that is not JSON, a missing field, a quantity that is not a
positive integer, an unknown status, a bad cursor or ``limit``, an id longer
than :data:`MAX_ID_LENGTH`) answers 422 with ``{"error": "<a sentence saying
what to fix>"}``; an unknown order answers 404, and so does an order id longer
than any order's; an order too large for one stored value answers 413.
Ctrl-C stops the server at once, even with event streams open.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import reprlib
import sys
from collections.abc import AsyncIterator
from types import FrameType
from typing import Any, TypeVar

import attrs

try:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
except ModuleNotFoundError as exc:  # pragma: no cover - the test venv has the extra
    _NEEDS_EXTRA = (
        f"kvmodel.examples.web needs the 'web' extra ({exc.name} is not installed): "
        "pip install 'kvmodel[web]'"
    )
    if __name__ == "__main__":
        print(_NEEDS_EXTRA, file=sys.stderr)
        raise SystemExit(1) from None
    raise ModuleNotFoundError(_NEEDS_EXTRA, name=exc.name) from None

import kvmodel as km
from kvmodel import aio
from kvmodel.examples.orders import (
    STATUSES,
    Order,
    OrderItem,
    create_order,
    get_order,
    list_customer_orders,
    update_order_status,
)

T = TypeVar("T")

# The page size bound of GET /customers/{id}/orders.
MAX_PAGE = 1000
# The longest customer, product or order id taken, in characters: far below what
# a key holds (2 KiB), so an id is refused with a short sentence before any key
# is built from it, and a 3,000-character id is never echoed back.
MAX_ID_LENGTH = 256


class BadInputError(Exception):
    """The request cannot be served as sent; the message says what to fix (answered with 422)."""


def order_json(order: Order) -> dict[str, Any]:
    """An order as JSON: attrs fields, with the timestamp in ISO 8601."""
    # Models become attrs classes when their class statement runs, which mypy
    # cannot see: hence the ignore.
    data = attrs.asdict(order)  # type: ignore[arg-type]
    data["created_at"] = order.created_at.isoformat()
    return data


# -- reading requests: every check names the field at fault --------------------------


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise BadInputError(f"The body is not JSON ({exc}); send a JSON object.") from None
    if not isinstance(body, dict):
        raise BadInputError(f"The body is a JSON {type(body).__name__}; send a JSON object.")
    return body


def _text(data: dict[str, Any], name: str, where: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise BadInputError(
            f"{where} needs {name!r} as a non-empty string, not {reprlib.repr(value)}."
        )
    if len(value) > MAX_ID_LENGTH:
        raise BadInputError(
            f"{where} has a {name!r} of {len(value):,} characters; ids are at most {MAX_ID_LENGTH}."
        )
    return value


class NoSuchOrderError(Exception):
    """The order asked for does not exist (answered with 404)."""


def order_id_of(request: Request) -> str:
    """The order id in the path; one longer than any order's names no order."""
    order_id: str = request.path_params["order_id"]
    if len(order_id) > MAX_ID_LENGTH:
        raise NoSuchOrderError(
            f"There is no such order: order ids are at most {MAX_ID_LENGTH} characters, "
            f"and this one has {len(order_id):,}."
        )
    return order_id


def customer_id_of(request: Request) -> str:
    """The customer id in the path of a listing, at most :data:`MAX_ID_LENGTH` characters."""
    customer_id: str = request.path_params["customer_id"]
    if len(customer_id) > MAX_ID_LENGTH:
        raise BadInputError(
            f"The customer id in the path has {len(customer_id):,} characters; ids are at "
            f"most {MAX_ID_LENGTH}."
        )
    return customer_id


def _whole_number(data: dict[str, Any], name: str, where: str, *, minimum: int) -> int:
    value = data.get(name)
    # bool is an int in Python but true is not a quantity in JSON.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise BadInputError(f"{where} needs {name!r} as an integer >= {minimum}, not {value!r}.")
    return value


def parse_new_order(body: dict[str, Any]) -> tuple[str, list[OrderItem]]:
    """The customer and items of a ``POST /orders`` body, or BadInputError."""
    customer_id = _text(body, "customer_id", "An order")
    raw_items = body.get("items")
    if not isinstance(raw_items, list) or not raw_items:
        raise BadInputError(f"An order needs 'items' as a non-empty list, not {raw_items!r}.")
    items = []
    for n, raw in enumerate(raw_items):
        where = f"Item {n}"
        if not isinstance(raw, dict):
            raise BadInputError(f"{where} is {raw!r}; send an object with product_id, ...")
        items.append(
            OrderItem(
                product_id=_text(raw, "product_id", where),
                quantity=_whole_number(raw, "quantity", where, minimum=1),
                price_cents=_whole_number(raw, "price_cents", where, minimum=0),
            )
        )
    return customer_id, items


def parse_status(body: dict[str, Any]) -> str:
    """The status of a ``PATCH /orders/{id}`` body, which must be one of STATUSES."""
    status = body.get("status")
    if status not in STATUSES:
        raise BadInputError(f"'status' must be one of {', '.join(STATUSES)}; not {status!r}.")
    return str(status)


def page_limit(text: str) -> int:
    """The ``limit`` query parameter: a whole number from 1 to :data:`MAX_PAGE`."""
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        raise BadInputError(f"'limit' must be a whole number from 1 to {MAX_PAGE}, not {text!r}.")
    return limit


async def until_set(stopping: asyncio.Event, items: AsyncIterator[T]) -> AsyncIterator[T]:
    """The items of ``items`` until it ends or ``stopping`` is set, whichever comes first.

    A watch waits for the next change for as long as it takes; racing it against
    the event lets a stream end the moment the server is asked to stop.
    """
    stop = asyncio.ensure_future(stopping.wait())
    try:
        while True:
            item = asyncio.ensure_future(anext(items))
            await asyncio.wait((item, stop), return_when=asyncio.FIRST_COMPLETED)
            if not item.done():
                item.cancel()
                # Let the cancelled read finish before the watch is closed.
                await asyncio.gather(item, return_exceptions=True)
                return
            try:
                yield item.result()
            except StopAsyncIteration:
                return
    finally:
        stop.cancel()


def create_app(kv: km.Kv | None = None) -> Starlette:
    """The ASGI app serving the orders of ``kv``; the caller opens ``kv``, the app closes it.

    Without ``kv`` (as ``uvicorn --factory kvmodel.examples.web:create_app``
    calls it) the app opens the SQLite file ``$KVMODEL_ORDERS_DB``, ``orders.db``
    by default.

    Setting ``app.state.stopping`` (an :class:`asyncio.Event`) ends every open
    event stream; :func:`main` sets it when the server is told to stop.
    """
    if kv is None:
        kv = km.open_kv(os.environ.get("KVMODEL_ORDERS_DB", "orders.db"))
    akv = aio.AsyncKv(kv)
    stopping = asyncio.Event()

    async def post_order(request: Request) -> Response:
        customer_id, items = parse_new_order(await _json_object(request))
        order = await akv.run(create_order, kv, customer_id, items)
        return JSONResponse(order_json(order), status_code=201)

    async def get_one(request: Request) -> Response:
        order = await akv.run(get_order, kv, order_id_of(request))
        if order is None:
            return JSONResponse({"error": "There is no such order."}, status_code=404)
        return JSONResponse(order_json(order))

    async def patch_one(request: Request) -> Response:
        status = parse_status(await _json_object(request))
        try:
            order = await akv.run(update_order_status, kv, order_id_of(request), status)
        except KeyError:
            return JSONResponse({"error": "There is no such order."}, status_code=404)
        return JSONResponse(order_json(order))

    async def customer_orders(request: Request) -> Response:
        limit = page_limit(request.query_params.get("limit", "20"))
        try:
            orders, cursor = await akv.run(
                list_customer_orders,
                kv,
                customer_id_of(request),
                limit=limit,
                cursor=request.query_params.get("cursor") or None,
            )
        except ValueError as exc:  # km.InvalidArgumentError is a ValueError too
            raise BadInputError(str(exc)) from None
        return JSONResponse({"orders": [order_json(o) for o in orders], "cursor": cursor})

    async def events(request: Request) -> Response:
        # Checked before the stream starts: once it has, an error can only cut it off.
        order_id = order_id_of(request)
        until = request.query_params.get("until")

        async def stream() -> AsyncIterator[str]:
            # The typed watch: an Order (or None once it is gone) now and after each change.
            async with Order.watch(akv, order_id) as changes:
                async for order in until_set(stopping, changes):
                    status = None if order is None else order.status
                    payload = {"order_id": order_id, "status": status}
                    yield f"data: {json.dumps(payload)}\n\n"
                    if status is None or status == until:
                        return

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def bad_input(request: Request, exc: Exception) -> Response:
        # kvmodel's bad-input errors (a key part it cannot store, a bad
        # cursor) are one sentence naming what to fix, too.
        return JSONResponse({"error": str(exc)}, status_code=422)

    async def too_large(request: Request, exc: Exception) -> Response:
        # A store limit the request's data passes: an order whose items make
        # its document larger than one value may be.
        return JSONResponse({"error": str(exc)}, status_code=413)

    async def no_such_order(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=404)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # Closing the AsyncKv ends its worker thread too (and closes kv, which
        # the caller may close again: closing twice is harmless).
        await akv.close()

    app = Starlette(
        routes=[
            Route("/orders", post_order, methods=["POST"]),
            Route("/orders/{order_id}", get_one, methods=["GET"]),
            Route("/orders/{order_id}", patch_one, methods=["PATCH"]),
            Route("/orders/{order_id}/events", events, methods=["GET"]),
            Route("/customers/{customer_id}/orders", customer_orders, methods=["GET"]),
        ],
        exception_handlers={
            BadInputError: bad_input,
            NoSuchOrderError: no_such_order,
            km.LimitExceededError: too_large,
            km.InvalidKeyError: bad_input,
            km.InvalidArgumentError: bad_input,
        },
        lifespan=lifespan,
    )
    app.state.stopping = stopping
    return app


class Server(uvicorn.Server):
    """Uvicorn's server, which also ends the open event streams when told to stop.

    On Ctrl-C uvicorn stops accepting connections and then waits for the open
    responses to finish; an event stream would keep it waiting for as long as
    its client stays. Setting the app's ``stopping`` event ends the streams, so
    the server stops within a moment.
    """

    def __init__(self, config: uvicorn.Config, stopping: asyncio.Event) -> None:
        super().__init__(config)
        self._stopping = stopping
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        """Serves until told to stop (see :class:`uvicorn.Server`)."""
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Marks the server as stopping and ends the event streams."""
        super().handle_exit(sig, frame)
        if self._loop is not None:
            # A signal handler may run between any two steps of the loop:
            # hand the event over instead of touching it here.
            self._loop.call_soon_threadsafe(self._stopping.set)


def main(argv: list[str] | None = None) -> int:
    """Serves the API with uvicorn until Ctrl-C (or SIGTERM); returns the exit status."""
    parser = argparse.ArgumentParser(description="kvmodel orders API")
    parser.add_argument("--db", default="orders.db", help="SQLite file (default: orders.db)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    with km.open_kv(args.db) as kv:
        app = create_app(kv)
        # The grace period only bounds a response that ignores the event.
        config = uvicorn.Config(app, host=args.host, port=args.port, timeout_graceful_shutdown=2)
        try:
            Server(config, app.state.stopping).run()
        except KeyboardInterrupt:
            # Uvicorn re-raises the Ctrl-C it handled once it has stopped cleanly.
            return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
