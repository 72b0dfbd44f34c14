"""The ``kvmodel`` command line (also ``python -m kvmodel``).

``kvmodel demo`` runs the orders demo and ``kvmodel --version`` answers with
the core package alone. Every other command (``ls``, ``get``, ``set``,
``dump``, ``load``, ``stats``, ...; see :mod:`kvmodel.cli._app`) needs the
``cli`` extra, ``pip install 'kvmodel[cli]'``, which brings click and rich;
without it the script says so; ``kvmodel serve`` needs the ``connect`` extra
and ``kvmodel browse`` the ``browse`` extra, and each names its extra when it
is missing. ``import kvmodel`` never imports any of them.

This module owns what every command shares: an error is one line on stderr
and a non-zero status (a traceback only with ``--debug``), Ctrl-C ends a
command with status 130 and no traceback, and a closed pipe (``kvmodel ls
... | head``) ends it quietly.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib import metadata

__all__ = ["main"]

INSTALL_HINT = (
    "kvmodel: this command needs the command line extra; install it with "
    "pip install 'kvmodel[cli]' (it adds click and rich)."
)


def version() -> str:
    """The installed kvmodel's version."""
    try:
        return metadata.version("kvmodel")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Runs a ``kvmodel`` command and returns its exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["demo"]:
        # The demo is kvmodel/examples/orders.py, imported only when asked for
        # so the command line starts without loading the example models.
        demo = importlib.import_module("kvmodel.examples.orders")
        status: int = demo.main(args[1:])
        return status
    if args[:1] in (["--version"], ["version"]):
        print(f"kvmodel {version()}")
        return 0
    try:
        from kvmodel.cli import _app as _cli_app
    except ImportError as exc:
        if exc.name in ("click", "rich") or (exc.name or "").startswith(("click.", "rich.")):
            print(INSTALL_HINT, file=sys.stderr)
            return 1
        raise
    debug = "--debug" in args
    try:
        return _cli_app.run(args)
    except KeyboardInterrupt:
        if debug:
            raise
        return 130
    except (BrokenPipeError, _cli_app.PipeClosed):
        _quiet_stdout()
        return 0
    except ModuleNotFoundError as exc:
        extra = _EXTRA_OF.get((exc.name or "").split(".")[0])
        if debug or extra is None:
            raise
        print(
            f"kvmodel: {args[0] if args else 'this command'} needs the {extra!r} extra "
            f"({exc.name} is not installed): pip install 'kvmodel[{extra}]'",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:
        if debug:
            raise
        print(f"kvmodel: {_one_line(exc)}", file=sys.stderr)
        return 1


# The optional packages commands import on demand, and the extra that installs each:
# serve and http(s):// stores need connect, deno: stores with V8 values need deno.
_EXTRA_OF = {
    "google": "connect",  # protobuf
    "hypercorn": "connect",
    "starlette": "connect",
    "httpx": "connect",
    "h2": "connect",
    "anyio": "connect",
    "v8serialize": "deno",
    "jinja2": "browse",
}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not text.endswith((".", "!", "?")):
        text += "."
    from kvmodel.errors import KvError

    if not isinstance(exc, KvError | OSError):
        text = f"{type(exc).__name__}: {text}"
    return text


def _quiet_stdout() -> None:
    """Points stdout at /dev/null, so flushing it at exit raises no second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
