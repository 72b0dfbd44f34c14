"""``kv.atomic()``: the builder of one all-or-nothing commit.

Every call validates and encodes its arguments at once, so a bad key or value
raises where it was written and leaves the operation as it was. Limits that
depend on the whole commit (counts and total sizes, computed as Deno's
``ext/kv`` computes them) are checked in :meth:`AtomicBuilder.build`, before
anything reaches the engine. The builder is shared by the sync
:class:`AtomicOperation` and the async one in :mod:`kvmodel.aio`; only
``commit`` differs.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from kvmodel._options import OptionLimitError, duration_ms
from kvmodel._records import VERSIONSTAMP, CommitResult, Entry
from kvmodel._text import brief_repr, brief_value
from kvmodel._values import KvU64
from kvmodel.engines.base import (
    VALUE_ENCODING_LE64,
    AtomicWrite,
    Check,
    Enqueue,
    Mutation,
    MutationKind,
)
from kvmodel.errors import (
    InvalidArgumentError,
    InvalidKeyError,
    KvTypeError,
    LimitExceededError,
)
from kvmodel.limits import (
    MAX_BACKOFF_INTERVAL_SECONDS,
    MAX_BACKOFF_INTERVALS,
    MAX_EXPIRE_IN_SECONDS,
    MAX_QUEUE_DELAY_SECONDS,
    EngineLimits,
)

if TYPE_CHECKING:
    from typing import Self

    from kvmodel._kv import Kv as KvCore

__all__ = [
    "DEFAULT_BACKOFF_SCHEDULE_MS",
    "AtomicBuilder",
    "AtomicOperation",
    "COMMIT_WIDE_LIMITS",
    "EMBEDDED_LIMITS",
    "check_commit_limits",
    "lift_hint",
]

DEFAULT_BACKOFF_SCHEDULE_MS = (100, 1000, 5000, 30000, 60000)
"""Deno's default retry delays for a failing queue handler."""

_LE64 = struct.Struct("<Q")
# A versionstamp suffix adds a str key part: tag, 20 hex digits, terminator.
_VERSIONSTAMP_PART_SIZE = 22


# Exactly 20 hex digits, as Deno's check_from_v8 takes them (faster_hex accepts
# either case); bytes.fromhex alone would also skip spaces ("00000000000000 01 00").
_VERSIONSTAMP = re.compile(r"[0-9a-fA-F]{20}")


def _hex_versionstamp(value: object) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str) and _VERSIONSTAMP.fullmatch(value):
        return bytes.fromhex(value)
    raise InvalidArgumentError(
        "A versionstamp is a string of 20 hex digits (as Kv returns them) "
        f"or None, not {brief_value(value)}."
    )


def _u64_operand(op: str, n: object) -> bytes:
    if isinstance(n, KvU64):
        return _LE64.pack(n.value)
    if isinstance(n, int) and not isinstance(n, bool):
        if 0 <= n < 2**64:
            return _LE64.pack(n)
        raise InvalidArgumentError(
            f"The operand of {op} must be in [0, 2**64), not {brief_value(n)}; it is a KvU64."
        )
    raise KvTypeError(f"The operand of {op} must be an int or a KvU64, not {brief_value(n)}.")


