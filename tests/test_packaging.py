"""Tests of the packaging (pyproject.toml): what the wheel installs, its metadata, and the
editable install that ``make`` sets up.

The wheel is built once per run from a copy of the files a build reads, without
build isolation (the ``test`` extra brings setuptools, build and twine), so the
tests need no network and leave the working tree alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the sdist and the wheel, built from a copy of the sources."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "kvmodel",
        source / "kvmodel",
        # What an in-place build leaves beside the sources is not a source.
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "_speedups.c", "_speedups.html"),
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


def test_the_wheel_and_the_sdist_hold_the_browsers_templates_and_static_files(
    dist: Path,
) -> None:
    """kvmodel browse's Jinja2 templates, stylesheet and script ship in both archives."""
    browse = ROOT / "kvmodel" / "cli" / "browse"
    files = {
        path.relative_to(ROOT).as_posix()
        for folder in ("templates", "static")
        for path in (browse / folder).iterdir()
    }
    assert "kvmodel/cli/browse/templates/base.html" in files
    with _wheel(dist) as wheel:
        assert files - set(wheel.namelist()) == set()
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        in_sdist = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert files - in_sdist == set()


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


def _sdist(dist: Path) -> Path:
    (sdist,) = dist.glob("*.tar.gz")
    return sdist


def _install_and_probe(dist: Path, target: Path, env: dict[str, str]) -> str:
    """Installs the sdist into ``target`` (no network, no build isolation) and runs kvmodel."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(_sdist(dist)),
        ],
        check=True,
        capture_output=True,
        timeout=300,
        env={**os.environ, **env},
    )
    probe = (
        "import kvmodel as km; kv = km.open_kv(); kv.set(('users', 1), {'n': 'a'}); "
        "print(km.accelerated, [e.key for e in kv.list(prefix=('users',))])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=target,
        env={**os.environ, "PYTHONPATH": str(target)},
    )
    return result.stdout.strip()


def test_the_sdist_ships_the_accelerator_source_and_no_build_output(dist: Path) -> None:
    """The .pyx and its stub are in the sdist; generated C and compiled objects are not."""
    with tarfile.open(_sdist(dist)) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"setup.py", "kvmodel/_speedups.pyx", "kvmodel/_speedups.pyi"} <= names
    assert not {n for n in names if n.endswith((".so", ".c"))}


def test_the_sdist_installs_and_works_without_a_compiler(dist: Path, tmp_path: Path) -> None:
    """With no working C compiler the install goes on, and kvmodel runs pure Python."""
    out = _install_and_probe(dist, tmp_path / "site", {"CC": "false", "LDSHARED": "false"})
    assert out == "False [('users', 1)]"
    assert not list((tmp_path / "site" / "kvmodel").glob("*.so"))


def _compiler_works() -> bool:
    """Whether the C compiler a build would use ($CC, else cc) is there and runs."""
    compiler = (os.environ.get("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return False
    return subprocess.run([compiler, "--version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _compiler_works(), reason="no working C compiler on this machine")
def test_the_sdist_compiles_the_accelerator_where_a_compiler_exists(
    dist: Path, tmp_path: Path
) -> None:
    """With a compiler the same sdist builds kvmodel._speedups, and kvmodel uses it."""
    out = _install_and_probe(dist, tmp_path / "site", {})
    assert out == "True [('users', 1)]"
