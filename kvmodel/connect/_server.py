"""The KV Connect server: any kvmodel store as a database ``Deno.openKv(url)`` can open.

:func:`create_app` builds a Starlette (ASGI) application on an open
:class:`kvmodel.Kv`; ``kvmodel serve`` runs it under hypercorn. It speaks
versions 2 and 3 of denokv's ``proto/kv-connect.md``, as denokv's own server
does: ``POST /`` is the metadata exchange, ``POST /v2/snapshot_read``,
``/v2/atomic_write`` and ``/v2/watch`` the data path.

Every request is checked before the engine sees it: the access token (the
metadata exchange) or a data path token it issued and that has not expired,
the protocol version header, the body's size and protobuf, and every key,
value and count against the limits the Kv facade enforces for Python callers.
A refused request gets a 4xx status with a plain-text sentence and writes
nothing.

Values travel as bytes with Deno's encoding tags (V8 = 1, LE64 = 2,
BYTES = 3); the server never decodes them. Tag 1 also carries kvmodel's
msgpack values between kvmodel clients: V8 bytes always start with 0xFF and a
version, which no msgpack value longer than one byte does, so each value is
stored under its own engine tag (V8 under kvmodel's V8 tag, as a Kv opened
with ``values="v8"`` writes it). ``values="any"`` (the default) accepts both;
``values="v8"`` refuses msgpack, so every value stays readable by Deno;
``values="msgpack"`` refuses V8, so every value stays readable by a default
kvmodel Kv. Raw bytes and KvU64 values pass in every mode.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import struct
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from kvmodel._atomic import DEFAULT_BACKOFF_SCHEDULE_MS, check_commit_limits
from kvmodel._kv import Kv, enforced_limits
from kvmodel.connect._protocol import (
    DATA_PATH,
    DATABASE_ID_HEADER,
    ERROR_HEADER,
    LINKED_READ,
    MAX_READ_ENTRIES,
    MAX_READ_RANGES,
    MAX_REQUEST_SIZE,
    PROTOBUF,
    SERVER_HEADER,
    SUPPORTED_VERSIONS,
    VERSION_HEADER,
    ProtobufDecodeError,
    engine_encoding,
    frame,
    looks_like_v8,
    pb,
    wire_encoding,
)
from kvmodel.engines.base import (
    VALUE_ENCODING_BYTES,
    VALUE_ENCODING_LE64,
    VALUE_ENCODING_MSGPACK,
    AtomicWrite,
    Check,
    Engine,
    Enqueue,
    Mutation,
    MutationKind,
    RawEntry,
    ReadRange,
)
from kvmodel.errors import DecodeError, KvClosedError, KvError, KvTypeError, LimitExceededError
from kvmodel.keys import decode_key
from kvmodel.limits import (
    DEFAULT_LIMITS,
    MAX_BACKOFF_INTERVAL_SECONDS,
    MAX_BACKOFF_INTERVALS,
    MAX_KEY_SIZE,
    MAX_QUEUE_DELAY_SECONDS,
    MAX_READ_KEY_SIZE,
    MAX_WATCH_KEYS,
)

__all__ = ["ValuesMode", "create_app", "serve"]

logger = logging.getLogger("kvmodel.connect")

ValuesMode = Literal["any", "msgpack", "v8"]

_MUTATION_KINDS = {
    pb.M_SET: MutationKind.SET,
    pb.M_DELETE: MutationKind.DELETE,
    pb.M_SUM: MutationKind.SUM,
    pb.M_MIN: MutationKind.MIN,
    pb.M_MAX: MutationKind.MAX,
    pb.M_SET_SUFFIX_VERSIONSTAMPED_KEY: MutationKind.SET_SUFFIX_VERSIONSTAMPED_KEY,
}
_VALUE_ENCODINGS = frozenset((VALUE_ENCODING_MSGPACK, VALUE_ENCODING_LE64, VALUE_ENCODING_BYTES))
_PING_SECONDS = 5.0  # denokv's server sends an empty watch frame this often
_T = TypeVar("_T")


class _Refused(Exception):
    """A request the server answers with ``status`` and the sentence ``message``."""

    def __init__(self, status: int, message: str, *, error: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error = error  # a kvmodel error class name, for kvmodel clients


def create_app(
    kv: Kv,
    *,
    token: str,
    values: ValuesMode = "any",
    database_id: uuid.UUID | None = None,
    token_ttl: float = 24 * 3600.0,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """An ASGI application serving ``kv`` over KV Connect.

    Args:
        kv: the open store; the caller closes it after the server stops.
        token: the access token clients present (``DENO_KV_ACCESS_TOKEN``).
        values: which object format the store holds (see the module docstring).
        database_id: the UUID announced to clients; a new random one if None.
        token_ttl: seconds a data path token lives (``expiresAt``; a day, as
            denokv's server); clients then repeat the metadata exchange.
        clock: wall-clock time in seconds, for token expiry.

    Raises:
        ValueError: an empty token or an unknown ``values`` mode.
    """
    if not token:
        raise ValueError("The access token of a KV Connect server cannot be empty.")
    if values not in ("any", "msgpack", "v8"):
        raise ValueError(f"values={values!r} is not 'any', 'msgpack' or 'v8'.")
    server = _Server(kv.engine, token, values, database_id or uuid.uuid4(), token_ttl, clock)
    return Starlette(
        routes=[
            Route("/", server.metadata, methods=["POST"]),
            Route(f"{DATA_PATH}/snapshot_read", server.snapshot_read, methods=["POST"]),
            Route(f"{DATA_PATH}/atomic_write", server.atomic_write, methods=["POST"]),
            Route(f"{DATA_PATH}/watch", server.watch, methods=["POST"]),
            Route(f"{DATA_PATH}/{LINKED_READ}", server.read_linked, methods=["POST"]),
        ]
    )


class _Server:
    def __init__(
        self,
        engine: Engine,
        token: str,
        values: ValuesMode,
        database_id: uuid.UUID,
        token_ttl: float,
        clock: Callable[[], float],
    ) -> None:
        self.engine = engine
        # KV Connect clients expect Deno's limits, whatever more the engine holds.
        self.limits = enforced_limits(DEFAULT_LIMITS, engine.limits)
        self.token = token.encode()
        self.values = values
        self.database_id = str(database_id)
        self.token_ttl = token_ttl
        self.clock = clock
        self.data_tokens: dict[str, float] = {}  # data path token -> expiry (epoch seconds)

    # -- metadata exchange ---------------------------------------------------

    async def metadata(self, request: Request) -> Response:
        try:
            body = await _read_body(request)
            version = _negotiate(body)
            if not hmac.compare_digest(_bearer(request).encode(), self.token):
                raise _Refused(401, "The access token is not valid for this database.")
        except _Refused as exc:
            return PlainTextResponse(exc.message, status_code=exc.status)
        now = self.clock()
        # Forget expired tokens so a long-running server does not collect them.
        self.data_tokens = {t: at for t, at in self.data_tokens.items() if at > now}
        data_token = secrets.token_urlsafe(24)
        expires = now + self.token_ttl
        self.data_tokens[data_token] = expires
        return JSONResponse(
            {
                "version": version,
                "databaseId": self.database_id,
                "endpoints": [{"url": DATA_PATH, "consistency": "strong"}],
                "token": data_token,
                "expiresAt": datetime.fromtimestamp(expires, UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
            },
            headers={SERVER_HEADER: "1"},
        )

    def _authorize(self, request: Request) -> int:
        """Checks a data path request's token, version and database id; returns the version."""
        given = _bearer(request)
        expires = self.data_tokens.get(given)
        if expires is None or expires <= self.clock():
            raise _Refused(
                401,
                "The data path token is unknown or has expired; "
                "repeat the metadata exchange for a new one.",
            )
        raw_version = request.headers.get(VERSION_HEADER, "")
        if raw_version not in {str(v) for v in SUPPORTED_VERSIONS}:
            raise _Refused(
                400,
                f"The {VERSION_HEADER} header is {raw_version!r}; "
                f"this server speaks versions {', '.join(map(str, SUPPORTED_VERSIONS))}.",
            )
        if request.headers.get(DATABASE_ID_HEADER) != self.database_id:
            raise _Refused(
                400,
                f"The {DATABASE_ID_HEADER} header does not name this database "
                f"({self.database_id}); repeat the metadata exchange.",
            )
        return int(raw_version)

    # -- data path -------------------------------------------------------------

    async def snapshot_read(self, request: Request) -> Response:
        async def handle() -> Response:
            self._authorize(request)
            message = _parse(pb.SnapshotRead, await _read_body(request))
            ranges = _read_ranges(message)
            results = await self._call(lambda: self.engine.snapshot_read(ranges))
            out = pb.SnapshotReadOutput(
                ranges=[pb.ReadRangeOutput(values=[_entry(e) for e in r]) for r in results],
                read_disabled=False,
                read_is_strongly_consistent=True,
                status=pb.SR_SUCCESS,
            )
            return Response(out.SerializeToString(), media_type=PROTOBUF)

        return await _answer(handle)

    async def read_linked(self, request: Request) -> Response:
        """kvmodel's extension: one range and the entries it links to, at one point.

        The body is a SnapshotRead of one range; the answer's first range holds
        the entries, the second one entry per entry (an empty one for none).
        """

        async def handle() -> Response:
            self._authorize(request)
            message = _parse(pb.SnapshotRead, await _read_body(request))
            ranges = _read_ranges(message)
            if len(ranges) != 1:
                raise _Refused(400, "A linked read reads exactly one range.")
            pairs = await self._call(lambda: self.engine.snapshot_read_linked(ranges[0]))
            out = pb.SnapshotReadOutput(
                ranges=[
                    pb.ReadRangeOutput(values=[_entry(e) for e, _ in pairs]),
                    pb.ReadRangeOutput(
                        values=[pb.KvEntry() if t is None else _entry(t) for _, t in pairs]
                    ),
                ],
                read_is_strongly_consistent=True,
                status=pb.SR_SUCCESS,
            )
            return Response(out.SerializeToString(), media_type=PROTOBUF)

        return await _answer(handle)

    async def atomic_write(self, request: Request) -> Response:
        async def handle() -> Response:
            self._authorize(request)
            message = _parse(pb.AtomicWrite, await _read_body(request))
            write = self._atomic_write(message)
            outcome = await self._call(lambda: self.engine.atomic_write(write))
            if outcome.versionstamp is None:
                out = pb.AtomicWriteOutput(
                    status=pb.AW_CHECK_FAILURE, failed_checks=list(outcome.failed_checks)
                )
            else:
                out = pb.AtomicWriteOutput(status=pb.AW_SUCCESS, versionstamp=outcome.versionstamp)
            return Response(out.SerializeToString(), media_type=PROTOBUF)

        return await _answer(handle)

    async def watch(self, request: Request) -> Response:
        async def handle() -> Response:
            version = self._authorize(request)
            if version < 3:
                raise _Refused(400, "Watch needs protocol version 3 (Deno 1.40 or newer).")
            message = _parse(pb.Watch, await _read_body(request))
            keys = [k.key for k in message.keys]
            if len(keys) > MAX_WATCH_KEYS:
                raise _Refused(
                    400, f"A watch of {len(keys)} keys is over the limit of {MAX_WATCH_KEYS}."
                )
            for key in keys:
                _check_key(key, "watched")
            stream = await self._call(lambda: self.engine.watch(keys))
            return StreamingResponse(
                self._watch_frames(stream), media_type="application/octet-stream"
            )

        return await _answer(handle)

    async def _watch_frames(self, stream: Any) -> AsyncIterator[bytes]:
        """The watch stream's frames: the keys' first state, each change, a ping when idle."""
        sent: list[bytes | None] | None = None
        last_frame = time.monotonic()
        try:
            while True:
                try:
                    entries = await anyio.to_thread.run_sync(stream.next, 1.0)
                except KvClosedError:
                    return
                if entries is not None:
                    stamps = [None if e is None else e.versionstamp for e in entries]
                    # Every key goes as changed, with its entry: Deno 2.9's client
                    # yields null for a key sent as unchanged instead of its last
                    # entry (found by tests/deno/kv_connect_test.ts), and a whole
                    # state is a valid message by the spec.
                    outputs = [
                        pb.WatchKeyOutput(changed=True)
                        if e is None
                        else pb.WatchKeyOutput(changed=True, entry_if_changed=_entry(e))
                        for e in entries
                    ]
                    if sent is None or stamps != sent:
                        sent = stamps
                        out = pb.WatchOutput(status=pb.SR_SUCCESS, keys=outputs)
                        last_frame = time.monotonic()
                        yield frame(out.SerializeToString())
                        continue
                if time.monotonic() - last_frame >= _PING_SECONDS:
                    # An empty frame keeps proxies from closing an idle stream
                    # and lets the server notice a client that went away.
                    last_frame = time.monotonic()
                    yield frame(b"")
        finally:
            stream.close()

    async def _call(self, fn: Callable[[], _T]) -> _T:
        """Runs a blocking engine call in a worker thread; engine errors become answers."""
        try:
            return await anyio.to_thread.run_sync(fn)
        except KvTypeError as exc:
            raise _Refused(400, str(exc), error="KvTypeError") from exc
        except KvClosedError as exc:
            raise _Refused(503, "The server is shutting down; retry on another.") from exc
        except KvError as exc:
            logger.exception("KV Connect request failed in the engine")
            raise _Refused(500, f"The store failed: {exc}") from exc

    def _atomic_write(self, message: Any) -> AtomicWrite:
        checks = []
        for c in message.checks:
            _check_key(c.key, "checked", read=True)
            if len(c.versionstamp) not in (0, 10):
                raise _Refused(
                    400, f"A check's versionstamp is {len(c.versionstamp)} bytes, not 10 (or 0)."
                )
            checks.append(Check(c.key, c.versionstamp or None))
        mutations = [self._mutation(m) for m in message.mutations]
        enqueues = [self._enqueue(q) for q in message.enqueues]
        try:
            check_commit_limits(checks, mutations, enqueues, self.limits)
        except LimitExceededError as exc:
            raise _Refused(400, str(exc)) from exc
        return AtomicWrite(tuple(checks), tuple(mutations), tuple(enqueues))

    def _mutation(self, m: Any) -> Mutation:
        kind = _MUTATION_KINDS.get(m.mutation_type)
        if kind is None:
            raise _Refused(
                400, f"The mutation type {m.mutation_type} is not one this server knows."
            )
        _check_key(
            m.key, "written", versionstamped=kind is MutationKind.SET_SUFFIX_VERSIONSTAMPED_KEY
        )
        if kind is MutationKind.DELETE:
            return Mutation(m.key, kind)
        if not m.HasField("value"):
            raise _Refused(400, f"A {kind.value} mutation carries no value.")
        value = m.value.data
        encoding = self._check_value(value, m.value.encoding)
        if kind in (MutationKind.SUM, MutationKind.MIN, MutationKind.MAX):
            if encoding != VALUE_ENCODING_LE64:
                raise _Refused(400, f"The operand of {kind.value} must be a KvU64 (LE64).")
            if m.sum_min or m.sum_max or m.sum_clamp:
                raise _Refused(400, "sum with bounds or clamping is not supported by this server.")
        expire_at_ms = None
        if m.expire_at_ms > 0:
            if (
                kind is not MutationKind.SET
                and kind is not MutationKind.SET_SUFFIX_VERSIONSTAMPED_KEY
            ):
                raise _Refused(400, f"A {kind.value} mutation cannot carry an expiry.")
            expire_at_ms = m.expire_at_ms
        elif m.expire_at_ms < -1:
            raise _Refused(400, f"The expiry {m.expire_at_ms} ms is not a time.")
        return Mutation(m.key, kind, value, encoding, expire_at_ms)

    def _enqueue(self, q: Any) -> Enqueue:
        # The protocol carries no encoding for a queue payload: Deno always
        # enqueues V8, and kvmodel's object format is tag 1 either way.
        encoding = self._check_value(q.payload, VALUE_ENCODING_MSGPACK)
        for key in q.keys_if_undelivered:
            _check_key(key, "dead-letter")
        schedule = tuple(q.backoff_schedule) or DEFAULT_BACKOFF_SCHEDULE_MS
        if len(schedule) > MAX_BACKOFF_INTERVALS or any(
            ms > MAX_BACKOFF_INTERVAL_SECONDS * 1000 for ms in schedule
        ):
            raise _Refused(
                400,
                f"A backoff schedule has at most {MAX_BACKOFF_INTERVALS} intervals "
                f"of at most {MAX_BACKOFF_INTERVAL_SECONDS} s each.",
            )
        now_ms = int(self.clock() * 1000)
        if q.deadline_ms < 0 or q.deadline_ms - now_ms > MAX_QUEUE_DELAY_SECONDS * 1000:
            raise _Refused(400, f"The enqueue deadline {q.deadline_ms} ms is out of range.")
        return Enqueue(
            q.payload,
            encoding,
            max(q.deadline_ms, now_ms),
            tuple(q.keys_if_undelivered),
            schedule,
        )

    def _check_value(self, value: bytes, encoding: int) -> int:
        """Refuses a value the store cannot take; returns its engine tag."""
        if encoding not in _VALUE_ENCODINGS:
            raise _Refused(
                400, f"The value encoding {encoding} is not V8 (1), LE64 (2) or BYTES (3)."
            )
        limit = self.limits.max_value_size
        if len(value) > limit:
            raise _Refused(400, f"A value of {len(value)} bytes is over the limit of {limit}.")
        if encoding == VALUE_ENCODING_LE64 and len(value) != 8:
            raise _Refused(400, f"A KvU64 (LE64) value is {len(value)} bytes, not 8.")
        if encoding != VALUE_ENCODING_MSGPACK:
            return encoding
        if self.values == "msgpack" and looks_like_v8(value):
            raise _Refused(
                400,
                "This server stores msgpack values (kvmodel's format), and the value is V8 "
                "(a JavaScript value from Deno); serve the store with --values v8 to share it "
                "with Deno, or write Uint8Array or Deno.KvU64 values.",
            )
        if self.values == "v8" and not looks_like_v8(value):
            raise _Refused(
                400,
                "This server stores V8 values (Deno's format), and the value is not V8; "
                "open the store with V8 values in kvmodel too, or write bytes or KvU64 values.",
            )
        return engine_encoding(encoding, value)


# ---------------------------------------------------------------------------
# Requests


async def _answer(handle: Callable[[], Any]) -> Response:
    try:
        response: Response = await handle()
    except _Refused as exc:
        headers = {ERROR_HEADER: exc.error} if exc.error else None
        return PlainTextResponse(exc.message, status_code=exc.status, headers=headers)
    return response


async def _read_body(request: Request) -> bytes:
    """The request body, refusing one over MAX_REQUEST_SIZE before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_REQUEST_SIZE:
        raise _Refused(
            413, f"The request body of {declared} bytes is over the limit of {MAX_REQUEST_SIZE}."
        )
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_REQUEST_SIZE:
            raise _Refused(413, f"The request body is over the limit of {MAX_REQUEST_SIZE} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _Refused(401, "The request has no 'Authorization: Bearer <token>' header.")
    return token.strip()


def _negotiate(body: bytes) -> int:
    """The highest protocol version both sides speak, from the exchange's JSON body."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    versions = data.get("supportedVersions") if isinstance(data, dict) else None
    if not isinstance(versions, list):
        raise _Refused(
            400,
            "The metadata exchange needs a JSON body with supportedVersions; "
            "this server speaks versions 2 and 3 (Deno 1.38 or newer).",
        )
    common = [v for v in SUPPORTED_VERSIONS if v in versions]
    if not common:
        raise _Refused(
            400,
            f"No common protocol version: the client speaks {versions!r}, "
            f"this server {list(SUPPORTED_VERSIONS)!r}.",
        )
    return max(common)


def _parse(message_class: Any, body: bytes) -> Any:
    message = message_class()
    try:
        message.ParseFromString(body)
    except (ProtobufDecodeError, RuntimeError, struct.error) as exc:
        raise _Refused(
            400, f"The request body is not a valid {message_class.DESCRIPTOR.full_name} message."
        ) from exc
    return message


def _read_ranges(message: Any) -> list[ReadRange]:
    if len(message.ranges) > MAX_READ_RANGES:
        raise _Refused(
            400,
            f"A snapshot read of {len(message.ranges)} ranges is over the limit "
            f"of {MAX_READ_RANGES}.",
        )
    ranges = []
    total = 0
    for r in message.ranges:
        if r.limit <= 0:
            raise _Refused(400, f"A read range's limit is {r.limit}; it must be positive.")
        # A read key may be 2049 bytes; the end of the range that reads just
        # that key is one byte longer.
        if len(r.start) > MAX_READ_KEY_SIZE + 1 or len(r.end) > MAX_READ_KEY_SIZE + 1:
            raise _Refused(
                400, f"A read range bound is over the key limit of {MAX_READ_KEY_SIZE} bytes."
            )
        total += r.limit
        ranges.append(ReadRange(r.start, r.end, r.limit, r.reverse))
    if total > MAX_READ_ENTRIES:
        raise _Refused(
            400, f"A snapshot read asks for {total} entries, over the limit of {MAX_READ_ENTRIES}."
        )
    return ranges


def _check_key(key: bytes, what: str, *, read: bool = False, versionstamped: bool = False) -> None:
    """Refuses a key that is too long or not a key encoding.

    A key starting with 0xFF is kvmodel's own keyspace (the object mapper's
    model descriptions), written by kvmodel clients; the rest must decode.
    """
    limit = MAX_READ_KEY_SIZE if read else MAX_KEY_SIZE
    if len(key) > limit:
        raise _Refused(400, f"A {what} key of {len(key)} bytes is over the limit of {limit}.")
    body = key[1:] if key[:1] == b"\xff" else key
    if not body and not versionstamped:
        raise _Refused(400, f"A {what} key is empty.")
    try:
        decode_key(body)
    except DecodeError as exc:
        raise _Refused(400, f"A {what} key is not a valid key encoding: {exc}") from exc


def _entry(e: RawEntry) -> Any:
    return pb.KvEntry(
        key=e.key, value=e.value, encoding=wire_encoding(e.encoding), versionstamp=e.versionstamp
    )


def _hypercorn_config(host: str, port: int) -> Any:
    """The hypercorn configuration ``kvmodel serve`` runs with."""
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = 2.0  # open watch streams end within their 1 s poll
    config.loglevel = "WARNING"
    config.accesslog = None
    # Hypercorn ends a connection after 1,000 requests by default. Deno's
    # client keeps one HTTP/2 connection for everything; a request it sends
    # as that connection closes fails ("broken pipe") and is retried about
    # 5 s later, so every thousandth operation took 5 s.
    config.keep_alive_max_requests = sys.maxsize
    return config


def _listening_sockets(config: Any) -> Any:
    """The sockets hypercorn would bind for ``config``, as QuickAckListeners.

    Deno's client writes a request of more than 1,024 bytes in two parts
    with Nagle's algorithm on, so the second part waits for the ACK of the
    first, which Linux delays by up to 40 ms; these sockets acknowledge every
    read at once (see kvmodel/connect/_tcp.py).
    """
    from hypercorn.config import Sockets

    from kvmodel.connect._tcp import quick_ack

    bound = config.create_sockets()
    return Sockets([], [quick_ack(s) for s in bound.insecure_sockets], [])


def serve(
    kv: Kv,
    *,
    host: str,
    port: int,
    token: str,
    values: ValuesMode = "any",
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serves ``kv`` over KV Connect until SIGINT or SIGTERM, under hypercorn.

    Hypercorn, not uvicorn: Deno opens ``http://`` databases with HTTP/2
    prior knowledge (no upgrade), which uvicorn does not speak; hypercorn
    answers HTTP/1.1 and HTTP/2 on one port, as the protocol asks.
    ``announce`` is called with the URL once the port is bound.
    """
    import asyncio
    import signal

    from hypercorn.asyncio.run import worker_serve
    from hypercorn.utils import wrap_app

    app = create_app(kv, token=token, values=values)
    config = _hypercorn_config(host, port)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        sockets = _listening_sockets(config)
        if announce is not None:
            announce(f"http://{config.bind[0]}")
        await worker_serve(
            wrap_app(app, config.wsgi_max_body_size, "asgi"),  # type: ignore[arg-type]
            config,
            sockets=sockets,
            shutdown_trigger=stop.wait,
        )

    asyncio.run(main())
