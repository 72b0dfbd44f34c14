"""Fixtures for kvmodel's own tests: ``kv_store`` and ``kv`` parametrised over every engine.

The conformance suite (``kvmodel.testing.conformance``) only uses these two
fixtures. To run it on another engine, add one entry to ``STORE_FACTORIES``:
a function from a fresh temporary directory to a :class:`kvmodel.testing.KvStore`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_cluster import etcd_store_factory
from hypothesis import settings

from kvmodel import Kv
from kvmodel.engines.denofile import DenoFileEngine
from kvmodel.engines.memory import MemoryEngine
from kvmodel.engines.sqlite import SqliteEngine
from kvmodel.testing import KvStore, StoreFactory

try:  # the KV Connect client and server need the connect extra
    from connect_server import connect_store_factory
except ImportError as exc:  # pragma: no cover - without the extra
    _CONNECT_MISSING: ImportError | None = exc
else:
    _CONNECT_MISSING = None

# ``pytest --hypothesis-profile=slow`` makes the property and stateful tests dig deeper.
settings.register_profile("slow", max_examples=500, stateful_step_count=80, deadline=None)


def _memory_store(tmp_path: Path) -> KvStore:
    # Every Kv wraps the same engine object: that object is the store.
    return KvStore.shared(MemoryEngine)


def _sqlite_store(tmp_path: Path) -> KvStore:
    path = tmp_path / "kv.db"
    return KvStore(lambda **options: SqliteEngine(path, **options), path=str(path))


def _deno_file_store(tmp_path: Path) -> KvStore:
    # A file in Deno's own layout, created here (Deno opens it as it is);
    # Kvs on it write values in V8's format.
    path = tmp_path / "kv.sqlite3"
    return KvStore(lambda **options: DenoFileEngine(path, **options), path=str(path))


def _connect_store(tmp_path: Path) -> KvStore:
    # A KV Connect server (kvmodel serve's app, in a thread) on an in-memory
    # store, and every Kv a ConnectEngine talking to it over loopback HTTP.
    if _CONNECT_MISSING is not None:
        pytest.skip(f"the connect extra is not installed ({_CONNECT_MISSING})")
    return connect_store_factory(lambda _: Kv(MemoryEngine()))(tmp_path)


STORE_FACTORIES: dict[str, StoreFactory] = {
    "denofile": _deno_file_store,
    "memory": _memory_store,
    "sqlite": _sqlite_store,
    # Shared etcd clusters of 1 and 3 members, started on first use; each test
    # gets its own key prefix. Skipped (with the install hint) without etcd.
    "etcd": etcd_store_factory(1),
    "etcd3": etcd_store_factory(3),
    "connect": _connect_store,
}


@pytest.fixture(params=sorted(STORE_FACTORIES))
def kv_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KvStore]:
    """A fresh store on each engine; every Kv opened on it is closed at teardown."""
    with STORE_FACTORIES[request.param](tmp_path) as store:
        yield store


@pytest.fixture
def kv(kv_store: KvStore) -> Kv:
    """A fresh, empty Kv on the engine under test."""
    kv: Kv = kv_store.open()
    return kv