class AtomicBuilder:
    """Collects checks, mutations and enqueues; see :class:`AtomicOperation`."""

    __slots__ = ("_check_keys", "_checks", "_core", "_enqueues", "_mutations")

    def __init__(self, core: KvCore) -> None:
        self._core = core
        self._checks: list[Check] = []
        self._check_keys: list[tuple[Any, ...]] = []
        self._mutations: list[Mutation] = []
        self._enqueues: list[Enqueue] = []

    # -- building ------------------------------------------------------------

    def check(self, *checks: Entry[Any] | tuple[Sequence[Any], str | None]) -> Self:
        """Commits only if each key's versionstamp is still the given one (None: absent).

        Args:
            checks: Entries as read, or ``(key, versionstamp_or_None)`` pairs.
        """
        new: list[Check] = []
        keys: list[tuple[Any, ...]] = []
        for check in checks:
            key: Sequence[Any]
            if isinstance(check, Entry):
                key, versionstamp = check.key, check.versionstamp
            elif isinstance(check, tuple | list) and len(check) == 2:
                key, versionstamp = check
            else:
                raise InvalidArgumentError(
                    f"A check is an Entry or a (key, versionstamp) pair, not {brief_value(check)}."
                )
            encoded = self._core.write_key(key)
            new.append(Check(encoded, _hex_versionstamp(versionstamp)))
            keys.append(tuple(key))
        self._checks.extend(new)
        self._check_keys.extend(keys)
        return self

    def set(self, key: Sequence[Any], value: object, *, expire_in: object = None) -> Self:
        """Sets ``key`` to ``value``; ``expire_in`` (seconds or timedelta) makes it expire.

        A key whose last part is :data:`kvmodel.VERSIONSTAMP` gets the commit's
        versionstamp as that part.
        """
        kind = MutationKind.SET
        if isinstance(key, tuple | list) and key and key[-1] is VERSIONSTAMP:
            kind = MutationKind.SET_SUFFIX_VERSIONSTAMPED_KEY
            encoded = self._core.write_key(key[:-1], extra=_VERSIONSTAMP_PART_SIZE)
        else:
            encoded = self._core.write_key(key)
        data, encoding = self._core.encode_value(value)
        expire_at_ms = None
        if expire_in is not None:
            expire_at_ms = self._core.now_ms() + duration_ms(
                "expire_in", expire_in, maximum_s=MAX_EXPIRE_IN_SECONDS
            )
        self._mutations.append(Mutation(encoded, kind, data, encoding, expire_at_ms))
        return self

    def _set_until(self, key: Sequence[Any], value: object, expire_at_ms: int | None) -> Self:
        """Sets ``key`` to ``value`` until the absolute deadline ``expire_at_ms`` (None: for good).

        The object mapper writes a document and its index entries with one
        deadline, which relative ``expire_in`` values read at different
        moments could not promise.
        """
        encoded = self._core.write_key(key)
        data, encoding = self._core.encode_value(value)
        self._mutations.append(Mutation(encoded, MutationKind.SET, data, encoding, expire_at_ms))
        return self

    def delete(self, key: Sequence[Any]) -> Self:
        """Deletes ``key`` (a missing key is fine)."""
        self._mutations.append(Mutation(self._core.write_key(key), MutationKind.DELETE))
        return self

    def _numeric(self, kind: MutationKind, key: Sequence[Any], n: int | KvU64) -> Self:
        encoded = self._core.write_key(key)
        operand = _u64_operand(kind.value, n)
        self._mutations.append(Mutation(encoded, kind, operand, VALUE_ENCODING_LE64))
        return self

    def sum(self, key: Sequence[Any], n: int | KvU64) -> Self:
        """Adds ``n`` to the KvU64 at ``key``, wrapping modulo 2**64 (a missing key takes n)."""
        return self._numeric(MutationKind.SUM, key, n)

    def min(self, key: Sequence[Any], n: int | KvU64) -> Self:
        """Keeps the smaller of the KvU64 at ``key`` and ``n`` (a missing key takes n)."""
        return self._numeric(MutationKind.MIN, key, n)

    def max(self, key: Sequence[Any], n: int | KvU64) -> Self:
        """Keeps the larger of the KvU64 at ``key`` and ``n`` (a missing key takes n)."""
        return self._numeric(MutationKind.MAX, key, n)

    def enqueue(
        self,
        value: object,
        *,
        delay: object = 0,
        keys_if_undelivered: Iterable[Sequence[Any]] = (),
        backoff_schedule: Sequence[object] | None = None,
    ) -> Self:
        """Queues ``value`` for delivery if (and only if) the commit succeeds.

        Args:
            value: any storable value.
            delay: seconds (or timedelta) before the first delivery, at most 30 days.
            keys_if_undelivered: keys that receive the value if every delivery fails.
            backoff_schedule: seconds to wait before each retry (at most 5 intervals
                of at most 1 hour); None for Deno's default (0.1, 1, 5, 30, 60).
        """
        self._enqueues.append(
            self._core.make_enqueue(
                value,
                delay=delay,
                keys_if_undelivered=keys_if_undelivered,
                backoff_schedule=backoff_schedule,
            )
        )
        return self

    # -- finishing -----------------------------------------------------------

    def build(self) -> AtomicWrite:
        """The engine record of this commit, after checking the commit-wide limits."""
        core = self._core
        check_commit_limits(
            self._checks, self._mutations, self._enqueues, core.limits, core.engine.limits
        )
        return AtomicWrite(tuple(self._checks), tuple(self._mutations), tuple(self._enqueues))

    def check_keys(self) -> list[tuple[Any, ...]]:
        """The keys of the checks, in order (to name the failed ones)."""
        return self._check_keys


