"""Running the browser: under hypercorn until Ctrl-C, or in a thread (tests, screenshots).

Hypercorn, as ``kvmodel serve`` already runs under it (the connect extra has
it): one server for both commands, and the browser's server-sent events work
on it as on any ASGI server. Its access log is off, so no URL is ever logged;
its error log goes through :class:`RedactToken`, which replaces the token
wherever it would appear in a message.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["RedactToken", "ThreadedServer", "new_token", "serve_app"]


def new_token() -> str:
    """A fresh access token (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(32)


class RedactToken(logging.Filter):
    """Replaces the token in every record that passes, so logs never carry it."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.token in message:
            record.msg = message.replace(self.token, "<token>")
            record.args = ()
        return True


def _error_logger(token: str) -> logging.Logger:
    logger = logging.getLogger("kvmodel.browse.server")
    logger.handlers = []
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactToken(token))
    handler.setFormatter(logging.Formatter("kvmodel browse: %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    return logger


def _config(host: str, port: int, token: str) -> Any:
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = 2.0  # live pages' streams end within their 1 s poll
    config.accesslog = None
    config.errorlog = _error_logger(token)
    return config


def _quiet_cancellations(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler: a live page's stream cancelled at shutdown is no error."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


def _sockets(config: Any, host: str, port: int) -> Any:
    """The listening sockets of ``config``; a port in use is a sentence, not an errno."""
    from kvmodel.errors import InvalidArgumentError

    try:
        return config.create_sockets()
    except OSError as exc:
        raise InvalidArgumentError(
            f"Cannot listen on {host}:{port}: {exc.strerror or exc}. Pass another --port, "
            "or --port 0 for any free one."
        ) from exc


def _bound_port(sockets: Any) -> int:
    port: int = sockets.insecure_sockets[0].getsockname()[1]
    return port


def serve_app(
    app: Any,
    *,
    host: str,
    port: int,
    token: str,
    announce: Callable[[int], None],
) -> None:
    """Serves ``app`` until SIGINT or SIGTERM; ``announce`` gets the bound port."""
    from hypercorn.asyncio.run import worker_serve
    from hypercorn.utils import wrap_app

    config = _config(host, port, token)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet_cancellations)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        sockets = _sockets(config, host, port)
        announce(_bound_port(sockets))
        await worker_serve(
            wrap_app(app, config.wsgi_max_body_size, "asgi"),
            config,
            sockets=sockets,
            shutdown_trigger=stop.wait,
        )

    asyncio.run(main())


class ThreadedServer:
    """An app under hypercorn in a thread of this process, on a free loopback port."""

    def __init__(self, app: Any, *, token: str, host: str = "127.0.0.1") -> None:
        self.app = app
        self.token = token
        self.host = host
        self.port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._failed: BaseException | None = None

    @property
    def url(self) -> str:
        """The server's root URL (without the token)."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> ThreadedServer:
        """Starts serving; returns once the port is bound."""
        from hypercorn.asyncio.run import worker_serve
        from hypercorn.utils import wrap_app

        config = _config(self.host, 0, self.token)
        config.graceful_timeout = 0.5
        ready = threading.Event()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._loop.set_exception_handler(_quiet_cancellations)
            self._stop = asyncio.Event()
            sockets = config.create_sockets()
            self.port = _bound_port(sockets)
            ready.set()
            await worker_serve(
                wrap_app(self.app, config.wsgi_max_body_size, "asgi"),
                config,
                sockets=sockets,
                shutdown_trigger=self._stop.wait,
            )

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # reported by start() or stop()
                self._failed = exc
                ready.set()

        self._thread = threading.Thread(target=run, name="kvmodel-browse", daemon=True)
        self._thread.start()
        ready.wait(20)
        if self._failed is not None:
            raise self._failed
        return self

    def stop(self) -> None:
        """Stops serving and waits for the thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None
