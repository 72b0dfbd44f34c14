"""Validation of the scalar options of the public API: durations, counts, consistency.

Each function returns the normalised value or raises InvalidArgumentError with a
sentence naming the option, so every public method validates the same way.
"""

from __future__ import annotations

import math
from datetime import timedelta

from kvmodel._text import brief_value
from kvmodel.engines.base import Consistency
from kvmodel.errors import InvalidArgumentError, LimitExceededError

__all__ = [
    "OptionLimitError",
    "duration_ms",
    "parse_consistency",
    "positive_int",
]


class OptionLimitError(LimitExceededError, InvalidArgumentError):
    """An option beyond its limit (a duration, a backoff schedule, a cursor).

    Both a LimitExceededError and an InvalidArgumentError, so either ``except``
    catches it.
    """


def duration_ms(name: str, value: object, *, maximum_s: float) -> int:
    """Converts a duration in seconds (int, float or timedelta) to whole milliseconds.

    Negative, NaN and infinite durations, bools and other types are
    :class:`InvalidArgumentError`; beyond ``maximum_s`` (every duration has a
    documented maximum, see :mod:`kvmodel.limits`) is an
    :class:`OptionLimitError`, so no engine meets a deadline it cannot store.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond float's range
            if value > 0:
                raise _over(name, value, maximum_s) from None
            seconds = -math.inf  # refused as negative below
    else:
        raise InvalidArgumentError(
            f"{name} must be a number of seconds or a timedelta, not {brief_value(value)}."
        )
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise InvalidArgumentError(
            f"{name} must be a finite, non-negative number of seconds, not {brief_value(value)}."
        )
    if seconds > maximum_s:
        raise _over(name, seconds, maximum_s)
    return math.ceil(seconds * 1000)


def _over(name: str, seconds: float, maximum_s: float) -> OptionLimitError:
    text = _human(seconds) if seconds < 1e300 else "more than 1e300 s"
    return OptionLimitError(
        f"{name} of {text} is over the limit of {_human(maximum_s)}.",
        limit=maximum_s,
        actual=seconds,
    )


def _human(seconds: float) -> str:
    """A duration as people say it: "45 s", "2 hours", "30 days"."""
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def positive_int(name: str, value: object) -> int:
    """Checks that ``value`` is an int >= 1 (bools are not ints here)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be a positive int, not {brief_value(value)}.")
    if value < 1:
        raise InvalidArgumentError(f"{name} must be a positive int, not {brief_value(value)}.")
    return value


def parse_consistency(value: object) -> Consistency:
    """Accepts "strong" or "eventual" (or a Consistency member)."""
    if isinstance(value, Consistency):
        return value
    if value == "strong":
        return Consistency.STRONG
    if value == "eventual":
        return Consistency.EVENTUAL
    raise InvalidArgumentError(
        f'consistency must be "strong" or "eventual", not {brief_value(value)}.'
    )
