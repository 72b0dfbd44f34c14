"""``kvmodel browse STORE``: a local web app to look at a store, and change it with ``--write``.

A Starlette application (:mod:`kvmodel.cli.browse._app`) over any store
``open_kv`` opens, rendered with Jinja2 templates (autoescaped) and served
by hypercorn on 127.0.0.1 (:mod:`kvmodel.cli.browse._server`); the pages'
reads are bounded (:mod:`kvmodel.cli.browse._data`). It needs the
``browse`` extra: ``pip install 'kvmodel[browse]'``. The names below load
those packages on first use, so the command line imports this package
without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvmodel.cli.browse._app import DEFAULT_SCAN_LIMIT, create_app
    from kvmodel.cli.browse._server import ThreadedServer, new_token, serve_app

__all__ = ["DEFAULT_SCAN_LIMIT", "ThreadedServer", "create_app", "new_token", "serve_app"]

_LAZY = {
    "DEFAULT_SCAN_LIMIT": "kvmodel.cli.browse._app",
    "create_app": "kvmodel.cli.browse._app",
    "ThreadedServer": "kvmodel.cli.browse._server",
    "new_token": "kvmodel.cli.browse._server",
    "serve_app": "kvmodel.cli.browse._server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
