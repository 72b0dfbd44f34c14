"""A small client for etcd v3's JSON gateway over HTTP/1.1, stdlib only.

etcd serves its gRPC API as JSON at ``/v3/...`` on the client port (the
grpc-gateway): keys and values travel base64-encoded, 64-bit integers as JSON
strings, and fields holding their default value are left out. This module
sends such requests with :mod:`http.client` over one persistent connection per
thread, fails over between endpoints, and turns every failure into an
:class:`~kvmodel.errors.EngineError` subclass that says whether the request
may have been applied:

* :class:`EtcdUnavailableError`: no member answered; nothing was applied.
* :class:`EtcdAmbiguousError`: a write was sent but its answer was lost
  (connection reset, timeout, leader change); it may or may not have applied.
* :class:`EtcdServerError`: etcd answered with a definite error (a bad
  request, a missing lease, a compacted revision); nothing was applied.

Reads are retried on the other endpoints; writes are never resent here, the
engine resolves an ambiguous write by reading its idempotency marker.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from kvmodel.errors import EngineError

__all__ = [
    "EtcdAmbiguousError",
    "EtcdServerError",
    "EtcdTransport",
    "EtcdUnavailableError",
    "WatchConnection",
    "b64",
    "unb64",
]

Json = dict[str, Any]

# gRPC status codes (as etcd's gateway reports them) that mean the request was
# rejected before it could be applied: invalid argument, not found, already
# exists, permission denied, resource exhausted, failed precondition, aborted,
# out of range (compacted revision), unimplemented, unauthenticated.
_DEFINITE_CODES = frozenset({3, 5, 6, 7, 8, 9, 10, 11, 12, 16})
# Unavailable errors that etcd raises before proposing anything to raft.
_NOT_PROPOSED = ("etcdserver: no leader", "etcdserver: too many requests", "not capable")


def b64(data: bytes) -> str:
    """Bytes as the gateway's base64 text."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str | None) -> bytes:
    """The gateway's base64 text (absent for empty bytes) as bytes."""
    return base64.b64decode(text) if text else b""


class EtcdUnavailableError(EngineError):
    """No etcd endpoint answered in time; the request was not applied."""


class EtcdAmbiguousError(EngineError):
    """A write's answer was lost; it may or may not have been applied."""


class EtcdServerError(EngineError):
    """etcd rejected a request with a definite error; nothing was applied.

    Attributes:
        code: the gRPC status code etcd reported.
        detail: etcd's own message (``"etcdserver: requested lease not found"``).
    """

    def __init__(self, message: str, *, code: int, detail: str) -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail


class _ServerAnswer(Exception):
    """An error answer from etcd (internal: classified by the caller)."""

    def __init__(self, status: int, code: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail} (gRPC code {code})")
        self.status = status
        self.code = code
        self.detail = detail

    @property
    def definite(self) -> bool:
        return self.code in _DEFINITE_CODES or any(m in self.detail for m in _NOT_PROPOSED)


class _NotSent(Exception):
    """The connection failed before the request left (internal)."""


def _parse_endpoint(endpoint: str) -> tuple[str, int]:
    text = endpoint.removeprefix("http://")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"etcd endpoint {endpoint!r} is not of the form host:port.")
    return host.strip("[]"), int(port)


