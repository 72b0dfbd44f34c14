"""EtcdEngine: kvmodel on an etcd v3 cluster, for several machines and high availability.

etcd's model fits Deno KV closely: ordered byte keys, multi-key transactions
with compares on revisions, one cluster-wide revision per commit, reads at a
revision, watches from a revision and leases. The engine talks to etcd's JSON
gateway with :mod:`kvmodel.engines._etcd_transport` (stdlib HTTP only).

Layout under the engine's key prefix ``P`` (every member holds all of it)::

    P "D" key                  user data: 8-byte deadline | encoding | value
    P "M" commit id            idempotency markers, one per commit ("c" or "a")
    P "F"                      the fence every commit writes (versionstamped keys)
    P "Q" ready_ms id index    queue messages (msgpack record)
    P "C" message key          claims of queue messages, on the listener's lease
    P "X" ready_ms id index    damaged queue messages moved aside (raw record)

Semantics, and how they map onto etcd:

* A versionstamp is the commit's etcd revision (``versionstamp_from_counter``).
  ``check(key, None)`` is ``create_revision == 0`` and a versionstamp check is
  ``mod_revision == counter``. Expired keys count as absent: the deadline is the
  first 8 bytes of the stored value, so "not expired" is the compare
  ``value > now_ms ++ 0xff`` (the encoding byte after the deadline is never 0xff).
* Every commit writes a fresh idempotency marker guarded by
  ``create_revision == 0``. When the answer to a commit is lost, the engine
  resolves it by writing an "aborted" marker under the same guard: if that
  succeeds the commit can never apply and is retried under a new marker,
  otherwise the marker tells whether (and at which revision) it applied.
* sum/min/max read the key first and commit guarded by its revision, retrying
  when the key moved (a moved counter is not a failed user check).
* Expiry attaches keys to leases shared by one-second deadline buckets; etcd
  deletes them when the lease runs out (at least 2 s after grant, and later
  after a leader change, which renews leases), while reads hide expired keys by
  their deadline at once.
* Watches are etcd watch streams from the snapshot's revision; a compacted
  revision or a broken stream causes a re-read (a spurious wake-up).
* The queue is keys written inside the commit, claimed by listeners with a
  claim key on a lease of ``lease_timeout`` seconds: when a listener dies its
  lease runs out and the claim vanishes; the message, marked claimed, is then
  settled as a failed delivery (retried after its next backoff interval, or
  dead-lettered), as in Deno's queue_cleanup.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from kvmodel.engines._etcd_records import (
    NO_DEADLINE,
    QueueRecord,
    Stored,
    TxnPlan,
    as_int,
    cmp_alive,
    cmp_created,
    cmp_mod,
    delete_op,
    encode_stored,
    prefix_end,
    put_op,
    range_op,
    read_queue_record,
    salvage_queue_record,
)
from kvmodel.engines._etcd_transport import (
    Credentials,
    EtcdAmbiguousError,
    EtcdAuthError,
    EtcdServerError,
    EtcdTransport,
    EtcdUnavailableError,
    b64,
    tls_context,
    unb64,
)
from kvmodel.engines._etcd_watch import Watcher
from kvmodel.engines.base import (
    VALUE_ENCODING_BYTES,
    AtomicWrite,
    ChangeSignal,
    Check,
    Clock,
    CommitOutcome,
    Consistency,
    EngineCapabilities,
    LeasedMessage,
    PollingWatchStream,
    RawEntry,
    ReadRange,
    SnapshotEntry,
    describe_stored_key,
    log_undelivered,
    next_backoff,
    queue_logger,
    versionstamp_from_counter,
    versionstamp_to_counter,
)
from kvmodel.errors import (
    DecodeError,
    EngineError,
    InvalidArgumentError,
    KvClosedError,
    LimitExceededError,
)
from kvmodel.limits import EngineLimits

__all__ = ["ETCD_LIMITS", "EtcdAuthError", "EtcdEngine", "etcd_limits", "redact_url"]

Json = dict[str, Any]

MAX_TXN_OPS = 128
"""etcd's default ``--max-txn-ops``: compares, and operations of each branch, per txn."""
MAX_REQUEST_BYTES = 1572864
"""etcd's default ``--max-request-bytes`` (1.5 MiB)."""
MIN_LEASE_TTL = 2
"""etcd grants no lease shorter than 1.5 election timeouts: 2 s with the defaults."""


def etcd_limits(max_txn_ops: int = MAX_TXN_OPS) -> EngineLimits:
    """The limits of a cluster started with ``--max-txn-ops=max_txn_ops``.

    Every commit adds an idempotency marker and the fence to the operations
    the Kv counts, so two of etcd's operations are the engine's.
    """
    return EngineLimits(
        name="etcd",
        max_operations=max_txn_ops - 2,
        max_request_size=MAX_REQUEST_BYTES,
        operations_advice=(
            f"To allow more, start every etcd member with --max-txn-ops larger than "
            f"{max_txn_ops} and open the store with the same number "
            "(kvmodel.open_kv(url, max_txn_ops=N))."
        ),
    )


ETCD_LIMITS = etcd_limits()
"""The limits of an etcd cluster with default settings (128 operations per txn)."""

_MARKER_TTL = 600  # s; a marker must outlive any resolution of an ambiguous commit
_MARKER_LEASE_ROTATE = 300.0  # s; markers live between 300 and 600 s
_MAX_ATTEMPTS = 64
_T = TypeVar("_T")
# Linked keys read per txn: under etcd's default --max-txn-ops of 128.
_MAX_LINKS_PER_TXN = 100
_QUEUE_SCAN = 64


def _retry_compacted(read: Callable[[], _T]) -> _T:
    """Runs a read that pins a revision, again while etcd has compacted that revision away."""
    for _ in range(_MAX_ATTEMPTS):
        try:
            return read()
        except EtcdServerError as exc:
            if exc.code != 11:  # 11: the pinned revision was compacted; read again
                raise
    raise EngineError("etcd compacted every revision this read pinned; try again.")


