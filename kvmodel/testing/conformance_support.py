"""Helpers shared by the conformance suite's modules (no tests here)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from kvmodel import Kv

__all__ = ["VERSIONSTAMP_RE", "dump", "key_of_size", "unchanged", "wait_until"]

VERSIONSTAMP_RE = re.compile(r"[0-9a-f]{20}")
"""A versionstamp as the API shows it: 20 lowercase hex characters."""


def dump(kv: Kv) -> list[tuple[tuple[Any, ...], Any, str | None]]:
    """Everything the user can see, as (key, value, versionstamp) in key order."""
    return [(e.key, e.value, e.versionstamp) for e in kv.list(prefix=())]


@contextmanager
def unchanged(kv: Kv) -> Iterator[None]:
    """Asserts that the block changes nothing visible (put ``pytest.raises`` inside it)."""
    before = dump(kv)
    yield
    assert dump(kv) == before


def key_of_size(size: int, part: str = "x") -> tuple[str]:
    """A one-part str key whose encoding is exactly ``size`` bytes (tag + text + 00)."""
    return (part * (size - 2),)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Polls ``predicate`` until it holds or ``timeout`` seconds pass; returns whether it held.

    Only used to wait for time itself (expiry deadlines): there is no event for
    "the clock moved past a deadline".
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
