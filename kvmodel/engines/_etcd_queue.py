"""The etcd engine's queue: claiming, finishing and settling messages.

Messages are keys written inside the commit that enqueued them (``P "Q"
ready_ms id index``). A listener claims one with a claim key on a lease of
``lease_timeout`` seconds, in a txn guarded by the message's revision: when the
listener dies its lease runs out and the claim vanishes; the message, marked
claimed, is then settled as a failed delivery (retried after its next backoff
interval, or dead-lettered), as in Deno's queue_cleanup. A damaged message is
dead-lettered when its value and keys are sound, else moved aside (``P "X"``),
before any handler sees it.
"""

from __future__ import annotations

import contextlib
import math
import os
import time

from kvmodel.engines._etcd_commit import EtcdCommits
from kvmodel.engines._etcd_core import MAX_ATTEMPTS, Json
from kvmodel.engines._etcd_records import (
    QueueRecord,
    as_int,
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
from kvmodel.engines._etcd_transport import b64, unb64
from kvmodel.engines._etcd_watch import Watcher
from kvmodel.engines.base import (
    LeasedMessage,
    describe_stored_key,
    log_undelivered,
    next_backoff,
    queue_logger,
)
from kvmodel.errors import DecodeError, EngineError, KvClosedError

__all__ = ["EtcdQueue", "EtcdQueueMessage"]

_QUEUE_SCAN = 64


class EtcdQueue(EtcdCommits):
    """The queue of the etcd engine: claims on leases, retries and dead letters."""

    def dequeue_next_message(self, timeout: float) -> EtcdQueueMessage | None:
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

    def _claim_next(self) -> tuple[EtcdQueueMessage | None, int | None]:
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
            return EtcdQueueMessage(self, key, lease, record), None
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
        for _ in range(MAX_ATTEMPTS):
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

    def _finish(self, msg: EtcdQueueMessage, success: bool) -> None:
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
        for _ in range(MAX_ATTEMPTS):
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


class EtcdQueueMessage(LeasedMessage):
    """A message claimed from the queue; the claim key lives on ``lease``."""

    def __init__(
        self,
        engine: EtcdQueue,
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
