"""kvmodel's public surface: ``__all__`` of kvmodel and kvmodel.aio is exactly what they export."""

from __future__ import annotations

import types

import pytest

import kvmodel
import kvmodel.aio


@pytest.mark.parametrize("module", [kvmodel, kvmodel.aio], ids=lambda m: m.__name__)
def test_all_is_sorted_and_every_name_exists(module: types.ModuleType) -> None:
    """__all__ is sorted and each of its names is defined."""
    assert module.__all__ == sorted(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), name


@pytest.mark.parametrize("module", [kvmodel, kvmodel.aio], ids=lambda m: m.__name__)
def test_every_public_attribute_is_in_all(module: types.ModuleType) -> None:
    """No public name escapes __all__ (submodules and __version__ aside)."""
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - {"annotations"} == set(module.__all__)


def test_reexported_classes_read_as_kvmodel() -> None:
    """Classes re-exported at the top level show as kvmodel.X in reprs and tracebacks."""
    for name in kvmodel.__all__:
        value = getattr(kvmodel, name)
        if isinstance(value, type) and value is not kvmodel.Model:
            assert value.__module__ == "kvmodel", name


def test_the_object_mapper_is_imported_on_first_use() -> None:
    """`import kvmodel` leaves kvmodel.orm (and cattrs) unimported until a name of it is used."""
    import subprocess
    import sys

    code = (
        "import sys, kvmodel as km; before = 'kvmodel.orm' in sys.modules; "
        "km.Model; print(before, 'kvmodel.orm' in sys.modules, km.Session.__module__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "True", "kvmodel"]
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        kvmodel.Nope  # noqa: B018


def test_the_etcd_engine_keeps_its_import_paths() -> None:
    """The etcd engine's public names import from kvmodel.engines.etcd, as before its
    layers moved into modules of their own."""
    from kvmodel.engines import etcd

    assert etcd.__all__ == sorted(etcd.__all__)
    for name in ("ETCD_LIMITS", "EtcdAuthError", "EtcdEngine", "etcd_limits", "redact_url"):
        assert name in etcd.__all__
        assert hasattr(etcd, name)
    for method in ("snapshot_read", "snapshot_read_linked", "open_snapshot", "atomic_write"):
        assert callable(getattr(etcd.EtcdEngine, method))
    assert callable(etcd.EtcdEngine.dequeue_next_message)
    assert callable(etcd.EtcdEngine.watch)


def test_engine_modules_stay_a_readable_size() -> None:
    """Each module of kvmodel.engines owns one concern, at most 800 lines (STYLE.md)."""
    from pathlib import Path

    import kvmodel.engines

    folder = Path(kvmodel.engines.__file__).parent
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in folder.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 800} == {}
