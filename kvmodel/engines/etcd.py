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

The engine is layered by concern (:mod:`kvmodel.engines._etcd_core`): plumbing
and leases, reads (``_etcd_reads``), commits (``_etcd_commit``), the queue
(``_etcd_queue``) and URLs (``_etcd_url``); this module opens and closes it.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections.abc import Sequence

from kvmodel.engines._etcd_core import (
    ETCD_LIMITS,
    MAX_REQUEST_BYTES,
    MAX_TXN_OPS,
    MIN_LEASE_TTL,
    etcd_limits,
)
from kvmodel.engines._etcd_queue import EtcdQueue
from kvmodel.engines._etcd_reads import EtcdWatchStream
from kvmodel.engines._etcd_transport import EtcdAuthError, EtcdTransport, tls_context
from kvmodel.engines._etcd_url import credentials, parse_url, redact_url
from kvmodel.engines._etcd_watch import Watcher
from kvmodel.engines.base import ChangeSignal, Clock, EngineCapabilities
from kvmodel.errors import InvalidArgumentError
from kvmodel.limits import EngineLimits

__all__ = [
    "ETCD_LIMITS",
    "EtcdAuthError",
    "EtcdEngine",
    "MAX_REQUEST_BYTES",
    "MAX_TXN_OPS",
    "MIN_LEASE_TTL",
    "etcd_limits",
    "redact_url",
]


class EtcdEngine(EtcdQueue):
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
        login = credentials(user, password)
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
                credentials=login,
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
        self._streams: weakref.WeakSet[EtcdWatchStream] = weakref.WeakSet()
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
        endpoints, prefix, options = parse_url(
            url,
            {
                "user": user,
                "password": password,
                "ca_file": ca_file,
                "cert_file": cert_file,
                "key_file": key_file,
                "connect_timeout": connect_timeout,
                "request_timeout": request_timeout,
                "retry_timeout": retry_timeout,
            },
        )
        return cls(
            endpoints,
            prefix=prefix,
            clock=clock,
            lease_timeout=lease_timeout,
            max_txn_ops=max_txn_ops,
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
