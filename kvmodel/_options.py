"""Validation of the scalar options of the public API: durations, counts, consistency.

Each function returns the normalised value or raises InvalidArgumentError with a
sentence naming the option, so every public method validates the same way.
"""

from __future__ import annotations

import math
from datetime import timedelta

from kvmodel.engines.base import Consistency
from kvmodel.errors import InvalidArgumentError, LimitExceededError

__all__ = [
    "QueueLimitError",
    "duration_ms",
    "parse_consistency",
    "positive_int",
]


class QueueLimitError(LimitExceededError, InvalidArgumentError):
    """A queue option beyond its limit: a LimitExceededError and an InvalidArgumentError."""


def duration_ms(name: str, value: object, *, maximum_s: float | None = None) -> int:
    """Converts a duration in seconds (int, float or timedelta) to whole milliseconds.

    Negative, NaN and infinite durations, bools and other types are rejected;
    beyond ``maximum_s`` is a :class:`QueueLimitError`.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise InvalidArgumentError(
            f"{name} must be a number of seconds or a timedelta, not {value!r}."
        )
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise InvalidArgumentError(
            f"{name} must be a finite, non-negative number of seconds, not {value!r}."
        )
    if maximum_s is not None and seconds > maximum_s:
        raise QueueLimitError(
            f"{name} of {_human(seconds)} is over the limit of {_human(maximum_s)}.",
            limit=maximum_s,
            actual=seconds,
        )
    return math.ceil(seconds * 1000)


def _human(seconds: float) -> str:
    """A duration as people say it: "45 s", "2 hours", "30 days"."""
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def positive_int(name: str, value: object) -> int:
    """Checks that ``value`` is an int >= 1 (bools are not ints here)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be a positive int, not {value!r}.")
    if value < 1:
        raise InvalidArgumentError(f"{name} must be a positive int, not {value!r}.")
    return value


def parse_consistency(value: object) -> Consistency:
    """Accepts "strong" or "eventual" (or a Consistency member)."""
    if isinstance(value, Consistency):
        return value
    if value == "strong":
        return Consistency.STRONG
    if value == "eventual":
        return Consistency.EVENTUAL
    raise InvalidArgumentError(f'consistency must be "strong" or "eventual", not {value!r}.')
