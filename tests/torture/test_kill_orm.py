"""Kill -9 during Session commits: documents and their indexes stay consistent.

Target: ``kvmodel.Session`` and the unit-of-work planner under SIGKILL, with a
unique and a non-unique index (``_workers.Member``). Writer processes
(``_workers.run_orm``) log each commit's intended state before it and ``ack``
after it; after every round of kills the driver checks ``check_indexes`` and
that each document is in its last acknowledged state or in the one state a
kill left unconfirmed.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

import kvmodel as km

from ._workers import LONG_TIMEOUT, Member, kill_all, kill_at_random_moments, spawn

WRITERS = 3


def allowed_states(log: Path) -> dict[str, list[Any]]:
    """Per document of one writer: the states it may be in after a kill.

    The last acknowledged state (``None`` if deleted or never created), plus the
    state of a trailing intent whose outcome was never logged.
    """
    acked: dict[str, Any] = {}
    pending: dict[str, Any] = {}
    for line in log.read_text(encoding="utf-8").split("\n")[:-1]:
        kind, pk, *rest = json.loads(line)
        if kind == "intent":
            pending = {pk: rest[0]}
        elif kind == "ack":
            acked[pk] = pending.pop(pk)
        else:
            pending.pop(pk)
    out = {pk: [state] for pk, state in acked.items()}
    for pk, state in pending.items():
        out.setdefault(pk, [None]).append(state)
    return out


@pytest.mark.timeout(LONG_TIMEOUT)
def test_sessions_survive_sigkill_with_consistent_indexes(
    tmp_path: Path, seed: int, torture_long: bool
) -> None:
    """After every round of kills, check_indexes is ok and no acknowledged commit is lost."""
    rng = random.Random(seed)
    rounds, max_life = (40, 2.0) if torture_long else (3, 0.8)
    db = tmp_path / "orm.db"
    km.open_kv(db).close()
    logs = [tmp_path / f"orm{w}.log" for w in range(WRITERS)]
    kills = acknowledged = 0
    for round_no in range(rounds):
        procs: list[subprocess.Popen[str]] = []
        try:
            for w in range(WRITERS):
                procs.append(spawn("orm", db, logs[w], f"w{w}", rng.randrange(2**32)))
            # Each writer dies at its own random moment of the round.
            kills += kill_at_random_moments(procs, rng, max_life)
        finally:
            kill_all(procs)
        with km.open_kv(db) as kv:
            report = km.check_indexes(kv, Member)
            assert report.ok, f"round {round_no}: {report}"
            docs: dict[str, Any] = {}
            for m in kv.list(prefix=("members",)):
                value: Any = m.value
                docs[m.key[1]] = [value["email"], value["team"], value["score"]]
        lost = []
        acknowledged = 0
        for log in logs:
            text = log.read_text(encoding="utf-8") if log.exists() else ""
            acknowledged += text.count('["ack"')
            if not text:
                continue
            for pk, states in allowed_states(log).items():
                if docs.get(pk) not in states:
                    lost.append(f"{pk}: stored {docs.get(pk)!r}, allowed {states!r}")
        assert not lost, f"round {round_no}: " + "\n".join(lost)
    print(
        f"\nkill-orm: seed={seed} rounds={rounds} kills={kills} acknowledged={acknowledged} "
        f"documents={report.documents} index_entries={report.entries} lost=0 "
        f"index_problems={len(report.problems)}"
    )
    assert acknowledged > 0
