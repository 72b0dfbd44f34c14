"""etcd engine throughput: kvmodel commits beside the same txns sent by a bare loop.

    python benchmarks/etcd_bench.py [--n 2000] [--seconds 3] [--json]

Starts its own etcd clusters (the system package's ``etcd``) on loopback, in tmpfs:

* 1 member: 3-key conditional commits (check three versionstamps, set three
  keys) through ``kvmodel.Kv`` on ``EtcdEngine``, through the engine alone, and
  as a bare loop of the equivalent etcd txn (three ``mod_revision`` compares,
  three puts) over the same transport. The ratio kvmodel / bare is the target
  (>= 0.7): it prices the idempotency marker, the fence and the expiry compares.
* 3 members: commits/s and p50/p99 latency of the same commit through kvmodel
  for 1 and 16 concurrent clients (threads, one Kv each).

Run it by hand; the test suite never does. Figures depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from etcd_cluster import EtcdCluster

import kvmodel
from kvmodel.engines._etcd_transport import b64
from kvmodel.engines.base import AtomicWrite, Check, Mutation, MutationKind
from kvmodel.engines.etcd import EtcdEngine


def kv_loop(kv: Any, n: int, name: str) -> list[float]:
    """n conditional 3-key commits through the Kv; returns each commit's latency."""
    keys = [(name, k) for k in ("a", "b", "c")]
    entries = kv.get_many(keys)
    lat = []
    for i in range(n):
        t = time.perf_counter()
        op = kv.atomic().check(*entries)
        for k in keys:
            op.set(k, i)
        res = op.commit()
        lat.append(time.perf_counter() - t)
        assert res.ok
        entries = [kvmodel.Entry(k, i, res.versionstamp) for k in keys]
    return lat


def engine_loop(engine: EtcdEngine, n: int, name: bytes) -> float:
    """n conditional 3-key commits through the engine protocol; returns seconds."""
    keys = [name + k for k in (b"a", b"b", b"c")]
    vs: list[bytes | None] = [None, None, None]
    t = time.perf_counter()
    for i in range(n):
        out = engine.atomic_write(
            AtomicWrite(
                checks=tuple(Check(k, v) for k, v in zip(keys, vs, strict=True)),
                mutations=tuple(Mutation(k, MutationKind.SET, b"%d" % i) for k in keys),
            )
        )
        assert out.ok
        vs = [out.versionstamp] * 3
    return time.perf_counter() - t


def bare_loop(engine: EtcdEngine, n: int, name: bytes) -> float:
    """The same txns, built by hand and sent over the engine's transport; returns seconds."""
    transport = engine.transport
    keys = [b"bare/" + name + k for k in (b"a", b"b", b"c")]
    revs = [0, 0, 0]
    t = time.perf_counter()
    for i in range(n):
        compares = [
            {"key": b64(k), "target": "MOD", "result": "EQUAL", "mod_revision": str(r)}
            for k, r in zip(keys, revs, strict=True)
        ]
        success = [{"request_put": {"key": b64(k), "value": b64(b"%d" % i)}} for k in keys]
        resp = transport.request(
            "/v3/kv/txn", {"compare": compares, "success": success}, write=True
        )
        assert resp.get("succeeded")
        revs = [int(resp["header"]["revision"])] * 3
    return time.perf_counter() - t


def concurrent(url: str, clients: int, seconds: float) -> dict[str, float]:
    """Commits/s and latency percentiles of ``clients`` threads for ``seconds``."""
    kvs = [kvmodel.open_kv(url) for _ in range(clients)]
    lats: list[list[float]] = [[] for _ in range(clients)]
    stop = time.monotonic() + seconds

    def run(n: int) -> None:
        while time.monotonic() < stop:
            lats[n].extend(kv_loop(kvs[n], 10, f"client{n}"))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    for kv in kvs:
        kv.close()
    all_lat = sorted(x for lt in lats for x in lt)
    return {
        "clients": clients,
        "commits_per_s": len(all_lat) / elapsed,
        "p50_ms": 1000 * all_lat[len(all_lat) // 2],
        "p99_ms": 1000 * all_lat[int(len(all_lat) * 0.99)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="commits per 1-member loop")
    parser.add_argument("--seconds", type=float, default=3.0, help="per concurrency level")
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []

    with EtcdCluster(1) as one:
        engine = EtcdEngine(one.endpoints, prefix=b"bench/")
        kv = kvmodel.open_kv(one.url("bench-kv"))
        rounds: dict[str, list[float]] = {"bare": [], "engine": [], "kvmodel": []}
        bare_loop(engine, 50, b"warm")  # warm up the connection and etcd
        for r in range(3):  # interleaved so a load spike hits every column alike
            name = b"r%d/" % r
            rounds["bare"].append(args.n / bare_loop(engine, args.n, name))
            rounds["engine"].append(args.n / engine_loop(engine, args.n, name))
            rounds["kvmodel"].append(args.n / sum(kv_loop(kv, args.n, f"kv{r}")))
        kv.close()
        engine.close()
        rates = {k: statistics.median(v) for k, v in rounds.items()}
        results.append(
            {
                "cluster": 1,
                **{f"{k}_commits_per_s": round(v) for k, v in rates.items()},
                "kvmodel_vs_bare": round(rates["kvmodel"] / rates["bare"], 2),
                "engine_vs_bare": round(rates["engine"] / rates["bare"], 2),
            }
        )

    with EtcdCluster(3) as three:
        for clients in (1, 16):
            r = concurrent(three.url(f"bench-{clients}"), clients, args.seconds)
            results.append({"cluster": 3, **{k: round(v, 2) for k, v in r.items()}})

    for r in results:
        print(json.dumps(r) if args.json else "  ".join(f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
