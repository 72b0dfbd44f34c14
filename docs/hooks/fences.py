"""mkdocs hook: renders the fence options that tests/test_docs.py reads.

A page marks a python block ``no-run`` (shown, not run) or ``file=NAME``
(written to NAME for a later block to start). Markdown knows neither word and
would not see the block as code at all, so ``no-run`` is dropped and
``file=NAME`` becomes the block's title.
"""

from __future__ import annotations

import re
from typing import Any

_FENCE_OPTIONS = re.compile(r"^(```(?:python|py))[ \t]+(\S.*)$", re.MULTILINE)


def _render(match: re.Match[str]) -> str:
    names = [w.removeprefix("file=") for w in match.group(2).split() if w.startswith("file=")]
    return match.group(1) + (f' title="{names[0]}"' if names else "")


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """The page's Markdown with test-only fence options made presentable."""
    return _FENCE_OPTIONS.sub(_render, markdown)
