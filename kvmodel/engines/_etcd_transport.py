"""A small client for etcd v3's JSON gateway over HTTP/1.1, stdlib only.

etcd serves its gRPC API as JSON at ``/v3/...`` on the client port (the
grpc-gateway): keys and values travel base64-encoded, 64-bit integers as JSON
strings, and fields holding their default value are left out. This module
sends such requests with :mod:`http.client` over one persistent connection per
thread (HTTPS when the members speak TLS), fails over between endpoints, and
turns every failure into an :class:`~kvmodel.errors.EngineError` subclass that
says whether the request may have been applied:

* :class:`EtcdUnavailableError`: no member answered; nothing was applied.
* :class:`EtcdAmbiguousError`: a write was sent but its answer was lost
  (connection reset, timeout, leader change); it may or may not have applied.
* :class:`EtcdServerError`: etcd answered with a definite error (a bad
  request, a missing lease, a compacted revision); nothing was applied.

Reads are retried on the other endpoints; writes are never resent here, the
engine resolves an ambiguous write by reading its idempotency marker.

With a user name and password the transport logs in through
``/v3/auth/authenticate`` and sends the token etcd hands out in the
``Authorization`` header of every request. etcd forgets a token after
``--auth-token-ttl`` seconds without use (and on a restart), and rejects it
before doing anything, so a rejected token is replaced by a fresh login and the
request sent again. The password is kept in a :class:`Credentials` object whose
repr hides it, and no message built here quotes a request body, a password or
a token.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from kvmodel.errors import EngineError

__all__ = [
    "Credentials",
    "EtcdAmbiguousError",
    "EtcdAuthError",
    "EtcdServerError",
    "EtcdTransport",
    "EtcdUnavailableError",
    "WatchConnection",
    "b64",
    "tls_context",
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
# Answers that reject the token (or its absence) before anything is applied:
# a fresh login and the same request again is all it takes.
STALE_TOKEN_ANSWERS = (
    "etcdserver: invalid auth token",
    "etcdserver: user name is empty",
    "etcdserver: revision of auth store is old",
)
# TLS failures per endpoint, in a row, that make a request give up at once.
_TLS_ROUNDS = 2
_AUTH_NOT_ENABLED = "etcdserver: authentication is not enabled"
# What Go's TLS server answers to a plain HTTP request.
_PLAIN_TO_TLS = b"Client sent an HTTP request to an HTTPS server"
# etcd's gateway cannot pass a client certificate's common name on as the etcd
# user, so it refuses such certificates outright (HTTP 400, plain text).
_CN_REFUSED = b"CommonName of client sending a request against gateway"


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


class EtcdAuthError(EtcdServerError):
    """etcd refused to log in the user (wrong name or password), or demands a login.

    Attributes:
        user: the user name given (None when none was).
    """

    def __init__(self, message: str, *, code: int, detail: str, user: str | None) -> None:
        super().__init__(message, code=code, detail=detail)
        self.user = user


class Credentials:
    """An etcd user name and password; the repr names the user and hides the password."""

    __slots__ = ("_password", "user")

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self._password = password

    def login_body(self) -> Json:
        """The body of ``/v3/auth/authenticate`` (holds the password: never log it)."""
        return {"name": self.user, "password": self._password}

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password='***')"

    def __reduce__(self) -> Any:
        # Pickling would copy the password into whatever stores the pickle.
        raise TypeError("etcd credentials cannot be pickled.")


def tls_context(
    *,
    ca_file: str | os.PathLike[str] | None = None,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """An SSL context that checks the members' certificates and presents a client certificate.

    Args:
        ca_file: PEM file of the CA that signed the members' certificates
            (the system's CAs when None).
        cert_file: PEM client certificate, for members started with
            ``--client-cert-auth``.
        key_file: PEM private key of ``cert_file`` (unencrypted), if not in it.

    Raises:
        ValueError: a file cannot be read or does not hold what it should.
    """
    if key_file is not None and cert_file is None:
        raise ValueError("key_file was given without cert_file; give the client certificate too.")
    cafile = None if ca_file is None else os.fspath(ca_file)
    try:
        ctx = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"The CA file {cafile!r} cannot be loaded ({exc}); "
            "give a PEM file of the CA that signed the etcd members' certificates."
        ) from exc
    if cert_file is not None:
        try:
            ctx.load_cert_chain(
                os.fspath(cert_file), None if key_file is None else os.fspath(key_file)
            )
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"The client certificate {os.fspath(cert_file)!r} or its key cannot be loaded "
                f"({exc}); give PEM files of a certificate and its unencrypted key."
            ) from exc
    return ctx


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


class _TlsFailed(Exception):
    """TLS with a member failed for a reason that retrying cannot fix (internal)."""


def _tls_config_error(exc: BaseException) -> bool:
    """True for TLS failures that come from the configuration, not from the network.

    A certificate that does not verify, an alert from the member (it wants a
    client certificate, or refused ours) or plain HTTP where TLS was expected:
    the member rejected the handshake, so no request was processed.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True
    if isinstance(exc, ssl.SSLError) and not isinstance(
        exc, ssl.SSLEOFError | ssl.SSLZeroReturnError
    ):
        reason = str(exc.reason or "")
        return "ALERT" in reason or reason in {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE"}
    return False


def _parse_endpoint(endpoint: str) -> tuple[bool | None, str, int]:
    """``[http://|https://]host:port`` as (TLS if the scheme says, host, port)."""
    secure: bool | None = None
    text = endpoint
    for scheme, flag in (("http://", False), ("https://", True)):
        if text.startswith(scheme):
            secure, text = flag, text[len(scheme) :]
    if "@" in text:
        # Never echo it: the part before "@" is probably a password.
        raise ValueError(
            "An etcd endpoint holds user information (an '@'); give user= and password= instead."
        )
    text = text.rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host or "/" in text:
        raise ValueError(f"etcd endpoint {endpoint!r} is not of the form host:port.")
    return secure, host.strip("[]"), int(port)


class EtcdTransport:
    """Sends JSON requests to a list of etcd endpoints, failing over between them.

    Each thread keeps one persistent HTTP/1.1 connection to its current
    endpoint; threads start on different endpoints to spread the load.

    Args:
        endpoints: ``"host:port"`` of each member's client URL, optionally
            with ``http://`` or ``https://`` in front (all alike).
        request_timeout: seconds one HTTP request may take.
        retry_timeout: seconds a request keeps trying other endpoints.
        connect_timeout: seconds to establish a connection to one member;
            and, until some member has accepted a connection once, how long
            a request keeps trying before it gives up (a refused port or a
            wrong host fails at open in about this time, instead of after
            ``retry_timeout``).
        tls: the SSL context for HTTPS (see :func:`tls_context`); None for
            plain HTTP, unless an endpoint says ``https://`` (then the
            system's CAs check the members).
        credentials: the etcd user to log in as, for clusters with
            authentication enabled.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        request_timeout: float = 5.0,
        retry_timeout: float = 15.0,
        connect_timeout: float = 1.0,
        tls: ssl.SSLContext | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("EtcdTransport needs at least one endpoint.")
        parsed = [_parse_endpoint(e) for e in endpoints]
        schemes = {secure for secure, _, _ in parsed if secure is not None}
        if len(schemes) > 1 or (tls is not None and False in schemes):
            raise ValueError(
                "The etcd endpoints mix http:// and https:// (or name http:// with TLS options); "
                "a cluster's client URLs all speak TLS or none does."
            )
        if tls is None and True in schemes:
            tls = tls_context()
        self.tls = tls
        self.endpoints = [(host, port) for _, host, port in parsed]
        self.credentials = credentials
        self.request_timeout = request_timeout
        self.retry_timeout = retry_timeout
        self.connect_timeout = connect_timeout
        # Until a member accepts a connection, refusals mean "no cluster here"
        # (a wrong port, a stopped etcd), not a failover in progress: give up
        # after connect_timeout rather than retry_timeout.
        self._reached = False
        self._local = threading.local()
        self._next_start = 0
        self._lock = threading.Lock()
        self._conns: set[http.client.HTTPConnection] = set()
        self._closed = False
        # None: not logged in yet; "": etcd has authentication disabled.
        self._token: str | None = None
        self._login_lock = threading.Lock()
        self.logins = 0
        """How many times the transport logged in (for tests and monitoring)."""

    @property
    def scheme(self) -> str:
        """``"https"`` when the transport speaks TLS, else ``"http"``."""
        return "http" if self.tls is None else "https"

    # -- connections -------------------------------------------------------

    def _state(self) -> Any:
        st = self._local
        if not hasattr(st, "index"):
            with self._lock:
                st.index = self._next_start % len(self.endpoints)
                self._next_start += 1
            st.conn = None
        return st

    def _new_conn(self, index: int) -> http.client.HTTPConnection:
        # The connection's own timeout covers the TCP connect and the TLS
        # handshake; _connect() gives the socket request_timeout afterwards.
        host, port = self.endpoints[index]
        if self.tls is not None:
            return http.client.HTTPSConnection(
                host, port, timeout=self.connect_timeout, context=self.tls
            )
        return http.client.HTTPConnection(host, port, timeout=self.connect_timeout)

    def _connect(self, conn: http.client.HTTPConnection) -> None:
        """Connects within connect_timeout, then gives requests request_timeout."""
        conn.connect()
        self._reached = True
        if conn.sock is not None:
            conn.sock.settimeout(self.request_timeout)

    def _conn(self) -> http.client.HTTPConnection:
        st = self._state()
        if st.conn is None:
            st.conn = self._new_conn(st.index)
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

    # -- authentication ------------------------------------------------------

    def _headers(self, token: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = token
        return headers

    def token(self) -> str | None:
        """The token to send now, logging in first if needed (None without credentials)."""
        if self.credentials is None:
            return None
        token = self._token
        return self.renew_token(None) if token is None else token

    def renew_token(self, rejected: str | None) -> str:
        """Logs in again unless another thread already replaced the ``rejected`` token.

        Raises:
            EtcdAuthError: etcd refused the user name or password.
            EtcdUnavailableError: no member answered the login.
        """
        creds = self.credentials
        if creds is None:
            raise AssertionError("renew_token needs credentials")
        with self._login_lock:
            if self._token is not None and self._token != rejected:
                return self._token
            try:
                answer = self.request("/v3/auth/authenticate", creds.login_body(), login=True)
            except EtcdServerError as exc:
                if _AUTH_NOT_ENABLED in exc.detail:
                    self._token = ""  # etcd lets everyone in: send no token
                    return ""
                raise EtcdAuthError(
                    f"etcd refused to log in the user {creds.user!r}: {exc.detail}. "
                    "Check the user name and password (and that the user exists).",
                    code=exc.code,
                    detail=exc.detail,
                    user=creds.user,
                ) from None  # the cause would repeat the request's context, never needed
            token = answer.get("token")
            if not isinstance(token, str) or not token:
                raise EtcdUnavailableError("etcd answered a login without a token.")
            self._token = token
            self.logins += 1
            return token

    def _auth_required(self, detail: str, code: int) -> EtcdAuthError:
        return EtcdAuthError(
            f"etcd at {self.current_endpoint()} requires authentication ({detail}); "
            "give user= and password= (or user:password@ in the etcd:// URL).",
            code=code,
            detail=detail,
            user=None,
        )

    # -- requests ----------------------------------------------------------

    def _once(self, path: str, body: Json, token: str | None) -> Json:
        """One request on this thread's connection; raises _NotSent, _ServerAnswer, OSError."""
        conn = self._conn()
        payload = json.dumps(body, separators=(",", ":")).encode()
        fresh = conn.sock is None
        if fresh:
            try:
                self._connect(conn)
            except OSError as exc:
                if _tls_config_error(exc):
                    raise _TlsFailed(str(exc)) from exc
                if isinstance(exc, ssl.SSLEOFError):
                    # etcd drops a TLS handshake on a plain HTTP port this way.
                    raise _TlsFailed(
                        f"{exc} (the member closed the connection during the TLS handshake: "
                        "does it speak TLS?)"
                    ) from exc
                raise _NotSent(str(exc)) from exc
            with self._lock:
                if self._closed:  # close() ran while we connected: leave no socket behind
                    conn.close()
                    raise _NotSent("The etcd transport is closed.")
        conn.request("POST", path, body=payload, headers=self._headers(token))
        resp = conn.getresponse()
        data = resp.read()
        if resp.status == 400 and _PLAIN_TO_TLS in data:
            raise _TlsFailed("the member speaks TLS, and this request was plain HTTP")
        if resp.status == 400 and _CN_REFUSED in data:
            raise _TlsFailed(
                "etcd's JSON gateway refuses client certificates that carry a common name "
                "(CN); use a client certificate without one and log in with user= and password="
            )
        try:
            parsed: Json = json.loads(data) if data else {}
        except ValueError as exc:
            raise _ServerAnswer(resp.status, 2, f"unparsable answer {data[:200]!r}") from exc
        if resp.status != 200 or "error" in parsed:
            raise _ServerAnswer(
                resp.status, int(parsed.get("code", 2)), str(parsed.get("error", data[:200]))
            )
        return parsed

    def _tls_error(self, detail: str) -> EtcdUnavailableError:
        hint = (
            "open it with etcds:// (or https:// endpoints)"
            if self.tls is None
            else "check ca_file (the CA that signed the members' certificates), "
            "cert_file and key_file, and that the members speak TLS"
        )
        return EtcdUnavailableError(
            f"TLS with etcd at {self.current_endpoint()} failed: {detail}; {hint}."
        )

    def request(self, path: str, body: Json, *, write: bool = False, login: bool = False) -> Json:
        """Sends ``body`` to ``path`` and returns the decoded answer.

        A read (``write=False``) is retried on every endpoint until
        ``retry_timeout`` passes. A write is only retried while it certainly
        did not leave; once sent, a lost answer raises EtcdAmbiguousError.
        A rejected token is renewed and the request sent again.
        ``login=True`` marks the login itself, which carries no token.

        Raises:
            EtcdUnavailableError: no endpoint answered, or TLS failed.
            EtcdAmbiguousError: a write may have been applied.
            EtcdAuthError: etcd refused the credentials or demands some.
            EtcdServerError: etcd rejected the request.
        """
        start = time.monotonic()
        deadline = start + self.retry_timeout
        pause = 0.02
        last: BaseException | None = None
        tls_failures = 0
        renewals = 0
        attempts = 0
        while True:
            if self._closed:
                raise EtcdUnavailableError("The etcd transport is closed.")
            token = None if login else self.token()
            try:
                return self._once(path, body, token)
            except _TlsFailed as exc:
                # Every member failing twice in a row is a configuration error:
                # say so now instead of retrying for retry_timeout seconds.
                tls_failures += 1
                if tls_failures >= _TLS_ROUNDS * len(self.endpoints):
                    raise self._tls_error(str(exc)) from None
                last = exc
                self._drop(failover=True)
            except _NotSent as exc:
                last = exc
                self._drop(failover=True)
            except _ServerAnswer as exc:
                if not login and any(m in exc.detail for m in STALE_TOKEN_ANSWERS):
                    # Rejected before anything was applied: log in and resend.
                    if self.credentials is None:
                        raise self._auth_required(exc.detail, exc.code) from None
                    if renewals < 3:
                        renewals += 1
                        self.renew_token(token)
                        continue
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
                if _tls_config_error(exc) and not write:
                    # TLS 1.3 reports a refused client certificate only when the
                    # answer is read. (A write takes the ambiguous path below,
                    # which the engine resolves: safe whatever the alert meant.)
                    tls_failures += 1
                    if tls_failures >= _TLS_ROUNDS * len(self.endpoints):
                        raise self._tls_error(str(exc)) from None
                    last = exc
                    self._drop(failover=True)
                    continue
                self._drop(failover=True)
                if write:
                    raise EtcdAmbiguousError(
                        f"The connection to etcd broke during a write to {path} ({exc!r}); "
                        "it may have been applied."
                    ) from exc
                last = exc
            now = time.monotonic()
            endpoints = ", ".join(f"{h}:{p}" for h, p in self.endpoints)
            attempts += 1
            if (
                not self._reached
                and attempts >= len(self.endpoints)  # every member had its chance
                and now + pause > start + self.connect_timeout
            ):
                raise EtcdUnavailableError(
                    f"No etcd member accepts connections at {endpoints} "
                    f"(connect_timeout={self.connect_timeout} s; last error: {last}). "
                    "Check that etcd runs there and the host and port are right; to wait "
                    "for a cluster that is still starting, give connect_timeout=SECONDS "
                    "(or ?connect_timeout= in the URL)."
                ) from last
            if now + pause > deadline:
                hint = ""
                if self.tls is None and isinstance(last, ConnectionResetError):
                    # A TLS member answers plain HTTP with a 400 and closes; when
                    # the close overtakes the answer the client sees only a reset
                    # (http.client's RemoteDisconnected is a ConnectionResetError).
                    hint = " If the members speak TLS, open them with etcds:// (https://)."
                raise EtcdUnavailableError(
                    f"No etcd endpoint of {endpoints} answered {path} within "
                    f"{self.retry_timeout} s; last error: {last}.{hint}"
                ) from last
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    # -- streams -------------------------------------------------------------

    def open_stream(self, path: str, body: Sequence[Json], *, start: int = 0) -> WatchConnection:
        """Opens a streaming request (watch, lease keepalive) on a connection of its own.

        ``body`` holds the JSON messages of the client stream, sent at once.
        Endpoints are tried in turn from index ``start``. The stream carries
        the current token (``WatchConnection.token``); a stream that etcd
        cancels for its token is the caller's cue to :meth:`renew_token`.
        """
        last: BaseException | None = None
        token = self.token()
        for k in range(len(self.endpoints)):
            index = (start + k) % len(self.endpoints)
            conn = self._new_conn(index)
            try:
                self._connect(conn)
                payload = "".join(json.dumps(m, separators=(",", ":")) for m in body)
                conn.request("POST", path, body=payload.encode(), headers=self._headers(token))
                resp = conn.getresponse()
                if resp.status != 200:
                    raise _ServerAnswer(resp.status, 2, resp.read()[:200].decode(errors="replace"))
                return WatchConnection(conn, resp, index, token)
            except (OSError, http.client.HTTPException, _ServerAnswer) as exc:
                conn.close()
                last = exc
        raise EtcdUnavailableError(
            f"No etcd endpoint accepted the stream {path}: {last}."
        ) from last


class WatchConnection:
    """One streaming answer: an iterator of the JSON ``result`` messages."""

    def __init__(
        self,
        conn: http.client.HTTPConnection,
        resp: http.client.HTTPResponse,
        index: int,
        token: str | None = None,
    ) -> None:
        self._conn = conn
        self._resp = resp
        self.index = index
        self.token = token

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
