"""Tests of kvmodel.limits and the limits a Kv enforces: Deno's by default, limits="embedded".

Conformance across engines: memory and SQLite lift the commit-wide limits on
request; etcd, KV Connect and Deno's file refuse the request at open. Every
commit-wide limit error names limits="embedded" where it lifts the limit, and
only there.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import attrs
import pytest

import kvmodel as km
from kvmodel import aio
from kvmodel.engines.base import AtomicWrite, Check, Mutation, MutationKind
from kvmodel.engines.memory import MemoryEngine
from kvmodel.engines.sqlite import SqliteEngine
from kvmodel.limits import DEFAULT_LIMITS, EngineLimits
from kvmodel.testing import KvStore

# The engines of the kv_store fixture that can hold the embedded limits.
LIFTING = {"memory", "sqlite"}
EMBEDDED = EngineLimits.embedded()


def engine_name(request: pytest.FixtureRequest) -> str:
    name: str = request.node.callspec.params["kv_store"]
    return name


def embedded_kv(store: KvStore) -> km.Kv:
    """A Kv with the embedded limits on the store's engine."""
    return km.Kv(store.open().engine, limits="embedded")


def checks_op(kv: km.Kv, n: int) -> km.AtomicOperation:
    op = kv.atomic()
    for i in range(n):
        op.check((("c", i), None))
    return op.set(("done",), n)


# -- EngineLimits ---------------------------------------------------------------


def test_embedded_limits_lift_only_the_commit_wide_ones() -> None:
    """embedded() allows 50,000 checks, 100,000 mutations, 64 MiB; key and value sizes stay."""
    e = EngineLimits.embedded()
    assert (e.max_checks, e.max_mutations) == (50_000, 100_000)
    assert e.max_total_mutation_size == 64 * 1024 * 1024
    assert e.max_total_key_size == 8 * 1024 * 1024
    assert (e.max_key_size, e.max_value_size, e.max_list_batch) == (2048, 65536, 1000)
    assert km.EngineLimits is EngineLimits


def test_default_limits_stay_denos_on_every_engine(kv: km.Kv) -> None:
    """A Kv opened without limits= enforces Deno's numbers (etcd's may be tighter)."""
    for field in ("max_key_size", "max_value_size", "max_checks", "max_mutations"):
        assert getattr(kv.limits, field) <= getattr(DEFAULT_LIMITS, field)
    assert kv.limits.max_checks == 100
    assert kv.limits.max_mutations == 1000


def test_default_limits_on_memory_and_sqlite_are_named_deno_kv(tmp_path: Path) -> None:
    """On memory and SQLite, the default limits are Deno KV's exactly, by name too."""
    for kv in (km.open_kv(), km.open_kv(tmp_path / "a.db")):
        with kv:
            assert kv.limits == DEFAULT_LIMITS
            with pytest.raises(km.LimitExceededError, match="Deno KV allows at most 100"):
                checks_op(kv, 101).commit()


# -- across engines ---------------------------------------------------------------


def test_embedded_is_accepted_or_refused_at_open(
    kv_store: KvStore, request: pytest.FixtureRequest
) -> None:
    """Memory and SQLite take limits="embedded"; etcd, KV Connect and Deno's file refuse it."""
    engine = kv_store.open().engine
    if engine_name(request) in LIFTING:
        kv = km.Kv(engine, limits="embedded")
        assert kv.limits.max_checks == 50_000
        assert kv.limits.max_mutations == 100_000
    else:
        with pytest.raises(km.InvalidArgumentError) as info:
            km.Kv(engine, limits="embedded")
        message = str(info.value)
        assert "cannot lift the limit of checks per commit to 50,000 (max_checks)" in message
        assert "holds at most 100" in message
        assert engine.limits.name in message


def test_refusal_names_the_etcd_transaction_size(
    kv_store: KvStore, request: pytest.FixtureRequest
) -> None:
    """etcd's refusal also names its operations per transaction (its max_txn_ops less 2)."""
    if not engine_name(request).startswith("etcd"):
        pytest.skip("etcd only")
    engine = kv_store.open().engine
    ops = engine.limits.max_operations
    with pytest.raises(km.InvalidArgumentError, match=f"{ops:,} operations per transaction"):
        km.Kv(engine, limits="embedded")


