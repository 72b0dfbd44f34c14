"""Worker processes of the torture tests, run as ``sys.executable _workers.py <mode> ...``.

Each mode opens the SQLite file given on the command line, prints ``ready``
once its Kv is open, and then works until it is killed (``commits``, ``orm``,
``queue``, ``deadletter``), or until its time is up (``bank``, ``contention``,
which print one JSON line of counts), or until its one commit of a
10,000-object session returned (``large``). The shared pieces (the ORM models, one
bank transfer, one audit, the contention operations, the rounds of listener
kills and the wait on a watched key) live here too, so the in-process threads
of the tests run exactly the code the processes run.
"""

from __future__ import annotations

import json
import logging
import os
import random
import selectors
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

if __name__ == "__main__":  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import kvmodel as km

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve()

LONG_TIMEOUT = 1200
"""pytest-timeout bound of a torture test: its long setting runs for minutes."""
GROUP_SIZE = 4
"""Keys written by every commit of the kill-commits test (one group)."""
ACCOUNTS = 10
"""Accounts of the bank test: get_many reads them all in one snapshot."""
INITIAL_BALANCE = 100
EMAILS = 12
"""Distinct e-mail addresses the ORM writers compete for (unique index)."""
TEAMS = ("red", "green", "blue")
HANDLED = ("progress", "handled")
"""Summed by every queue handler run: the key the queue tests' drivers watch."""
DEAD = ("progress", "dead")
"""Listed in every message's keys_if_undelivered, so a dead letter wakes the drivers too."""
SCHEDULE = (0.01, 0.02)
"""Backoff schedule of the dead-letter test: a message gets len(SCHEDULE) + 1 failed runs."""


def worker_command(mode: str, *args: object) -> list[str]:
    """The argv that runs ``mode`` of this script in a fresh interpreter."""
    return [sys.executable, str(SCRIPT), mode, *map(str, args)]


def spawn(mode: str, *args: object) -> subprocess.Popen[str]:
    """Starts ``mode`` of this script in a fresh interpreter, with pipes for its output."""
    return subprocess.Popen(
        worker_command(mode, *args),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_ready(proc: subprocess.Popen[str], timeout: float = 20.0) -> None:
    """Waits until the worker printed ``ready``; fails with its stderr if it died or hung."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if sel.select(timeout):
            line = proc.stdout.readline()
            if line.strip() == "ready":
                return
    proc.kill()
    _, err = proc.communicate(timeout=10)
    raise AssertionError(f"worker {proc.args!r} did not start: {err[-2000:]}")


def kill_all(procs: list[subprocess.Popen[str]]) -> None:
    """SIGKILLs the workers still running and reaps them all."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    for proc in procs:
        proc.communicate(timeout=10)


def number(entry: km.Entry[Any]) -> int:
    """The integer (or KvU64) value of an entry; a missing entry counts as 0."""
    value: Any = entry.value
    return 0 if value is None else int(value)


def append_durably(log: TextIO, line: str) -> None:
    """Appends one line to a log file and makes it durable before returning."""
    log.write(line + "\n")
    log.flush()
    os.fsync(log.fileno())


# -- kill-commits --------------------------------------------------------------


def commit_group(kv: km.Kv, rng: random.Random, writer: str, seq: int, groups: int) -> Any:
    """One read-check-write commit that moves a whole group to a new token.

    Every key of the group gets the token; the group's index entry moves from
    the old token to the new one; a permanent ("log", token) record remembers
    the commit. Returns (group, token, CommitResult).
    """
    g = rng.randrange(groups)
    token = f"{writer}.{seq}"
    head = kv.get(("g", g, 0))
    op = kv.atomic().check(head)
    padding = "x" * rng.randrange(0, 4000)  # varied commit sizes, so kills land in varied places
    for i in range(GROUP_SIZE):
        op.set(("g", g, i), {"token": token, "pad": padding})
    if head.value is not None:
        op.delete(("idx", g, head.value["token"]))
    op.set(("idx", g, token), g)
    op.set(("log", token), g)
    return g, token, op.commit()


def run_commits(
    path: str, log_path: str, writer: str, seed: int, groups: int, threads: int = 1
) -> None:
    """Commits groups forever from ``threads`` threads, logging each acknowledged commit durably.

    Thread i logs to ``log_path`` + ``.t<i>`` (one thread: ``log_path`` itself),
    so each log is in commit order; the threads' commits meet in the engine's
    group commit, so a kill lands inside grouped transactions too.
    """
    kv = km.open_kv(path)
    logs = [log_path] if threads == 1 else [f"{log_path}.t{i}" for i in range(threads)]

    def commit_forever(i: int) -> None:
        rng = random.Random(seed + i)
        name = writer if threads == 1 else f"{writer}t{i}"
        try:
            with open(logs[i], "a", encoding="utf-8") as log:
                ready.wait()
                seq = 0
                while True:
                    g, token, result = commit_group(kv, rng, name, seq, groups)
                    if result.ok:  # acknowledged only now, after commit() returned ok
                        append_durably(log, f"{g} {token} {result.versionstamp}")
                    seq += 1
        except BaseException:
            # A thread that failed must fail the test ("died by itself"), not
            # leave the others committing as if nothing happened.
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)

    ready = threading.Event()
    for i in range(threads):
        threading.Thread(target=commit_forever, args=(i,), daemon=True).start()
    print("ready", flush=True)
    ready.set()
    threading.Event().wait()  # until killed


