"""Watch notification latency across processes, and the CPU cost of idle waiters.

    python benchmarks/watch_bench.py [--samples 100] [--idle-seconds 5] [--json]

Measured:

* cross-process watch latency: a writer subprocess sets a watched key to its send
  time (``time.time()``) every 20-50 ms; the watcher here (``kv.watch``) records the
  delay between that time and the moment the change reaches it;
* the CPU used by a whole process that holds only an idle waiter for ``--idle-seconds``
  (``time.process_time`` deltas, which count every thread): an idle watcher and an
  idle ``listen_queue`` on a SQLite file and in memory, beside a process with no waiter.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import kvmodel as km

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (
    Report,
    add_common_args,
    bench_header,
    median,
    percentile,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LATENCY_TARGET_MS = 60.0
IDLE_CPU_TARGET = 0.01  # share of one core
KEY = ("bench", "watched")

WRITER = """
import random, sys, time
import kvmodel as km
path, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
with km.open_kv(path) as kv:
    for i in range(count):
        time.sleep(rng.uniform(0.02, 0.05))
        kv.set(("bench", "watched"), {"i": i, "sent": time.time()})
"""


def cross_process_latency(report: Report, path: str, samples: int) -> list[str]:
    """Times each write of a subprocess until the watcher here sees it."""
    delays: list[float] = []
    seen_all = threading.Event()
    kv = km.open_kv(path)
    watch = kv.watch([KEY])
    first = next(watch)  # the current state; the stream is live from here on
    assert first[0].value is None

    def consume() -> None:
        for entries in watch:
            now = time.time()
            value = entries[0].value
            if value is not None:
                delays.append(now - value["sent"])
                if value["i"] == samples - 1:
                    seen_all.set()
                    return

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", WRITER, path, str(samples), "5"], check=True, env=env)
    ok = seen_all.wait(timeout=10)
    watch.close()
    kv.close()
    thread.join(timeout=5)
    if not ok:
        raise SystemExit(f"The watcher saw {len(delays)} of {samples} writes.")
    ms = [d * 1000 for d in delays]
    med, p99 = median(ms), percentile(ms, 0.99)
    report.emit(
        kind="latency",
        scenario="watch cross process",
        samples=len(ms),
        missed=samples - len(ms),
        median_ms=round(med, 3),
        p99_ms=round(p99, 3),
        max_ms=round(max(ms), 3),
    )
    verdict = report.verdict("watch latency, cross process", p99 < LATENCY_TARGET_MS)
    return [
        "watch, cross process",
        f"{len(ms)}/{samples}",
        f"{med:.2f}",
        f"{p99:.2f}",
        f"{max(ms):.2f}",
        f"median and p99 <{LATENCY_TARGET_MS:g} ms",
        verdict,
    ]


def idle_cpu(
    report: Report, label: str, open_kv: Callable[[], km.Kv], waiter: str, seconds: float
) -> list[str]:
    """The CPU share of this whole process while one waiter of kind ``waiter`` idles."""
    kv = open_kv()
    thread: threading.Thread | None = None
    if waiter == "watch":
        watch = kv.watch([KEY])
        next(watch)
        thread = threading.Thread(target=lambda: [None for _ in watch], daemon=True)
    elif waiter == "listen_queue":
        thread = threading.Thread(target=kv.listen_queue, args=(lambda v: None,), daemon=True)
    if thread is not None:
        thread.start()
    time.sleep(0.5)  # let the waiter reach its idle wait
    cpu0, wall0 = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    kv.close()
    if thread is not None:
        thread.join(timeout=5)
    share = cpu / wall
    report.emit(kind="idle_cpu", engine=label, waiter=waiter, cpu_secs=cpu, wall_secs=wall)
    verdict = ""
    target = "-"
    if waiter != "none":
        target = f"<{IDLE_CPU_TARGET:.0%} of a core"
        verdict = report.verdict(f"idle {waiter} CPU, {label}", share < IDLE_CPU_TARGET)
    return [label, waiter, f"{wall:.1f}", f"{cpu * 1000:.1f}", f"{share:.3%}", target, verdict]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100, help="writes in the latency run")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    add_common_args(parser)
    args = parser.parse_args(argv)

    report = Report("watch_bench", json_lines=args.json)
    bench_header(report, samples=args.samples, idle_seconds=args.idle_seconds)
    with tempfile.TemporaryDirectory(prefix="watchbench-") as tmp:
        row = cross_process_latency(report, os.path.join(tmp, "latency.db"), args.samples)
        report.table(
            "Watch notification latency, writer in another process (ms)",
            ["scenario", "samples", "median", "p99", "max", "target", ""],
            [row],
        )
        rows = []
        for label, opener in (
            ("sqlite", lambda: km.open_kv(os.path.join(tmp, "idle.db"))),
            ("memory", km.open_kv),
        ):
            for waiter in ("none", "watch", "listen_queue"):
                rows.append(idle_cpu(report, label, opener, waiter, args.idle_seconds))
        report.table(
            "CPU of an idle process holding one waiter (process_time over wall time)",
            ["engine", "waiter", "wall s", "cpu ms", "cpu share", "target", ""],
            rows,
        )
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