def test_5000_checks_commit_under_embedded_limits(
    kv_store: KvStore, request: pytest.FixtureRequest
) -> None:
    """A commit of 5,000 checks passes on memory and SQLite under embedded limits."""
    if engine_name(request) not in LIFTING:
        pytest.skip("the engine refuses the embedded limits (tested above)")
    kv = embedded_kv(kv_store)
    assert checks_op(kv, 5000).commit().ok
    assert kv.get(("done",)).value == 5000


def test_a_commit_over_the_embedded_limit_fails_naming_it(
    kv_store: KvStore, request: pytest.FixtureRequest
) -> None:
    """50,001 checks fail under embedded limits, naming the engine's maximum and no way out."""
    if engine_name(request) not in LIFTING:
        pytest.skip("the engine refuses the embedded limits (tested above)")
    kv = embedded_kv(kv_store)
    with pytest.raises(km.LimitExceededError) as info:
        checks_op(kv, 50_001).commit()
    assert "The commit has 50001 checks" in str(info.value)
    assert "at most 50000" in str(info.value)
    assert "limits='embedded'" not in str(info.value)  # nothing more to lift
    assert (info.value.limit, info.value.actual) == (50_000, 50_001)
    assert kv.get(("done",)).versionstamp is None


def test_limit_errors_name_embedded_only_where_it_lifts(
    kv_store: KvStore, request: pytest.FixtureRequest
) -> None:
    """Under default limits, 101 checks name limits='embedded' on memory and SQLite only."""
    kv = kv_store.open()
    with pytest.raises(km.LimitExceededError) as info:
        checks_op(kv, 101).commit()
    suggested = "limits='embedded'" in str(info.value)
    assert suggested == (engine_name(request) in LIFTING), str(info.value)
    if suggested:
        assert "to allow up to 50,000 in one commit" in str(info.value)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda op: [op.set(("m", i), i) for i in range(1001)], "max_mutations"),
        (lambda op: [op.set(("m", i), b"x" * 60_000) for i in range(14)], "total mutation size"),
        (lambda op: [op.set(("k" * 2000, i), 0) for i in range(41)], "total key size"),
    ],
    ids=["mutations", "mutation-size", "key-size"],
)
def test_every_commit_wide_limit_names_embedded(build: Any, field: str) -> None:
    """Mutations, total mutation size and total key size errors all name limits='embedded'."""
    with km.open_kv() as kv:
        op = kv.atomic()
        build(op)
        with pytest.raises(km.LimitExceededError, match="limits='embedded'"):
            op.commit()
    with km.open_kv(limits="embedded") as kv:
        op = kv.atomic()
        build(op)
        assert op.commit().ok


def test_the_per_key_and_per_value_limits_never_name_embedded() -> None:
    """A value over 65536 bytes is refused under embedded limits too, without the advice."""
    with km.open_kv(limits="embedded") as kv, pytest.raises(km.LimitExceededError) as info:
        kv.set(("big",), b"x" * 70_000)
    assert "embedded" not in str(info.value)


# -- how limits are asked for ---------------------------------------------------------


def test_open_kv_takes_deno_embedded_none_or_an_engine_limits(tmp_path: Path) -> None:
    """limits= takes "deno", None, "embedded" or an EngineLimits, on memory and files."""
    with km.open_kv(limits="deno") as kv:
        assert kv.limits == DEFAULT_LIMITS
    with km.open_kv(None, limits=None) as kv:
        assert kv.limits == DEFAULT_LIMITS
    with km.open_kv(tmp_path / "a.db", limits="embedded") as kv:
        assert kv.limits.max_mutations == 100_000
        assert kv.limits.name == "SQLite"
    custom = EngineLimits(name="my limits", max_checks=500)
    with km.open_kv(tmp_path / "b.db", limits=custom) as kv:
        assert kv.limits.max_checks == 500
        assert kv.limits.name == "my limits"
        assert checks_op(kv, 500).commit().ok
        with pytest.raises(km.LimitExceededError, match="my limits allows at most 500"):
            checks_op(kv, 501).commit()


