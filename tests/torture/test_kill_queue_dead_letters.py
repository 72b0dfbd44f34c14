"""Queue under kills: ``keys_if_undelivered`` is written exactly when the schedule runs out.

Target: the SQLite queue's finish path (``SqliteEngine._finish_message``:
reschedule after the next backoff interval, or write the dead-letter keys in
one commit and drop the message) and ``Kv.listen_queue`` under SIGKILL.

Three kinds of message share the queue, each with the backoff schedule
``SCHEDULE`` (two short intervals, so three failed runs exhaust it): "fail"
always fails, "flaky" fails on its first two runs (one short of exhausting the
schedule), "ok" always succeeds. Listener processes (``_workers.run_deadletter``)
record every run with a read-check-write before lingering and failing or
succeeding, and are SIGKILLed at random moments, round after round.

A run cut short by a kill ends in an expired lease, which is a failed attempt
like a handler's exception (as in Deno's queue_cleanup: a message whose
handler kills its process must not come back for ever). Kills that land before
a run is recorded leave no trace, so the test expects:

* every "fail" message dead-lettered, never run again afterwards, its keys
  sharing one versionstamp;
* no message of any kind recorded more than ``EXHAUSTED_AFTER`` runs (every
  delivery is an attempt, killed or not);
* "flaky" and "ok" messages dead-lettered only as kills allow: a dead-lettered
  "flaky" message needs at least one killed delivery, an "ok" one
  ``EXHAUSTED_AFTER``, and each kill abandons at most one delivery.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import kvmodel as km
from kvmodel._values import decode_value

from ._workers import (
    DEAD,
    HANDLED,
    LONG_TIMEOUT,
    SCHEDULE,
    fails,
    kill_all,
    kill_rounds,
    number,
    spawn,
    wait_for,
    wait_ready,
)

LEASE = 0.3
"""Lease timeout of the listeners: short, so killed deliveries come back quickly."""
KINDS = ("fail", "flaky", "ok")
EXHAUSTED_AFTER = len(SCHEDULE) + 1
"""Failed runs that exhaust the schedule: the first run, then one per interval."""
KILLS_TO_DEAD_LETTER = {"fail": 0, "flaky": 1, "ok": EXHAUSTED_AFTER}
"""Killed deliveries a message of each kind needs, at least, to be dead-lettered."""


def dead_keys(i: int) -> list[tuple[Any, ...]]:
    """The keys_if_undelivered of message ``i`` (DEAD wakes the driver's watch)."""
    return [("dead", i, "a"), ("dead", i, "b"), DEAD]


def read_state(kv: km.Kv) -> tuple[dict[int, km.Entry[Any]], dict[int, list[km.Entry[Any]]]]:
    """The recorded runs per message, and the dead letters per message.

    The dead letters are read first: every run before a dead letter is then
    in the later read of the runs, so a count is never short of its letter.
    """
    dead: dict[int, list[km.Entry[Any]]] = {}
    for e in kv.list(prefix=("dead",)):
        dead.setdefault(e.key[1], []).append(e)
    tries = {e.key[1]: e for e in kv.list(prefix=("tries",))}
    return tries, dead


def queued_values(db: Path) -> list[Any]:
    """The values of the messages still in the queue table (read beside the engine)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT payload, encoding FROM queue").fetchall()
    finally:
        conn.close()
    return [decode_value(payload, encoding) for payload, encoding in rows]


@pytest.mark.timeout(LONG_TIMEOUT)
def test_dead_letters_are_written_exactly_when_the_schedule_is_exhausted(
    tmp_path: Path, seed: int, torture_long: bool
) -> None:
    """Under listener kills only always-failing messages are dead-lettered, after their last run."""
    rng = random.Random(seed)
    messages, rounds, max_life = (1500, 30, 2.0) if torture_long else (90, 3, 0.6)
    kinds = {i: KINDS[i % len(KINDS)] for i in range(messages)}
    db = tmp_path / "deadletters.db"
    with km.open_kv(db) as kv:
        for i, kind in kinds.items():
            kv.enqueue([i, kind], backoff_schedule=list(SCHEDULE), keys_if_undelivered=dead_keys(i))
    started = time.monotonic()
    kills = kill_rounds(rng, "deadletter", db, LEASE, rounds, max_life)

    # A last pair of listeners, left alive until every message has reached its end:
    # "fail" dead-lettered, "flaky" run past its failures, "ok" run once.
    procs = [spawn("deadletter", db, LEASE, rng.randrange(2**32)) for _ in range(2)]
    try:
        for proc in procs:
            wait_ready(proc)
        with km.open_kv(db) as kv:

            def settled() -> bool:
                tries, dead = read_state(kv)
                # A dead letter ends any message (a wrong one is reported below).
                return all(
                    i in dead
                    or (kind != "fail" and i in tries and not fails(kind, number(tries[i])))
                    for i, kind in kinds.items()
                )

            # Every handler run sums HANDLED and every dead letter writes DEAD.
            finished = wait_for(kv, [HANDLED, DEAD], settled, 600 if torture_long else 30)
    finally:
        kill_all(procs)
    # Every listener is dead now: the state below is final.
    with km.open_kv(db) as kv:
        tries, dead = read_state(kv)
    left = queued_values(db)

    problems: list[str] = []
    beyond_schedule = 0
    kills_needed = 0
    lettered = Counter[str]()
    for i, kind in kinds.items():
        runs = number(tries[i]) if i in tries else 0
        letters = dead.get(i, [])
        if runs > EXHAUSTED_AFTER:
            problems.append(f"{kind} message {i} ran {runs} times, beyond its schedule")
            beyond_schedule += runs - EXHAUSTED_AFTER
        if not letters:
            if kind == "fail":
                problems.append(f"fail message {i} was not dead-lettered after {runs} runs")
            continue
        lettered[kind] += 1
        kills_needed += KILLS_TO_DEAD_LETTER[kind]
        stamps = {e.versionstamp for e in letters}
        if len(letters) != 2 or len(stamps) != 1 or any(e.value != [i, kind] for e in letters):
            problems.append(f"{kind} message {i} has wrong dead letters: {letters!r}")
        if i in tries and str(tries[i].versionstamp) > min(map(str, stamps)):
            problems.append(f"{kind} message {i} ran again after it was dead-lettered")
    if kills_needed > kills:
        problems.append(
            f"dead letters {dict(lettered)} need at least {kills_needed} killed deliveries, "
            f"but only {kills} listeners were killed"
        )
    still_queued = [v for v in left if v[0] in dead]
    if still_queued:
        problems.append(f"dead-lettered messages still queued: {still_queued[:10]}")

    runs_total = sum(number(e) for e in tries.values())
    print(
        f"\nkill-queue-dead-letters: seed={seed} messages={messages} rounds={rounds} "
        f"kills={kills} runs={runs_total} dead_lettered={len(dead)} "
        f"expected_dead={sum(k == 'fail' for k in kinds.values())} "
        f"dead_by_kind={dict(lettered)} "
        f"fail_runs_beyond_schedule={beyond_schedule} still_queued={len(left)} "
        f"seconds={time.monotonic() - started:.1f}"
    )
    assert finished, "the queue did not settle in time"
    assert not problems, "\n".join(problems[:20])
