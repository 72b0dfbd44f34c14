"""ConnectEngine: kvmodel on a KV Connect server (Deno Deploy, denokv, ``kvmodel serve``).

The engine speaks versions 2 and 3 of denokv's ``proto/kv-connect.md`` over
HTTP (httpx, the ``connect`` extra):

* The metadata exchange (``POST`` to the database URL with the access token)
  gives the data path endpoints and a token until ``expiresAt``. The engine
  repeats it shortly before that time, on a 401 from the data path (the
  server restarted or revoked the token), and when a server answers that
  reads or writes are disabled on it.
* :meth:`snapshot_read` and :meth:`atomic_write` are one protobuf request
  each, so each is atomic and consistent on the server.
* :meth:`watch` holds a ``/watch`` stream open in a thread and reopens it
  after a network failure (the first message of a new stream is the keys'
  whole state, so nothing is missed; the Kv drops repeats).

What the protocol lacks, the engine says through its capabilities:
``queue_delivery`` is False (there is no dequeue operation: messages can be
enqueued, and a process that opens the server's store directly delivers
them). :meth:`snapshot_read_linked` is one snapshot on ``kvmodel serve``
(its extension endpoint) and two reads on other servers.
Network failures and 5xx answers are retried with backoff for ``retry_for``
seconds; a 4xx answer is an :class:`EngineError` carrying the server's
sentence. An atomic write whose request was sent but whose answer was lost is
not retried (it may have been applied): it raises.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import urljoin

import attrs
import httpx
import msgpack

from kvmodel._values import EXT_KVU64
from kvmodel.connect._protocol import (
    DATABASE_ID_HEADER,
    ERROR_HEADER,
    LINKED_READ,
    PROTOBUF,
    SERVER_HEADER,
    SUPPORTED_VERSIONS,
    VERSION_HEADER,
    engine_encoding,
    pb,
    wire_encoding,
)
from kvmodel.engines.base import (
    VALUE_ENCODING_BYTES,
    VALUE_ENCODING_LE64,
    AtomicWrite,
    Clock,
    CommitOutcome,
    Consistency,
    EngineCapabilities,
    MutationKind,
    QueueMessage,
    RawEntry,
    ReadRange,
)
from kvmodel.errors import EngineError, InvalidArgumentError, KvClosedError, KvTypeError
from kvmodel.limits import DEFAULT_LIMITS, EngineLimits

__all__ = ["ConnectEngine"]

_MUTATIONS = {
    MutationKind.SET: pb.M_SET,
    MutationKind.DELETE: pb.M_DELETE,
    MutationKind.SUM: pb.M_SUM,
    MutationKind.MIN: pb.M_MIN,
    MutationKind.MAX: pb.M_MAX,
    MutationKind.SET_SUFFIX_VERSIONSTAMPED_KEY: pb.M_SET_SUFFIX_VERSIONSTAMPED_KEY,
}


@attrs.frozen
class _Metadata:
    version: int
    database_id: str
    strong: str  # the resolved URL of a strong endpoint
    token: str
    refresh_at: float  # epoch seconds: repeat the exchange from then on
    kvmodel_server: bool  # offers the linked read extension


class ConnectEngine:
    """A KV Connect database as a kvmodel engine.

    Args:
        url: the database URL, ``http://`` or ``https://`` (for Deno Deploy,
            ``https://api.deno.com/databases/<id>/connect``).
        token: the access token; ``$DENO_KV_ACCESS_TOKEN`` when omitted.
        timeout: seconds for one HTTP request.
        retry_for: seconds to keep retrying network failures and 5xx answers.
        clock: the wall clock deadlines (expiry, queue delays) are computed from.

    Raises:
        InvalidArgumentError: no token given and none in the environment.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retry_for: float = 30.0,
        clock: Clock = time.time,
    ) -> None:
        token = token if token is not None else os.environ.get("DENO_KV_ACCESS_TOKEN")
        if not token:
            raise InvalidArgumentError(
                f"Opening the KV Connect database {url!r} needs an access token: pass "
                "token=... or set DENO_KV_ACCESS_TOKEN."
            )
        self._url = url
        self._token = token
        self._timeout = timeout
        self._retry_for = retry_for
        self._clock = clock
        self._http = httpx.Client(timeout=timeout, headers={"user-agent": "kvmodel"})
        self._lock = threading.Lock()
        self._metadata: _Metadata | None = None
        self._watches: set[_ConnectWatch] = set()
        self._closed = False
        try:
            self._exchange()  # fail at open on a wrong URL or token, as Deno.openKv does
        except BaseException:
            self._http.close()
            raise

    # -- Engine protocol -----------------------------------------------------------

    @property
    def limits(self) -> EngineLimits:
        """Deno KV's limits, which KV Connect servers enforce: this engine cannot lift them."""
        return attrs.evolve(DEFAULT_LIMITS, name="KV Connect")

    @property
    def capabilities(self) -> EngineCapabilities:
        """Durable and shared; no queue delivery (KV Connect has no dequeue)."""
        return EngineCapabilities(
            durable=True, cross_process=True, eventual_reads=False, queue_delivery=False
        )

    @property
    def clock(self) -> Clock:
        """The local wall clock (the server's may differ by its offset)."""
        return self._clock

    @property
    def lease_timeout(self) -> float:
        """Unused: this engine delivers no queue messages."""
        return 30.0

    def snapshot_read(
        self, ranges: Sequence[ReadRange], *, consistency: Consistency = Consistency.STRONG
    ) -> list[list[RawEntry]]:
        """Reads the ranges in one ``snapshot_read`` request."""
        message = pb.SnapshotRead(
            ranges=[
                pb.ReadRange(start=r.start, end=r.end, limit=r.limit, reverse=r.reverse)
                for r in ranges
            ]
        )
        body = message.SerializeToString()
        for _ in range(3):
            out = pb.SnapshotReadOutput()
            out.ParseFromString(self._post("snapshot_read", body, idempotent=True))
            meta = self._current()
            disabled = out.status == pb.SR_READ_DISABLED if meta.version >= 3 else out.read_disabled
            if meta.version >= 3 and out.status == pb.SR_UNSPECIFIED:
                raise EngineError("The KV Connect server answered a read with no status.")
            if disabled or not out.read_is_strongly_consistent:
                self._exchange()  # the spec: new endpoints, then retry
                continue
            if len(out.ranges) != len(ranges):
                raise EngineError(
                    f"The KV Connect server answered {len(out.ranges)} ranges "
                    f"for a read of {len(ranges)}."
                )
            return [[_raw_entry(e) for e in r.values] for r in out.ranges]
        raise EngineError("The KV Connect server keeps answering that reads are disabled.")

    def snapshot_read_linked(
        self, read: ReadRange, *, consistency: Consistency = Consistency.STRONG
    ) -> list[tuple[RawEntry, RawEntry | None]]:
        """Reads a range and the entries its bytes values link to.

        At one point on ``kvmodel serve`` (its linked read extension); other
        servers have no linked read, so there it is two reads and the second
        may see commits made after the first (``consistent_linked_reads``).
        """
        if self._current().kvmodel_server:
            request = pb.SnapshotRead(
                ranges=[
                    pb.ReadRange(
                        start=read.start, end=read.end, limit=read.limit, reverse=read.reverse
                    )
                ]
            )
            out = pb.SnapshotReadOutput()
            out.ParseFromString(
                self._post(LINKED_READ, request.SerializeToString(), idempotent=True)
            )
            if len(out.ranges) != 2 or len(out.ranges[0].values) != len(out.ranges[1].values):
                raise EngineError("The KV Connect server answered a malformed linked read.")
            return [
                (_raw_entry(e), _raw_entry(t) if t.key else None)
                for e, t in zip(out.ranges[0].values, out.ranges[1].values, strict=True)
            ]
        (entries,) = self.snapshot_read([read], consistency=consistency)
        linked = [e.value for e in entries if e.encoding == VALUE_ENCODING_BYTES]
        found: dict[bytes, RawEntry] = {}
        for i in range(0, len(linked), 10):
            batch = linked[i : i + 10]
            results = self.snapshot_read(
                [ReadRange(k, k + b"\x00", 1) for k in batch], consistency=consistency
            )
            for key, result in zip(batch, results, strict=True):
                if result:
                    found[key] = result[0]
        return [
            (e, found.get(e.value) if e.encoding == VALUE_ENCODING_BYTES else None) for e in entries
        ]

    def atomic_write(self, write: AtomicWrite) -> CommitOutcome:
        """Commits in one ``atomic_write`` request."""
        message = pb.AtomicWrite(
            checks=[pb.Check(key=c.key, versionstamp=c.versionstamp or b"") for c in write.checks],
            mutations=[
                pb.Mutation(
                    key=m.key,
                    mutation_type=_MUTATIONS[m.kind],
                    value=None
                    if m.kind is MutationKind.DELETE
                    else pb.KvValue(data=m.value, encoding=wire_encoding(m.encoding)),
                    expire_at_ms=m.expire_at_ms or 0,
                )
                for m in write.mutations
            ],
            enqueues=[
                pb.Enqueue(
                    payload=_queue_payload(q.payload, q.encoding),
                    deadline_ms=q.ready_at_ms,
                    keys_if_undelivered=list(q.keys_if_undelivered),
                    backoff_schedule=list(q.backoff_schedule_ms),
                )
                for q in write.enqueues
            ],
        )
        body = message.SerializeToString()
        for _ in range(3):
            out = pb.AtomicWriteOutput()
            out.ParseFromString(self._post("atomic_write", body, idempotent=False))
            if out.status == pb.AW_SUCCESS:
                return CommitOutcome(bytes(out.versionstamp))
            if out.status == pb.AW_CHECK_FAILURE:
                return CommitOutcome(None, tuple(out.failed_checks))
            if out.status == pb.AW_WRITE_DISABLED:
                self._exchange()
                continue
            raise EngineError(
                f"The KV Connect server answered a commit with the unknown status {out.status}."
            )
        raise EngineError("The KV Connect server keeps answering that writes are disabled.")

    def dequeue_next_message(self, timeout: float) -> QueueMessage | None:
        """Raises: KV Connect has no way to receive queue messages."""
        raise EngineError(
            "The KV Connect protocol cannot deliver queue messages (it has no dequeue); "
            "listen on a process that opens the server's store directly."
        )

    def watch(self, keys: Sequence[bytes]) -> _ConnectWatch:
        """Opens a ``/watch`` stream on ``keys`` (protocol version 3)."""
        self._raise_if_closed()
        if self._current().version < 3:
            raise EngineError("Watching needs KV Connect version 3; the server speaks 2.")
        stream = _ConnectWatch(self, list(keys))
        with self._lock:
            self._watches.add(stream)
        return stream

    def collect_expired(self) -> float | None:
        """Nothing to do: the server deletes expired keys."""
        return None

    def close(self) -> None:
        """Closes the connections and every watch stream."""
        with self._lock:
            self._closed = True
            watches = list(self._watches)
        for w in watches:
            w.close()
        self._http.close()

    # -- HTTP ----------------------------------------------------------------------

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise KvClosedError("The KV Connect engine is closed.")

    def _current(self) -> _Metadata:
        meta = self._metadata
        if meta is None or self._clock() >= meta.refresh_at:
            meta = self._exchange()
        return meta

    def _exchange(self) -> _Metadata:
        """The metadata exchange: versions, endpoints and a data path token."""
        response = self._send(
            lambda: self._http.post(
                self._url,
                json={"supportedVersions": list(SUPPORTED_VERSIONS)},
                headers={"authorization": f"Bearer {self._token}"},
                follow_redirects=True,
            ),
            idempotent=True,
            what=f"the metadata exchange with {self._url}",
        )
        try:
            data = json.loads(response.content)
            version = int(data["version"])
            base = str(response.url)
            strong = [e["url"] for e in data["endpoints"] if e["consistency"] == "strong"]
            token = str(data["token"])
            database_id = str(data.get("databaseId") or data.get("uuid"))
            expires = datetime.fromisoformat(str(data["expiresAt"])).timestamp()
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineError(
                f"The metadata exchange with {self._url} did not answer KV Connect metadata."
            ) from exc
        if version not in SUPPORTED_VERSIONS:
            raise EngineError(
                f"The KV Connect server at {self._url} chose version {version}; "
                f"kvmodel speaks {list(SUPPORTED_VERSIONS)}."
            )
        if not strong:
            raise EngineError(f"The KV Connect server at {self._url} offers no strong endpoint.")
        now = self._clock()
        # Refresh a little before expiry: a minute, or a quarter of a short lifetime.
        margin = min(60.0, max(0.0, expires - now) / 4)
        meta = _Metadata(
            version,
            database_id,
            urljoin(base, strong[0]),
            token,
            expires - margin,
            response.headers.get(SERVER_HEADER) == "1",
        )
        self._metadata = meta
        return meta

    def _headers(self, meta: _Metadata) -> dict[str, str]:
        return {
            "authorization": f"Bearer {meta.token}",
            "content-type": PROTOBUF,
            VERSION_HEADER: str(meta.version),
            DATABASE_ID_HEADER: meta.database_id,
        }

    def _post(self, operation: str, body: bytes, *, idempotent: bool) -> bytes:
        self._raise_if_closed()
        for attempt in range(2):
            meta = self._current()
            try:
                response = self._send(
                    lambda meta=meta: self._http.post(
                        f"{meta.strong}/{operation}", content=body, headers=self._headers(meta)
                    ),
                    idempotent=idempotent,
                    what=f"{operation} on {self._url}",
                    unauthorized_ok=attempt == 0,
                )
            except _Unauthorized:
                self._exchange()  # the token expired or the server restarted
                continue
            return response.content
        raise EngineError(f"The KV Connect server at {self._url} refused a fresh token.")

    def _send(
        self, request: Any, *, idempotent: bool, what: str, unauthorized_ok: bool = False
    ) -> httpx.Response:
        """Sends with retries of network failures and 5xx; raises EngineError on 4xx."""
        deadline = time.monotonic() + self._retry_for
        delay = 0.05
        while True:
            self._raise_if_closed()
            try:
                response: httpx.Response = request()
            except httpx.TransportError as exc:
                # A lost answer to a commit may hide an applied commit: only
                # retry writes whose request never reached the server.
                sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if (sent and not idempotent) or time.monotonic() + delay > deadline:
                    if self._closed:
                        raise KvClosedError("The KV Connect engine is closed.") from exc
                    raise EngineError(f"{what} failed: {exc or type(exc).__name__}.") from exc
            else:
                if response.status_code < 300:
                    return response
                if response.status_code == 401 and unauthorized_ok:
                    raise _Unauthorized
                if response.status_code < 500 or time.monotonic() + delay > deadline:
                    if response.headers.get(ERROR_HEADER) == "KvTypeError":
                        raise KvTypeError(response.text)
                    raise EngineError(
                        f"{what} failed with HTTP {response.status_code}: "
                        f"{response.text.strip() or response.reason_phrase}"
                    )
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    @contextmanager
    def _stream(self, operation: str, body: bytes) -> Iterator[httpx.Response]:
        meta = self._current()
        with self._http.stream(
            "POST", f"{meta.strong}/{operation}", content=body, headers=self._headers(meta)
        ) as response:
            if response.status_code == 401:
                self._exchange()
                raise httpx.TransportError("the data path token expired")
            if response.status_code != 200:
                response.read()
                raise EngineError(
                    f"{operation} on {self._url} failed with HTTP {response.status_code}: "
                    f"{response.text.strip()}"
                )
            yield response

    def _forget(self, stream: _ConnectWatch) -> None:
        with self._lock:
            self._watches.discard(stream)


