"""Testing support: the engine-conformance suite, hypothesis strategies and a pytest plugin.

Three things live here:

* :mod:`kvmodel.testing.conformance` is one suite of plain pytest tests of the
  whole :class:`kvmodel.Kv` API, as docs/reference/api.md states it. It runs unchanged against
  every engine; it needs only two fixtures, ``kv_store`` (a :class:`KvStore`)
  and ``kv`` (a fresh, empty Kv on it). Engine differences are capability
  flags (``kv_store.capabilities.durable``), never engine names.
* :mod:`kvmodel.testing.strategies` holds hypothesis strategies for keys and
  values, and the key order Deno KV defines.
* :mod:`kvmodel.testing.plugin` (registered as the ``kvmodel`` pytest plugin)
  gives *your* application's tests a ``kv`` fixture: a fresh in-memory Kv per test.

Running the suite against a third-party engine takes one test file::

    # tests/test_my_engine_conformance.py
    import pytest
    from kvmodel.testing import KvStore
    from kvmodel.testing.conformance import *  # noqa: F403  (the tests themselves)

    @pytest.fixture
    def kv_store(tmp_path):
        # Each open() must give a new engine on the SAME data.
        with KvStore(lambda **options: MyEngine(tmp_path / "db", **options),
                     path=str(tmp_path / "db")) as store:
            yield store

    @pytest.fixture
    def kv(kv_store):
        return kv_store.open()

or, without writing a test file, from a script or a REPL::

    from kvmodel.testing import KvStore, run_conformance
    exit_code = run_conformance(
        lambda tmp_path: KvStore(lambda **options: MyEngine(tmp_path / "db", **options),
                                 path=str(tmp_path / "db")),
        "-q",
    )

An engine that keeps its data in the object itself (like ``MemoryEngine``)
uses :meth:`KvStore.shared` so every ``open()`` wraps the same engine object.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The suite's modules are plain modules, not test files, so pytest would not
# rewrite their asserts; registering them first gives readable failure messages.
pytest.register_assert_rewrite(
    "kvmodel.testing.conformance",
    "kvmodel.testing.conformance_aio",
    "kvmodel.testing.conformance_atomic",
    "kvmodel.testing.conformance_data",
    "kvmodel.testing.conformance_linked",
    "kvmodel.testing.conformance_list",
    "kvmodel.testing.conformance_queue",
    "kvmodel.testing.conformance_support",
    "kvmodel.testing.conformance_watch",
)

from kvmodel.engines.base import Engine, EngineCapabilities  # noqa: E402
from kvmodel.errors import KvClosedError  # noqa: E402

__all__ = ["KvStore", "StoreFactory", "run_conformance"]


class KvStore:
    """One underlying store on which the conformance suite opens one Kv or several.

    ``open_engine(**options)`` must return a new engine on the same data each
    time it is called (same file, same server). Every Kv opened through
    :meth:`open` is closed by :meth:`close`, which the fixture calls at teardown.

    Attributes:
        path: the store's file or URL, or None for a store with no address.
    """

    def __init__(self, open_engine: Callable[..., Engine], *, path: str | None = None) -> None:
        self._open_engine = open_engine
        self.path = path
        self._engines: list[Engine] = []
        self._kvs: list[Any] = []
        self._probe: Callable[[], Engine] | None = None

    @classmethod
    def shared(cls, make_engine: Callable[..., Engine]) -> KvStore:
        """A store whose every Kv wraps one engine object (made by the first ``open``).

        Options are passed to ``make_engine`` on the first ``open`` only; later
        ones must not pass any, since the engine already exists.
        """
        engine: list[Engine] = []

        def open_engine(**options: Any) -> Engine:
            if not engine:
                engine.append(make_engine(**options))
            elif options:
                raise TypeError(
                    f"Options {options!r} cannot apply to the shared engine, which is "
                    "already open; pass them to the first open() instead."
                )
            return engine[0]

        store = cls(open_engine)
        # Asking a shared store its capabilities must not create the shared
        # engine: a test may still open its first Kv with options.
        store._probe = make_engine
        return store

    @property
    def capabilities(self) -> EngineCapabilities:
        """The engine's capability flags (opens a Kv if none is open yet)."""
        if not self._engines:
            if self._probe is not None:
                probe = self._probe()
                try:
                    return probe.capabilities
                finally:
                    probe.close()
            self.open()
        return self._engines[0].capabilities

    def open(self, **options: Any) -> Any:
        """Opens another Kv on the same data; it is closed at teardown if still open."""
        # Imported here so kvmodel.testing stays importable while the facade is
        # being written, and so the testing package adds no import cycle.
        from kvmodel import Kv

        engine = self._open_engine(**options)
        kv = Kv(engine)
        if not any(e is engine for e in self._engines):
            self._engines.append(engine)
        self._kvs.append(kv)
        return kv

    def close(self) -> None:
        """Closes every Kv and engine opened here, newest first; closing twice is harmless."""
        while self._kvs:
            kv = self._kvs.pop()
            # A test may have closed it already, which is its right.
            with contextlib.suppress(KvClosedError):
                kv.close()
        while self._engines:
            engine = self._engines.pop()
            with contextlib.suppress(KvClosedError):
                engine.close()

    def __enter__(self) -> KvStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


StoreFactory = Callable[[Path], KvStore]
"""Builds a :class:`KvStore` whose data lives in (or is named after) a fresh temp directory."""


def run_conformance(store_factory: StoreFactory, *pytest_args: str) -> int | pytest.ExitCode:
    """Runs the conformance suite against the stores ``store_factory`` builds.

    ``store_factory(tmp_path)`` is called once per test with a fresh temporary
    directory. Extra arguments go to pytest (``"-q"``, ``"-x"``, ``"-k", "cursor"``).
    Returns pytest's exit code (0 when every test passed).
    """

    class _ConformancePlugin:
        # pytest looks fixtures up on the plugin's class, so they are methods.
        @pytest.fixture
        def kv_store(self, tmp_path: Path) -> Iterator[KvStore]:
            with store_factory(tmp_path) as store:
                yield store

        @pytest.fixture
        def kv(self, kv_store: KvStore) -> Any:
            return kv_store.open()

    return pytest.main(
        [
            "--pyargs",
            "kvmodel.testing.conformance",
            "-p",
            "no:cacheprovider",
            # The user-facing plugin's in-memory ``kv`` must not shadow the engine's.
            "-p",
            "no:kvmodel",
            *pytest_args,
        ],
        plugins=[_ConformancePlugin()],
    )
