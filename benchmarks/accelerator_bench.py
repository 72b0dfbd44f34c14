"""The hot paths before and after the accelerator: a baseline, pure Python and compiled.

    python benchmarks/accelerator_bench.py [--n 20000] [--rounds 5] [--baseline REF]
        [--plot benchmarks/accelerator_bench.png] [--json]

Runs the same workloads in fresh interpreters on three builds of kvmodel, taking
turns round by round so a slow spell of the machine falls on all of them:

* ``baseline``: the sources of git ref ``--baseline`` (default ``c8d22a7``, the
  release before the data-safety work), exported to a temporary directory;
  pure Python, as every release before the accelerator was;
* ``pure``: this checkout with ``KVMODEL_PURE_PYTHON=1``;
* ``compiled``: this checkout with its compiled accelerator (run ``make``
  first; the script stops if it is not built).

Workloads on n users (and SQLite at synchronous=FULL, as Deno KV runs): key
encoding and decoding of the users' keys, ``list`` of every user (entries/s),
1000 pages of 20, ``get`` and ``get_many`` of 10 in random order, single-key
``set`` commits, and the object mapper's listing of every user through a
Session and detached on a Kv. Prints the best round of each (ops/s) with the
ratio to the baseline, and with ``--plot`` draws them (matplotlib, the ``bench``
extra).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUILDS = ("baseline", "pure", "compiled")

# The workloads, run by a worker interpreter with kvmodel importable from its
# PYTHONPATH; each prints {"name": ops_per_second, ...} as one JSON line.
WORKER = r"""
import json, os, sys, tempfile, time
import kvmodel as km
from kvmodel.keys import decode_key, encode_key

n = int(sys.argv[1])
out = {"accelerated": bool(getattr(km, "accelerated", False))}

def rate(count, fn):
    t = time.perf_counter()
    fn()
    return count / (time.perf_counter() - t)

keys = [("users", i) for i in range(n)]
encoded = [encode_key(k) for k in keys]
out["encode_key"] = rate(n, lambda: [encode_key(k) for k in keys])
out["decode_key"] = rate(n, lambda: [decode_key(b) for b in encoded])
order = [(i * 7919) % n for i in range(n)]

for engine in ("memory", "sqlite"):
    path = None if engine == "memory" else os.path.join(tempfile.mkdtemp(), "b.db")
    kv = km.open_kv(path)
    doc = lambda i: {"name": f"user{i}", "email": f"u{i}@example.org", "age": i % 90}
    for start in range(0, n, 500):
        op = kv.atomic()
        for i in range(start, min(n, start + 500)):
            op.set(("users", i), doc(i))
        op.commit()
    out[f"{engine}/list_full"] = rate(n, lambda: sum(1 for _ in kv.list(prefix=("users",))))
    out[f"{engine}/list_page"] = rate(1000, lambda: [
        list(kv.list(start=("users", order[j]), end=("users", n), limit=20)) for j in range(1000)
    ])
    out[f"{engine}/get"] = rate(n, lambda: [kv.get(("users", i)) for i in order])
    out[f"{engine}/get_many"] = rate(n // 10, lambda: [
        kv.get_many([("users", order[j + k]) for k in range(10)]) for j in range(0, n - 10, 10)
    ])
    sets = min(n, 3000 if engine == "sqlite" else n)
    out[f"{engine}/set"] = rate(sets, lambda: [kv.set(("s", i), doc(i)) for i in range(sets)])

    class User(km.Model, prefix="users_orm"):
        id: int = km.field(primary_key=True)
        name: str
        email: str
        age: int

    for start in range(0, n, 500):
        op = kv.atomic()
        for i in range(start, min(n, start + 500)):
            op.set(("users_orm", i), {"id": i, **doc(i)})
        op.commit()

    def in_session():
        with km.Session(kv) as s:
            return sum(1 for _ in s.all(User))

    out[f"{engine}/orm_session_all"] = rate(n, in_session)
    if hasattr(User, "all"):  # Model.all (detached objects) came after the baseline
        out[f"{engine}/orm_kv_all"] = rate(n, lambda: sum(1 for _ in User.all(kv)))
    kv.close()
print(json.dumps(out))
"""


def export(ref: str, into: Path) -> Path:
    """The kvmodel sources of git ``ref`` in a fresh directory."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "kvmodel"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run(build: str, source: Path, n: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(source)}
    env.pop("KVMODEL_PURE_PYTHON", None)  # the checkout's own choice, unless this build forces it
    if build == "pure":
        env["KVMODEL_PURE_PYTHON"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", WORKER, str(n)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    if result.returncode != 0:
        raise SystemExit(f"the {build} worker failed:\n{result.stderr}")
    row: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", default="c8d22a7")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sources = {"baseline": export(args.baseline, Path(tmp)), "pure": ROOT, "compiled": ROOT}
        best: dict[str, dict[str, float]] = {b: {} for b in BUILDS}
        for r in range(args.rounds):
            for build in BUILDS:
                print(f"round {r + 1}/{args.rounds}: {build}", file=sys.stderr)
                row = run(build, sources[build], args.n)
                if build == "compiled" and not row.pop("accelerated"):
                    raise SystemExit("the accelerator is not built here: run `make` first")
                row.pop("accelerated", None)
                for name, value in row.items():
                    best[build][name] = max(best[build].get(name, 0.0), value)
    if args.json:
        print(json.dumps({"n": args.n, "baseline": args.baseline, "best_ops_per_s": best}))
    else:
        print(f"n={args.n}, best of {args.rounds} rounds, ops/s (ratio to {args.baseline})")
        print("| workload | baseline | pure Python | compiled |")
        print("|---|---:|---:|---:|")
        for name in best["compiled"]:
            base = best["baseline"].get(name)
            cells = ["-" if base is None else f"{base:,.0f}"] + [
                f"{best[b][name]:,.0f}"
                + ("" if base is None else f" ({best[b][name] / base:.2f}x)")
                for b in ("pure", "compiled")
            ]
            print(f"| {name} | " + " | ".join(cells) + " |")
    if args.plot:
        plot(best, args.baseline, args.plot)


def plot(best: dict[str, dict[str, float]], baseline: str, path: Path) -> None:
    """A bar chart of each build's speed relative to the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(best["baseline"])  # the workloads the baseline has too
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.4
    for k, build in enumerate(("pure", "compiled")):
        ratios = [best[build][n] / best["baseline"][n] for n in names]
        ax.bar([i + (k - 0.5) * width for i in range(len(names))], ratios, width, label=build)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"speed relative to {baseline}")
    ax.set_title("kvmodel hot paths: pure Python and compiled, against the release baseline")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"took {time.perf_counter() - started:.0f} s", file=sys.stderr)
