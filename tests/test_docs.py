"""Tests of the documentation: the runnable snippets of docs/ and the doctests of kvmodel.

Snippet convention for the Markdown pages in ``DOC_PAGES``:

* A block fenced ```` ```python ```` runs. The blocks of one page run in order in
  one fresh namespace, with a fresh temporary directory as the working
  directory, so ``open_kv("app.db")`` creates its file there.
* A block fenced ```` ```python no-run ```` is shown but not run. Use it for code
  that needs a server, or that blocks until it is stopped; say in the page how
  to run it.
* A block fenced ```` ```python file=NAME ```` is not run but written to NAME in
  the page's working directory, so a later block can start it as a second
  process (``subprocess.Popen([sys.executable, NAME])``).
* Each top-level statement of a block runs on its own, and its trailing comment
  (on the statement's last line) is checked when it has one of two forms:
  ``# SomeError: ...`` means the statement must raise an exception whose class
  (or a base class) is named ``SomeError``, and a comment that is a Python
  literal (``# 65536``, ``# ['cy', 'dee']``) after an expression means the
  expression must equal it. Any other comment is prose.
* Every :class:`kvmodel.Kv` the page opened is closed after the page.

The doctests of every module of the kvmodel package run too (``doctest.testmod``).
"""

from __future__ import annotations

import ast
import codeop
import doctest
import importlib
import inspect
import io
import os
import pkgutil
import re
import sys
import tokenize
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kvmodel

ROOT = Path(__file__).resolve().parent.parent

DOC_PAGES = [
    "docs/tutorial/kv.md",
    "docs/tutorial/models.md",
    "docs/explanation/reliability.md",
    "docs/explanation/accelerator.md",
    "docs/reference/limits.md",
    "docs/reference/errors.md",
    "docs/reference/engine-protocol.md",
    "docs/reference/api.md",
    "docs/how-to/queues.md",
    "docs/how-to/watch.md",
    "docs/how-to/async.md",
    "docs/explanation/architecture.md",
    "docs/explanation/consistency.md",
    "docs/index.md",
    "docs/how-to/unique-constraints.md",
    "docs/how-to/add-an-index.md",
    "docs/how-to/query-your-models.md",
    "docs/how-to/relate-models.md",
    "docs/how-to/evolve-a-model.md",
    "docs/how-to/retries.md",
    "docs/how-to/bulk-writes.md",
    "docs/how-to/choose-an-engine.md",
    "docs/how-to/share-data-with-deno.md",
    "docs/how-to/test-your-application.md",
    "docs/explanation/models-and-keys.md",
    "docs/explanation/unit-of-work.md",
    "docs/reference/type-mapping.md",
    "docs/reference/key-encoding.md",
    "docs/reference/value-encoding.md",
    "docs/reference/sqlite-engine.md",
    "docs/reference/etcd-engine.md",
    "docs/reference/connect-engine.md",
]

_FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_ERROR_COMMENT = re.compile(r"#\s*([A-Za-z_][A-Za-z0-9_]*(?:Error|Exception|Warning)):")


def python_blocks(text: str) -> Iterator[tuple[int, str, str]]:
    """Yields (line number, code, mode) for each python block of a Markdown text.

    The mode is "run", "no-run", or "file=NAME".
    """
    for match in _FENCE.finditer(text):
        info = match.group(1).split()
        if not info or info[0] not in ("python", "py"):
            continue
        line = text.count("\n", 0, match.start(2)) + 1
        modes = [word for word in info[1:] if word == "no-run" or word.startswith("file=")]
        yield line, match.group(2), modes[0] if modes else "run"


def trailing_comments(code: str) -> dict[int, str]:
    """The comment at the end of each line of ``code``, by line number."""
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string
    return comments


def _literal(comment: str) -> tuple[bool, Any]:
    """(True, value) when the comment's text is a Python literal."""
    text = comment.lstrip("#").strip()
    if not text:
        return False, None
    try:
        return True, ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False, None


def _raised_name_matches(exc: BaseException, name: str) -> bool:
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def run_block(code: str, namespace: dict[str, Any], where: str) -> None:
    """Runs a block statement by statement, checking error and literal comments."""
    tree = ast.parse(code, filename=where)
    comments = trailing_comments(code)
    for node in tree.body:
        last = node.end_lineno or node.lineno
        comment = comments.get(last, "")
        label = f"{where}, block line {node.lineno}"
        expected_error = _ERROR_COMMENT.match(comment)
        is_expr = isinstance(node, ast.Expr)
        value: Any = None
        try:
            if isinstance(node, ast.Expr):
                value = eval(compile(ast.Expression(node.value), label, "eval"), namespace)
            else:
                exec(compile(ast.Module([node], []), label, "exec"), namespace)
        except Exception as exc:
            if expected_error and _raised_name_matches(exc, expected_error.group(1)):
                continue
            raise AssertionError(f"{label}: {ast.unparse(node)!r} raised {exc!r}") from exc
        if expected_error:
            raise AssertionError(
                f"{label}: {ast.unparse(node)!r} should raise {expected_error.group(1)}"
            )
        if is_expr and comment:
            is_literal, expected = _literal(comment)
            if is_literal:
                assert value == expected, f"{label}: {ast.unparse(node)!r} is {value!r}"