# -- object mapper under kills ---------------------------------------------------


class Member(km.Model, prefix="members"):
    """A document with a unique and a non-unique index."""

    id: str = km.field(primary_key=True)
    email: str
    team: str
    score: int = 0

    by_email = km.Unique("email")
    by_team = km.Index("team")


def run_orm(path: str, log_path: str, writer: str, seed: int) -> None:
    """Creates, edits and deletes this writer's members through Sessions, logging outcomes.

    Before each commit an ``intent`` line (the document's state after the
    commit, or ``-`` for a deletion) is logged; after it, ``ack`` or ``fail``.
    So the file holds, per document, its last acknowledged state and at most
    one later intent whose outcome the kill hid.
    """
    rng = random.Random(seed)
    kv = km.open_kv(path)
    with open(log_path, "a", encoding="utf-8") as log:
        print("ready", flush=True)
        while True:
            pk = f"{writer}-{rng.randrange(8)}"
            state: Any
            try:
                with km.Session(kv) as s:
                    member = s.get(Member, pk)
                    if member is not None and rng.random() < 0.2:
                        s.delete(member)
                        state = None
                    else:
                        email = f"m{rng.randrange(EMAILS)}@example.com"
                        team = rng.choice(TEAMS)
                        if member is None:
                            member = Member(id=pk, email=email, team=team)
                            s.add(member)
                        else:
                            member.email, member.team = email, team
                            member.score += 1
                        state = [member.email, member.team, member.score]
                    append_durably(log, json.dumps(["intent", pk, state]))
                    s.commit()
                append_durably(log, json.dumps(["ack", pk]))
            except km.ConflictError:  # unique e-mail taken, or a concurrent edit
                append_durably(log, json.dumps(["fail", pk]))


# -- large sessions ------------------------------------------------------------------

LARGE_SESSION = 10_000
"""Objects of the one session the large-session worker commits (under limits="embedded")."""


class Tagged(km.Model, prefix="tagged"):
    """A document with a unique and a multi-value index: five keys and two checks per object."""

    id: str = km.field(primary_key=True)
    slug: str
    tags: list[str] = km.field(factory=list)

    by_slug = km.Unique("slug")
    by_tag = km.Index("tags", each=True)


def tagged_batch(batch: str, n: int = LARGE_SESSION) -> list[Tagged]:
    """The objects of one batch: ids and slugs carry the batch's name, every one is tagged it."""
    return [
        Tagged(id=f"{batch}-{i:05d}", slug=f"{batch}-s{i}", tags=[batch, f"t{i % 7}", f"u{i % 3}"])
        for i in range(n)
    ]


def run_large(path: str, batch: str) -> None:
    """Commits one session of LARGE_SESSION new objects, printing ``ready`` just before it.

    The driver kills it at a random moment of the commit; ``committed`` is
    printed once the commit returned.
    """
    kv = km.open_kv(path, limits="embedded")
    session = km.Session(kv)
    session.add_all(tagged_batch(batch))
    print("ready", flush=True)
    session.commit()
    print("committed", flush=True)
    kv.close()