class AtomicOperation(AtomicBuilder):
    """One all-or-nothing commit: checks, then mutations in order, then enqueues.

    Build it with the chainable methods and finish with :meth:`commit`:

        >>> import kvmodel as km
        >>> kv = km.open_kv()
        >>> entry = kv.get(("balance", "ada"))
        >>> kv.atomic().check(entry).set(("balance", "ada"), 10).commit().ok
        True
        >>> kv.atomic().check(entry).set(("balance", "ada"), 20).commit().ok
        False
    """

    __slots__ = ()

    def commit(self) -> CommitResult:
        """Applies the operation, or returns ``CommitResult(ok=False)`` if a check failed.

        Raises:
            LimitExceededError: the commit is too large (nothing is written).
            KvTypeError: sum/min/max met a value that is not a KvU64 (nothing is written).
        """
        write = self.build()
        return self._core.commit_write(write, self._check_keys)


def check_commit_limits(
    checks: Sequence[Check],
    mutations: Sequence[Mutation],
    enqueues: Sequence[Enqueue],
    limits: EngineLimits,
    capacity: EngineLimits | None = None,
) -> None:
    """Raises LimitExceededError if the commit breaks a count or size limit.

    Sizes follow Deno's ``ext/kv`` accounting: every checked and mutated key
    counts once, a valued mutation's key counts again with its value, and an
    enqueue counts its payload plus 4 bytes per backoff interval. The key total
    counts the keys of valued mutations. ``capacity``, the engine's own limits,
    lets a message say when ``limits="embedded"`` would lift the one broken.
    """
    engine = limits.name
    if len(checks) > limits.max_checks:
        _too_many("checks", len(checks), limits, engine, "max_checks", capacity)
    n_writes = len(mutations) + len(enqueues)
    if n_writes > limits.max_mutations:
        _too_many("mutations and enqueues", n_writes, limits, engine, "max_mutations", capacity)
    if limits.max_operations is not None:
        n_ops = len(checks) + n_writes
        if n_ops > limits.max_operations:
            _too_many(
                "operations (checks, mutations and enqueues)",
                n_ops,
                limits,
                engine,
                "max_operations",
                None,
                limits.operations_advice,
            )
    payload = 0
    key_total = 0
    for c in checks:
        payload += len(c.key)
    for m in mutations:
        payload += len(m.key)
        if m.kind is not MutationKind.DELETE:
            payload += len(m.key) + len(m.value)
            key_total += len(m.key)
    for e in enqueues:
        payload += len(e.payload) + 4 * len(e.backoff_schedule_ms)
        payload += sum(len(k) for k in e.keys_if_undelivered)
    if payload > limits.max_total_mutation_size:
        raise LimitExceededError(
            f"The commit's total mutation size is {payload} bytes; "
            f"{engine} allows at most {limits.max_total_mutation_size}."
            + lift_hint("max_total_mutation_size", payload, limits, capacity),
            limit=limits.max_total_mutation_size,
            actual=payload,
        )
    if key_total > limits.max_total_key_size:
        raise LimitExceededError(
            f"The commit's total key size is {key_total} bytes; "
            f"{engine} allows at most {limits.max_total_key_size}."
            + lift_hint("max_total_key_size", key_total, limits, capacity),
            limit=limits.max_total_key_size,
            actual=key_total,
        )
    if limits.max_request_size is not None and payload > limits.max_request_size:
        raise LimitExceededError(
            f"The commit is about {payload} bytes; "
            f"{engine} accepts requests of at most {limits.max_request_size}.",
            limit=limits.max_request_size,
            actual=payload,
        )


