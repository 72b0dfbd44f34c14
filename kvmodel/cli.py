"""The ``kvmodel`` command line: ``kvmodel demo`` runs the orders demo.

Also reachable as ``python -m kvmodel``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Runs a ``kvmodel`` subcommand and returns its exit status."""
    args = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="kvmodel", description="kvmodel: Deno KV's data model for Python."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("demo", help="run the orders demo on an embedded SQLite file", add_help=False)
    if not args:
        parser.print_help()
        return 2
    known, _ = parser.parse_known_args(args[:1])
    if known.command == "demo":
        # The demo is examples/orders.py, installed as kvmodel_examples; it is
        # imported by name because it sits outside the typed package.
        demo = importlib.import_module("kvmodel_examples.orders")
        status: int = demo.main(args[1:])
        return status
    parser.print_help()  # pragma: no cover - argparse exits on unknown commands
    return 2