# -- bank ------------------------------------------------------------------------


def account(i: int) -> tuple[str, int]:
    """The key of account ``i``."""
    return ("acct", i)


def transfer(kv: km.Kv, rng: random.Random) -> str:
    """One read-check-write transfer; returns "ok", "conflict" or "insufficient"."""
    a, b = rng.sample(range(ACCOUNTS), 2)
    ea, eb = kv.get_many([account(a), account(b)])
    balance_a, balance_b = int(ea.value or 0), int(eb.value or 0)
    amount = rng.randint(1, 30)
    if balance_a < amount:
        return "insufficient"
    result = (
        kv.atomic()
        .check(ea, eb)
        .set(ea.key, balance_a - amount)
        .set(eb.key, balance_b + amount)
        .commit()
    )
    return "ok" if result.ok else "conflict"


def audit(kv: km.Kv) -> tuple[int, int]:
    """The total of all accounts as seen by get_many and by list (each one snapshot)."""
    by_get_many = sum(number(e) for e in kv.get_many([account(i) for i in range(ACCOUNTS)]))
    by_list = sum(number(e) for e in kv.list(prefix=("acct",)))
    return by_get_many, by_list


def run_bank(path: str, seconds: float, seed: int) -> None:
    """Runs transfers for ``seconds`` and prints the counts of outcomes as JSON."""
    rng = random.Random(seed)
    counts = {"ok": 0, "conflict": 0, "insufficient": 0}
    with km.open_kv(path) as kv:
        print("ready", flush=True)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            counts[transfer(kv, rng)] += 1
    print(json.dumps(counts), flush=True)


# -- queue under kills -----------------------------------------------------------


def quiet_queue_log() -> None:
    """Silences the queue's failure log: expected failures would fill the unread stderr pipe."""
    logging.getLogger("kvmodel.queue").setLevel(logging.CRITICAL)


def run_queue(path: str, lease: float, seed: int) -> None:
    """Listens to the queue; each handler commits its delivery, then lingers a little.

    The linger (up to 20 ms) is the window between the handler's commit and the
    message's finish: a kill there makes a duplicate delivery, as it would in
    production.
    """
    rng = random.Random(seed)
    kv = km.open_kv(path, lease_timeout=lease)

    def handler(value: Any) -> None:
        kv.atomic().sum(("handled", value), km.KvU64(1)).sum(HANDLED, km.KvU64(1)).commit()
        time.sleep(rng.random() * 0.02)

    print("ready", flush=True)
    kv.listen_queue(handler)


def record_try(kv: km.Kv, i: int) -> int:
    """Counts one handler run of message ``i`` (read-check-write); returns its number, from 1.

    The check makes the numbers of one message's runs distinct even if two
    listeners ever ran it at once, so "fails on its first two runs" cannot
    fail three times.
    """
    key = ("tries", i)
    while True:
        entry = kv.get(key)
        n = number(entry) + 1
        if kv.atomic().check(entry).set(key, n).sum(HANDLED, km.KvU64(1)).commit().ok:
            return n


def fails(kind: str, run: int) -> bool:
    """Whether a message of ``kind`` ("fail", "flaky" or "ok") fails on its ``run``-th run.

    "flaky" fails len(SCHEDULE) times: one failure short of exhausting its
    schedule, so it must never be dead-lettered.
    """
    return kind == "fail" or (kind == "flaky" and run <= len(SCHEDULE))


def run_deadletter(path: str, lease: float, seed: int) -> None:
    """Listens to the queue; a handler records its run, lingers, then fails or succeeds by kind."""
    rng = random.Random(seed)
    quiet_queue_log()
    kv = km.open_kv(path, lease_timeout=lease)

    def handler(value: Any) -> None:
        i, kind = value
        run = record_try(kv, i)
        time.sleep(rng.random() * 0.02)  # kills land between the record and the finish too
        if fails(kind, run):
            raise RuntimeError(f"message {i} ({kind}) fails on run {run}")

    print("ready", flush=True)
    kv.listen_queue(handler)


