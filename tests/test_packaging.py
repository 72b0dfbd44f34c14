"""Tests of the packaging (pyproject.toml): what the wheel installs, its metadata, and the
editable install that ``make`` sets up.

The wheel is built once per run from a copy of the files a build reads, without
build isolation (the ``test`` extra brings setuptools, build and twine), so the
tests need no network and leave the working tree alone.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the sdist and the wheel, built from a copy of the sources."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "kvmodel", source / "kvmodel", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def _wheel(dist: Path) -> zipfile.ZipFile:
    (wheel,) = dist.glob("*.whl")
    return zipfile.ZipFile(wheel)


def test_the_wheel_installs_nothing_at_the_top_level_but_kvmodel(dist: Path) -> None:
    """The wheel's top-level names are the kvmodel package and its dist-info, nothing else."""
    with _wheel(dist) as wheel:
        top = {name.split("/", 1)[0] for name in wheel.namelist()}
    assert {t for t in top if not t.endswith(".dist-info")} == {"kvmodel"}


def test_the_wheel_holds_every_module_the_typing_marker_and_the_examples(dist: Path) -> None:
    """Every module of kvmodel/ (subpackages and examples included) and py.typed are in it."""
    sources = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "kvmodel").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    with _wheel(dist) as wheel:
        names = set(wheel.namelist())
    assert sources - names == set()
    assert {"kvmodel/py.typed", "kvmodel/examples/orders.py", "kvmodel/examples/web.py"} <= names


def test_the_metadata_says_typed_licence_and_python_version(dist: Path) -> None:
    """METADATA carries the classifiers (Typing :: Typed among them), the licence and Python."""
    with _wheel(dist) as wheel:
        (metadata_name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(wheel.read(metadata_name).decode())
        assert any(n.endswith("licenses/LICENSE") for n in wheel.namelist())
    classifiers = metadata.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Requires-Python"] == ">=3.11"
    assert metadata["Description-Content-Type"] == "text/markdown"


def test_twine_check_passes_on_the_sdist_and_the_wheel(dist: Path) -> None:
    """`twine check --strict` finds nothing to complain about in either file."""
    files = sorted(str(p) for p in dist.iterdir())
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_outside_the_repository_sees_the_editable_install(tmp_path: Path) -> None:
    """mypy run on a script outside the repository resolves kvmodel's types (not a missing
    import and not Any), as `make` installs it in setuptools' compat editable mode."""
    script = tmp_path / "app.py"
    script.write_text("import kvmodel as km\n\nkv: int = km.open_kv()\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), "app.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    hint = (
        "mypy cannot follow the editable install: reinstall it with `make` or with "
        "`pip install -e . --config-settings editable_mode=compat`."
    )
    assert "import-not-found" not in result.stdout, hint + "\n" + result.stdout
    assert 'expression has type "Kv", variable has type "int"' in result.stdout, result.stdout
