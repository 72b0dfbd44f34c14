"""The etcd engine's plumbing: its limits, its keyspaces, the calls to etcd and its leases.

:class:`EtcdCore` is the base of the engine's layers, each a class in its own
module that adds one concern on top of the one below it:

* :mod:`kvmodel.engines._etcd_core` (this module): the cluster's limits, the
  attributes every layer reads (the transport, the key prefixes of the
  engine's subspaces, the leases), one etcd call, and the leases of
  idempotency markers and expiring keys;
* :mod:`kvmodel.engines._etcd_reads`: snapshot reads at one revision, linked
  reads, snapshots and watch streams (:class:`EtcdReads`);
* :mod:`kvmodel.engines._etcd_commit`: atomic writes as guarded txns, with
  idempotency markers and the resolution of lost answers (:class:`EtcdCommits`);
* :mod:`kvmodel.engines._etcd_queue`: claiming, finishing and settling queue
  messages (:class:`EtcdQueue`);
* :mod:`kvmodel.engines.etcd`: :class:`~kvmodel.engines.etcd.EtcdEngine`,
  which opens the connection, checks its options and closes it.

The layers are one class hierarchy, not objects that call each other, because
they share every attribute the engine holds and call down freely (a queue
claim is a commit, a commit reads the keys it folds); the split is by reason
to change, as the SQLite engine's modules are.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from kvmodel.engines._etcd_transport import (
    EtcdAuthError,
    EtcdServerError,
    EtcdTransport,
    b64,
)
from kvmodel.engines._etcd_watch import Watcher
from kvmodel.engines.base import ChangeSignal, Clock
from kvmodel.errors import EngineError, KvClosedError
from kvmodel.limits import EngineLimits

__all__ = [
    "ETCD_LIMITS",
    "EtcdCore",
    "Json",
    "MAX_ATTEMPTS",
    "MAX_REQUEST_BYTES",
    "MAX_TXN_OPS",
    "MIN_LEASE_TTL",
    "etcd_limits",
]

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
MAX_ATTEMPTS = 64
"""How often a commit or a read is tried again after a conflict or a compaction."""


class EtcdCore:
    """The attributes and calls every layer of the etcd engine shares (see the module)."""

    # Set by EtcdEngine.__init__.
    _transport: EtcdTransport
    max_txn_ops: int
    _limits: EngineLimits
    clock: Clock
    lease_timeout: float
    prefix: bytes
    _data: bytes  # user data
    _markers: bytes  # idempotency markers
    _fence: bytes  # the key every commit writes
    _queue: bytes  # queue messages
    _claims: bytes  # claims of queue messages
    _quarantine: bytes  # damaged queue messages moved aside
    _lock: threading.Lock
    _marker_lease: tuple[int, float] | None
    _bucket_leases: dict[int, int]
    _closed: bool
    _queue_signal: ChangeSignal
    _queue_watch: Watcher | None
    ambiguous_applied: int
    ambiguous_not_applied: int

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
