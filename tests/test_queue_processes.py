"""The durable queue across processes on one SQLite file (kv.enqueue / kv.listen_queue).

Each listener is a fresh interpreter (``sys.executable -c``) running
``LISTENER`` below. The processes talk through the database itself: a
listener announces itself under ("ready", name), records each delivery with
one atomic commit, and stops when ("stop", name) is set. The test process
waits on those keys with ``kv.watch`` (events, not sleeps); every wait is
bounded, and every child is killed in ``finally`` if it is still running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kvmodel as km

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 15.0
"""Bound on any wait for another process (interpreter start-up included)."""

# A listener process: argv = path, name, mode, lease_timeout.
#   mode "record": each delivery adds 1 to ("delivered", value), sets ("by", value)
#                  to the listener's name and adds 1 to ("total",), in one commit.
#   mode "hang":   each delivery writes ("started", value) and then sleeps, so the
#                  process can be killed in the middle of the handler.
#   mode "exit":   each delivery adds 1 to ("attempts", value), sets ("exited", name)
#                  and ends the process with os._exit (a poison message).
# The main thread waits for ("stop", name), then closes the Kv and prints how
# long listen_queue took to return.
LISTENER = """
import os, sys, threading, time
import kvmodel as km

path, name, mode, lease = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
kv = km.open_kv(path, lease_timeout=lease)

def handler(value):
    if mode == "exit":
        kv.atomic().sum(("attempts", value), km.KvU64(1)).set(("exited", name), True).commit()
        os._exit(3)
    if mode == "hang":
        kv.set(("started", value), os.getpid())
        time.sleep(60)
    kv.atomic().sum(("delivered", value), km.KvU64(1)).set(("by", value), name).sum(
        ("total",), km.KvU64(1)
    ).commit()

listener = threading.Thread(target=kv.listen_queue, args=(handler,))
listener.start()
with kv.watch([("stop", name)]) as watch:
    kv.set(("ready", name), os.getpid())
    for (entry,) in watch:
        if entry.value is not None:
            break
