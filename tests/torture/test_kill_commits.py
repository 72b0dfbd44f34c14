"""Kill -9 during commits on a SQLite file: acknowledged commits survive, commits are atomic.

Target: ``SqliteEngine.atomic_write`` (and the Kv's commit path) under SIGKILL.
Writer processes (``_workers.run_commits``) move key groups to new tokens with
read-check-write commits and log each commit durably only after ``commit()``
returned ok. The driver kills every writer at a random moment, round after
round, and after each round reopens the file and checks the invariants.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import kvmodel as km

from ._workers import GROUP_SIZE, LONG_TIMEOUT, kill_all, kill_at_random_moments, spawn

WRITERS = 3
GROUPS = 6
THREADS = 4
"""Writer threads in each process of the group-commit variant: their commits share transactions."""


def read_log(path: Path) -> list[tuple[int, str, str]]:
    """The acknowledged commits of one writer's log: (group, token, versionstamp).

    A last line without its newline was being written when the writer died:
    its fsync never returned, so it was never acknowledged.
    """
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    out = []
    for line in lines:
        g, token, vs = line.split(" ")
        out.append((int(g), token, vs))
    return out


def check_database(db: Path, logs: list[Path]) -> dict[str, int]:
    """Reopens the file and checks every invariant; returns the counts it found."""
    problems: list[str] = []
    with km.open_kv(db) as kv:
        groups: dict[int, list[km.Entry[Any]]] = defaultdict(list)
        for e in kv.list(prefix=("g",)):
            groups[e.key[1]].append(e)
        index: dict[int, list[str]] = defaultdict(list)
        for e in kv.list(prefix=("idx",)):
            index[e.key[1]].append(e.key[2])
        records = {e.key[1]: e.versionstamp for e in kv.list(prefix=("log",))}
    partial = 0
    current: dict[int, tuple[str, str]] = {}
    for g in range(GROUPS):
        entries = groups.get(g, [])
        tokens = {str(e.value["token"]) for e in entries if e.value is not None}
        stamps = {str(e.versionstamp) for e in entries}
        if not entries:
            ok = not index.get(g)
        else:
            ok = (
                len(entries) == GROUP_SIZE
                and len(tokens) == 1
                and len(stamps) == 1
                and index.get(g) == [next(iter(tokens))]
            )
            current[g] = (next(iter(tokens)), next(iter(stamps)))
        if not ok:
            partial += 1
            problems.append(f"group {g} is partial: {entries!r}, index {index.get(g)!r}")
    acknowledged = lost = disorder = 0
    for log in logs:
        previous = ""
        for g, token, vs in read_log(log):
            acknowledged += 1
            if vs <= previous:
                disorder += 1
                problems.append(f"{log.name}: versionstamp {vs} follows {previous}")
            previous = vs
            now = current.get(g)
            superseded_or_present = now is not None and (
                now[1] > vs or (now[1] == vs and now[0] == token)
            )
            if records.get(token) != vs or not superseded_or_present:
                lost += 1
                problems.append(f"acknowledged commit {token} ({vs}) on group {g} is lost")
    assert not problems, "\n".join(problems[:20])
    return {
        "acknowledged": acknowledged,
        "unacknowledged_found": len(records) - acknowledged,
        "partial": partial,
        "lost": lost,
        "disorder": disorder,
    }


@pytest.mark.timeout(LONG_TIMEOUT)
@pytest.mark.parametrize("threads", [1, THREADS], ids=["one-thread", "grouped"])
def test_acknowledged_commits_survive_sigkill_and_no_group_is_partial(
    tmp_path: Path, seed: int, torture_long: bool, threads: int
) -> None:
    """Every acknowledged commit survives SIGKILL of its writer and no group is half written.

    With several threads per process the commits are grouped: a kill lands
    in transactions that serve several writers' commits at once.
    """
    rng = random.Random(seed)
    rounds, max_life = (60, 2.0) if torture_long else (3, 0.8)
    db = tmp_path / "kv.db"
    km.open_kv(db).close()  # create the schema once, before the writers race to
    logs = [tmp_path / f"writer{w}.log" for w in range(WRITERS)]
    thread_logs = (
        logs if threads == 1 else [Path(f"{log}.t{i}") for log in logs for i in range(threads)]
    )
    kills = 0
    started = time.monotonic()
    counts: dict[str, int] = {}
    for round_no in range(rounds):
        procs: list[subprocess.Popen[str]] = []
        try:
            for w in range(WRITERS):
                proc = spawn(
                    "commits",
                    db,
                    logs[w],
                    f"w{w}r{round_no}",
                    rng.randrange(2**32),
                    GROUPS,
                    threads,
                )
                procs.append(proc)
            # Each writer dies at its own random moment of the round.
            kills += kill_at_random_moments(procs, rng, max_life)
        finally:
            kill_all(procs)
        counts = check_database(db, thread_logs)
    counts["kills"] = kills
    counts["rounds"] = rounds
    print(
        f"\nkill-commits: threads={threads} seed={seed} rounds={rounds} kills={kills} "
        f"acknowledged={counts['acknowledged']} "
        f"unacknowledged_found={counts['unacknowledged_found']} lost={counts['lost']} "
        f"partial={counts['partial']} disorder={counts['disorder']} "
        f"seconds={time.monotonic() - started:.1f}"
    )
    assert counts["acknowledged"] > 0
    assert counts["lost"] == 0 and counts["partial"] == 0 and counts["disorder"] == 0
