"""Tests of ``kvmodel serve`` (kvmodel.connect) with the real Deno and Node KV Connect clients.

Deno's own KV unit tests, the cases that apply to a remote database, are ported
in tests/deno/kv_connect_test.ts and run by ``deno test`` against ``kvmodel
serve`` started as a process. Without deno the tests skip locally and fail in
CI (CI=true), as tests/test_deno_file.py does; .ci/run installs deno from npm
into .deno-cache/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("hypercorn", reason="the connect extra is not installed")

from connect_server import TOKEN, serve_process
from test_deno_file import ROOT, find_deno

import kvmodel as km

DENO_TESTS = Path(__file__).resolve().parent / "deno" / "kv_connect_test.ts"


@pytest.fixture(scope="module")
def deno() -> str:
    found = find_deno()
    if found is None:
        message = "deno is not installed (npm install deno in .deno-cache/, see .ci/run)"
        if os.environ.get("CI") == "true" or os.environ.get("KVMODEL_REQUIRE_DENO"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``kvmodel serve`` on a fresh SQLite file, taking V8 values only (as a Deno store)."""
    path = tmp_path / "served.db"
    with serve_process(path, "--values", "v8") as url:
        yield url, path


def run_deno(
    deno: str, *args: str, url: str, token: str = TOKEN
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [deno, *args],
        env={
            **os.environ,
            "KV_URL": url,
            "DENO_KV_ACCESS_TOKEN": token,
            "NO_COLOR": "1",
            "DENO_NO_UPDATE_CHECK": "1",
        },
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )


def test_deno_kv_unit_tests_pass_against_kvmodel_serve(deno: str, served: tuple[str, Path]) -> None:
    """Ported Deno KV unit tests pass: get/set/delete, list, checks, sum/min/max, expiry, watch."""
    url, _ = served
    result = run_deno(deno, "test", "-A", "--unstable-kv", str(DENO_TESTS), url=url)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert " 0 failed" in result.stdout, result.stdout[-2000:]


def test_deno_writes_python_reads_the_served_store(deno: str, served: tuple[str, Path]) -> None:
    """What Deno writes over KV Connect is in the store, read by kvmodel with its versionstamp."""
    url, path = served
    script = (
        'const kv = await Deno.openKv(Deno.env.get("KV_URL"));'
        'const r = await kv.set(["from", "deno"], {n: 1, s: "x", b: new Uint8Array([7])});'
        'await kv.set(["raw"], new Uint8Array([1, 2]));'
        "console.log(r.versionstamp); kv.close();"
    )
    result = run_deno(deno, "eval", "--unstable-kv", script, url=url)
    assert result.returncode == 0, result.stderr
    versionstamp = result.stdout.strip()
    with km.open_kv(path) as kv:
        entry = kv.get(("from", "deno"))
        assert entry.versionstamp == versionstamp
        assert entry.value == {"n": 1, "s": "x", "b": b"\x07"}
        assert kv.get(("raw",)).value == b"\x01\x02"


def test_a_wrong_token_fails_deno_openkv_and_writes_nothing(
    deno: str, served: tuple[str, Path]
) -> None:
    """Deno.openKv with a wrong access token fails with the server's sentence."""
    url, path = served
    script = 'const kv = await Deno.openKv(Deno.env.get("KV_URL")); await kv.set(["x"], 1);'
    result = run_deno(deno, "eval", "--unstable-kv", script, url=url, token="wrong")
    assert result.returncode != 0
    assert "access token is not valid" in result.stderr
    with km.open_kv(path) as kv:
        assert list(kv.list(prefix=())) == []


def test_deno_keeps_one_connection_past_a_thousand_requests(
    deno: str, served: tuple[str, Path]
) -> None:
    """1,100 operations on one Deno.Kv never see the connection closed under them.

    Hypercorn's default closes a connection after 1,000 requests; Deno's client
    logged "KV Connect failed to call ... broken pipe" and retried after ~5 s.
    """
    url, _ = served
    script = (
        'const kv = await Deno.openKv(Deno.env.get("KV_URL"));'
        'for (let i = 0; i < 1100; i++) await kv.get(["k", i]);'
        'console.log("done"); kv.close();'
    )
    result = run_deno(deno, "eval", "--unstable-kv", script, url=url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
    assert "KV Connect failed" not in result.stderr, result.stderr[-2000:]


NODE_SMOKE = """
import { openKv } from "@deno/kv";
const kv = await openKv(process.env.KV_URL, { accessToken: process.env.DENO_KV_ACCESS_TOKEN });
const r = await kv.set(["node"], { hello: "node" });
const got = await kv.get(["node"]);
if (got.value.hello !== "node" || got.versionstamp !== r.versionstamp) throw new Error("mismatch");
const bad = await kv.atomic().check({ key: ["node"], versionstamp: null })
  .set(["node"], 1).commit();
if (bad.ok) throw new Error("check passed");
const listed = [];
for await (const e of kv.list({ prefix: [] })) listed.push(e.key[0]);
console.log(JSON.stringify(listed));
kv.close();
"""


def test_node_deno_kv_client_smoke(served: tuple[str, Path]) -> None:
    """Node's @deno/kv client (npm) sets, gets, checks and lists through kvmodel serve."""
    node = shutil.which("node")
    package = ROOT / ".deno-cache" / "node_modules" / "@deno" / "kv"
    if node is None or not package.exists():
        message = "node or @deno/kv is missing (npm install @deno/kv in .deno-cache/, see .ci/run)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    url, _ = served
    script = ROOT / ".deno-cache" / "connect_smoke.mjs"
    script.write_text(NODE_SMOKE)
    result = subprocess.run(
        [node, str(script)],
        env={**os.environ, "KV_URL": url, "DENO_KV_ACCESS_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '["node"]'