closed_at = time.monotonic()
kv.close()
listener.join(10)
print("closed-in", time.monotonic() - closed_at, "alive", listener.is_alive(), flush=True)
"""


def spawn(
    path: Path, name: str, mode: str = "record", lease: float = 30.0
) -> subprocess.Popen[str]:
    """Starts a listener process on the file."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", LISTENER, str(path), name, mode, str(lease)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_all(procs: list[subprocess.Popen[str]]) -> None:
    """Kills the children that are still running and reaps them all."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


def wait_keys(kv: km.Kv, keys: list[tuple[Any, ...]], predicate: Any = None) -> list[km.Entry[Any]]:
    """Watches ``keys`` until ``predicate(entries)`` holds (default: all present)."""
    if predicate is None:

        def predicate(entries: list[km.Entry[Any]]) -> bool:
            return all(e.versionstamp is not None for e in entries)

    deadline = time.monotonic() + TIMEOUT
    with kv.watch(keys) as watch:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"{keys!r} did not reach the expected state in {TIMEOUT} s")
            entries: list[km.Entry[Any]] | None = watch.poll(remaining)
            if entries is not None and predicate(entries):
                return entries


def stop(kv: km.Kv, procs: list[subprocess.Popen[str]], names: list[str]) -> list[float]:
    """Asks the listeners to close their Kv; returns how long each listen_queue took to end."""
    for name in names:
        kv.set(("stop", name), True)
    close_times = []
    for proc in procs:
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
        fields = out.split()
        assert fields[0] == "closed-in" and fields[3] == "False", out
        close_times.append(float(fields[1]))
    return close_times


@pytest.fixture
def kv(tmp_path: Path) -> Iterator[km.Kv]:
    """A Kv on a fresh SQLite file, in this process."""
    with km.open_kv(tmp_path / "queue.db") as kv:
        yield kv


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """The children a test starts; any left running is killed at teardown."""
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        kill_all(started)


def db_path(kv: km.Kv) -> Path:
    return Path(kv.engine.path)  # type: ignore[attr-defined]


def test_a_message_enqueued_here_is_handled_in_another_process(
    kv: km.Kv, procs: list[subprocess.Popen[str]]
) -> None:
    """A value enqueued in this process is delivered to a listener in another process."""
    procs.append(spawn(db_path(kv), "child"))
    wait_keys(kv, [("ready", "child")])
    enqueued_at = time.monotonic()
    kv.enqueue("cross-process")
    (by,) = wait_keys(kv, [("by", "cross-process")])
    latency = time.monotonic() - enqueued_at
    print(f"cross-process delivery latency: {latency * 1000:.1f} ms")
    assert by.value == "child"
    assert kv.get(("delivered", "cross-process")).value == km.KvU64(1)
    stop(kv, procs, ["child"])


def test_a_listener_killed_mid_handler_has_its_message_redelivered(
    kv: km.Kv, procs: list[subprocess.Popen[str]]
) -> None:
    """SIGKILL mid-handler: after the lease timeout a new process gets the message."""
    lease = 0.5
    hung = spawn(db_path(kv), "doomed", mode="hang", lease=lease)
    procs.append(hung)
    wait_keys(kv, [("ready", "doomed")])
    kv.enqueue("job")
    wait_keys(kv, [("started", "job")])
    hung.send_signal(signal.SIGKILL)
    hung.wait(TIMEOUT)
    killed_at = time.monotonic()
    assert kv.get(("delivered", "job")).versionstamp is None
    procs.append(spawn(db_path(kv), "rescuer", lease=lease))
    (delivered, by) = wait_keys(kv, [("delivered", "job"), ("by", "job")])
    print(f"redelivered {time.monotonic() - killed_at:.2f} s after the kill")
    assert (delivered.value, by.value) == (km.KvU64(1), "rescuer")
    stop(kv, procs[1:], ["rescuer"])


def test_a_message_that_kills_its_listener_is_dead_lettered_after_its_schedule(
    kv: km.Kv, procs: list[subprocess.Popen[str]]
) -> None:
    """A handler that calls os._exit: each expired lease is a failed attempt, then dead letters.

    With a schedule of 2 intervals the message is delivered 3 times (3
    listeners die); the 4th listener finds the 3rd lease expired with no retry
    left, writes the value to keys_if_undelivered and logs a WARNING, and the
    message is never delivered again.
    """
    lease = 0.3
    dead = ("dead", "poison")
    kv.enqueue("poison", keys_if_undelivered=[dead], backoff_schedule=[0.01, 0.01])
    victims: list[str] = []
    while True:
        assert len(victims) < 6, f"still not dead-lettered after {victims}"
        name = f"victim{len(victims)}"
        victims.append(name)
        proc = spawn(db_path(kv), name, mode="exit", lease=lease)
        procs.append(proc)
        exited, letter = wait_keys(
            kv, [("exited", name), dead], lambda e: any(x.versionstamp is not None for x in e)
        )
        if letter.versionstamp is not None:
            break
        assert proc.wait(TIMEOUT) == 3
    assert exited.versionstamp is None  # the last listener got no delivery
    assert victims == ["victim0", "victim1", "victim2", "victim3"]
    assert kv.get(("attempts", "poison")).value == km.KvU64(3)
    assert letter.value == "poison"
    kv.set(("stop", name), True)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert "after 3 attempt(s)" in err and "lease expired" in err and repr(dead) in err, err
    # Nothing is left in the queue: a new listener handles only what comes next.
    procs.append(spawn(db_path(kv), "after"))
    wait_keys(kv, [("ready", "after")])
    kv.enqueue("sentinel")
    wait_keys(kv, [("by", "sentinel")])
    assert kv.get(("delivered", "poison")).versionstamp is None
    stop(kv, procs[-1:], ["after"])


def test_three_listener_processes_share_messages_each_handled_once(
    kv: km.Kv, procs: list[subprocess.Popen[str]]
) -> None:
    """Three listener processes share 300 messages; each message is handled exactly once."""
    total = 300
    names = ["p0", "p1", "p2"]
    for name in names:
        procs.append(spawn(db_path(kv), name))
    wait_keys(kv, [("ready", name) for name in names])
    started = time.monotonic()
    for batch in range(0, total, 100):
        op = kv.atomic()
        for i in range(batch, batch + 50):
            op.enqueue(i)
        op.commit()
        for i in range(batch + 50, batch + 100):
            kv.enqueue(i)
    wait_keys(kv, [("total",)], lambda e: e[0].value == km.KvU64(total))
    print(f"{total} messages over 3 processes in {time.monotonic() - started:.2f} s")
    delivered = {e.key[1]: e.value for e in kv.list(prefix=("delivered",))}
    assert delivered == {i: km.KvU64(1) for i in range(total)}
    workers = {e.value for e in kv.list(prefix=("by",))}
    assert len(workers) >= 2, f"only {workers} handled messages"
    stop(kv, procs, names)
    assert kv.get(("total",)).value == km.KvU64(total)


def test_listen_queue_in_another_process_ends_promptly_on_close(
    kv: km.Kv, procs: list[subprocess.Popen[str]]
) -> None:
    """A child's listen_queue returns soon after the child closes its Kv, and the child exits."""
    procs.append(spawn(db_path(kv), "idle"))
    wait_keys(kv, [("ready", "idle")])
    (close_time,) = stop(kv, procs, ["idle"])
    print(f"listen_queue returned {close_time * 1000:.1f} ms after close()")
    assert close_time < 2.0
