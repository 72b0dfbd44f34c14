"""Shared helpers of the benchmarks: data shapes, access orders, timing, tables, JSON lines.

The benchmarks are scripts run by hand (``python benchmarks/kv_bench.py``), never by
the test suite. Each one runs every implementation in the same process, one
workload at a time across all of them, so that the ratios compare runs made under
the same load of this shared machine; only ratios within one run mean much.

The data shapes (users, orders of two items, customers) and the xorshift32
generator mirror the product owner's peer benchmark, so the figures can be set
beside its table.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as _dt
import gc
import itertools
import json
import os
import platform
import pstats
import sqlite3
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The repository root, for showing paths relative to it."""

__all__ = [
    "STATUSES",
    "Data",
    "Report",
    "Result",
    "RssSampler",
    "Rng",
    "Target",
    "add_common_args",
    "bench_header",
    "median",
    "next_status",
    "percentile",
    "rss_bytes",
    "timed",
]

STATUSES = ("pending", "paid", "shipped", "delivered")


def next_status(status: str) -> str:
    """The status that follows ``status`` in the order life cycle (wrapping around)."""
    return STATUSES[(STATUSES.index(status) + 1) % len(STATUSES)]


class Rng:
    """A xorshift32 generator: cheap, seeded, and the same on every implementation."""

    def __init__(self, seed: int = 2463534242) -> None:
        self.state = seed

    def __call__(self) -> int:
        x = self.state
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.state = x
        return x

    def permutation(self, n: int) -> list[int]:
        """A Fisher-Yates shuffle of ``range(n)`` driven by this generator."""
        out = list(range(n))
        for i in range(n - 1, 0, -1):
            j = self() % (i + 1)
            out[i], out[j] = out[j], out[i]
        return out


