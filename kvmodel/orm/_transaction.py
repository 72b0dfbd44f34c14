"""Optimistic transactions: :func:`transaction` reruns a function on conflict."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from kvmodel.errors import ConflictError, InvalidArgumentError, UniqueViolationError
from kvmodel.orm.session import Session

if TYPE_CHECKING:
    from kvmodel._kv import Kv

__all__ = ["check_retries", "retry_delay", "transaction"]

T = TypeVar("T")


def transaction(
    kv: Kv,
    fn: Callable[[Session], T],
    retries: int = 10,
    *,
    base_delay: float = 0.005,
    max_delay: float = 0.5,
) -> T:
    """Runs ``fn(session)`` and commits, rerunning the whole function on conflict.

    Each attempt gets a fresh :class:`Session`, so ``fn`` reads current data.
    Between attempts it sleeps a random time up to ``base_delay * 2**attempt``
    seconds (capped at ``max_delay``): the "full jitter" backoff, which spreads
    competing writers apart. A :class:`kvmodel.UniqueViolationError` is not
    retried (rerunning cannot free the value), nor is any other error.

    >>> import kvmodel as km
    >>> class Counter(km.Model, prefix="counters"):
    ...     name: str = km.field(primary_key=True)
    ...     n: int = 0
    >>> kv = km.open_kv()
    >>> def bump(s):
    ...     c = s.get(Counter, "hits") or Counter(name="hits")
    ...     s.add(c)
    ...     c.n += 1
    ...     return c.n
    >>> km.transaction(kv, bump), km.transaction(kv, bump)
    (1, 2)

    Args:
        kv: the Kv to work on.
        fn: the unit of work; its return value is returned.
        retries: how many times to rerun after a conflict (0: run once).

    Raises:
        ConflictError: still conflicting after ``retries`` reruns.
    """
    check_retries(retries)
    attempt = 0
    while True:
        session = Session(kv)
        try:
            result = fn(session)
            session.commit()
            return result
        except UniqueViolationError:
            raise
        except ConflictError:
            if attempt >= retries:
                raise
        finally:
            # The objects fn returns stay usable: detached, ready to merge.
            session.close()
        time.sleep(retry_delay(attempt, base_delay, max_delay))
        attempt += 1


def check_retries(retries: object) -> None:
    """Rejects a retry count that is not an int >= 0."""
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise InvalidArgumentError(f"retries must be an int >= 0, not {retries!r}.")


def retry_delay(attempt: int, base_delay: float, max_delay: float) -> float:
    """Seconds to sleep before rerun ``attempt + 1``: "full jitter" exponential backoff."""
    return random.uniform(0, min(max_delay, base_delay * (2**attempt)))