def test_a_bad_limits_value_is_refused_and_opens_nothing(tmp_path: Path) -> None:
    """limits="huge" is an InvalidArgumentError naming the accepted forms; no file is created."""
    path = tmp_path / "never.db"
    with pytest.raises(km.InvalidArgumentError, match="limits='embedded'"):
        km.open_kv(path, limits="huge")
    assert not path.exists()
    with pytest.raises(km.InvalidArgumentError, match="not 100"):
        km.Kv(MemoryEngine(), limits=100)  # type: ignore[arg-type]


def test_limits_larger_than_the_engine_holds_are_refused() -> None:
    """An EngineLimits past the engine's maximum is refused, naming that maximum."""
    with pytest.raises(km.InvalidArgumentError, match=r"to 200,000 \(max_mutations\).*100,000"):
        km.Kv(MemoryEngine(), limits=EngineLimits(max_mutations=200_000))
    with pytest.raises(km.InvalidArgumentError, match="max_value_size"):
        km.open_kv(limits=EngineLimits(max_value_size=1 << 20))
    with pytest.raises(km.InvalidArgumentError, match="not a positive int"):
        km.open_kv(limits=EngineLimits(max_checks=0))
    with pytest.raises(km.InvalidArgumentError, match="max_operations=-1"):
        km.open_kv(limits=EngineLimits(max_operations=-1))
    with km.open_kv(limits=EngineLimits(max_operations=3)) as kv:
        op = kv.atomic().check((("a",), None)).set(("a",), 1).set(("b",), 2).set(("c",), 3)
        with pytest.raises(km.LimitExceededError, match="4 operations"):
            op.commit()


def test_a_refused_open_closes_the_engine(tmp_path: Path) -> None:
    """open_kv of a Deno file with limits="embedded" refuses and leaves the file closed."""
    path = tmp_path / "deno.sqlite3"
    with pytest.raises(km.InvalidArgumentError, match="a Deno KV file"):
        km.open_kv(f"deno:{path}", limits="embedded")
    with km.open_kv(f"deno:{path}") as kv:  # not held open by the refused one
        kv.set(("a",), 1)
        assert kv.get(("a",)).value == 1


def test_an_engine_that_declares_less_is_never_lifted() -> None:
    """An engine declaring Deno's limits (the old contract) refuses the embedded ones."""

    class PlainEngine(MemoryEngine):
        @property
        def limits(self) -> EngineLimits:
            return attrs.evolve(DEFAULT_LIMITS, name="PlainEngine")

    with pytest.raises(km.InvalidArgumentError, match="PlainEngine"):
        km.Kv(PlainEngine(), limits="embedded")
    kv = km.Kv(PlainEngine())
    assert kv.limits.name == "PlainEngine"
    with pytest.raises(km.LimitExceededError) as info:
        checks_op(kv, 101).commit()
    assert "embedded" not in str(info.value)


def test_too_many_operations_on_etcd_name_max_txn_ops_not_embedded() -> None:
    """etcd's operations limit names --max-txn-ops and max_txn_ops=, never limits='embedded'."""
    from kvmodel.engines.etcd import etcd_limits

    class SmallEtcd(MemoryEngine):  # etcd's declared limits, without a cluster
        @property
        def limits(self) -> EngineLimits:
            return etcd_limits(16)

    kv = km.Kv(SmallEtcd())
    assert kv.limits.name == "etcd"
    op = kv.atomic()
    for i in range(15):
        op.set(("k", i), i)
    with pytest.raises(km.LimitExceededError) as info:
        op.commit()
    message = str(info.value)
    assert "The commit has 15 operations" in message
    assert "--max-txn-ops larger than 16" in message
    assert "max_txn_ops=N" in message
    assert "embedded" not in message


