"""Queue throughput and delivery latency on a SQLite file.

    python benchmarks/queue_bench.py [--messages 2000] [--samples 200] [--sync FULL|NORMAL] [--json]

Measured, each on a fresh temporary database file with one listener thread
(``kv.listen_queue``) running in this process:

* throughput with single-commit enqueues (``kv.enqueue`` per message) made while the
  listener drains: the enqueue rate, and the end-to-end rate from the first enqueue
  to the last message handled;
* the same with batched enqueues (100 ``enqueue`` calls in one ``atomic()`` commit);
* same-process latency: one undelayed message at a time, from just before
  ``kv.enqueue`` to the handler's first line, with the listener idle in between;
* cross-process latency: a subprocess enqueues messages carrying their send time
  (``time.time()``), spaced 20-50 ms apart; the listener here records the delay.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import kvmodel as km

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (
    Report,
    Result,
    add_common_args,
    bench_header,
    median,
    percentile,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

THROUGHPUT_TARGET = 2000.0  # messages/s, single-commit enqueues, end to end
SAME_PROCESS_MEDIAN_MS = 5.0
CROSS_PROCESS_MS = 60.0

# The sender of the cross-process check: it stamps each message with its send time.
SENDER = """
import random, sys, time
import kvmodel as km
path, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
with km.open_kv(path, synchronous=sys.argv[4]) as kv:
    for i in range(count):
        time.sleep(rng.uniform(0.02, 0.05))
        kv.enqueue({"i": i, "sent": time.time()})
