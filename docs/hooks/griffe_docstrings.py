"""A griffe extension: kvmodel's docstrings, written for ``help()`` and doctest, as Markdown.

The docstrings use reStructuredText habits that Markdown renders badly:
doctest lines (``>>> ...``) that are not in an ``Examples:`` section, roles such
as ``:class:`kvmodel.Kv```, and ``::`` before a literal block. This extension
fences the doctests as ``pycon`` code, turns roles into code spans, and drops
the second colon, so the generated API pages read as the source does.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj|ref):`~?([^`]+)`")
_LITERAL_INTRO = re.compile(r"(\S)::$", re.MULTILINE)


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _fence_doctests(text: str) -> str:
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(">>>"):
            indent = _indent(line)
            # A doctest indented under its paragraph (the rST habit) would be a
            # Markdown indented code block, showing the fences as text: fence
            # it at the paragraph's indentation instead, dedented to match.
            previous = next((p for p in reversed(out) if p.strip()), None)
            if previous is not None and len(_indent(previous)) < len(indent):
                indent = _indent(previous)
            out.append(f"{indent}```pycon")
            # A doctest runs until the first blank line, as doctest reads it.
            cut = len(_indent(line)) - len(indent)
            while i < len(lines) and lines[i].strip():
                out.append(indent + lines[i][len(indent) + cut :])
                i += 1
            out.append(f"{indent}```")
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def markdown_docstring(text: str) -> str:
    """``text`` with its doctests fenced, roles as code spans and ``::`` as ``:``."""
    text = _ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    text = _LITERAL_INTRO.sub(r"\1:", text)
    return _fence_doctests(text)


class MarkdownDocstrings(griffe.Extension):
    """Rewrites every docstring griffe loads with :func:`markdown_docstring`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Called for each module, class, function and attribute griffe finds."""
        if obj.docstring is not None:
            obj.docstring.value = markdown_docstring(obj.docstring.value)
