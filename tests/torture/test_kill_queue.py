"""Kill -9 of queue listeners mid-handler: every message is still handled (at least once).

Target: the SQLite queue (``SqliteEngine.dequeue_next_message``, leases) and
``Kv.listen_queue`` under SIGKILL. Listener processes (``_workers.run_queue``)
record each delivery with one commit and linger before returning, so kills
land before, inside and after handlers; a killed listener's lease runs out and
another listener takes the message again.

A delivery cut short by a kill is a failed attempt (its lease expires, as in
Deno's queue_cleanup), so a message is dead-lettered only when all
``ATTEMPTS`` of its deliveries were killed. Each kill abandons at most one
delivery (listeners run one handler at a time), so the test expects every
message handled or dead-lettered, and at most ``kills // ATTEMPTS`` dead letters.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

import kvmodel as km

from ._workers import (
    DEAD,
    HANDLED,
    LONG_TIMEOUT,
    kill_all,
    kill_rounds,
    number,
    spawn,
    wait_for,
    wait_ready,
)

LEASE = 0.3
"""Lease timeout of the listeners: short, so killed deliveries come back quickly."""
SCHEDULE = [0.01] * 5
"""Many quick retries: a message caught by a few kills is retried, not dead-lettered."""
ATTEMPTS = len(SCHEDULE) + 1


def handled(kv: km.Kv) -> dict[int, int]:
    """Deliveries recorded so far, per message value."""
    return {e.key[1]: number(e) for e in kv.list(prefix=("handled",))}


@pytest.mark.timeout(LONG_TIMEOUT)
def test_every_message_is_handled_despite_listener_kills(
    tmp_path: Path, seed: int, torture_long: bool
) -> None:
    """Listeners are killed at random moments; still every message is handled at least once."""
    rng = random.Random(seed)
    messages, rounds, max_life = (2000, 30, 2.0) if torture_long else (150, 3, 0.6)
    db = tmp_path / "queue.db"
    with km.open_kv(db) as kv:
        for i in range(messages):
            kv.enqueue(i, backoff_schedule=SCHEDULE, keys_if_undelivered=[("undelivered", i), DEAD])
    started = time.monotonic()
    kills = kill_rounds(rng, "queue", db, LEASE, rounds, max_life)
    # A last pair of listeners, left alive until every message is accounted for.
    procs = [spawn("queue", db, LEASE, rng.randrange(2**32)) for _ in range(2)]
    done: dict[int, int] = {}
    dead: set[int] = set()
    try:
        for proc in procs:
            wait_ready(proc)
        with km.open_kv(db) as kv:

            def accounted() -> bool:
                nonlocal done, dead
                done = handled(kv)
                dead = {e.key[1] for e in kv.list(prefix=("undelivered",))}
                return len(done.keys() | dead) == messages

            # Every handler run sums HANDLED and every dead letter writes DEAD.
            wait_for(kv, [HANDLED, DEAD], accounted, 600 if torture_long else 30)
    finally:
        kill_all(procs)
    lost = messages - len(done.keys() | dead)
    duplicates = sum(done.values()) - len(done)
    print(
        f"\nkill-queue: seed={seed} messages={messages} rounds={rounds} kills={kills} "
        f"handled={len(done)} lost={lost} duplicates={duplicates} dead_lettered={len(dead)} "
        f"seconds={time.monotonic() - started:.1f}"
    )
    assert lost == 0
    # Handlers never fail here: only kills use up attempts.
    assert len(dead) * ATTEMPTS <= kills, (
        f"{len(dead)} messages dead-lettered, but {kills} kills abandon at most "
        f"{kills // ATTEMPTS} messages {ATTEMPTS} times: {sorted(dead)[:10]}"
    )
