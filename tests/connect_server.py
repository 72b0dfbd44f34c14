"""KV Connect servers for the tests: in a thread of this process, or `kvmodel serve` as a process.

The in-process server runs the same ASGI app as ``kvmodel serve`` under
hypercorn on a free loopback port; the conformance suite uses it (one server
per test, on a fresh store). The process form is what Deno and Node talk to.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kvmodel import Kv
from kvmodel.connect import create_app
from kvmodel.engines.connect import ConnectEngine
from kvmodel.testing import KvStore

TOKEN = "test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"Nothing listens on port {port} after {timeout} s.")


class ThreadServer:
    """`create_app(kv)` under hypercorn in a thread; ``stop`` ends it (restartable)."""

    def __init__(self, kv: Kv, **app_options: Any) -> None:
        self.kv = kv
        self.app_options = app_options
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def start(self) -> ThreadServer:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        app = create_app(self.kv, token=TOKEN, **self.app_options)
        config = Config()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.graceful_timeout = 1.0
        config.accesslog = None
        config.errorlog = None
        ready = threading.Event()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            ready.set()
            await serve(app, config, shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        self._thread.start()
        ready.wait(10)
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None or self._stop is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._thread = None


def connect_store_factory(make_kv: Callable[[Path], Kv]) -> Callable[[Path], KvStore]:
    """A STORE_FACTORIES entry: a server per test on ``make_kv(tmp_path)``, Kvs through it."""

    def factory(tmp_path: Path) -> KvStore:
        # The suite also opens stores by URL (open_kv(kv_store.path)), which
        # takes the token from the environment, as Deno.openKv does.
        os.environ["DENO_KV_ACCESS_TOKEN"] = TOKEN
        server = ThreadServer(make_kv(tmp_path)).start()

        def open_engine(**options: Any) -> ConnectEngine:
            return ConnectEngine(server.url, token=TOKEN, **options)

        store = KvStore(open_engine, path=server.url)
        close = store.close

        def close_all() -> None:
            close()
            server.stop()
            server.kv.close()

        store.close = close_all  # type: ignore[method-assign]
        return store

    return factory


@contextmanager
def serve_process(store: Path | str, *extra: str, token: str = TOKEN) -> Iterator[str]:
    """``kvmodel serve STORE`` as a child process; yields its URL, stops it after."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "kvmodel", "serve", str(store), "--port", str(port), *extra],
        env={**os.environ, "KVMODEL_ACCESS_TOKEN": token},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        try:
            wait_for_port(port)
        except TimeoutError:
            process.kill()
            raise RuntimeError(
                f"kvmodel serve did not start: {process.communicate()[1].decode()}"
            ) from None
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
