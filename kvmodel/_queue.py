"""``kv.listen_queue``: the delivery loop over an engine's leased messages.

The engine owns the queue's state machine (lease, retry after the backoff
interval, dead-letter keys); this module runs handlers, keeps the leases of
running handlers alive, and reports every handler failure through ``logging``
(logger ``kvmodel.queue``), never silently.

A handler that takes a second positional parameter also gets a
:class:`QueueDelivery` (the message's id and attempt number): the id is what an
effectively-once handler keys its "done" marker by (docs/how-to/queues.md).
The handler's signature is inspected once, when the listener starts.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import attrs

from kvmodel._values import decode_value
from kvmodel.engines.base import QueueMessage
from kvmodel.errors import InvalidArgumentError, KvError

if TYPE_CHECKING:
    from kvmodel._kv import Kv

__all__ = [
    "POLL_INTERVAL",
    "LeaseKeeper",
    "QueueDelivery",
    "QueueListener",
    "logger",
    "takes_delivery",
]

logger = logging.getLogger("kvmodel.queue")

POLL_INTERVAL = 1.0
"""Longest wait for a message before the loop looks at the Kv's state again.

Engines wake waiting listeners on every commit and on close, so this bounds
only how long a lost wake-up could delay a delivery; it is not a busy loop.
"""


@attrs.frozen
class QueueDelivery:
    """The message a queue handler is running for: its id and this delivery's attempt.

    A handler declared with a second positional parameter,
    ``def handler(value, delivery)``, receives one. ``id`` is the same on every
    attempt of a message and never names another message of the database, so
    a handler can commit its writes together with a "done" marker keyed by it,
    checking the marker is absent, and so act exactly once per message even
    though delivery is at least once.

    Attributes:
        id: names the message (an opaque string, stable across retries).
        attempt: 1 for the first delivery, 2 for the first retry, ...
    """

    id: str
    attempt: int


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def takes_delivery(handler: Callable[..., object]) -> bool:
    """True when ``handler`` declares a second positional parameter (for a QueueDelivery).

    ``*args`` does not count, so ``print`` and other catch-all callables get the
    value alone, as before; a callable whose signature cannot be read does too.
    """
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return False
    return sum(1 for p in parameters if p.kind in _POSITIONAL) >= 2


def settle(message: QueueMessage, success: bool) -> None:
    """Finishes a message; a Kv closed meanwhile leaves it to be redelivered."""
    try:
        message.finish(success)
    except KvError:
        logger.warning(
            "Could not settle a queue message (attempt %d); when its lease expires "
            "it counts as a failed attempt and follows its backoff schedule.",
            message.attempt,
            exc_info=True,
        )


class LeaseKeeper:
    """Renews the leases of messages whose handlers are still running."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._messages: set[QueueMessage] = set()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def add(self, message: QueueMessage) -> None:
        with self._cond:
            self._messages.add(message)
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="kvmodel-lease", daemon=True)
                self._thread.start()

    def remove(self, message: QueueMessage) -> None:
        with self._cond:
            self._messages.discard(message)

    def stop(self) -> None:
        """Stops the renewal thread and waits until it has ended (Kv.close relies on it)."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait(self._interval)
                if self._stopped:
                    return
                messages = list(self._messages)
            for message in messages:
                try:
                    if not message.renew_lease():
                        logger.warning(
                            "Lost the lease of a queue message while its handler "
                            "ran; it counts as a failed attempt and may be delivered again."
                        )
                except KvError:
                    pass  # closing: the message will be redelivered after its lease


class QueueListener:
    """Runs ``handler`` for each message until the Kv closes."""

    def __init__(self, kv: Kv, handler: Callable[..., object], *, concurrency: int) -> None:
        if not callable(handler):
            raise InvalidArgumentError(f"listen_queue needs a callable handler, not {handler!r}.")
        if inspect.iscoroutinefunction(handler):
            raise InvalidArgumentError(
                f"{handler!r} is a coroutine function; "
                "use kvmodel.aio's AsyncKv.listen_queue for async handlers."
            )
        self._kv = kv
        self._handler = handler
        self._with_delivery = takes_delivery(handler)
        self._concurrency = concurrency
        self._leases = LeaseKeeper(max(kv.engine.lease_timeout / 3, 0.05))

    def run(self) -> None:
        """Delivers messages until the Kv closes, then returns."""
        try:
            if self._concurrency == 1:
                self._run_inline()
            else:
                self._run_pool()
        finally:
            self._leases.stop()

    def stop_leases(self) -> None:
        """Stops renewing leases and joins the renewal thread (called by Kv.close)."""
        self._leases.stop()

    def _next(self) -> QueueMessage | None:
        if self._kv.closed:
            return None
        try:
            return self._kv.engine.dequeue_next_message(POLL_INTERVAL)
        except KvError:
            if self._kv.closed:
                return None
            raise

    def _run_inline(self) -> None:
        while not self._kv.closed:
            message = self._next()
            if message is not None:
                self.deliver(message)

    def _run_pool(self) -> None:
        slots = threading.BoundedSemaphore(self._concurrency)
        with ThreadPoolExecutor(self._concurrency, thread_name_prefix="kvmodel-queue") as pool:
            while not self._kv.closed:
                if not slots.acquire(timeout=POLL_INTERVAL):
                    continue
                message = self._next()
                if message is None:
                    slots.release()
                    continue

                def work(m: QueueMessage = message) -> None:
                    try:
                        self.deliver(m)
                    finally:
                        slots.release()

                pool.submit(work)

    def deliver(self, message: QueueMessage) -> None:
        """Runs the handler on one message and settles it."""
        self._leases.add(message)
        try:
            success = self._call(message)
        finally:
            self._leases.remove(message)
        settle(message, success)

    def _call(self, message: QueueMessage) -> bool:
        try:
            value = decode_value(message.payload, message.encoding)
        except KvError:
            logger.exception("Cannot decode a queue message (attempt %d).", message.attempt)
            return False
        try:
            if self._with_delivery:
                self._handler(value, QueueDelivery(message.id, message.attempt))
            else:
                self._handler(value)
        except Exception:
            logger.exception(
                "Queue handler %r failed on attempt %d.", self._handler, message.attempt
            )
            return False
        return True
