"""Runs the queue, watch and asyncio conformance suites of kvmodel.testing on every engine."""

import pytest

# The suites are library modules so third-party engines can run them too; pytest
# would not rewrite their asserts, so register them before they are imported.
pytest.register_assert_rewrite(
    "kvmodel.testing.conformance_queue",
    "kvmodel.testing.conformance_watch",
    "kvmodel.testing.conformance_aio",
)

# The star imports make pytest collect the suites' tests here, with this
# directory's kv and kv_store fixtures.
from kvmodel.testing.conformance_aio import *  # noqa: E402, F403
from kvmodel.testing.conformance_queue import *  # noqa: E402, F403
from kvmodel.testing.conformance_watch import *  # noqa: E402, F403
