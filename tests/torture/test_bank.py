"""The bank invariant: concurrent transfers never create or destroy money, audits see it exact.

Target: snapshot reads (``Kv.get_many``, ``Kv.list``) and checked commits
(``AtomicOperation.check``) on the memory and SQLite engines, across threads
and, on SQLite, across processes (``_workers.run_bank``). Every transfer is a
read-check-write commit; auditors read all accounts in one snapshot and must
always see the exact total.
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from pathlib import Path

import pytest

import kvmodel as km

from ._workers import (
    ACCOUNTS,
    INITIAL_BALANCE,
    LONG_TIMEOUT,
    account,
    audit,
    kill_all,
    spawn,
    transfer,
    wait_ready,
)

TOTAL = ACCOUNTS * INITIAL_BALANCE


def open_bank(engine: str, tmp_path: Path) -> km.Kv:
    """A Kv on ``engine`` with every account at its initial balance."""
    kv = km.open_kv(None if engine == "memory" else tmp_path / "bank.db")
    op = kv.atomic()
    for i in range(ACCOUNTS):
        op.set(account(i), INITIAL_BALANCE)
    assert op.commit().ok
    return kv


def run_threads(
    kv: km.Kv, seconds: float, rng: random.Random, transferers: int, auditors: int
) -> tuple[Counter[str], int, list[str]]:
    """Runs transfer and audit threads for ``seconds``; returns outcomes, audits and errors."""
    outcomes: Counter[str] = Counter()
    audits = 0
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def transfer_loop(seed: int) -> None:
        local = random.Random(seed)
        mine: Counter[str] = Counter()
        try:
            while not stop.is_set():
                mine[transfer(kv, local)] += 1
        except Exception as exc:  # reported below: no exception may escape a transfer
            errors.append(repr(exc))
        with lock:
            outcomes.update(mine)

    def audit_loop() -> None:
        nonlocal audits
        n = 0
        try:
            while not stop.is_set():
                seen = audit(kv)
                n += 1
                if seen != (TOTAL, TOTAL):
                    errors.append(f"audit {n} saw totals {seen}, expected {TOTAL}")
        except Exception as exc:
            errors.append(repr(exc))
        with lock:
            audits += n

    threads = [
        threading.Thread(target=transfer_loop, args=(rng.randrange(2**32),))
        for _ in range(transferers)
    ] + [threading.Thread(target=audit_loop) for _ in range(auditors)]
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a bank thread is stuck"
    return outcomes, audits, errors


@pytest.mark.timeout(LONG_TIMEOUT)
@pytest.mark.parametrize("engine", ["memory", "sqlite"])
def test_bank_threads_every_audit_sees_the_exact_total(
    engine: str, tmp_path: Path, seed: int, torture_long: bool
) -> None:
    """Transfer threads and auditor threads: every snapshot and the final state hold the total."""
    seconds = 60.0 if torture_long else 0.8
    with open_bank(engine, tmp_path) as kv:
        outcomes, audits, errors = run_threads(kv, seconds, random.Random(seed), 4, 2)
        final = audit(kv)
    print(
        f"\nbank-threads[{engine}]: seed={seed} seconds={seconds} transfers={outcomes['ok']} "
        f"conflicts={outcomes['conflict']} insufficient={outcomes['insufficient']} "
        f"audits={audits} inconsistent={len(errors)} final={final}"
    )
    assert not errors, errors[:10]
    assert final == (TOTAL, TOTAL)
    assert outcomes["ok"] > 0 and audits > 0


@pytest.mark.timeout(LONG_TIMEOUT)
def test_bank_processes_every_audit_sees_the_exact_total(
    tmp_path: Path, seed: int, torture_long: bool
) -> None:
    """Transfer processes and local threads on one SQLite file: every audit and the end exact."""
    seconds = 60.0 if torture_long else 1.2
    rng = random.Random(seed)
    kv = open_bank("sqlite", tmp_path)
    procs = [spawn("bank", tmp_path / "bank.db", seconds, rng.randrange(2**32)) for _ in range(3)]
    try:
        for proc in procs:
            wait_ready(proc)
        outcomes, audits, errors = run_threads(kv, seconds, rng, 1, 2)
        for proc in procs:
            out, err = proc.communicate(timeout=seconds + 30)
            assert proc.returncode == 0, err
            outcomes.update(json.loads(out.strip().splitlines()[-1]))
    finally:
        kill_all(procs)
    final = audit(kv)
    kv.close()
    print(
        f"\nbank-processes[sqlite]: seed={seed} seconds={seconds} transfers={outcomes['ok']} "
        f"conflicts={outcomes['conflict']} insufficient={outcomes['insufficient']} "
        f"audits={audits} inconsistent={len(errors)} final={final}"
    )
    assert not errors, errors[:10]
    assert final == (TOTAL, TOTAL)
    assert outcomes["ok"] > 0 and audits > 0
