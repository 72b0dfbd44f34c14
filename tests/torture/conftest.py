"""Fixtures of the torture tests: the quick/long switch and a seeded, reported RNG.

``KVMODEL_TORTURE=long`` (``make torture``) selects the long setting; without it
every test runs its quick setting, sized for ``make test``. Each test draws its
randomness from the ``seed`` fixture, whose value is printed in the report of a
failing test; ``KVMODEL_TORTURE_SEED=<n>`` replays it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Generator, Iterator

import pytest


@pytest.fixture(scope="session")
def torture_long() -> bool:
    """True when ``KVMODEL_TORTURE=long`` asks for the long setting."""
    return os.environ.get("KVMODEL_TORTURE", "").lower() == "long"


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> Iterator[int]:
    """A seed for the test's RNG, from ``KVMODEL_TORTURE_SEED`` or fresh; reported on failure."""
    value = int(os.environ.get("KVMODEL_TORTURE_SEED") or random.SystemRandom().randrange(2**32))
    request.node.user_properties.append(("seed", value))
    yield value


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Adds the seed to the report of a failing torture test so the run can be replayed."""
    report = yield
    if report.failed:
        for name, value in item.user_properties:
            if name == "seed":
                report.sections.append(
                    ("torture seed", f"replay with KVMODEL_TORTURE_SEED={value}")
                )
    return report