def _too_many(
    what: str,
    actual: int,
    limits: EngineLimits,
    engine: str,
    field: str,
    capacity: EngineLimits | None,
    advice: str = "",
) -> None:
    limit = getattr(limits, field)
    raise LimitExceededError(
        f"The commit has {actual} {what}; {engine} allows at most {limit}."
        + lift_hint(field, actual, limits, capacity)
        + (f" {advice}" if advice else ""),
        limit=limit,
        actual=actual,
    )


EMBEDDED_LIMITS = EngineLimits.embedded()
"""What ``limits="embedded"`` asks for, to say when it would lift a limit."""
COMMIT_WIDE_LIMITS = (
    "max_checks",
    "max_mutations",
    "max_total_mutation_size",
    "max_total_key_size",
)
"""The EngineLimits fields that bound a whole commit (the ones ``limits="embedded"`` lifts)."""


def lift_hint(field: str, actual: int, limits: EngineLimits, capacity: EngineLimits | None) -> str:
    """A sentence naming ``limits="embedded"`` when it would lift ``field`` to cover ``actual``.

    Empty unless the engine (``capacity``) can hold the embedded limit and the
    limits in force are lower: etcd, KV Connect and Deno's file get no advice
    they cannot follow.
    """
    if capacity is None:
        return ""
    lifted = getattr(EMBEDDED_LIMITS, field)
    if getattr(limits, field) < lifted <= getattr(capacity, field) and actual <= lifted:
        return (
            f" Open the store with limits='embedded' (kvmodel.open_kv(path, "
            f"limits='embedded')) to allow up to {lifted:,} in one commit."
        )
    return ""


def validate_backoff_schedule(schedule: Sequence[object] | None) -> tuple[int, ...]:
    """The backoff schedule in milliseconds (Deno's default for None)."""
    if schedule is None:
        return DEFAULT_BACKOFF_SCHEDULE_MS
    if isinstance(schedule, str | bytes) or not isinstance(schedule, Sequence):
        raise InvalidArgumentError(
            f"backoff_schedule must be a sequence of durations, not {brief_value(schedule)}."
        )
    if len(schedule) > MAX_BACKOFF_INTERVALS:
        raise OptionLimitError(
            f"backoff_schedule has {len(schedule)} intervals; "
            f"at most {MAX_BACKOFF_INTERVALS} are allowed.",
            limit=MAX_BACKOFF_INTERVALS,
            actual=len(schedule),
        )
    return tuple(
        duration_ms("backoff_schedule interval", s, maximum_s=MAX_BACKOFF_INTERVAL_SECONDS)
        for s in schedule
    )


def validate_delay(delay: object) -> int:
    """A queue delay in milliseconds (at most 30 days)."""
    return duration_ms("delay", delay, maximum_s=MAX_QUEUE_DELAY_SECONDS)


def reject_empty_key(key: Sequence[Any]) -> None:
    """Writes need at least one key part (as in Deno)."""
    raise InvalidKeyError(f"Key {brief_repr(key)} is empty; a written key needs at least one part.")
