"""kv.watch across processes on one SQLite file: latency, ordering and ending on close.

The other process is a fresh interpreter (``sys.executable -c``). Latency is
measured with the wall clock of both processes (same machine, same clock):
the writer stores ``time.time()`` in the value it commits and the watcher
subtracts it from the time it receives the item. Every wait is bounded and
every child is killed in ``finally`` if it is still running.
"""

from __future__ import annotations

import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kvmodel as km

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 15.0
"""Bound on any wait for another process (interpreter start-up included)."""
WRITES = 20

# Writes ("w",) = [i, time.time()] WRITES times, each after the watcher
# acknowledged the previous one with ("ack",) = i, so no write coalesces.
WRITER = """
import sys, time
import kvmodel as km

path, count = sys.argv[1], int(sys.argv[2])
with km.open_kv(path) as kv:
    with kv.watch([("ack",)]) as acks:
        next(acks)
        for i in range(count):
            kv.set(("w",), [i, time.time()])
            for (ack,) in acks:
                if ack.value == i:
                    break
"""

# Watches ("w",) and prints each value it sees; stops at the value "last",
# then closes its Kv while a second watch blocks in a thread, and reports
# whether that watch ended.
WATCHER = """
import sys, threading
import kvmodel as km

kv = km.open_kv(sys.argv[1])
blocked = kv.watch([("never",)])
next(blocked)
ended = threading.Event()
def drain():
    for _ in blocked:
        pass
    ended.set()
threading.Thread(target=drain, daemon=True).start()
with kv.watch([("w",)]) as watch:
    print("ready", flush=True)
    for (entry,) in watch:
        print("seen", repr(entry.value), flush=True)
        if entry.value == "last":
            break
kv.close()
print("ended", ended.wait(5), flush=True)
"""


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    """Starts ``code`` in a fresh interpreter with kvmodel importable."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


_PUMPS: dict[subprocess.Popen[str], threading.Thread] = {}


class Lines:
    """A child's stdout read line by line in a thread, so each read can be bounded."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        stream = proc.stdout
        assert stream is not None

        def pump() -> None:
            with stream:
                for line in stream:
                    self._lines.put(line.rstrip("\n"))
            self._lines.put("")  # end of output

        self.thread = threading.Thread(target=pump, daemon=True)
        self.thread.start()
        _PUMPS[proc] = self.thread

    def next(self) -> str:
        """The next line ("" once the child closed its stdout); fails after TIMEOUT."""
        try:
            return self._lines.get(timeout=TIMEOUT)
        except queue.Empty:
            pytest.fail(f"the child printed nothing for {TIMEOUT} s")


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """The children a test starts; any left running is killed at teardown."""
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(TIMEOUT)
            pump = _PUMPS.pop(proc, None)
            if pump is not None:
                pump.join(TIMEOUT)  # it closes stdout at the end of the output
            elif proc.stdout is not None:
                proc.stdout.close()
            if proc.stderr is not None:
                proc.stderr.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A fresh SQLite file."""
    return tmp_path / "watch.db"


def test_a_watch_sees_writes_of_another_process_quickly(
    path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    """Each write of another process reaches a watcher here well within 0.5 s."""
    latencies: list[float] = []
    with km.open_kv(path) as kv:
        with kv.watch([("w",)]) as watch:
            assert watch.poll(TIMEOUT) == [km.Entry(("w",), None, None)]
            procs.append(spawn(WRITER, str(path), str(WRITES)))
            deadline = time.monotonic() + TIMEOUT
            expected = 0
            while expected < WRITES:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"only {expected} of {WRITES} writes were seen"
                item = watch.poll(remaining)
                if item is None:
                    continue
                received = time.time()
                index, written = item[0].value
                assert index == expected, "a write was missed or seen out of order"
                latencies.append(received - written)
                kv.set(("ack",), index)
                expected += 1
        assert procs[0].wait(TIMEOUT) == 0
    median = statistics.median(latencies)
    print(
        f"cross-process watch latency over {WRITES} writes: median {median * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms"
    )
    assert max(latencies) < 0.5


def test_a_watcher_in_another_process_sees_every_state_and_ends_on_close(
    path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    """A watcher process sees this process's writes in order, and its watches end on close."""
    with km.open_kv(path) as kv:
        kv.set(("w",), "initial")
        watcher = spawn(WATCHER, str(path))
        procs.append(watcher)
        lines = Lines(watcher)
        assert lines.next() == "ready"
        seen: list[Any] = []
        for value in ["one", "two", "last"]:
            kv.set(("w",), value)
            # Wait for the watcher to report the value so no write coalesces.
            while True:
                line = lines.next()
                assert line, "the watcher exited early"
                seen.append(line.split(" ", 1)[1])
                if seen[-1] == repr(value):
                    break
        assert lines.next() == "ended True"
        assert watcher.wait(TIMEOUT) == 0
    assert seen == ["'initial'", "'one'", "'two'", "'last'"]
