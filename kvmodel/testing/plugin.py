"""The ``kvmodel`` pytest plugin: a ``kv`` fixture for your application's tests.

Installed with kvmodel (entry point ``pytest11: kvmodel``), so any test can ask
for ``kv`` and get a fresh, empty in-memory :class:`kvmodel.Kv`, closed when
the test ends::

    def test_signup(kv):
        kv.set(("users", "ada"), {"name": "Ada"})
        assert kv.get(("users", "ada")).value == {"name": "Ada"}

A ``kv`` fixture of your own (in a conftest.py) overrides this one, as any
closer fixture does; kvmodel's own test suite does exactly that.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import kvmodel

__all__ = ["kv"]


@pytest.fixture
def kv() -> Iterator[kvmodel.Kv]:
    """A fresh in-memory Kv per test, closed afterwards."""
    with kvmodel.open_kv() as store:
        yield store
