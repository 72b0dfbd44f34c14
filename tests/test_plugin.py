"""The kvmodel pytest plugin (kvmodel.testing.plugin): a fresh in-memory ``kv`` per user test."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

# A user's test module: it relies on nothing but the plugin's ``kv`` fixture.
USER_TESTS = """
import kvmodel

seen = []

def test_kv_is_an_empty_in_memory_kv(kv):
    assert isinstance(kv, kvmodel.Kv)
    assert list(kv.list(prefix=())) == []
    assert kv.set(("users", "ada"), {"name": "Ada"}).ok
    assert kv.get(("users", "ada")).value == {"name": "Ada"}
    seen.append(kv)

def test_each_test_gets_its_own_kv(kv):
    assert list(kv.list(prefix=())) == []
    assert seen and kv is not seen[0]
    seen.append(kv)

def test_earlier_kvs_were_closed(kv):
    for earlier in seen:
        try:
            earlier.get(("users", "ada"))
        except kvmodel.KvClosedError:
            continue
        raise AssertionError(f"{earlier!r} was not closed after its test")
"""


def _run_user_suite(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # "-p kvmodel.testing.plugin" loads the plugin the way the pytest11 entry
    # point does when kvmodel is installed; "no:kvmodel" avoids loading it twice.
    return pytester.runpytest("-p", "no:kvmodel", "-p", "kvmodel.testing.plugin", *args)


def test_plugin_gives_each_test_a_fresh_closed_afterwards_kv(pytester: pytest.Pytester) -> None:
    """A user's tests get a working, isolated in-memory Kv, closed after each test."""
    pytester.makepyfile(test_user=USER_TESTS)
    _run_user_suite(pytester).assert_outcomes(passed=3)


def test_a_users_own_kv_fixture_overrides_the_plugins(pytester: pytest.Pytester) -> None:
    """A kv fixture in a user's conftest wins over the plugin's (our own tests rely on it)."""
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def kv():
            return "the user's own"
        """
    )
    pytester.makepyfile(
        test_user="""
        def test_own(kv):
            assert kv == "the user's own"
        """
    )
    _run_user_suite(pytester).assert_outcomes(passed=1)


def test_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    """pyproject.toml registers kvmodel.testing.plugin under the pytest11 entry point group."""
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["pytest11"] == {"kvmodel": "kvmodel.testing.plugin"}


RUN_CONFORMANCE = """
import sys
from kvmodel.engines.memory import MemoryEngine
from kvmodel.testing import KvStore, run_conformance

code = run_conformance(
    lambda tmp_path: KvStore.shared(MemoryEngine),
    "-q",
    "-k",
    "cursor_has_denos_format or a_fresh_kv_is_empty or closing_twice",
)
sys.exit(int(code))
"""


def test_run_conformance_runs_the_suite_on_a_given_engine(pytester: pytest.Pytester) -> None:
    """kvmodel.testing.run_conformance runs the suite's tests against the engine it is given."""
    script = pytester.makepyfile(run_it=RUN_CONFORMANCE)
    result = pytester.runpython(script)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*3 passed*"])