def kill_rounds(
    rng: random.Random, mode: str, db: Path, lease: float, rounds: int, max_life: float
) -> int:
    """Runs ``rounds`` rounds of two listeners, each SIGKILLed at a random moment; returns kills."""
    kills = 0
    for _ in range(rounds):
        procs = [spawn(mode, db, lease, rng.randrange(2**32)) for _ in range(2)]
        try:
            kills += kill_at_random_moments(procs, rng, max_life)
        finally:
            kill_all(procs)
    return kills


def kill_at_random_moments(
    procs: list[subprocess.Popen[str]], rng: random.Random, max_life: float
) -> int:
    """Waits until every worker is ready, then SIGKILLs each at its own random moment.

    Each worker lives between 0.05 s and ``max_life`` s; a worker that died by
    itself fails the test with its stderr. Returns the number of kills.
    """
    for proc in procs:
        wait_ready(proc)
    t0 = time.monotonic()
    kills = 0
    for at, proc in sorted(((rng.uniform(0.05, max_life), p) for p in procs), key=lambda x: x[0]):
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        assert proc.poll() is None, f"worker died by itself: {proc.communicate()[1]}"
        proc.send_signal(signal.SIGKILL)
        kills += 1
    return kills


def wait_for(
    kv: km.Kv, keys: Sequence[tuple[Any, ...]], done: Callable[[], bool], timeout: float
) -> bool:
    """Waits until ``done()`` holds, looking again whenever a watched key changes.

    Returns False if ``timeout`` seconds pass first. ``done`` is evaluated
    after the watch has read its first state, so no change is missed.
    """
    deadline = time.monotonic() + timeout
    with kv.watch(keys) as watch:
        watch.poll(0)  # the first item: the watch now holds the state to compare with
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            watch.poll(remaining)
    return True


# -- contention --------------------------------------------------------------------


def contention_op(kv: km.Kv, rng: random.Random, writer: str, counts: dict[str, int]) -> None:
    """One contended commit: a blind sum on a shared counter, or a read-check-write."""
    if rng.random() < 0.5:
        result = (
            kv.atomic().sum(("counter",), km.KvU64(1)).set(("last", writer), counts["sum"]).commit()
        )
        if result.ok:
            counts["sum"] += 1
        return
    key = ("hot", rng.randrange(4))
    while True:  # retry on conflict, as a user would
        entry = kv.get(key)
        result = kv.atomic().check(entry).set(key, (entry.value or 0) + 1).commit()
        if result.ok:
            counts["rcw"] += 1
            return
        counts["conflict"] += 1


def contention_loop(
    kv: km.Kv, seconds: float, seed: int, writer: str, on_error: Callable[[str], None]
) -> dict[str, int]:
    """Runs contention_op for ``seconds``, reporting any exception to ``on_error``."""
    rng = random.Random(seed)
    counts = {"sum": 0, "rcw": 0, "conflict": 0, "errors": 0}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            contention_op(kv, rng, writer, counts)
        except Exception as exc:  # every escape is a failure the test reports
            counts["errors"] += 1
            on_error(f"{writer}: {exc!r}")
    return counts


def run_contention(path: str, seconds: float, seed: int, writer: str) -> None:
    """Hammers the file for ``seconds`` and prints its counts (and errors) as JSON."""
    errors: list[str] = []
    with km.open_kv(path) as kv:
        print("ready", flush=True)
        counts: dict[str, Any] = dict(contention_loop(kv, seconds, seed, writer, errors.append))
    counts["error_texts"] = errors[:10]
    print(json.dumps(counts), flush=True)


def exit_with_parent() -> None:
    """Ends this worker when the test process that started it dies (no orphans left behind)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> None:
    """Dispatches to the mode named by ``argv[0]``."""
    exit_with_parent()
    mode, args = argv[0], argv[1:]
    if mode == "commits":
        run_commits(args[0], args[1], args[2], int(args[3]), int(args[4]), int(args[5]))
    elif mode == "orm":
        run_orm(args[0], args[1], args[2], int(args[3]))
    elif mode == "large":
        run_large(args[0], args[1])
    elif mode == "bank":
        run_bank(args[0], float(args[1]), int(args[2]))
    elif mode == "queue":
        run_queue(args[0], float(args[1]), int(args[2]))
    elif mode == "deadletter":
        run_deadletter(args[0], float(args[1]), int(args[2]))
    elif mode == "contention":
        run_contention(args[0], float(args[1]), int(args[2]), args[3])
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