@pytest.fixture
def opened_kvs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[kvmodel.Kv]]:
    """Records every Kv created while a page runs, and closes them afterwards."""
    opened: list[kvmodel.Kv] = []
    original_init = kvmodel.Kv.__init__

    def recording_init(self: kvmodel.Kv, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(kvmodel.Kv, "__init__", recording_init)
    yield opened
    for kv in opened:
        kv.close()


@pytest.mark.parametrize("page", DOC_PAGES)
def test_runnable_snippets_of_a_page_run(
    page: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    opened_kvs: list[kvmodel.Kv],
) -> None:
    """Every runnable python block of the page runs, and its checked comments hold."""
    text = (ROOT / page).read_text(encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    # The page runs as a real module, as a reader's script would: models resolve
    # their annotations through sys.modules[cls.__module__].
    module = types.ModuleType("__doc_snippet__")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace: dict[str, Any] = module.__dict__
    for line, code, mode in python_blocks(text):
        if mode == "run":
            run_block(code, namespace, f"{page}:{line}")
        elif mode.startswith("file="):
            (tmp_path / mode.removeprefix("file=")).write_text(code, encoding="utf-8")


# Pages whose python blocks are not snippets to run: the examples page includes
# the example files themselves at build time (tests/test_examples.py tests them).
NOT_RUN_PAGES = {"docs/how-to/examples.md"}


def test_every_page_with_python_blocks_is_run() -> None:
    """A page of docs/ with a python block is in DOC_PAGES, so no snippet escapes the tests."""
    pages = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md"))
    with_code = [p for p in pages if any(python_blocks((ROOT / p).read_text(encoding="utf-8")))]
    assert set(with_code) - set(DOC_PAGES) - NOT_RUN_PAGES == set()


def test_no_run_blocks_still_parse() -> None:
    """Blocks that are not run in place are valid Python, so they do not rot unseen."""
    for page in DOC_PAGES:
        text = (ROOT / page).read_text(encoding="utf-8")
        for line, code, mode in python_blocks(text):
            if mode != "run":
                ast.parse(code, filename=f"{page}:{line}")


# The tutorials' snippets are meant to be pasted into an interactive Python: the
# 3.11 REPL compiles each statement as it is typed, so a blank line inside a
# class or a block ends it early, and a statement at the margin right after an
# indented block (no blank line between) is refused.
REPL_PAGES = ["docs/tutorial/kv.md", "docs/tutorial/models.md"]


def repl_problems(code: str) -> list[str]:
    """Where pasting ``code`` line by line into the REPL fails, as the REPL reads it.

    Each line is added to the pending input and compiled as one interactive
    statement (``codeop``, as ``code.InteractiveConsole.push`` does): None means
    the REPL asks for more, a code object means it runs the input and starts over.
    """
    problems: list[str] = []
    pending: list[str] = []
    for number, line in enumerate(code.split("\n"), 1):
        pending.append(line)
        try:
            compiled = codeop.compile_command("\n".join(pending), "<stdin>", "single")
        except SyntaxError as exc:
            problems.append(f"line {number} {line.strip()!r}: {exc.msg}")
            pending = []
            continue
        if compiled is not None:
            pending = []
    return problems


@pytest.mark.parametrize("page", REPL_PAGES)
def test_tutorial_snippets_paste_into_a_repl(page: str) -> None:
    """Every python block of a tutorial not marked file= pastes into a 3.11 REPL as it is."""
    text = (ROOT / page).read_text(encoding="utf-8")
    found = [
        f"{page}:{line}: {problem}"
        for line, code, mode in python_blocks(text)
        if not mode.startswith("file=")
        for problem in repl_problems(code)
    ]
    assert found == [], "\n".join(found)


def test_the_repl_checker_catches_blank_lines_in_blocks() -> None:
    """A blank line inside a class, and a margin statement right after a block, are caught."""
    assert repl_problems("class A:\n    x = 1\n\n    y = 2\n") != []
    assert repl_problems("for i in (1, 2):\n    i\nz = 3\n") != []
    assert repl_problems("class A:\n    x = 1\n    y = 2\n\nz = A()\n") == []


def test_the_snippet_checker_catches_wrong_comments() -> None:
    """A wrong literal comment, an error that does not happen, or one that does, all fail."""
    for code in ("1 + 1  # 3", "x = 1  # ValueError: no", "int('x')"):
        with pytest.raises(AssertionError):
            run_block(code, {}, "example")
    run_block("int('x')  # ValueError: invalid literal\n1 + 1  # 2", {}, "example")


def _kvmodel_modules() -> list[str]:
    names = ["kvmodel"]
    for info in pkgutil.walk_packages(kvmodel.__path__, "kvmodel."):
        if info.name.rsplit(".", 1)[-1] == "__main__":  # importing it runs the CLI
            continue
        names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("module_name", _kvmodel_modules())
def test_doctests_of_a_module_pass(module_name: str) -> None:
    """The module's doctests pass."""
    module = importlib.import_module(module_name)
    failed, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert failed == 0, f"{failed} doctest(s) of {module_name} failed (see the output above)"


# ---------------------------------------------------------------------------
# docs/reference/api.md lists every public name with its exact signature.


class _Annotation:
    """An annotation kept as the text it was written as (the module uses PEP 563)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _unquoted(annotation: Any) -> Any:
    return _Annotation(annotation) if isinstance(annotation, str) else annotation


def _format_signature(obj: Any, *, drop_self: bool) -> tuple[str, str]:
    signature = inspect.signature(obj)
    params = [p.replace(annotation=_unquoted(p.annotation)) for p in signature.parameters.values()]
    if drop_self and params and params[0].name == "self":
        params = params[1:]
    signature = signature.replace(
        parameters=params, return_annotation=_unquoted(signature.return_annotation)
    )
    prefix = "async " if inspect.iscoroutinefunction(obj) else ""
    return prefix, str(signature)


def _members(cls: type) -> Iterator[tuple[str, Any]]:
    """The public methods and properties of a class, its kvmodel bases included."""
    seen: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("kvmodel"):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            if isinstance(value, property) or inspect.isfunction(value):
                seen.add(name)
                yield name, value


def api_signatures() -> list[str]:
    """One line per public name of kvmodel and kvmodel.aio, as api.md shows them."""
    import kvmodel.aio

    lines: list[str] = []
    for module in (kvmodel, kvmodel.aio):
        for name in module.__all__:
            obj = getattr(module, name)
            qualified = f"{module.__name__}.{name}"
            if inspect.isclass(obj):
                if issubclass(obj, BaseException):
                    lines.append(f"class {qualified}")
                    continue
                lines.append(f"class {qualified}{_format_signature(obj, drop_self=False)[1]}")
                for member, value in _members(obj):
                    if isinstance(value, property):
                        lines.append(f"{name}.{member}")
                    else:
                        prefix, signature = _format_signature(value, drop_self=True)
                        lines.append(f"{prefix}{name}.{member}{signature}")
            elif callable(obj):
                prefix, signature = _format_signature(obj, drop_self=False)
                lines.append(f"{prefix}{qualified}{signature}")
            else:
                lines.append(qualified)
    return lines


def test_api_reference_lists_every_public_name_with_its_signature() -> None:
    """docs/reference/api.md shows each public name and signature exactly as inspect does."""
    text = (ROOT / "docs/reference/api.md").read_text(encoding="utf-8")
    missing = [line for line in api_signatures() if f"`{line}`" not in text]
    assert not missing, "api.md lacks (or has outdated) these lines:\n" + "\n".join(missing)


# The built site works opened from files, as docs/index.md suggests.


def test_the_built_site_works_from_files(tmp_path: Path) -> None:
    """Every page's links name files that exist (no directory URLs), and search ships its index."""
    pytest.importorskip("mkdocs")
    import subprocess

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--quiet", "--site-dir", str(site)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    broken = []
    for page in site.rglob("*.html"):
        # Only a web server shows 404.html, at any depth, so its links are absolute.
        if page.name == "404.html":
            continue
        for link in re.findall(r'href="([^"]*)"', page.read_text(encoding="utf-8")):
            href = link.split("#")[0].split("?")[0]
            if not href or re.match(r"[a-z]+:", href):  # same page, or another site
                continue
            if not (page.parent / href).resolve().is_file():
                broken.append(f"{page.relative_to(site)} -> {href}")
    assert not broken, "links that need a web server:\n" + "\n".join(broken[:20])
    assert any(site.joinpath("search").glob("*.js")), "search has no offline index"


def test_doctests_indented_under_a_paragraph_are_fenced_at_its_margin() -> None:
    """An rST-style indented doctest becomes a pycon fence at the paragraph's margin, so the
    API pages show code, not the fence markers inside an indented code block."""
    pytest.importorskip("griffe")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "griffe_docstrings", ROOT / "docs/hooks/griffe_docstrings.py"
    )
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    text = "Build it:\n\n    >>> 1 + 1\n    2\n\nAfter."
    assert hook.markdown_docstring(text) == "Build it:\n\n```pycon\n>>> 1 + 1\n2\n```\n\nAfter."
    nested = "Args:\n    x: a value\n\n        >>> x\n        1"
    assert "    ```pycon\n    >>> x\n    1\n    ```" in hook.markdown_docstring(nested)
    plain = ">>> 1\n1"
    assert hook.markdown_docstring(plain) == "```pycon\n>>> 1\n1\n```"