"""


class Listener:
    """A ``listen_queue`` thread whose handler counts messages and calls ``on_message``."""

    def __init__(self, kv: km.Kv, expected: int, on_message: Callable[[Any], None]) -> None:
        self.kv = kv
        self.expected = expected
        self.count = 0
        self.done = threading.Event()
        self._on_message = on_message
        self._thread = threading.Thread(target=kv.listen_queue, args=(self._handle,), daemon=True)

    def _handle(self, value: Any) -> None:
        self._on_message(value)
        self.count += 1
        if self.count >= self.expected:
            self.done.set()

    def __enter__(self) -> Listener:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kv.close()  # listen_queue returns once the Kv is closed
        self._thread.join(timeout=10)


def throughput(report: Report, path: str, sync: str, messages: int, batch: int) -> list[str]:
    """Enqueues ``messages`` (``batch`` per commit) while one listener drains them."""
    label = "single commits" if batch == 1 else f"{batch} per atomic"
    kv = km.open_kv(path, synchronous=sync)
    with Listener(kv, messages, lambda value: None) as listener:
        start = time.perf_counter()
        if batch == 1:
            for i in range(messages):
                kv.enqueue({"i": i})
        else:
            for base in range(0, messages, batch):
                op = kv.atomic()
                for i in range(base, min(base + batch, messages)):
                    op.enqueue({"i": i})
                op.commit()
        enqueue_secs = time.perf_counter() - start
        if not listener.done.wait(timeout=max(60.0, messages / 100)):
            raise SystemExit(f"Only {listener.count} of {messages} messages were handled.")
        total_secs = time.perf_counter() - start
    report.add(
        Result(
            f"throughput_batch{batch}",
            "kvmodel-sqlite",
            messages,
            "msg",
            total_secs,
            {"enqueue_per_sec": round(messages / enqueue_secs, 1)},
        )
    )
    rate = messages / total_secs
    verdict = ""
    target = "-"
    if batch == 1:
        target = f">={THROUGHPUT_TARGET:.0f}/s"
        verdict = report.verdict("queue throughput, single commits", rate >= THROUGHPUT_TARGET)
    return [
        label,
        f"{messages}",
        f"{messages / enqueue_secs:,.0f}",
        f"{rate:,.0f}",
        target,
        verdict,
    ]


def drain(report: Report, path: str, sync: str, messages: int) -> list[str]:
    """Enqueues ``messages`` first (100 per commit), then times one listener draining them."""
    kv = km.open_kv(path, synchronous=sync)
    for base in range(0, messages, 100):
        op = kv.atomic()
        for i in range(base, min(base + 100, messages)):
            op.enqueue({"i": i})
        op.commit()
    start = time.perf_counter()
    with Listener(kv, messages, lambda value: None) as listener:
        if not listener.done.wait(timeout=max(60.0, messages / 100)):
            raise SystemExit(f"Only {listener.count} of {messages} messages were handled.")
        secs = time.perf_counter() - start
    report.add(Result("drain", "kvmodel-sqlite", messages, "msg", secs))
    return ["none (drain a full queue)", f"{messages}", "-", f"{messages / secs:,.0f}", "-", ""]


def commit_floor(report: Report, path: str, sync: str, commits: int = 2000) -> float:
    """Commits/s of a one-row upsert on bare sqlite3 (WAL, same synchronous): the disk's pace.

    A message handled end to end costs kvmodel three commits (enqueue, lease,
    settle), so a third of this rate is what the disk allows.
    """
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={sync}")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
    start = time.perf_counter()
    for i in range(commits):
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO t VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v", (i % 7, i)
        )
        db.execute("COMMIT")
    secs = time.perf_counter() - start
    db.close()
    report.add(Result("commit_floor", "sqlite3-bare", commits, "commit", secs))
    return commits / secs


def same_process_latency(report: Report, path: str, sync: str, samples: int) -> list[str]:
    """Sends one message at a time and times its delivery to an idle listener here."""
    delays: list[float] = []
    handled = threading.Event()

    def on_message(value: Any) -> None:
        delays.append(time.perf_counter() - value["t"])
        handled.set()

    kv = km.open_kv(path, synchronous=sync)
    rng = random.Random(7)
    with Listener(kv, samples, on_message):
        for _ in range(samples):
            # Let the listener settle the previous message and go back to waiting.
            time.sleep(rng.uniform(0.003, 0.008))
            handled.clear()
            kv.enqueue({"t": time.perf_counter()})
            if not handled.wait(timeout=10):
                raise SystemExit("A message was not delivered within 10 s.")
    return latency_row(report, "same process", delays, SAME_PROCESS_MEDIAN_MS, p99_target=False)


def cross_process_latency(report: Report, path: str, sync: str, samples: int) -> list[str]:
    """A subprocess enqueues stamped messages; the listener here measures their delay."""
    delays: list[float] = []

    def on_message(value: Any) -> None:
        delays.append(time.time() - value["sent"])

    kv = km.open_kv(path, synchronous=sync)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with Listener(kv, samples, on_message) as listener:
        subprocess.run(
            [sys.executable, "-c", SENDER, path, str(samples), "11", sync], check=True, env=env
        )
        if not listener.done.wait(timeout=30):
            raise SystemExit(f"Only {listener.count} of {samples} messages crossed over.")
    return latency_row(report, "cross process", delays, CROSS_PROCESS_MS, p99_target=True)


def latency_row(
    report: Report, label: str, delays: list[float], target_ms: float, *, p99_target: bool
) -> list[str]:
    """Reports one latency distribution (seconds in, milliseconds out) against its target."""
    ms = [d * 1000 for d in delays]
    med, p99 = median(ms), percentile(ms, 0.99)
    report.emit(
        kind="latency",
        scenario=label,
        samples=len(ms),
        median_ms=round(med, 3),
        p99_ms=round(p99, 3),
        max_ms=round(max(ms), 3),
    )
    checked = p99 if p99_target else med
    what = "median and p99" if p99_target else "median"
    verdict = report.verdict(f"queue latency, {label}", checked < target_ms)
    return [
        label,
        f"{len(ms)}",
        f"{med:.2f}",
        f"{p99:.2f}",
        f"{max(ms):.2f}",
        f"{what} <{target_ms:g} ms",
        verdict,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per throughput run")
    parser.add_argument("--samples", type=int, default=200, help="messages per latency run")
    parser.add_argument("--sync", default="FULL", choices=["FULL", "NORMAL"])
    add_common_args(parser)
    args = parser.parse_args(argv)

    report = Report("queue_bench", json_lines=args.json)
    bench_header(report, synchronous=args.sync, messages=args.messages, samples=args.samples)
    with tempfile.TemporaryDirectory(prefix="queuebench-") as tmp:

        def db(name: str) -> str:
            return os.path.join(tmp, f"{name}.db")

        floor = commit_floor(report, db("floor"), args.sync)
        rows = [
            throughput(report, db("single"), args.sync, args.messages, 1),
            throughput(report, db("batched"), args.sync, args.messages * 5, 100),
            drain(report, db("drain"), args.sync, args.messages),
        ]
        report.table(
            f"Queue throughput on a SQLite file (synchronous={args.sync}, one listener thread)",
            ["enqueues", "messages", "enqueued/s", "end-to-end/s", "target", ""],
            rows,
        )
        report.say(
            f"Disk pace in this run: {floor:,.0f} one-row commits/s on bare sqlite3; "
            f"at three commits per message (enqueue, lease, settle) that allows "
            f"{floor / 3:,.0f} messages/s."
        )
        rows = [
            same_process_latency(report, db("latency"), args.sync, args.samples),
            cross_process_latency(report, db("cross"), args.sync, min(args.samples, 100)),
        ]
        report.table(
            "Delivery latency of undelayed messages (ms)",
            ["scenario", "samples", "median", "p99", "max", "target", ""],
            rows,
        )
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
