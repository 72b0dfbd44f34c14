"""Tests of kvmodel._queue's QueueDelivery: handlers that take the message's id and attempt.

The last tests run the effectively-once recipe of docs/how-to/queues.md across
processes: a listener process is killed (``os._exit``) in the middle of its
handler, before or after the handler's commit, and the message's effect still
happens exactly once. Waits are bounded by events, never by sleeps.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import kvmodel as km
from kvmodel import aio
from kvmodel.testing import KvStore
from kvmodel.testing.conformance_queue import require_queue_delivery

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0
"""Bound on any wait for another process (interpreter start-up and a lease included)."""

# The recipe: the handler's writes and a "done" marker keyed by the message id
# in one commit that checks the marker is absent. ("attempts", id) is bookkeeping
# for the test only, written outside the commit so it survives a crash.
RECIPE = """
import os
import kvmodel as km

def make_handler(kv, crash):
    def handler(value, delivery):
        kv.atomic().sum(("attempts", delivery.id), km.KvU64(1)).commit()
        if crash == "before-commit" and delivery.attempt == 1:
            os._exit(3)
        done = ("done", delivery.id)
        result = (
            kv.atomic()
            .check((done, None))
            .sum(("balance", value["account"]), km.KvU64(value["amount"]))
            .set(done, delivery.attempt)
            .commit()
        )
        if crash == "after-commit" and delivery.attempt == 1:
            os._exit(3)
        return result.ok
    return handler
"""

CHILD = (
    RECIPE
    + """
import sys
path, crash = sys.argv[1], sys.argv[2]
kv = km.open_kv(path, lease_timeout=1.0)
kv.listen_queue(make_handler(kv, crash))
"""
)


def test_a_handler_with_a_second_parameter_gets_the_id_and_attempt(kv: km.Kv) -> None:
    """A retried message keeps its id; the attempt counts up; other messages get other ids."""
    require_queue_delivery(kv)
    seen: list[tuple[str, km.QueueDelivery]] = []

    def handler(value: str, delivery: km.QueueDelivery) -> None:
        seen.append((value, delivery))
        if value == "flaky" and delivery.attempt == 1:
            raise RuntimeError("first attempt fails")
        if len(seen) == 3:
            kv.close()

    kv.enqueue("flaky", backoff_schedule=[0.01])
    kv.enqueue("steady")
    kv.listen_queue(handler)
    by_value: dict[str, list[km.QueueDelivery]] = {}
    for value, delivery in seen:
        by_value.setdefault(value, []).append(delivery)
    assert [d.attempt for d in by_value["flaky"]] == [1, 2]
    assert len({d.id for d in by_value["flaky"]}) == 1
    assert [d.attempt for d in by_value["steady"]] == [1]
    assert by_value["steady"][0].id != by_value["flaky"][0].id
    assert all(isinstance(d.id, str) and d.id for _, d in seen)


def test_one_parameter_and_catch_all_handlers_get_the_value_alone(kv: km.Kv) -> None:
    """``def h(value)`` and ``def h(*args)`` are called with the value only, as before."""
    require_queue_delivery(kv)
    calls: list[tuple[Any, ...]] = []

    def catch_all(*args: Any) -> None:
        calls.append(args)
        kv.close()

    kv.enqueue("x")
    kv.listen_queue(catch_all)
    assert calls == [("x",)]


def test_an_async_handler_with_a_second_parameter_gets_the_delivery(kv: km.Kv) -> None:
    """AsyncKv.listen_queue inspects the handler the same way."""
    require_queue_delivery(kv)
    seen: list[tuple[Any, km.QueueDelivery]] = []

    async def main() -> None:
        akv = aio.AsyncKv(kv)

        async def handler(value: Any, delivery: km.QueueDelivery) -> None:
            seen.append((value, delivery))
            await akv.close()

        await akv.enqueue({"n": 1})
        await asyncio.wait_for(akv.listen_queue(handler), TIMEOUT)

    asyncio.run(main())
    assert [(v, d.attempt) for v, d in seen] == [({"n": 1}, 1)]


def _run_recipe_in_process(kv: km.Kv, until_attempt: int) -> list[bool]:
    """Listens in a thread with the recipe's handler until a delivery of ``until_attempt``."""
    namespace: dict[str, Any] = {}
    exec(RECIPE, namespace)
    inner = namespace["make_handler"](kv, "none")
    results: list[bool] = []
    reached = threading.Event()

    def handler(value: Any, delivery: km.QueueDelivery) -> None:
        results.append(inner(value, delivery))
        if delivery.attempt >= until_attempt:
            reached.set()

    listener = threading.Thread(target=kv.listen_queue, args=(handler,))
    listener.start()
    try:
        assert reached.wait(TIMEOUT), "the message was not delivered again"
    finally:
        kv.close()
        listener.join(TIMEOUT)
    return results


@pytest.mark.parametrize("crash", ["before-commit", "after-commit"])
def test_effectively_once_when_the_handler_process_dies(kv_store: KvStore, crash: str) -> None:
    """A listener killed before or after its commit: the redelivery's effect happens once."""
    require_queue_delivery(kv_store)
    if kv_store.path is None:
        pytest.skip("this store cannot be opened by another process")
    kv = kv_store.open()
    kv.enqueue({"account": "a1", "amount": 5}, backoff_schedule=[0.05, 0.05])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, kv_store.path, crash],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = child.communicate(timeout=TIMEOUT)
        assert child.returncode == 3, err
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    # The child's lease runs out; the next delivery is attempt 2 of the same message.
    results = _run_recipe_in_process(kv_store.open(), until_attempt=2)
    check = kv_store.open()
    (attempts,) = [e for e in check.list(prefix=("attempts",))]
    assert attempts.value == km.KvU64(2)
    assert check.get(("balance", "a1")).value == km.KvU64(5)
    done = check.get(("done", attempts.key[1])).value
    if crash == "after-commit":
        assert done == 1  # the dead listener's commit counted ...
        assert results == [False]  # ... and the redelivery's check kept it from repeating
    else:
        assert done == 2
        assert results == [True]