class EtcdTransport:
    """Sends JSON requests to a list of etcd endpoints, failing over between them.

    Each thread keeps one persistent HTTP/1.1 connection to its current
    endpoint; threads start on different endpoints to spread the load.

    Args:
        endpoints: ``"host:port"`` of each member's client URL.
        request_timeout: seconds one HTTP request may take.
        retry_timeout: seconds a request keeps trying other endpoints.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        request_timeout: float = 5.0,
        retry_timeout: float = 15.0,
    ) -> None:
        if not endpoints:
            raise ValueError("EtcdTransport needs at least one endpoint.")
        self.endpoints = [_parse_endpoint(e) for e in endpoints]
        self.request_timeout = request_timeout
        self.retry_timeout = retry_timeout
        self._local = threading.local()
        self._next_start = 0
        self._lock = threading.Lock()
        self._conns: set[http.client.HTTPConnection] = set()
        self._closed = False

    # -- connections -------------------------------------------------------

    def _state(self) -> Any:
        st = self._local
        if not hasattr(st, "index"):
            with self._lock:
                st.index = self._next_start % len(self.endpoints)
                self._next_start += 1
            st.conn = None
        return st

    def _conn(self) -> http.client.HTTPConnection:
        st = self._state()
        if st.conn is None:
            host, port = self.endpoints[st.index]
            st.conn = http.client.HTTPConnection(host, port, timeout=self.request_timeout)
            with self._lock:
                self._conns.add(st.conn)
        conn: http.client.HTTPConnection = st.conn
        return conn

    def _drop(self, *, failover: bool) -> None:
        st = self._state()
        if st.conn is not None:
            st.conn.close()
            with self._lock:
                self._conns.discard(st.conn)
            st.conn = None
        if failover:
            st.index = (st.index + 1) % len(self.endpoints)

    def current_endpoint(self) -> str:
        """The ``host:port`` this thread talks to now."""
        host, port = self.endpoints[self._state().index]
        return f"{host}:{port}"

    def close(self) -> None:
        """Closes every connection; later requests raise EtcdUnavailableError."""
        with self._lock:
            self._closed = True
            conns = list(self._conns)
        for conn in conns:
            conn.close()

    # -- requests ----------------------------------------------------------

    def _once(self, path: str, body: Json) -> Json:
        """One request on this thread's connection; raises _NotSent, _ServerAnswer, OSError."""
        conn = self._conn()
        payload = json.dumps(body, separators=(",", ":")).encode()
        fresh = conn.sock is None
        if fresh:
            try:
                conn.connect()
            except OSError as exc:
                raise _NotSent(str(exc)) from exc
            with self._lock:
                if self._closed:  # close() ran while we connected: leave no socket behind
                    conn.close()
                    raise _NotSent("The etcd transport is closed.")
        conn.request("POST", path, body=payload, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        try:
            parsed: Json = json.loads(data) if data else {}
        except ValueError as exc:
            raise _ServerAnswer(resp.status, 2, f"unparsable answer {data[:200]!r}") from exc
        if resp.status != 200 or "error" in parsed:
            raise _ServerAnswer(
                resp.status, int(parsed.get("code", 2)), str(parsed.get("error", data[:200]))
            )
        return parsed

    def request(self, path: str, body: Json, *, write: bool = False) -> Json:
        """Sends ``body`` to ``path`` and returns the decoded answer.

        A read (``write=False``) is retried on every endpoint until
        ``retry_timeout`` passes. A write is only retried while it certainly
        did not leave; once sent, a lost answer raises EtcdAmbiguousError.

        Raises:
            EtcdUnavailableError: no endpoint answered.
            EtcdAmbiguousError: a write may have been applied.
            EtcdServerError: etcd rejected the request.
        """
        deadline = time.monotonic() + self.retry_timeout
        pause = 0.02
        last: BaseException | None = None
        while True:
            if self._closed:
                raise EtcdUnavailableError("The etcd transport is closed.")
            try:
                return self._once(path, body)
            except _NotSent as exc:
                last = exc
                self._drop(failover=True)
            except _ServerAnswer as exc:
                if exc.definite:
                    if exc.code in (14,):  # "no leader": try a member that has one
                        last = exc
                        self._drop(failover=True)
                    else:
                        raise EtcdServerError(
                            f"etcd at {self.current_endpoint()} rejected {path}: {exc.detail}.",
                            code=exc.code,
                            detail=exc.detail,
                        ) from exc
                elif write:
                    self._drop(failover=True)
                    raise EtcdAmbiguousError(
                        f"etcd at {self.current_endpoint()} failed a write to {path} "
                        f"with {exc.detail!r}; it may have been applied."
                    ) from exc
                else:
                    last = exc
                    self._drop(failover=True)
            except (OSError, http.client.HTTPException) as exc:
                self._drop(failover=True)
                if write:
                    raise EtcdAmbiguousError(
                        f"The connection to etcd broke during a write to {path} ({exc!r}); "
                        "it may have been applied."
                    ) from exc
                last = exc
            if time.monotonic() + pause > deadline:
                endpoints = ", ".join(f"{h}:{p}" for h, p in self.endpoints)
                raise EtcdUnavailableError(
                    f"No etcd endpoint of {endpoints} answered {path} within "
                    f"{self.retry_timeout} s; last error: {last}."
                ) from last
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    # -- streams -------------------------------------------------------------

    def open_stream(self, path: str, body: Sequence[Json], *, start: int = 0) -> WatchConnection:
        """Opens a streaming request (watch, lease keepalive) on a connection of its own.

        ``body`` holds the JSON messages of the client stream, sent at once.
        Endpoints are tried in turn from index ``start``.
        """
        last: BaseException | None = None
        for k in range(len(self.endpoints)):
            host, port = self.endpoints[(start + k) % len(self.endpoints)]
            conn = http.client.HTTPConnection(host, port, timeout=self.request_timeout)
            try:
                payload = "".join(json.dumps(m, separators=(",", ":")) for m in body)
                conn.request("POST", path, body=payload.encode())
                resp = conn.getresponse()
                if resp.status != 200:
                    raise _ServerAnswer(resp.status, 2, resp.read()[:200].decode(errors="replace"))
                return WatchConnection(conn, resp, (start + k) % len(self.endpoints))
            except (OSError, http.client.HTTPException, _ServerAnswer) as exc:
                conn.close()
                last = exc
        raise EtcdUnavailableError(
            f"No etcd endpoint accepted the stream {path}: {last}."
        ) from last


class WatchConnection:
    """One streaming answer: an iterator of the JSON ``result`` messages."""

    def __init__(
        self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, index: int
    ) -> None:
        self._conn = conn
        self._resp = resp
        self.index = index

    def set_timeout(self, timeout: float | None) -> None:
        """Sets the socket's read timeout (None: block)."""
        if self._conn.sock is not None:
            self._conn.sock.settimeout(timeout)

    def messages(self) -> Iterator[Json]:
        """Yields each message's ``result`` until the stream ends or breaks (OSError)."""
        while True:
            try:
                line = self._resp.readline()
            except (http.client.HTTPException, ValueError, AttributeError) as exc:
                # A socket shut down by close() from another thread lands here.
                raise OSError(f"The etcd stream broke: {exc!r}") from exc
            if not line:
                return
            msg = json.loads(line)
            if "error" in msg:
                err = msg["error"]
                raise OSError(f"etcd ended the stream: {err.get('message', err)}")
            yield msg.get("result", {})

    def interrupt(self) -> None:
        """Wakes a reader blocked in :meth:`messages` (from any thread) by shutting the socket."""
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Closes the connection; call it from the thread that reads."""
        self.interrupt()
        self._conn.close()
