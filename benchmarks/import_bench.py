"""Import time of kvmodel in a fresh interpreter, and its slowest imports.

    python benchmarks/import_bench.py [--reps 10] [--top 15] [--module kvmodel] [--json]

Runs ``python -c "import kvmodel"`` ``--reps`` times (after one untimed warm-up
run that fills the bytecode caches) beside ``python -c pass``, and reports the
median wall time of each and their difference. Then runs ``python -X importtime
-c "import kvmodel"`` once and lists the imports with the largest self and
cumulative times, so a regression can be traced to its module.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Report, add_common_args, bench_header, median

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_MS = 100.0


def wall_ms(code: str, reps: int) -> list[float]:
    """Wall-clock milliseconds of ``reps`` fresh interpreters running ``code``."""
    cmd = [sys.executable, "-c", code]
    subprocess.run(cmd, check=True, cwd=REPO)  # warm-up: bytecode caches
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO)
        times.append((time.perf_counter() - start) * 1000)
    return times


def import_times(module: str) -> list[tuple[int, int, str]]:
    """(self µs, cumulative µs, module) of every import made by ``import module``."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        check=True,
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stderr
    rows = []
    for line in out.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative_us, name = line[len("import time:") :].split("|")
        # One space after the bar, then two more per level of nesting.
        rows.append((int(self_us), int(cumulative_us), name[1:].rstrip()))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--module", default="kvmodel")
    add_common_args(parser)
    args = parser.parse_args(argv)

    report = Report("import_bench", json_lines=args.json)
    bench_header(report, reps=args.reps, module=args.module)
    bare = wall_ms("pass", args.reps)
    full = wall_ms(f"import {args.module}", args.reps)
    net = median(full) - median(bare)
    verdict = report.verdict(f"import {args.module} < {TARGET_MS:g} ms", median(full) < TARGET_MS)
    report.emit(
        kind="import",
        module=args.module,
        median_ms=round(median(full), 1),
        min_ms=round(min(full), 1),
        bare_median_ms=round(median(bare), 1),
        net_ms=round(net, 1),
    )
    report.table(
        f"Fresh interpreter wall time, median of {args.reps} (ms)",
        ["command", "median", "min", "target", ""],
        [
            ["python -c pass", f"{median(bare):.1f}", f"{min(bare):.1f}", "-", ""],
            [
                f"python -c 'import {args.module}'",
                f"{median(full):.1f}",
                f"{min(full):.1f}",
                f"<{TARGET_MS:g}",
                verdict,
            ],
            ["difference (the import itself)", f"{net:.1f}", "", "", ""],
        ],
    )

    rows = import_times(args.module)
    total = next((c for _, c, name in rows if name.strip() == args.module), 0)
    by_self = sorted(rows, reverse=True)[: args.top]
    report.table(
        f"-X importtime: top {args.top} by self time (cumulative of {args.module}: "
        f"{total / 1000:.1f} ms)",
        ["module", "self ms", "cumulative ms"],
        [[name.strip(), f"{s / 1000:.2f}", f"{c / 1000:.2f}"] for s, c, name in by_self],
    )
    # Depth 1: what the top-level import pulls in directly, nested costs included.
    top_level = [r for r in rows if r[2].startswith("  ") and not r[2].startswith("    ")]
    report.table(
        "-X importtime: imports made directly by top-level imports, by cumulative time",
        ["module", "cumulative ms"],
        [[name, f"{c / 1000:.2f}"] for _, c, name in sorted(top_level, key=lambda r: -r[1])][
            : args.top
        ],
    )
    for s, c, name in rows:
        report.emit(kind="importtime", module=name.strip(), self_us=s, cumulative_us=c)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
