"""The limits every Kv enforces, with Deno KV CLI's numbers.

The same limits apply on every engine, so a test on the in-memory engine catches
what production would reject. An engine with tighter limits declares them with
an :class:`EngineLimits` of its own (see ``Engine.limits``); the Kv enforces the
tighter of the two. Exceeding a limit raises :class:`kvmodel.LimitExceededError`
before anything is written.
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


@attrs.frozen
class EngineLimits:
    """The limits an engine can hold; the Kv enforces the tighter of these and Deno's.

    An engine declares its own through ``Engine.limits``; ``name`` appears in the
    error message so the user knows which engine imposed the limit.
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


DEFAULT_LIMITS = EngineLimits()
"""Deno KV's limits, which every engine enforces at least."""
