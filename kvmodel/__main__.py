"""``python -m kvmodel``: the command line of :mod:`kvmodel.cli`."""

from kvmodel.cli import main

raise SystemExit(main())
