"""The ``kvmodel`` command line: ``kvmodel demo`` runs the orders demo.

Also reachable as ``python -m kvmodel``.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Runs a ``kvmodel`` subcommand and returns its exit status."""
    args = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="kvmodel", description="kvmodel: Deno KV's data model for Python."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "demo", help="run the orders demo on an embedded SQLite file", add_help=False
    )
    if not args:
        parser.print_help()
        return 2
    known, rest = parser.parse_known_args(args[:1])
    if known.command == "demo":
        from kvmodel_examples.orders import main as demo_main

        return demo_main(args[1:])
    parser.print_help()  # pragma: no cover - argparse exits on unknown commands
    return 2
