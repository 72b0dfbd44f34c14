"""The engine-conformance suite: every rule of the Kv API, run against one engine.

Import it into a test module that provides the ``kv`` and ``kv_store``
fixtures (see :mod:`kvmodel.testing`); tests needing durability or several
Kvs on one store check ``kv_store.capabilities`` and skip otherwise.

The tests live in themed modules, gathered here so one star-import collects
them all: ``conformance_data`` (keys, values, get/get_many/set/delete),
``conformance_list`` (selectors, limit, reverse, batch_size, cursors),
``conformance_linked`` (the linked read behind index queries) and
``conformance_atomic`` (commits, checks, KvU64, versionstamps, expiry). This
module holds the Kv's lifecycle: closing, several Kvs on one store, reopening,
and the engine's bookkeeping staying out of sight.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kvmodel import VERSIONSTAMP, Kv, KvClosedError, KvU64
from kvmodel.testing import KvStore

# Star imports on purpose: they re-export the test functions so that a single
# ``from kvmodel.testing.conformance import *`` makes pytest collect the suite.
from kvmodel.testing.conformance_aio import *  # noqa: F403
from kvmodel.testing.conformance_atomic import *  # noqa: F403
from kvmodel.testing.conformance_data import *  # noqa: F403
from kvmodel.testing.conformance_linked import *  # noqa: F403
from kvmodel.testing.conformance_list import *  # noqa: F403
from kvmodel.testing.conformance_queue import *  # noqa: F403
from kvmodel.testing.conformance_support import dump, wait_until
from kvmodel.testing.conformance_watch import *  # noqa: F403

# ---------------------------------------------------------------------------
# Closing


def _every_call(kv: Kv) -> dict[str, Callable[[], object]]:
    """One call of each public method (queue and watch ones are in their section)."""
    return {
        "get": lambda: kv.get(("a",)),
        "get_many": lambda: kv.get_many([("a",)]),
        "set": lambda: kv.set(("a",), 2),
        "delete": lambda: kv.delete(("a",)),
        "list": lambda: list(kv.list(prefix=())),
        "atomic": lambda: kv.atomic().set(("a",), 3).commit(),
        "atomic check": lambda: kv.atomic().check((("a",), None)).commit(),
        "sum": lambda: kv.atomic().sum(("n",), KvU64(1)).commit(),
        "enqueue": lambda: kv.enqueue("message"),
    }


def test_every_call_on_a_closed_kv_raises_kv_closed_error(kv: Kv) -> None:
    """After close(), every method raises KvClosedError."""
    kv.set(("a",), 1)
    kv.close()
    for name, call in _every_call(kv).items():
        with pytest.raises(KvClosedError):
            call()
            pytest.fail(f"{name} on a closed Kv did not raise")


def test_closing_twice_is_harmless(kv: Kv) -> None:
    """A second close() does nothing (like a file's close)."""
    kv.close()
    kv.close()
    with pytest.raises(KvClosedError):
        kv.get(("a",))


def test_context_manager_closes_the_kv(kv: Kv) -> None:
    """Leaving a ``with kv:`` block closes the Kv, also on an exception."""
    with kv as same:
        assert same is kv
        same.set(("a",), 1)
    with pytest.raises(KvClosedError):
        kv.get(("a",))


def test_atomic_built_before_close_cannot_commit_after(kv: Kv) -> None:
    """An AtomicOperation whose Kv was closed raises KvClosedError on commit."""
    atomic = kv.atomic().set(("a",), 1)
    kv.close()
    with pytest.raises(KvClosedError):
        atomic.commit()


def test_closed_kv_wrote_what_it_committed(kv_store: KvStore) -> None:
    """Commits made before close() are readable from a new Kv on a durable store."""
    if not kv_store.capabilities.durable:
        pytest.skip("engine is not durable")
    kv = kv_store.open()
    stamp = kv.set(("a",), 1).versionstamp
    kv.atomic().set(("b",), [1, 2]).sum(("n",), KvU64(3)).commit()
    kv.close()
    reopened = kv_store.open()
    assert reopened.get(("a",)).versionstamp == stamp
    assert [(k, v) for k, v, _ in dump(reopened)] == [
        (("a",), 1),
        (("b",), [1, 2]),
        (("n",), KvU64(3)),
    ]


# ---------------------------------------------------------------------------
# Several Kvs on one store, reopening


def test_a_second_kv_on_the_same_store_sees_every_write(kv_store: KvStore) -> None:
    """Two Kvs on one store share keys and one strictly increasing versionstamp sequence."""
    first = kv_store.open()
    second = kv_store.open()
    stamps = []
    for i in range(5):
        stamps.append(first.set(("a",), i).versionstamp)
        assert second.get(("a",)).value == i
        stamps.append(second.set(("b",), i).versionstamp)
        assert first.get(("b",)).versionstamp == stamps[-1]
    assert stamps == sorted(set(stamps))
    stale = first.get(("a",))
    second.set(("a",), "moved")
    assert not first.atomic().check(stale).set(("a",), "lost").commit().ok
    assert first.get(("a",)).value == "moved"


def test_versionstamps_keep_increasing_across_reopen(kv_store: KvStore) -> None:
    """A reopened durable store keeps its data and issues larger versionstamps."""
    if not kv_store.capabilities.durable:
        pytest.skip("engine is not durable")
    kv = kv_store.open()
    last = ""
    for i in range(3):
        last = kv.set(("a",), i).versionstamp or ""
    kv.close()
    reopened = kv_store.open()
    entry = reopened.get(("a",))
    assert (entry.value, entry.versionstamp) == (2, last)
    after = reopened.set(("b",), 1).versionstamp
    assert after is not None
    assert after > last
    reopened.close()
    again = kv_store.open()
    assert (again.atomic().set(("c",), 1).commit().versionstamp or "") > after


def test_expiry_survives_reopen(kv_store: KvStore) -> None:
    """An expiring key on a durable store still expires after the store is reopened."""
    if not kv_store.capabilities.durable:
        pytest.skip("engine is not durable")
    kv = kv_store.open()
    kv.set(("e",), 1, expire_in=0.4)
    kv.set(("keep",), 1)
    kv.close()
    reopened = kv_store.open()
    assert wait_until(lambda: reopened.get(("e",)).versionstamp is None)
    assert [e.key for e in reopened.list(prefix=())] == [("keep",)]


# ---------------------------------------------------------------------------
# Bookkeeping stays out of the user's keyspace


def test_a_fresh_kv_is_empty(kv: Kv) -> None:
    """A new store lists nothing, whatever the engine keeps for itself."""
    assert list(kv.list(prefix=())) == []
    assert list(kv.list(prefix=(), reverse=True)) == []


def test_only_user_keys_are_listed(kv_store: KvStore) -> None:
    """After writes of every kind (and a reopen, if durable), prefix=() shows only user keys."""
    kv = kv_store.open()
    kv.set(("plain",), 1)
    kv.set(("expiring",), 1, expire_in=3600)
    stamped = kv.atomic().set(("log", VERSIONSTAMP), 1).sum(("n",), KvU64(1)).commit()
    kv.set(("deleted",), 1)
    kv.delete(("deleted",))
    kv.atomic().check((("plain",), None)).set(("never",), 1).commit()
    expected = [("expiring",), ("log", stamped.versionstamp), ("n",), ("plain",)]
    assert [e.key for e in kv.list(prefix=())] == expected
    assert [e.key for e in kv.list(prefix=(), reverse=True)] == expected[::-1]
    if kv_store.capabilities.durable:
        kv.close()
        reopened = kv_store.open()
        assert [e.key for e in reopened.list(prefix=())] == expected


def test_list_start_end_over_the_whole_keyspace_shows_only_user_keys(kv: Kv) -> None:
    """A start/end range from the smallest to the largest key shows only user keys."""
    kv.set((b"",), 1)
    kv.set((True, True), 1)
    keys = [e.key for e in kv.list(start=(b"",), end=(True, True, True))]
    assert keys == [(b"",), (True, True)]


# ---------------------------------------------------------------------------
# Queue and watch: covered in a second pass (kv.enqueue, kv.listen_queue,
# AtomicOperation.enqueue, kv.watch), including their closed-Kv behaviour.


__all__: list[str] = [name for name in dir() if name.startswith("test_")]
