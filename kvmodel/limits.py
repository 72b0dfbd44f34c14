"""The limits every Kv enforces: Deno KV CLI's numbers by default.

By default the same limits apply on every engine, so a test on the in-memory
engine catches what production would reject. An engine declares the most it
can hold with an :class:`EngineLimits` of its own (see ``Engine.limits``); the
Kv enforces the limits it was opened with (Deno's unless ``limits=`` asks for
others, such as :meth:`EngineLimits.embedded`), tightened by the engine's, and
refuses at open a request the engine cannot hold. Exceeding a limit raises
:class:`kvmodel.LimitExceededError` before anything is written.
"""

from __future__ import annotations

import attrs

__all__ = [
    "MAX_BACKOFF_INTERVAL_SECONDS",
    "MAX_BACKOFF_INTERVALS",
    "MAX_CHECKS",
    "MAX_CURSOR_LENGTH",
    "MAX_EXPIRE_IN_SECONDS",
    "MAX_GET_MANY_KEYS",
    "MAX_KEY_SIZE",
    "MAX_LIST_BATCH",
    "MAX_MUTATIONS",
    "MAX_QUEUE_DELAY_SECONDS",
    "MAX_READ_KEY_SIZE",
    "MAX_TOTAL_KEY_SIZE",
    "MAX_TOTAL_MUTATION_SIZE",
    "MAX_VALUE_SIZE",
    "MAX_WATCH_KEYS",
    "DEFAULT_LIMITS",
    "EMBEDDED_MAX_CHECKS",
    "EMBEDDED_MAX_MUTATIONS",
    "EMBEDDED_MAX_TOTAL_KEY_SIZE",
    "EMBEDDED_MAX_TOTAL_MUTATION_SIZE",
    "EngineLimits",
]

MAX_KEY_SIZE = 2048
"""Bytes of an encoded key that is written."""
MAX_READ_KEY_SIZE = MAX_KEY_SIZE + 1
"""Bytes of an encoded key used as a read bound (one more, as Deno allows)."""
MAX_VALUE_SIZE = 65536
"""Bytes of an encoded value."""
MAX_GET_MANY_KEYS = 10
"""Keys in one ``get_many``."""
MAX_LIST_BATCH = 1000
"""Entries fetched by one engine read of a ``list``."""
MAX_CHECKS = 100
"""Checks in one atomic commit."""
MAX_MUTATIONS = 1000
"""Mutations plus enqueues in one atomic commit."""
MAX_TOTAL_MUTATION_SIZE = 819200
"""Bytes of all mutations in one commit; a valued mutation's key counts twice, as Deno counts."""
MAX_TOTAL_KEY_SIZE = 81920
"""Bytes of the keys of all valued mutations (set, sum, min, max) in one commit, as Deno counts."""
MAX_WATCH_KEYS = 10
"""Keys in one ``watch``."""
MAX_QUEUE_DELAY_SECONDS = 30 * 24 * 3600
"""Largest ``delay`` of an enqueued message (30 days)."""
MAX_BACKOFF_INTERVALS = 5
"""Intervals in a ``backoff_schedule``."""
MAX_BACKOFF_INTERVAL_SECONDS = 3600
"""Largest interval in a ``backoff_schedule`` (1 hour)."""
MAX_EXPIRE_IN_SECONDS = 100 * 365 * 24 * 3600
"""Largest ``expire_in`` (100 years of 365 days): a deadline every engine can hold.

Deno sets no such limit; kvmodel does so that every engine refuses the same
durations (SQLite stores the deadline in a 64-bit integer of milliseconds, etcd
grants no lease beyond about 285 years).
"""
MAX_CURSOR_LENGTH = 4 * -(-MAX_READ_KEY_SIZE // 3)
"""Characters of a ``list`` cursor (2732): the padded base64url of a 2049-byte key."""


EMBEDDED_MAX_CHECKS = 50_000
"""Checks in one atomic commit under ``limits="embedded"``."""
EMBEDDED_MAX_MUTATIONS = 100_000
"""Mutations plus enqueues in one atomic commit under ``limits="embedded"``."""
EMBEDDED_MAX_TOTAL_MUTATION_SIZE = 64 * 1024 * 1024
"""Bytes of all mutations in one commit under ``limits="embedded"`` (64 MiB), as Deno counts."""
EMBEDDED_MAX_TOTAL_KEY_SIZE = 8 * 1024 * 1024
"""Bytes of the keys of all valued mutations in one commit under ``limits="embedded"`` (8 MiB)."""


@attrs.frozen
class EngineLimits:
    """A set of limits: the ones a Kv enforces, or the most an engine can hold.

    ``Kv(engine, limits=...)`` and ``open_kv(path, limits=...)`` take one (Deno's,
    :data:`DEFAULT_LIMITS`, unless told otherwise; :meth:`embedded` lifts the
    commit-wide ones). An engine declares the most it can hold through
    ``Engine.limits``; a Kv refuses at open limits larger than those. ``name``
    appears in error messages so the user knows who imposed a limit.

        >>> from kvmodel.limits import EngineLimits
        >>> EngineLimits.embedded().max_checks
        50000
        >>> EngineLimits().max_checks
        100
    """

    name: str = "Deno KV"
    max_key_size: int = MAX_KEY_SIZE
    max_value_size: int = MAX_VALUE_SIZE
    max_checks: int = MAX_CHECKS
    max_mutations: int = MAX_MUTATIONS
    max_total_mutation_size: int = MAX_TOTAL_MUTATION_SIZE
    max_total_key_size: int = MAX_TOTAL_KEY_SIZE
    max_list_batch: int = MAX_LIST_BATCH
    # Operations (checks + mutations + enqueue writes + bookkeeping) in one engine
    # transaction; None when the engine has no such limit beyond the ones above.
    max_operations: int | None = None
    # Bytes of one engine request; None when unbounded.
    max_request_size: int | None = None
    # A sentence telling how to raise ``max_operations`` on this engine (its
    # own setting), appended to the error of a commit with too many; "" if none.
    operations_advice: str = ""

    @classmethod
    def embedded(cls) -> EngineLimits:
        """Limits for a store one process tree owns (SQLite, memory): large commits.

        50,000 checks, 100,000 mutations and enqueues, 64 MiB of total
        mutation size and 8 MiB of total key size per commit: a session of
        10,000 new objects with a unique index and a few multi-value index
        entries each fits, and SQLite commits it in one transaction. The
        per-key and per-value limits stay Deno's, so the data itself stays
        portable to every engine and to Deno.
        """
        return cls(
            name="limits='embedded'",
            max_checks=EMBEDDED_MAX_CHECKS,
            max_mutations=EMBEDDED_MAX_MUTATIONS,
            max_total_mutation_size=EMBEDDED_MAX_TOTAL_MUTATION_SIZE,
            max_total_key_size=EMBEDDED_MAX_TOTAL_KEY_SIZE,
        )


DEFAULT_LIMITS = EngineLimits()
"""Deno KV's limits, which every engine enforces at least."""