class EtcdEngine:
    """A kvmodel engine on an etcd v3 cluster (3.4 or later), through its JSON gateway.

    Args:
        endpoints: the members' client addresses, ``"host:port"``, optionally
            with ``http://`` or ``https://`` in front (``https://`` means TLS).
        prefix: every key the engine writes starts with it, so several
            databases can share a cluster.
        clock: wall clock for expiry deadlines and queue ready times.
        lease_timeout: seconds a dequeued message stays claimed by a listener
            that does not renew its lease (at least 2).
        request_timeout: seconds one HTTP request may take.
        retry_timeout: seconds an operation keeps trying other members, and
            an ambiguous commit keeps trying to learn its outcome, before it
            raises EngineError.
        connect_timeout: seconds to connect to one member; and, at open,
            how long to keep trying while no member accepts a connection at
            all (a refused port, a wrong host), so a wrong address fails
            within about a second. Raise it to wait for a cluster that is
            still starting. Once a member has answered, outages are
            retried for ``retry_timeout``.
        max_txn_ops: the cluster's ``--max-txn-ops`` (etcd's default is 128).
            Deno's limits of 1000 mutations and 100 checks per commit need
            ``--max-txn-ops=2048`` on every member and the same value here.
        user: the etcd user to log in as, on a cluster with authentication
            enabled; the engine logs in again whenever etcd drops its token.
        password: that user's password. It never appears in a repr, an error
            or a log record.
        ca_file: PEM file of the CA that signed the members' certificates;
            implies TLS (the system's CAs are used with ``https://``
            endpoints and no ``ca_file``).
        cert_file: PEM client certificate for members started with
            ``--client-cert-auth``; implies TLS.
        key_file: the unencrypted PEM key of ``cert_file``, unless the
            certificate file holds it.

    Example (needs a running etcd)::

        kv = kvmodel.open_kv("etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379/app")
        kv = kvmodel.open_kv(
            "etcds://app@10.0.0.1:2379,10.0.0.2:2379/app?ca_file=/etc/etcd/ca.pem",
            password=os.environ["ETCD_PASSWORD"],
        )
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        prefix: bytes = b"",
        clock: Clock = time.time,
        lease_timeout: float = 30.0,
        request_timeout: float = 5.0,
        retry_timeout: float = 15.0,
        connect_timeout: float = 1.0,
        max_txn_ops: int = MAX_TXN_OPS,
        user: str | None = None,
        password: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        credentials = _credentials(user, password)
        for name, value in (
            ("lease_timeout", lease_timeout),
            ("request_timeout", request_timeout),
            ("retry_timeout", retry_timeout),
            ("connect_timeout", connect_timeout),
        ):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InvalidArgumentError(f"{name}={value!r} is not a positive number of seconds.")
        try:
            tls = None
            if (ca_file, cert_file, key_file) != (None, None, None):
                tls = tls_context(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
            self._transport = EtcdTransport(
                endpoints,
                request_timeout=request_timeout,
                retry_timeout=retry_timeout,
                connect_timeout=connect_timeout,
                tls=tls,
                credentials=credentials,
            )
        except ValueError as exc:
            raise InvalidArgumentError(str(exc)) from exc
        if not (isinstance(max_txn_ops, int) and max_txn_ops >= 8):
            raise InvalidArgumentError(f"max_txn_ops={max_txn_ops!r} is not an int of at least 8.")
        self.max_txn_ops = max_txn_ops
        self._limits = etcd_limits(max_txn_ops)
        self.clock = clock
        self.lease_timeout = max(float(lease_timeout), float(MIN_LEASE_TTL))
        self.prefix = bytes(prefix)
        self._data = self.prefix + b"D"
        self._markers = self.prefix + b"M"
        self._fence = self.prefix + b"F"
        self._queue = self.prefix + b"Q"
        self._claims = self.prefix + b"C"
        self._quarantine = self.prefix + b"X"
        self._lock = threading.Lock()
        self._marker_lease: tuple[int, float] | None = None
        self._bucket_leases: dict[int, int] = {}
        self._closed = False
        self._queue_signal = ChangeSignal()
        self._queue_watch: Watcher | None = None
        self._streams: weakref.WeakSet[_EtcdWatchStream] = weakref.WeakSet()
        # Outcomes of commits whose answer was lost, for tests and monitoring.
        self.ambiguous_applied = 0
        self.ambiguous_not_applied = 0
        self._check_reachable()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        clock: Clock = time.time,
        lease_timeout: float = 30.0,
        request_timeout: float | None = None,
        retry_timeout: float | None = None,
        connect_timeout: float | None = None,
        max_txn_ops: int = MAX_TXN_OPS,
        user: str | None = None,
        password: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
    ) -> EtcdEngine:
        """Opens ``etcd[s]://[user[:password]@]host:port,host:port[/prefix][?tls options]``.

        ``etcds://`` speaks TLS to every member, ``etcd://`` plain HTTP. A
        non-empty path becomes the key prefix ``path + "/"`` (percent-decoded).
        The user and password are percent-decoded; ``/ ? # @ :`` in them must be
        percent-encoded (``urllib.parse.quote(password, safe="")``). The query
        may name ``ca_file``, ``cert_file`` and ``key_file`` (``etcds://``
        only) and the seconds ``connect_timeout``, ``request_timeout`` and
        ``retry_timeout`` (``?connect_timeout=30`` waits for a cluster that is
        starting); each option may come from the URL or the keyword, not both,
        and a timeout left out takes the engine's default.
        Error messages show the URL with the password replaced by ``***``.
        """
        shown = redact_url(url)
        scheme, sep, _ = url.partition("://")
        if not sep or scheme not in ("etcd", "etcds"):
            raise InvalidArgumentError(
                f"{shown!r} is not an etcd URL of the form "
                "etcd://host:port,host:port/prefix (or etcds:// for TLS)."
            )
        try:
            parsed = urllib.parse.urlsplit(url)
        except ValueError:
            parsed = None
        if (
            parsed is None
            or not parsed.netloc
            or "@" in url[url.index(parsed.netloc) + len(parsed.netloc) :]
        ):
            raise InvalidArgumentError(
                f"{shown!r} is not an etcd URL of the form etcd://user:password@host:port/prefix; "
                "percent-encode '/', '?', '#', '@' and ':' in the user name and password "
                "(urllib.parse.quote(password, safe=''))."
            )
        userinfo, at, hosts = parsed.netloc.rpartition("@")
        options: dict[str, Any] = {
            "user": user,
            "password": password,
            "ca_file": ca_file,
            "cert_file": cert_file,
            "key_file": key_file,
            "connect_timeout": connect_timeout,
            "request_timeout": request_timeout,
            "retry_timeout": retry_timeout,
        }
        from_url: dict[str, Any] = {}
        if at:
            name, colon, secret = userinfo.partition(":")
            from_url["user"] = urllib.parse.unquote(name)
            if colon:
                from_url["password"] = urllib.parse.unquote(secret)
        for name, value in urllib.parse.parse_qsl(parsed.query, keep_blank_values=True):
            if name not in _TLS_PARAMS and name not in _TIMEOUT_PARAMS:
                raise InvalidArgumentError(
                    f"The etcd URL {shown!r} has the query parameter {name!r}; it takes "
                    f"{', '.join(_TLS_PARAMS + _TIMEOUT_PARAMS)} (the password goes in "
                    "user:password@ or the password= option)."
                )
            if name in from_url:
                raise InvalidArgumentError(f"The etcd URL {shown!r} gives {name} twice.")
            if name in _TIMEOUT_PARAMS:
                from_url[name] = _seconds_param(shown, name, value)
            else:
                from_url[name] = value
        for name, value in from_url.items():
            if options[name] is not None:
                raise InvalidArgumentError(
                    f"The etcd URL {shown!r} and the {name}= option both give the {name}; "
                    "give it once."
                )
            options[name] = value
        tls_given = [n for n in ("ca_file", "cert_file", "key_file") if options[n] is not None]
        if scheme == "etcd" and tls_given:
            raise InvalidArgumentError(
                f"The etcd URL {shown!r} is plain HTTP (etcd://) but has the TLS options "
                f"{', '.join(tls_given)}; open it as etcds:// instead."
            )
        endpoints = [e for e in hosts.split(",") if e]
        if not endpoints or any("/" in e or ":" not in e for e in endpoints):
            raise InvalidArgumentError(
                f"The etcd URL {shown!r} does not list its members as host:port,host:port."
            )
        if scheme == "etcds":
            endpoints = ["https://" + e for e in endpoints]
        path = urllib.parse.unquote_to_bytes(parsed.path.lstrip("/"))
        given = {n: options.pop(n) for n in _TIMEOUT_PARAMS}
        timeouts = {n: v for n, v in given.items() if v is not None}  # else the defaults
        return cls(
            endpoints,
            prefix=path + b"/" if path else b"",
            clock=clock,
            lease_timeout=lease_timeout,
            max_txn_ops=max_txn_ops,
            **timeouts,
            **options,
        )

    def __repr__(self) -> str:
        # Names the user but never the password (nor the token).
        t = self._transport
        eps = ",".join(f"{h}:{p}" for h, p in t.endpoints)
        extra = ", tls=True" if t.tls is not None else ""
        if t.credentials is not None:
            extra += f", user={t.credentials.user!r}"
        return f"EtcdEngine({eps!r}, prefix={self.prefix!r}{extra})"

    def __enter__(self) -> EtcdEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def limits(self) -> EngineLimits:
        """The cluster's transaction and request limits (see :func:`etcd_limits`)."""
        return self._limits

    @property
    def capabilities(self) -> EngineCapabilities:
        """Durable, shared between processes and machines, with replica reads."""
        return EngineCapabilities(durable=True, cross_process=True, eventual_reads=True)

    @property
    def transport(self) -> EtcdTransport:
        """The HTTP transport (for benchmarks and diagnostics)."""
        return self._transport

    # -- plumbing ----------------------------------------------------------

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise KvClosedError("The etcd engine is closed.")

    def _call(self, path: str, body: Json, *, write: bool = False) -> Json:
        self._raise_if_closed()
        return self._transport.request(path, body, write=write)

    def _check_reachable(self) -> None:
        """Fails at open, not at the first use, when a member, TLS or the login is wrong."""
        try:
            self._call("/v3/maintenance/status", {})
            # A serializable read needs no leader, but does need the user's
            # permission on the prefix: a missing login or role shows here.
            self._call(
                "/v3/kv/range",
                {"key": b64(self._fence), "serializable": True, "count_only": True},
            )
        except EtcdServerError as exc:
            self._transport.close()
            if exc.code == 7 and self._transport.credentials is None:  # permission denied
                raise EtcdAuthError(
                    f"etcd refused to let this client read {self.prefix!r} ({exc.detail}); "
                    "if the cluster has authentication enabled, give user= and password= "
                    "(or user:password@ in the etcd:// URL).",
                    code=exc.code,
                    detail=exc.detail,
                    user=None,
                ) from exc
            raise
        except EngineError:
            self._transport.close()
            raise

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _grant(self, ttl: int) -> int:
        return int(self._call("/v3/lease/grant", {"TTL": str(max(ttl, MIN_LEASE_TTL))})["ID"])

    def _marker_lease_id(self) -> int:
        with self._lock:
            lease = self._marker_lease
        if lease is None or time.monotonic() - lease[1] > _MARKER_LEASE_ROTATE:
            lease = (self._grant(_MARKER_TTL), time.monotonic())
            with self._lock:
                self._marker_lease = lease
        return lease[0]

    def _expiry_lease(self, expire_at_ms: int) -> int:
        bucket = -(-expire_at_ms // 1000)  # deadline rounded up to a whole second
        with self._lock:
            lease = self._bucket_leases.get(bucket)
        if lease is None:
            now = self.clock()
            lease = self._grant(math.ceil(bucket - now) + 1)
            with self._lock:
                for b in [b for b in self._bucket_leases if b < now]:
                    del self._bucket_leases[b]
                self._bucket_leases[bucket] = lease
        return lease

    def _forget_leases(self) -> None:
        with self._lock:
            self._marker_lease = None
            self._bucket_leases.clear()

    # -- reads ---------------------------------------------------------------

    def snapshot_read(
        self, ranges: Sequence[ReadRange], *, consistency: Consistency = Consistency.STRONG
    ) -> list[list[RawEntry]]:
        """Reads every range at one etcd revision, hiding expired keys."""
        stored, _ = self._read_ranges(ranges, serializable=consistency is Consistency.EVENTUAL)
        return [[s.entry() for s in found] for found in stored]

    def snapshot_read_linked(
        self, read: ReadRange, *, consistency: Consistency = Consistency.STRONG
    ) -> list[tuple[RawEntry, RawEntry | None]]:
        """Reads the range, then the linked keys pinned at the range's revision."""
        serializable = consistency is Consistency.EVENTUAL
        return _retry_compacted(lambda: self._read_linked_once(read, serializable))

    def _read_linked_once(
        self, read: ReadRange, serializable: bool
    ) -> list[tuple[RawEntry, RawEntry | None]]:
        [found], revision = self._read_ranges_once([read], serializable)
        links = list(
            dict.fromkeys(s.value for s in found if s.encoding == VALUE_ENCODING_BYTES and s.value)
        )
        targets: dict[bytes, RawEntry] = {}
        for lo in range(0, len(links), _MAX_LINKS_PER_TXN):
            points = [ReadRange(k, k + b"\x00", 1) for k in links[lo : lo + _MAX_LINKS_PER_TXN]]
            linked, _ = self._read_ranges_once(points, serializable, revision)
            for point, hit in zip(points, linked, strict=True):
                if hit:
                    targets[point.start] = hit[0].entry()
        return [
            (s.entry(), targets.get(s.value) if s.encoding == VALUE_ENCODING_BYTES else None)
            for s in found
        ]

    def _range_body(self, r: ReadRange, limit: int, revision: int, serializable: bool) -> Json:
        body: Json = {
            "key": b64(self._data + r.start),
            "range_end": b64(self._data + r.end),
            "limit": str(limit),
        }
        if r.reverse:
            body["sort_order"] = "DESCEND"
            body["sort_target"] = "KEY"
        if revision:
            body["revision"] = str(revision)
        if serializable:
            body["serializable"] = True
        return body

    def _read_ranges(
        self, ranges: Sequence[ReadRange], *, serializable: bool = False
    ) -> tuple[list[list[Stored]], int]:
        """Reads the ranges at one revision: one read-only txn, then pinned pages."""
        return _retry_compacted(lambda: self._read_ranges_once(ranges, serializable))

    def _read_ranges_once(
        self, ranges: Sequence[ReadRange], serializable: bool, pinned: int = 0
    ) -> tuple[list[list[Stored]], int]:
        """One attempt of :meth:`_read_ranges`; ``pinned`` reads at that revision."""
        now_ms = self._now_ms()
        todo = [r for r in ranges if r.start < r.end and r.limit > 0]
        first = [
            {"request_range": self._range_body(r, r.limit, pinned, serializable)} for r in todo
        ]
        resp = self._call("/v3/kv/txn", {"success": first} if first else {})
        revision = pinned or as_int(resp["header"]["revision"])
        answers = iter(resp.get("responses", []))
        results: list[list[Stored]] = []
        for r in ranges:
            if not (r.start < r.end and r.limit > 0):
                results.append([])
                continue
            rr = next(answers).get("response_range", {})
            found: list[Stored] = []
            cur = r
            while True:
                kvs = rr.get("kvs", [])
                for kv in kvs:
                    s = Stored(unb64(kv["key"])[len(self._data) :], kv)
                    if not s.expired(now_ms):
                        found.append(s)
                if len(found) >= r.limit or not rr.get("more") or not kvs:
                    break
                # Expired keys took places: fetch the rest at the same revision.
                last = unb64(kvs[-1]["key"])[len(self._data) :]
                if r.reverse:
                    cur = ReadRange(cur.start, last, r.limit, True)
                else:
                    cur = ReadRange(last + b"\x00", cur.end, r.limit, False)
                body = self._range_body(cur, r.limit - len(found), revision, serializable)
                rr = self._call("/v3/kv/range", body)
            results.append(found[: r.limit])
        return results, revision

    def _read_keys(self, keys: Sequence[bytes]) -> tuple[dict[bytes, Stored], int, int]:
        """The stored records (expired ones too) of some data keys, the revision and the fence's."""
        ops = [range_op(self._fence), *(range_op(self._data + k) for k in dict.fromkeys(keys))]
        resp = self._call("/v3/kv/txn", {"success": ops})
        answers = resp.get("responses", [])
        fence = answers[0].get("response_range", {}).get("kvs", [])
        out: dict[bytes, Stored] = {}
        for answer in answers[1:]:
            for kv in answer.get("response_range", {}).get("kvs", []):
                key = unb64(kv["key"])[len(self._data) :]
                out[key] = Stored(key, kv)
        fence_revision = as_int(fence[0]["mod_revision"]) if fence else 0
        return out, as_int(resp["header"]["revision"]), fence_revision

    # -- snapshots -----------------------------------------------------------

    def open_snapshot(self) -> _EtcdSnapshot:
        """Reads pinned at the cluster's current revision (until etcd compacts it)."""
        self._raise_if_closed()
        resp = self._call("/v3/kv/range", {"key": b64(self._fence), "count_only": True})
        return _EtcdSnapshot(self, as_int(resp["header"]["revision"]), self._now_ms())

    # -- commits -------------------------------------------------------------

    def atomic_write(self, write: AtomicWrite) -> CommitOutcome:
        """Applies a write all-or-nothing as one etcd txn, or reports the failed checks."""
        self._raise_if_closed()
        plan = TxnPlan(write)
        check_keys = list(dict.fromkeys(c.key for c in write.checks))
        # Checks that stay correct only with a compare on the deadline, and
        # expired-but-present keys that a None check may find (compare on them).
        alive_checks = "all"
        expired_mods: dict[bytes, int] = {}
        if 2 * len(write.checks) + len(plan.read_keys) + 2 > self.max_txn_ops:
            alive_checks = "deadline"
        for _ in range(_MAX_ATTEMPTS):
            now_ms = self._now_ms()
            stored: dict[bytes, Stored] = {}
            revision = fence_revision = 0
            pre_read = plan.read_keys + (check_keys if alive_checks == "deadline" else [])
            if pre_read or plan.versionstamped:
                stored, revision, fence_revision = self._read_keys(pre_read)
            predicted = versionstamp_from_counter(revision + 1)
            final = plan.fold(predicted, dict(stored), now_ms)
            compares: list[Json] = []
            for c in write.checks:
                compares.extend(self._check_compares(c, alive_checks, stored, expired_mods, now_ms))
            for key in plan.read_keys:
                s = stored.get(key)
                full = self._data + key
                compares.append(cmp_mod(full, s.mod_revision) if s else cmp_created(full, 0))
            if plan.versionstamped:
                compares.append(cmp_mod(self._fence, fence_revision))
            success: list[Json] = []
            for key, op in final.items():
                if op is None:
                    success.append(delete_op(self._data + key))
                else:
                    lease = self._expiry_lease(op[1]) if op[1] is not None else 0
                    success.append(put_op(self._data + key, op[0], lease))
            uid = os.urandom(12)
            for i, e in enumerate(write.enqueues):
                success.append(put_op(self._queue_key(e.ready_at_ms, uid, i), _queue_record(e, 1)))
            failure = [range_op(self._data + k) for k in check_keys]
            result = self._commit(compares, success, failure, uid=uid)
            if result is None:
                continue  # fenced off after a lost answer, or a lease ran out
            ok, resp, commit_revision = result
            if ok:
                if write.enqueues:
                    self._queue_signal.bump()
                if plan.versionstamped and commit_revision != revision + 1:
                    commit_revision = self._repair_versionstamps(
                        plan, stored, final, revision + 1, commit_revision
                    )
                return CommitOutcome(versionstamp_from_counter(commit_revision))
            failed = self._failed_checks(write.checks, resp, expired_mods)
            if failed:
                return CommitOutcome(None, tuple(failed))
        raise EngineError(
            f"A commit to etcd kept conflicting with other writers {_MAX_ATTEMPTS} times."
        )

    def _check_compares(
        self,
        c: Check,
        alive_checks: str,
        stored: dict[bytes, Stored],
        expired_mods: dict[bytes, int],
        now_ms: int,
    ) -> list[Json]:
        full = self._data + c.key
        if c.versionstamp is None:
            if c.key in expired_mods:
                return [cmp_mod(full, expired_mods[c.key])]
            return [cmp_created(full, 0)]
        counter = versionstamp_to_counter(c.versionstamp)
        if alive_checks == "all":
            return [cmp_mod(full, counter), cmp_alive(full, now_ms)]
        # Pre-read mode: only keys that carry a deadline need the second compare.
        s = stored.get(c.key)
        if s is not None and s.mod_revision == counter and s.deadline_ms != NO_DEADLINE:
            return [cmp_mod(full, counter), cmp_alive(full, now_ms)]
        return [cmp_mod(full, counter)]

    def _failed_checks(
        self, checks: Sequence[Check], resp: Json, expired_mods: dict[bytes, int]
    ) -> list[int]:
        """The indexes of the failed checks, from the failure branch's reads.

        Records expired-but-present keys of None checks in ``expired_mods`` so
        the next attempt compares on them instead of failing.
        """
        now_ms = self._now_ms()
        current: dict[bytes, Stored] = {}
        for answer in resp.get("responses", []):
            for kv in answer.get("response_range", {}).get("kvs", []):
                key = unb64(kv["key"])[len(self._data) :]
                current[key] = Stored(key, kv)
        failed = []
        for i, c in enumerate(checks):
            s = current.get(c.key)
            live = s is not None and not s.expired(now_ms)
            if c.versionstamp is None:
                if live:
                    failed.append(i)
                elif s is not None:
                    expired_mods[c.key] = s.mod_revision
            elif not live or s is None or s.mod_revision != versionstamp_to_counter(c.versionstamp):
                failed.append(i)
        return failed

    def _commit(
        self, compares: list[Json], success: list[Json], failure: list[Json], *, uid: bytes
    ) -> tuple[bool, Json, int] | None:
        """Sends one guarded txn with its marker and the fence.

        Returns (succeeded, answer, revision), or None when the txn did not
        apply and must be rebuilt (a lost answer was fenced off, or a lease ran
        out). Raises EngineError when the outcome cannot be learned in time.
        """
        marker = self._markers + uid
        marker_lease = self._marker_lease_id()
        compares = [*compares, cmp_created(marker, 0)]
        success = [*success, put_op(marker, b"c", marker_lease), put_op(self._fence, b"")]
        for what, n in (("compares", len(compares)), ("operations", len(success))):
            if n > self.max_txn_ops:
                raise LimitExceededError(
                    f"The commit needs {n} etcd txn {what} with the engine's bookkeeping; "
                    f"etcd allows at most {self.max_txn_ops} (its --max-txn-ops).",
                    limit=self.max_txn_ops,
                    actual=n,
                )
        body = {"compare": compares, "success": success, "failure": failure}
        size = sum(len(str(v)) for v in success) * 3 // 4
        if size > MAX_REQUEST_BYTES:
            raise LimitExceededError(
                f"The commit's etcd request is about {size} bytes; "
                f"etcd accepts at most {MAX_REQUEST_BYTES}.",
                limit=MAX_REQUEST_BYTES,
                actual=size,
            )
        try:
            resp = self._call("/v3/kv/txn", body, write=True)
        except EtcdServerError as exc:
            if exc.code == 5:  # "requested lease not found": it ran out; grant new ones
                self._forget_leases()
                return None
            raise
        except EtcdAmbiguousError as exc:
            return self._resolve(marker, exc)
        return bool(resp.get("succeeded")), resp, as_int(resp["header"]["revision"])

    def _resolve(self, marker: bytes, cause: EtcdAmbiguousError) -> tuple[bool, Json, int] | None:
        """Learns whether a commit whose answer was lost applied, making sure it cannot later.

        Writes an "aborted" marker under the same ``create_revision == 0`` guard:
        if that applies, the lost commit can never apply. Otherwise the marker
        says whether it was the commit ("c", at the marker's revision).
        """
        deadline = time.monotonic() + self._transport.retry_timeout
        last: Exception = cause
        while time.monotonic() < deadline:
            self._raise_if_closed()
            try:
                lease = self._marker_lease_id()
                resp = self._call(
                    "/v3/kv/txn",
                    {
                        "compare": [cmp_created(marker, 0)],
                        "success": [put_op(marker, b"a", lease)],
                        "failure": [range_op(marker)],
                    },
                    write=True,
                )
            except EtcdServerError as exc:
                if exc.code != 5:
                    raise
                self._forget_leases()
                last = exc
                continue
            except (EtcdAmbiguousError, EtcdUnavailableError) as exc:
                last = exc
                time.sleep(0.05)
                continue
            if resp.get("succeeded"):
                self.ambiguous_not_applied += 1
                return None
            kvs = resp["responses"][0].get("response_range", {}).get("kvs", [])
            if not kvs or unb64(kvs[0].get("value")) != b"c":
                self.ambiguous_not_applied += 1
                return None  # our own abort marker from an earlier lost attempt
            self.ambiguous_applied += 1
            rev = as_int(kvs[0]["create_revision"])
            return True, {"header": {"revision": str(rev)}, "succeeded": True}, rev
        raise EngineError(
            "The answer to a commit was lost and etcd did not answer in "
            f"{self._transport.retry_timeout} s, so whether it applied is unknown."
        ) from last

    def _repair_versionstamps(
        self,
        plan: TxnPlan,
        stored: dict[bytes, Stored],
        final: dict[bytes, tuple[bytes, int | None] | None],
        predicted: int,
        actual: int,
    ) -> int:
        """Moves versionstamped keys to the commit's real revision after a foreign write.

        The suffix is predicted as the next revision, guarded by the fence that
        every kvmodel commit writes; only a write by something else (a lease
        running out, another etcd client) can slip in between. Then the commit's
        keys are rewritten, guarded on their revision, with a new prediction.
        """
        for _ in range(_MAX_ATTEMPTS):
            _, revision, fence_revision = self._read_keys([])
            new_final = plan.fold(versionstamp_from_counter(revision + 1), dict(stored), 0)
            compares = [
                cmp_mod(self._data + k, actual) for k, op in final.items() if op is not None
            ]
            compares.append(cmp_mod(self._fence, fence_revision))
            success = [delete_op(self._data + k) for k in final if k not in new_final]
            for key, op in new_final.items():
                if op is None:
                    success.append(delete_op(self._data + key))
                else:
                    lease = self._expiry_lease(op[1]) if op[1] is not None else 0
                    success.append(put_op(self._data + key, op[0], lease))
            result = self._commit(compares, success, [], uid=os.urandom(12))
            if result is None:
                continue
            ok, _, rev = result
            if not ok:
                return actual  # someone rewrote the keys since: the commit stands as is
            if rev == revision + 1:
                return rev
            final, actual = new_final, rev
        return actual

    # -- queue ---------------------------------------------------------------

    def _queue_key(self, ready_at_ms: int, uid: bytes, index: int) -> bytes:
        return self._queue + max(0, ready_at_ms).to_bytes(8, "big") + uid + index.to_bytes(2, "big")

    def dequeue_next_message(self, timeout: float) -> _EtcdQueueMessage | None:
        """Claims the next ready message, waiting up to ``timeout`` seconds for one."""
        deadline = time.monotonic() + timeout
        self._start_queue_watch()
        while not self._closed:
            seen = self._queue_signal.seq
            try:
                message, next_ready_ms = self._claim_next()
            except (EngineError, KvClosedError):
                if self._closed:
                    return None  # closing wakes listeners with None, as the protocol says
                raise
            if message is not None:
                return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            wait = remaining
            if next_ready_ms is not None:
                wait = min(wait, max(0.0, next_ready_ms / 1000 - self.clock()) + 0.001)
            self._queue_signal.wait(seen, wait)
        return None

    def _claim_next(self) -> tuple[_EtcdQueueMessage | None, int | None]:
        now_ms = self._now_ms()
        ready_end = self._queue + (now_ms + 1).to_bytes(8, "big")
        resp = self._call(
            "/v3/kv/txn",
            {
                "success": [
                    range_op(self._queue, ready_end, limit=str(_QUEUE_SCAN)),
                    range_op(self._claims, prefix_end(self._claims), keys_only=True),
                    range_op(ready_end, prefix_end(self._queue), limit="1", keys_only=True),
                ]
            },
        )
        ready, claims, later = (a.get("response_range", {}) for a in resp["responses"])
        claimed = {unb64(kv["key"])[len(self._claims) :] for kv in claims.get("kvs", [])}
        next_ready = None
        for kv in later.get("kvs", []):
            next_ready = int.from_bytes(unb64(kv["key"])[len(self._queue) :][:8], "big")
        candidates = []
        for kv in ready.get("kvs", []):
            key = unb64(kv["key"])
            if key in claimed:
                continue
            rest = key[len(self._queue) :]
            order = (rest[:8], as_int(kv["create_revision"]), rest[-2:])
            candidates.append((order, key, kv))
        candidates.sort(key=lambda c: c[0])
        lease = 0
        settled = False
        for _, key, kv in candidates:
            claim = self._claims + key
            unclaimed = [cmp_mod(key, as_int(kv["mod_revision"])), cmp_created(claim, 0)]
            raw = unb64(kv["value"])
            where = f"queue message {self._message_id(key)}"
            try:
                record = read_queue_record(where, raw)
            except DecodeError as exc:
                # Move it aside before any handler sees it, so a damaged record
                # cannot fail (and stay claimed) in every listener in turn.
                self._move_aside(key, raw, unclaimed, exc)
                settled = True
                continue
            if record.claimed:
                # Claimed, yet nobody holds the claim: its listener died or hung
                # until the lease ran out. That delivery is a failed attempt.
                if self._settle_failed(key, record, unclaimed, "its lease expired"):
                    settled = True
                continue
            if lease == 0:
                lease = self._grant(math.ceil(self.lease_timeout))
            record.claimed = True
            result = self._commit(
                unclaimed,
                [put_op(claim, b"", lease), put_op(key, record.pack())],
                [],
                uid=os.urandom(12),
            )
            if result is None or not result[0]:
                continue
            return _EtcdQueueMessage(self, key, lease, record), None
        if lease:
            self._revoke(lease)
        if settled:
            next_ready = now_ms  # a retry may be ready at once: look again
        if ready.get("more"):
            # More ready messages than one scan holds are all claimed: look again soon.
            next_ready = now_ms + 100
        return None, next_ready

    def _revoke(self, lease: int) -> None:
        with contextlib.suppress(EngineError, KvClosedError):  # else it runs out by itself
            self._call("/v3/lease/revoke", {"ID": str(lease)})

    def _renew(self, lease: int) -> bool:
        self._raise_if_closed()
        stream = self._transport.open_stream("/v3/lease/keepalive", [{"ID": str(lease)}])
        try:
            for result in stream.messages():
                return as_int(result.get("TTL")) > 0
            return False
        except (OSError, ValueError) as exc:
            raise EngineError(f"Renewing the queue lease {lease} on etcd failed: {exc}.") from exc
        finally:
            stream.close()

    def _message_id(self, key: bytes) -> str:
        return key[len(self._queue) :].hex()

    def _stable_id(self, key: bytes) -> str:
        """The message's id: its key without the ready time, which a retry moves."""
        return key[len(self._queue) + 8 :].hex()

    def _failure_ops(self, key: bytes, record: QueueRecord) -> tuple[list[Json], bool]:
        """The operations that settle a failed delivery, and whether they give up on it.

        With an interval left the message moves to a new ready key; without,
        its value goes to every dead-letter key (one commit) and it is dropped.
        """
        ops = [delete_op(key)]
        step = next_backoff(record.backoff)
        if step is not None:
            delay, rest = step
            retry = QueueRecord(
                record.attempt + 1,
                record.encoding,
                record.payload,
                record.keys_if_undelivered,
                rest,
            )
            # The retry keeps the key's uid and index (the message's id) and only
            # moves its ready time, always forward, so the new key is never the
            # one this transaction deletes.
            at = len(self._queue)
            ready = max(self._now_ms() + delay, int.from_bytes(key[at : at + 8], "big") + 1)
            moved = self._queue + ready.to_bytes(8, "big") + key[at + 8 :]
            ops.append(put_op(moved, retry.pack()))
            return ops, False
        for k in dict.fromkeys(record.keys_if_undelivered):
            ops.append(put_op(self._data + k, encode_stored(record.payload, record.encoding, None)))
        return ops, True

    def _settle_failed(
        self, key: bytes, record: QueueRecord, compares: list[Json], why: str
    ) -> bool:
        """Settles a failed delivery under ``compares``; False if someone else did first."""
        ops, gives_up = self._failure_ops(key, record)
        for _ in range(_MAX_ATTEMPTS):
            result = self._commit(compares, ops, [], uid=os.urandom(12))
            if result is not None:
                break
        else:
            return False
        if not result[0]:
            return False
        if gives_up:
            log_undelivered(self._message_id(key), record.attempt, record.keys_if_undelivered, why)
        self._queue_signal.bump()
        return True

    def _move_aside(self, key: bytes, raw: bytes, compares: list[Json], exc: DecodeError) -> None:
        """Dead-letters a damaged message when its value and keys are sound, else quarantines it.

        Quarantined records keep their raw bytes under the ``X`` subspace,
        outside the user's keyspace, for an operator to inspect.
        """
        where = f"queue message {self._message_id(key)}"
        salvaged = salvage_queue_record(where, raw)
        ops = [delete_op(key)]
        if salvaged is not None:
            payload, encoding, keys = salvaged
            for k in dict.fromkeys(keys):
                ops.append(put_op(self._data + k, encode_stored(payload, encoding, None)))
        else:
            ops.append(put_op(self._quarantine + key[len(self._queue) :], raw))
        result = self._commit(compares, ops, [], uid=os.urandom(12))
        if result is None or not result[0]:
            return  # someone else settled it, or the answer was lost: the next scan sees
        if salvaged is not None:
            queue_logger.warning(
                "%s It was written to its keys_if_undelivered %s without being delivered.",
                exc,
                ", ".join(describe_stored_key(k) for k in salvaged[2]),
            )
        else:
            queue_logger.warning(
                "%s It was moved aside to %r without being delivered.",
                exc,
                self._quarantine + key[len(self._queue) :],
            )
        self._queue_signal.bump()

    def _finish(self, msg: _EtcdQueueMessage, success: bool) -> None:
        claim = self._claims + msg.key
        compares = [
            {"key": b64(claim), "target": "LEASE", "result": "EQUAL", "lease": str(msg.lease)}
        ]
        if success:
            ops, gives_up = [delete_op(msg.key)], False
        else:
            ops, gives_up = self._failure_ops(msg.key, msg.record)
        ops.append(delete_op(claim))
        result = None
        for _ in range(_MAX_ATTEMPTS):
            result = self._commit(compares, ops, [], uid=os.urandom(12))
            if result is not None:
                break
        if gives_up and result is not None and result[0]:
            record = msg.record
            log_undelivered(
                self._message_id(msg.key),
                record.attempt,
                record.keys_if_undelivered,
                "its handler failed",
            )
        self._queue_signal.bump()
        self._revoke(msg.lease)

    def _start_queue_watch(self) -> None:
        with self._lock:
            if self._queue_watch is not None or self._closed:
                return
            self._queue_watch = Watcher(
                self._transport,
                [
                    (self._queue, prefix_end(self._queue)),
                    (self._claims, prefix_end(self._claims)),
                ],
                0,
                self._queue_signal.bump,
            )

    # -- watch ---------------------------------------------------------------

    def watch(self, keys: Sequence[bytes]) -> _EtcdWatchStream:
        """Watches ``keys`` with an etcd watch stream from the first read's revision."""
        self._raise_if_closed()
        stream = _EtcdWatchStream(self, list(keys))
        self._streams.add(stream)
        return stream

    def collect_expired(self) -> float | None:
        """Returns None: etcd's leases delete expired keys, and reads hide them meanwhile."""
        self._raise_if_closed()
        return None

    def close(self) -> None:
        """Closes every connection and stream; blocked calls return or raise KvClosedError."""
        if self._closed:
            return
        self._closed = True
        self._queue_signal.close()
        if self._queue_watch is not None:
            self._queue_watch.stop()
        for stream in list(self._streams):
            stream.close()
        self._transport.close()


def _queue_record(e: Any, attempt: int) -> bytes:
    return QueueRecord(
        attempt, e.encoding, e.payload, tuple(e.keys_if_undelivered), tuple(e.backoff_schedule_ms)
    ).pack()


def _credentials(user: str | None, password: str | None) -> Credentials | None:
    if user is None and password is None:
        return None
    if not isinstance(user, str) or not user:
        raise InvalidArgumentError("An etcd password was given without user=; give the user too.")
    if not isinstance(password, str):
        raise InvalidArgumentError(
            f"The etcd user {user!r} was given without a password; give password= "
            "(or user:password@ in the URL)."
        )
    return Credentials(user, password)


def redact_url(url: str) -> str:
    """``url`` with its password (and any unknown query value) replaced by ``***``, for messages.

    Everything up to the last ``@`` counts as user information, so a password
    holding an unencoded ``/``, ``?``, ``#`` or ``@`` is hidden too. Query
    values other than the TLS file names and the timeouts are hidden as well.

    >>> redact_url("etcds://root:s3cr3t@10.0.0.1:2379/app?ca_file=/ca.pem&password=x")
    'etcds://root:***@10.0.0.1:2379/app?ca_file=/ca.pem&password=***'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo, at, hosts = rest.rpartition("@")
    if at:
        name, colon, _ = userinfo.partition(":")
        userinfo = f"{name}:***@" if colon else f"{name}@"
    base, question, query = hosts.partition("?")
    if question:
        params = []
        for param in query.split("&"):
            key, eq, _ = param.partition("=")
            shown = key in _TLS_PARAMS or key in _TIMEOUT_PARAMS or not eq
            params.append(param if shown else f"{key}=***")
        base += "?" + "&".join(params)
    return f"{scheme}://{userinfo}{base}"


_TLS_PARAMS = ("ca_file", "cert_file", "key_file")
_TIMEOUT_PARAMS = ("connect_timeout", "request_timeout", "retry_timeout")


def _seconds_param(shown: str, name: str, text: str) -> float:
    """A timeout from an etcd URL's query, as seconds (EtcdEngine checks the range)."""
    try:
        return float(text)
    except ValueError:
        raise InvalidArgumentError(
            f"The etcd URL {shown!r} gives {name}={text!r}, which is not a number of seconds."
        ) from None


class _EtcdQueueMessage(LeasedMessage):
    """A message claimed from the queue; the claim key lives on ``lease``."""

    def __init__(
        self,
        engine: EtcdEngine,
        key: bytes,
        lease: int,
        record: QueueRecord,
    ) -> None:
        super().__init__(
            record.payload, record.encoding, record.attempt, message_id=engine._stable_id(key)
        )
        self._engine = engine
        self.key = key
        self.lease = lease
        self.record = record
        self._finished = False

    def renew_lease(self) -> bool:
        """Refreshes the claim's etcd lease; False if it already ran out."""
        return self._engine._renew(self.lease)

    def finish(self, success: bool) -> None:
        """Drops the message, or schedules its retry or dead-letters it, in one txn."""
        if self._finished:
            return
        self._finished = True
        self._engine._finish(self, success)

    def __repr__(self) -> str:
        return f"<etcd queue message {self.key!r} attempt={self._attempt}>"


class _EtcdWatchStream:
    """Watched keys: an etcd watch stream wakes a PollingWatchStream that re-reads."""

    def __init__(self, engine: EtcdEngine, keys: list[bytes]) -> None:
        self._engine = engine
        self._keys = keys
        self._signal = ChangeSignal()
        self._watcher: Watcher | None = None
        self._deadline: float | None = None
        self._inner = PollingWatchStream(
            self._signal, self._read, clock=engine.clock, expiry_deadline=lambda: self._deadline
        )

    def _read(self) -> list[RawEntry | None]:
        ranges = [ReadRange(k, k + b"\x00", 1) for k in self._keys]
        stored, revision = self._engine._read_ranges(ranges)
        deadlines = [s[0].deadline_ms for s in stored if s and s[0].deadline_ms != NO_DEADLINE]
        self._deadline = min(deadlines) / 1000 if deadlines else None
        if self._watcher is None:
            data = self._engine._data
            self._watcher = Watcher(
                self._engine._transport,
                [(data + k, None) for k in dict.fromkeys(self._keys)],
                revision + 1,
                self._signal.bump,
            )
        return [s[0].entry() if s else None for s in stored]

    def next(self, timeout: float | None = None) -> list[RawEntry | None] | None:
        """See :meth:`kvmodel.engines.base.WatchStream.next`."""
        if self._engine._closed:
            self._signal.close()
        return self._inner.next(timeout)

    def close(self) -> None:
        """Ends the stream and its etcd watch; a blocked ``next`` raises KvClosedError."""
        self._signal.close()
        self._inner.close()
        if self._watcher is not None:
            self._watcher.stop()


class _EtcdSnapshot:
    """A :class:`kvmodel.engines.base.Snapshot`: range reads pinned at one revision."""

    def __init__(self, engine: EtcdEngine, revision: int, now_ms: int) -> None:
        self._engine = engine
        self.revision = revision
        self._now_ms = now_ms

    def read(self, start: bytes, end: bytes, limit: int) -> list[SnapshotEntry]:
        engine = self._engine
        out: list[SnapshotEntry] = []
        while len(out) < limit and start < end:
            body = engine._range_body(
                ReadRange(start, end, 1), limit - len(out), self.revision, False
            )
            try:
                resp = engine._call("/v3/kv/range", body)
            except EtcdServerError as exc:
                if exc.code == 11:
                    raise EngineError(
                        f"etcd compacted revision {self.revision} while a snapshot was reading it; "
                        "run the command again, or keep more history (--auto-compaction-retention)."
                    ) from exc
                raise
            kvs = resp.get("kvs", [])
            for kv in kvs:
                s = Stored(unb64(kv["key"])[len(engine._data) :], kv)
                if not s.expired(self._now_ms):
                    deadline = None if s.deadline_ms == NO_DEADLINE else s.deadline_ms
                    out.append(SnapshotEntry(s.entry(), deadline))
            if not resp.get("more") or not kvs:
                break
            # Expired keys took places: read on after the last one.
            start = unb64(kvs[-1]["key"])[len(engine._data) :] + b"\x00"
        return out

    def close(self) -> None:
        pass
