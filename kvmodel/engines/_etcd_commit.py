"""The etcd engine's commits: one atomic write as one guarded etcd txn.

A commit's checks become compares on revisions (and on the deadline, for keys
that may have expired), sum/min/max read their keys first and guard on them,
and every commit writes a fresh idempotency marker and the fence. When the
answer to a commit is lost, :meth:`EtcdCommits._resolve` learns whether it
applied and makes sure it never applies later. Versionstamped keys are written
under the predicted revision and moved when a foreign write slipped in
(:meth:`EtcdCommits._repair_versionstamps`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from kvmodel.engines._etcd_core import MAX_ATTEMPTS, MAX_REQUEST_BYTES, Json
from kvmodel.engines._etcd_reads import EtcdReads
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
    put_op,
    range_op,
)
from kvmodel.engines._etcd_transport import (
    EtcdAmbiguousError,
    EtcdServerError,
    EtcdUnavailableError,
    unb64,
)
from kvmodel.engines.base import (
    AtomicWrite,
    Check,
    CommitOutcome,
    versionstamp_from_counter,
    versionstamp_to_counter,
)
from kvmodel.errors import EngineError, LimitExceededError

__all__ = ["EtcdCommits", "queue_record"]


class EtcdCommits(EtcdReads):
    """Atomic writes of the etcd engine, with idempotency markers and the fence."""

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
        for _ in range(MAX_ATTEMPTS):
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
                success.append(put_op(self._queue_key(e.ready_at_ms, uid, i), queue_record(e, 1)))
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
            f"A commit to etcd kept conflicting with other writers {MAX_ATTEMPTS} times."
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
        for _ in range(MAX_ATTEMPTS):
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

    def _queue_key(self, ready_at_ms: int, uid: bytes, index: int) -> bytes:
        return self._queue + max(0, ready_at_ms).to_bytes(8, "big") + uid + index.to_bytes(2, "big")


def queue_record(e: Any, attempt: int) -> bytes:
    return QueueRecord(
        attempt, e.encoding, e.payload, tuple(e.keys_if_undelivered), tuple(e.backoff_schedule_ms)
    ).pack()