def test_aio_open_kv_and_async_kv_take_limits(tmp_path: Path) -> None:
    """aio.open_kv(limits=...) and AsyncKv(engine, limits=...) lift the limits."""

    async def main() -> None:
        async with aio.open_kv(tmp_path / "a.db", limits="embedded") as kv:
            assert kv.limits.max_checks == 50_000
            op = kv.atomic()
            for i in range(5000):
                op.check((("c", i), None))
            assert (await op.set(("x",), 1).commit()).ok
        kv2 = aio.AsyncKv(MemoryEngine(), limits=EngineLimits.embedded())
        assert kv2.limits.max_mutations == 100_000
        await kv2.close()
        with pytest.raises(km.InvalidArgumentError, match="only with an engine"):
            aio.AsyncKv(km.open_kv(), limits="embedded")
        with pytest.raises(km.InvalidArgumentError, match="a Deno KV file"):
            await aio.open_kv(f"deno:{tmp_path / 'deno.sqlite3'}", limits="embedded")

    asyncio.run(main())


def test_a_kv_connect_server_keeps_denos_limits_on_a_larger_engine() -> None:
    """kvmodel serve on SQLite or memory still refuses a commit over Deno's limits."""
    pytest.importorskip("starlette")
    from connect_server import TOKEN, ThreadServer

    server = ThreadServer(km.Kv(MemoryEngine(), limits="embedded")).start()
    try:
        with km.open_kv(server.url, token=TOKEN) as kv:
            # The client refuses first; the server's own check is what a Deno
            # client meets: send the raw write past the client's check.
            checks = tuple(Check(km.keys.encode_key(("c", i)), None) for i in range(101))
            write = AtomicWrite(checks, (Mutation(b"\x02a\x00", MutationKind.SET, b"\x01", 1),))
            with pytest.raises(km.KvError, match="100"):
                kv.engine.atomic_write(write)
    finally:
        server.stop()


# -- SQLite's batched commit path (large writes) ----------------------------------------


def test_large_sqlite_writes_match_the_memory_engine(tmp_path: Path) -> None:
    """Seeded large writes (sets, deletes, sums, checks of expired keys) read back as on memory."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    clock_ms = [1_000_000]

    def clock() -> float:
        return clock_ms[0] / 1000

    sqlite = km.Kv(SqliteEngine(tmp_path / "a.db", clock=clock), limits="embedded")
    memory = km.Kv(MemoryEngine(clock=clock), limits="embedded")
    try:
        for _round in range(6):
            ops: list[tuple[Any, ...]] = []
            for _ in range(rng.randrange(32, 400)):
                key = ("k", rng.randrange(60))
                kind = rng.choice(["set", "set", "delete", "sum", "expiring"])
                ops.append((kind, key, rng.randrange(1000)))
            checked = [("k", rng.randrange(60)) for _ in range(rng.randrange(0, 80))]
            outcomes = []
            for kv in (sqlite, memory):
                op = kv.atomic()
                for key in checked:
                    op.check(kv.get(key))
                for kind, key, n in ops:
                    if kind == "set":
                        op.set(key, km.KvU64(n))
                    elif kind == "delete":
                        op.delete(key)
                    elif kind == "sum":
                        op.sum(key, n)
                    else:
                        op.set(key, km.KvU64(n), expire_in=0.5)
                try:
                    outcomes.append(op.commit().ok)
                except km.KvTypeError:
                    outcomes.append("type")
            assert outcomes[0] == outcomes[1], f"seed {seed}"
            clock_ms[0] += rng.choice([0, 400, 600])
            assert [(e.key, e.value) for e in sqlite.list(prefix=("k",))] == [
                (e.key, e.value) for e in memory.list(prefix=("k",))
            ], f"seed {seed}"
    finally:
        sqlite.close()
        memory.close()


def test_a_large_commit_fails_only_its_stale_checks(tmp_path: Path) -> None:
    """Of 300 checks, exactly the ones whose key moved are reported failed (batched reads)."""
    with km.open_kv(tmp_path / "a.db", limits="embedded") as kv:
        for i in range(300):
            kv.set(("k", i), i)
        entries = [kv.get(("k", i)) for i in range(300)]
        kv.set(("k", 7), "moved")
        kv.delete(("k", 250))
        result = kv.atomic().check(*entries).set(("x",), 1).commit()
        assert not result.ok
        assert set(result.failed_checks) == {("k", 7), ("k", 250)}
        assert kv.get(("x",)).versionstamp is None
