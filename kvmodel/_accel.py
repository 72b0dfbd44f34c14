"""Which implementation of the hot paths runs: the compiled accelerator or pure Python.

``kvmodel._speedups`` is a Cython extension built by ``pip install`` where a C
compiler exists; the pure-Python functions it mirrors stay the reference and
the fallback. Setting the environment variable ``KVMODEL_PURE_PYTHON=1``
before ``import kvmodel`` runs the pure-Python path even when the extension is
there. ``kvmodel.accelerated`` says which one runs.
"""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["PURE_PYTHON_ENV", "accelerated", "speedups"]

PURE_PYTHON_ENV = "KVMODEL_PURE_PYTHON"
"""The environment variable that, set to anything but "" or "0", forces pure Python."""


def _load() -> ModuleType | None:
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return None
    try:
        from kvmodel import _speedups
    except ImportError:  # not built (no compiler at install time): pure Python it is
        return None
    return _speedups


speedups: ModuleType | None = _load()
"""The compiled module, or None when the pure-Python path runs."""
accelerated: bool = speedups is not None
"""True when the compiled accelerator runs."""
