"""Builds kvmodel's optional compiled accelerator (kvmodel/_speedups.pyx) with Cython.

Everything else about the package is in pyproject.toml. The extension is
optional: without Cython, without a C compiler, or with KVMODEL_PURE_PYTHON=1
set at build time, the build goes on without it and kvmodel runs its
pure-Python reference code (``kvmodel.accelerated`` is then False).
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that warns and goes on when the accelerator cannot be compiled."""

    skipped = False

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skip(exc)

    def copy_extensions_to_source(self) -> None:
        if not self.skipped:  # an in-place build that failed has nothing to copy
            super().copy_extensions_to_source()

    def _skip(self, exc: Exception) -> None:
        if self.skipped:
            return  # said once
        self.skipped = True
        print(
            f"kvmodel: the compiled accelerator was not built ({exc}); "
            "kvmodel runs its pure-Python code.",
            file=sys.stderr,
        )


def _extensions() -> list[Extension]:
    if os.environ.get("KVMODEL_PURE_PYTHON", "") not in ("", "0"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("kvmodel: Cython is missing; building without the accelerator.", file=sys.stderr)
        return []
    return cythonize(
        [Extension("kvmodel._speedups", ["kvmodel/_speedups.pyx"])],
        compiler_directives={"language_level": "3"},
        quiet=True,
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