@dataclass
class Data:
    """The data set and the access orders of one run, drawn once and shared by every column.

    ``n`` users, ``n // 4`` orders, one customer per ten orders.
    """

    n: int
    users: list[dict[str, Any]] = field(init=False)
    orders: list[dict[str, Any]] = field(init=False)
    customers: list[str] = field(init=False)
    get_order: list[int] = field(init=False)
    get_many_order: list[int] = field(init=False)
    page_starts: list[int] = field(init=False)
    update_order: list[int] = field(init=False)
    customer_picks: list[str] = field(init=False)

    def __post_init__(self) -> None:
        n = self.n
        n_orders = max(1, n // 4)
        n_customers = max(1, n_orders // 10)
        self.customers = [f"cus{c:06d}" for c in range(n_customers)]
        self.users = [
            {"name": f"user{i}", "email": f"user{i}@example.com", "age": 18 + i % 60}
            for i in range(n)
        ]
        self.orders = [self._order(j, n_customers) for j in range(n_orders)]
        rng = Rng()
        self.get_order = rng.permutation(n)
        self.get_many_order = rng.permutation(n)
        self.page_starts = [rng() % n for _ in range(1000)]
        self.update_order = rng.permutation(n_orders)
        self.customer_picks = [self.customers[rng() % n_customers] for _ in range(1000)]

    def _order(self, j: int, n_customers: int) -> dict[str, Any]:
        items: list[dict[str, Any]] = [
            {"sku": f"sku{j % 97}", "qty": 1 + j % 3, "price_cents": 100 + j % 1000},
            {"sku": f"sku{(j * 7) % 97}", "qty": 1, "price_cents": 250 + j % 500},
        ]
        created = 1_700_000_000_000 + j * 1000
        return {
            "id": f"ord{j:08d}",
            "customer_id": f"cus{j % n_customers:06d}",
            "status": "pending",
            "total_cents": sum(i["qty"] * i["price_cents"] for i in items),
            "items": items,
            "created_at": created,
            "updated_at": created,
        }


def timed(fn: Callable[[], object]) -> float:
    """Runs ``fn`` once and returns the wall-clock seconds it took."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``samples``, interpolated between neighbours."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def rss_bytes() -> int:
    """The current resident set size of this process (Linux /proc; else the peak)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        # ru_maxrss is a high-water mark (KiB on Linux, bytes on macOS): a fallback only.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class RssSampler:
    """Samples the RSS every ``interval`` seconds in a thread while used as a context manager."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.start = 0
        self.peak = 0
        self.end = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> RssSampler:
        self.start = self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.end = rss_bytes()
        self.peak = max(self.peak, self.end)


@dataclass(frozen=True)
class Target:
    """A target next to a figure: a ratio to the baseline and/or an absolute rate."""

    min_ratio: float | None = None
    min_rate: float | None = None

    def describe(self) -> str:
        parts = []
        if self.min_ratio is not None:
            parts.append(f">={self.min_ratio:g}x")
        if self.min_rate is not None:
            parts.append(f">={_si(self.min_rate)}/s")
        return " & ".join(parts) or "-"

    def met(self, ratio: float | None, rate: float) -> bool:
        ok = True
        if self.min_ratio is not None:
            ok = ok and ratio is not None and ratio >= self.min_ratio
        if self.min_rate is not None:
            ok = ok and rate >= self.min_rate
        return ok


@dataclass
class Result:
    """One measured figure: ``ops`` operations of ``workload`` on ``impl`` in ``secs``."""

    workload: str
    impl: str
    ops: int
    unit: str
    secs: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.ops / self.secs if self.secs > 0 else float("inf")


def _si(x: float) -> str:
    if x >= 10_000_000:
        return f"{x / 1e6:.0f}M"
    if x >= 1_000_000:
        return f"{x / 1e6:.1f}M"
    if x >= 10_000:
        return f"{x / 1e3:.0f}k"
    if x >= 1000:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


class Report:
    """Collects results and prints them as side-by-side tables, or as JSON lines.

    A comparison table has one row per workload: the baseline's rate, the
    candidate's rate, their ratio, the target and whether it is met.
    """

    def __init__(self, bench: str, *, json_lines: bool) -> None:
        self.bench = bench
        self.json_lines = json_lines
        self.results: list[Result] = []
        self.misses: list[str] = []

    def add(self, result: Result) -> Result:
        """Records a result and, in JSON mode, prints it as one line at once."""
        self.results.append(result)
        if self.json_lines:
            self.emit(
                workload=result.workload,
                impl=result.impl,
                ops=result.ops,
                unit=result.unit,
                secs=round(result.secs, 4),
                ops_per_sec=round(result.rate, 1),
                **result.extra,
            )
        return result

    def emit(self, **fields: Any) -> None:
        """Prints one JSON line tagged with this benchmark's name (JSON mode only)."""
        if self.json_lines:
            print(json.dumps({"bench": self.bench, **fields}), flush=True)

    def say(self, text: str = "") -> None:
        """Prints human-readable text (suppressed in JSON mode)."""
        if not self.json_lines:
            print(text, flush=True)

    def find(self, workload: str, impl: str) -> Result | None:
        for r in self.results:
            if r.workload == workload and r.impl == impl:
                return r
        return None

    def comparison(
        self,
        title: str,
        baseline: str,
        candidate: str,
        workloads: Iterable[str],
        targets: dict[str, Target],
    ) -> None:
        """Prints a table of ``candidate`` against ``baseline`` with the targets."""
        rows: list[list[str]] = []
        for w in workloads:
            base = self.find(w, baseline)
            cand = self.find(w, candidate)
            if cand is None:
                continue
            ratio = cand.rate / base.rate if base is not None else None
            target = targets.get(w, Target())
            if target == Target():
                verdict = ""
            elif target.met(ratio, cand.rate):
                verdict = "ok"
            else:
                verdict = "MISS"
                self.misses.append(f"{title}: {w} ({candidate})")
            rows.append(
                [
                    w,
                    f"{cand.unit}/s",
                    _si(base.rate) if base is not None else "-",
                    _si(cand.rate),
                    f"{ratio:.2f}x" if ratio is not None else "-",
                    target.describe(),
                    verdict,
                ]
            )
            self.emit(
                kind="ratio",
                table=title,
                workload=w,
                baseline=baseline,
                candidate=candidate,
                ratio=None if ratio is None else round(ratio, 3),
                target=target.describe(),
                met=verdict != "MISS",
            )
        self.table(title, ["workload", "unit", baseline, candidate, "ratio", "target", ""], rows)

    def table(self, title: str, header: list[str], rows: list[list[str]]) -> None:
        """Prints a plain aligned table (suppressed in JSON mode)."""
        if self.json_lines:
            return
        widths = [
            max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
            for i, h in enumerate(header)
        ]
        print(f"\n{title}")
        print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
        print("  ".join("-" * w for w in widths))
        for r in rows:
            cells = [r[0].ljust(widths[0])] + [
                c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
            ]
            print("  ".join(cells).rstrip())
        sys.stdout.flush()

    def verdict(self, label: str, ok: bool) -> str:
        """Returns "ok" or "MISS" for a target, remembering the misses for the summary."""
        if not ok:
            self.misses.append(label)
        self.emit(kind="target", label=label, met=ok)
        return "ok" if ok else "MISS"

    def finish(self) -> int:
        """Prints the summary of missed targets; returns the exit status (always 0)."""
        if self.misses:
            self.say(f"\nMissed targets ({len(self.misses)}): " + "; ".join(self.misses))
        else:
            self.say("\nAll targets met.")
        self.emit(kind="summary", missed=self.misses)
        # A missed target is a finding to report, not a crash: exit 0 either way.
        return 0


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Adds the options every benchmark takes."""
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of tables")


def bench_header(report: Report, **facts: Any) -> None:
    """Prints (or emits) what was run where: date, Python, SQLite, cores and the options."""
    info = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "load": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        **facts,
    }
    report.emit(kind="meta", **info)
    report.say(f"# {report.bench}: " + ", ".join(f"{k}={v}" for k, v in info.items()))


def median(samples: Sequence[float]) -> float:
    """The median of ``samples`` (NaN when empty)."""
    return statistics.median(samples) if samples else float("nan")


def print_profile(profiler: cProfile.Profile, title: str, top: int = 25) -> None:
    """Prints the functions with the most own time, with their share of the total."""
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_cc, _nc, tt, _ct, _callers) in entries.values()) or 1.0
    rows = sorted(entries.items(), key=lambda kv: -kv[1][2])[:top]
    print(f"\ncProfile of {title}: {total:.3f} s own time in all functions")
    print(f"{'own %':>6} {'cum %':>6} {'calls':>9}  function")
    for (path, line, func), (_cc, nc, tt, ct, _callers) in rows:
        where = path.replace(REPO + os.sep, "") if path != "~" else ""
        print(f"{tt / total:6.1%} {ct / total:6.1%} {nc:9d}  {func} ({where}:{line})")
    sys.stdout.flush()


def run_interleaved(
    report: Report,
    workloads: Sequence[Any],
    columns: Sequence[Any],
    *,
    chunks: int,
    profile: str | None = None,
    profiled: Callable[[str], bool] = lambda name: True,
) -> None:
    """Runs each workload on every column, the columns taking turns slice by slice.

    Taking turns in ``chunks`` slices makes a burst of load on this shared
    machine (or a slow patch of fsyncs) fall on every column alike. The columns
    must agree on each step's count, or the rates would compare different work.
    With ``profile``, that workload runs under cProfile on the columns whose
    name ``profiled`` accepts, and their hot spots are printed.
    """
    for w in workloads:
        parts = min(chunks, w.items)
        bounds = [w.items * i // parts for i in range(parts + 1)]
        secs = dict.fromkeys((c.name for c in columns), 0.0)
        counts = dict.fromkeys((c.name for c in columns), 0)
        profilers = {
            c.name: cProfile.Profile() for c in columns if w.name == profile and profiled(c.name)
        }
        gc.collect()
        for lo, hi in itertools.pairwise(bounds):
            for c in columns:
                profiler = profilers.get(c.name)
                start = time.perf_counter()
                if profiler is not None:
                    profiler.enable()
                counts[c.name] += w.step(c, lo, hi)
                if profiler is not None:
                    profiler.disable()
                secs[c.name] += time.perf_counter() - start
        for c in columns:
            report.add(
                Result(w.name, c.name, w.ops, w.unit, secs[c.name], {"count": counts[c.name]})
            )
        for name, profiler in profilers.items():
            print_profile(profiler, f"{w.name} on {name}")
        if len(set(counts.values())) != 1:
            raise SystemExit(f"Columns disagree on {w.name}: {counts!r}")