class _Unauthorized(Exception):
    """A data path 401: the caller repeats the metadata exchange once."""


def _raw_entry(e: Any) -> RawEntry:
    value = bytes(e.value)
    return RawEntry(bytes(e.key), value, engine_encoding(e.encoding, value), bytes(e.versionstamp))


def _queue_payload(payload: bytes, encoding: int) -> bytes:
    """A queue payload as the protocol carries it: an object value, without a tag.

    The protocol's Enqueue has no encoding field (Deno enqueues V8 only), so a
    top-level bytes or KvU64 value, which kvmodel stores raw, goes as the
    msgpack value holding it; a kvmodel listener decodes the same value.
    """
    if encoding == VALUE_ENCODING_BYTES:
        packed: bytes = msgpack.packb(payload, use_bin_type=True)
        return packed
    if encoding == VALUE_ENCODING_LE64:
        packed = msgpack.packb(msgpack.ExtType(EXT_KVU64, payload))
        return packed
    return payload


class _ConnectWatch:
    """A :class:`WatchStream` fed by a ``/watch`` stream read in a thread."""

    def __init__(self, engine: ConnectEngine, keys: list[bytes]) -> None:
        self._engine = engine
        self._body = pb.Watch(keys=[pb.WatchKey(key=k) for k in keys]).SerializeToString()
        self._state: list[RawEntry | None] = [None] * len(keys)
        self._cond = threading.Condition()
        self._seq = 0  # bumped per message received
        self._seen = 0
        self._error: BaseException | None = None
        self._closed = False
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._run, name="kvmodel-connect-watch", daemon=True)
        self._thread.start()

    def next(self, timeout: float | None = None) -> list[RawEntry | None] | None:
        """See :meth:`kvmodel.engines.base.WatchStream.next`."""
        with self._cond:
            first = self._seen == 0
            self._cond.wait_for(
                lambda: self._seq != self._seen or self._closed or self._error is not None,
                None if first else timeout,
            )
            if self._closed:
                raise KvClosedError("The watch stream is closed.")
            if self._error is not None:
                raise EngineError(f"The watch stream failed: {self._error}") from self._error
            if self._seq == self._seen:
                return None
            self._seen = self._seq
            return list(self._state)

    def close(self) -> None:
        """Ends the stream and wakes a blocked ``next``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            response = self._response
        if response is not None:
            # Wakes the reading thread; closing may race its read, which then fails.
            with contextlib.suppress(Exception):
                response.close()
        self._engine._forget(self)

    def _run(self) -> None:
        delay = 0.05
        while not self._closed:
            try:
                with self._engine._stream("watch", self._body) as response:
                    with self._cond:
                        self._response = response
                    if self._closed:
                        return
                    self._read(response)
                    delay = 0.05
            except (httpx.TransportError, httpx.StreamError) as exc:
                if self._closed:
                    return
                # Reconnect: the new stream's first message is the whole state.
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                if delay >= 2.0 and isinstance(exc, httpx.ConnectError):
                    self._fail(exc)
                    return
            except BaseException as exc:  # handed to the caller of next()
                if not self._closed:
                    self._fail(exc)
                return

    def _read(self, response: httpx.Response) -> None:
        buffer = b""
        for chunk in response.iter_bytes():
            buffer += chunk
            while len(buffer) >= 4:
                size = int.from_bytes(buffer[:4], "little")
                if len(buffer) < 4 + size:
                    break
                frame, buffer = buffer[4 : 4 + size], buffer[4 + size :]
                if size:
                    self._apply(frame)
            if self._closed:
                return

    def _apply(self, frame: bytes) -> None:
        out = pb.WatchOutput()
        out.ParseFromString(frame)
        if out.status != pb.SR_SUCCESS:
            raise EngineError(f"The watch stream answered the status {out.status}.")
        if len(out.keys) != len(self._state):
            raise EngineError("The watch stream answered for a different number of keys.")
        with self._cond:
            for i, k in enumerate(out.keys):
                if k.changed:
                    self._state[i] = (
                        _raw_entry(k.entry_if_changed) if k.HasField("entry_if_changed") else None
                    )
            self._seq += 1
            self._cond.notify_all()

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            self._error = exc
            self._cond.notify_all()
