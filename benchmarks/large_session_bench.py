"""One atomic session of 10,000 new objects beside km.bulk_save of the same objects.

    python benchmarks/large_session_bench.py [--n 10000] [--reps 3] [--sync FULL]
        [--stores file,memory] [--profile session|bulk_save] [--json]

The objects are articles with a unique index on their slug and a multi-value
index on their three tags (``km.Index("tags", each=True)``): five keys and one
unique check per object. Each column writes the same ``--n`` new articles into
a fresh store, building the objects from the same dicts inside the timed region:

* ``session``: one ``km.Session`` on a Kv opened with ``limits="embedded"``,
  ``add`` of every article and ONE commit (atomic: all or nothing);
* ``bulk_save``: ``km.bulk_save(kv, articles)`` on a Kv with Deno's limits,
  as most applications call it (many commits, not atomic as a whole);
* ``bulk_save_embedded``: the same on a Kv opened with ``limits="embedded"``
  (fewer, larger commits).

Target: the session at least 0.5x the rate of ``bulk_save`` (within 2x).
Each figure is the median of ``--reps`` runs, the columns taking turns.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import kvmodel as km

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Report, Result, add_common_args, bench_header, median, print_profile

TAGS = ("python", "kv", "deno", "sqlite", "orm", "bench", "async", "etcd")


class Article(km.Model, prefix="articles"):
    id: str = km.field(primary_key=True)
    slug: str
    title: str
    author: str
    tags: list[str] = km.field(factory=list)
    words: int = 0

    by_slug = km.Unique("slug")
    by_tag = km.Index("tags", each=True)


def article_dicts(n: int) -> list[dict[str, Any]]:
    """n articles, the same on every run: three distinct tags each."""
    out = []
    for i in range(n):
        tags = [TAGS[i % 8], TAGS[(i + 3) % 8], TAGS[(i + 5) % 8]]
        out.append(
            {
                "id": f"a{i:07d}",
                "slug": f"article-number-{i}",
                "title": f"Article number {i}, on {' and '.join(tags)}",
                "author": f"user{i % 97}",
                "tags": tags,
                "words": 300 + i % 1000,
            }
        )
    return out


def open_store(store: str, tmp: str, name: str, sync: str, limits: str) -> km.Kv:
    if store == "memory":
        return km.open_kv(limits=limits)
    return km.open_kv(os.path.join(tmp, name), synchronous=sync, limits=limits)


def check_written(kv: km.Kv, n: int) -> None:
    """Every article and its index entries are there (or the run stops)."""
    report = km.check_indexes(kv, Article)
    count = sum(1 for _ in kv.list(prefix=("articles",)))
    if count != n or not report.ok:
        raise SystemExit(f"{count} of {n} articles written; index check: {report}")


def run_session(kv: km.Kv, data: list[dict[str, Any]]) -> float:
    start = time.perf_counter()
    with km.Session(kv) as s:
        for d in data:
            s.add(Article(**d))
    return time.perf_counter() - start


def run_bulk_save(kv: km.Kv, data: list[dict[str, Any]]) -> float:
    start = time.perf_counter()
    report = km.bulk_save(kv, (Article(**d) for d in data))
    secs = time.perf_counter() - start
    if report.saved != len(data):
        raise SystemExit(f"bulk_save did not save every article: {report}")
    return secs


COLUMNS: dict[str, tuple[str, Callable[[km.Kv, list[dict[str, Any]]], float]]] = {
    "session": ("embedded", run_session),
    "bulk_save": ("deno", run_bulk_save),
    "bulk_save_embedded": ("embedded", run_bulk_save),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="articles per run")
    parser.add_argument("--reps", type=int, default=3, help="runs per column (median)")
    parser.add_argument("--sync", default="FULL", help="SQLite synchronous: FULL or NORMAL")
    parser.add_argument("--stores", default="file,memory", help="comma-separated: file, memory")
    parser.add_argument("--profile", choices=sorted(COLUMNS), help="profile this column")
    add_common_args(parser)
    args = parser.parse_args(argv)

    report = Report("large_session_bench", json_lines=args.json)
    bench_header(report, articles=args.n, reps=args.reps, sync=args.sync)
    data = article_dicts(args.n)
    rows: list[list[str]] = []
    for store in args.stores.split(","):
        secs: dict[str, list[float]] = {name: [] for name in COLUMNS}
        for rep in range(args.reps):
            for name, (limits, run) in COLUMNS.items():
                with tempfile.TemporaryDirectory(prefix="largesession-") as tmp:
                    kv = open_store(store, tmp, f"{name}.db", args.sync, limits)
                    try:
                        if args.profile == name and rep == 0:
                            profiler = cProfile.Profile()
                            profiler.enable()
                            secs[name].append(run(kv, data))
                            profiler.disable()
                            print_profile(profiler, f"{name} on {store}")
                        else:
                            secs[name].append(run(kv, data))
                        check_written(kv, args.n)
                    finally:
                        kv.close()
        results = {
            name: report.add(Result(f"write_{store}", name, args.n, "object", median(s)))
            for name, s in secs.items()
        }
        ratio = results["session"].rate / results["bulk_save"].rate
        target = 0.5
        if ratio < target:
            report.misses.append(f"session on {store}: {ratio:.2f}x of bulk_save < {target}x")
        rows.append(
            [
                store,
                f"{results['session'].rate:,.0f} ({results['session'].secs:.2f} s, 1 commit)",
                f"{results['bulk_save'].rate:,.0f} ({results['bulk_save'].secs:.2f} s)",
                f"{results['bulk_save_embedded'].rate:,.0f} "
                f"({results['bulk_save_embedded'].secs:.2f} s)",
                f"{ratio:.2f}x (>= {target}x)",
            ]
        )
    report.table(
        f"{args.n} new articles (unique slug, 3 tags each=True), objects/s",
        ["store", "one session (embedded)", "bulk_save", "bulk_save (embedded)", "session/bulk"],
        rows,
    )
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
