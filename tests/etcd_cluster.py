"""A throwaway etcd cluster on loopback ports, for the etcd engine's tests.

The cluster runs the ``etcd`` binary of the system package (Debian's
``etcd-server``) with its data in a temporary directory on ``/dev/shm`` (tmpfs,
so fsync is cheap). It stops exactly the processes it started, also when a test
fails or the interpreter exits, and never touches an etcd it did not start.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ETCD_BINARY = shutil.which("etcd") or "/usr/bin/etcd"
INSTALL_HINT = "etcd is not installed; run `apt-get install etcd-server` to run the etcd tests."

_LIVE: set[subprocess.Popen[bytes]] = set()


def etcd_available() -> bool:
    """True when the etcd binary of the system package is installed."""
    return os.access(ETCD_BINARY, os.X_OK)


def _kill_leftovers() -> None:
    # Only the processes this module started; never an etcd found by name.
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _LIVE.discard(proc)


atexit.register(_kill_leftovers)


def _free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out on 127.0.0.1 (free at the time of asking)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _post(url: str, body: dict[str, Any], timeout: float = 1.0) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


class EtcdCluster:
    """One or three etcd members on free loopback ports, in a temporary directory.

    Use it as a context manager; ``endpoints`` are ``"127.0.0.1:port"`` strings
    for :class:`kvmodel.engines.etcd.EtcdEngine`.
    """

    def __init__(
        self, size: int = 1, *, base_dir: str | None = None, max_txn_ops: int = 2048
    ) -> None:
        if not etcd_available():
            raise RuntimeError(INSTALL_HINT)
        if base_dir is None and os.path.isdir("/dev/shm"):
            base_dir = "/dev/shm"
        self.size = size
        # Deno's 1000 mutations per commit need more than etcd's default of 128.
        self.max_txn_ops = max_txn_ops
        self._dir = Path(tempfile.mkdtemp(prefix="kvmodel-etcd-", dir=base_dir))
        ports = _free_ports(2 * size)
        self.client_ports = ports[:size]
        self.peer_ports = ports[size:]
        self._token = f"kvmodel-{uuid.uuid4().hex[:12]}"
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * size
        self._started_once = [False] * size

    # -- lifecycle -------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        """The members' client addresses as ``host:port``."""
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    def url(self, prefix: str = "") -> str:
        """An ``etcd://`` URL naming every member, with an optional key prefix."""
        return "etcd://" + ",".join(self.endpoints) + (f"/{prefix}" if prefix else "")

    def _command(self, i: int) -> list[str]:
        initial = ",".join(f"m{j}=http://127.0.0.1:{self.peer_ports[j]}" for j in range(self.size))
        client = f"http://127.0.0.1:{self.client_ports[i]}"
        peer = f"http://127.0.0.1:{self.peer_ports[i]}"
        return [
            ETCD_BINARY,
            f"--name=m{i}",
            f"--data-dir={self._dir / f'm{i}'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={initial}",
            f"--initial-cluster-token={self._token}",
            "--initial-cluster-state=" + ("existing" if self._started_once[i] else "new"),
            f"--max-txn-ops={self.max_txn_ops}",
            "--logger=zap",
            "--log-level=error",
        ]

    def _spawn(self, i: int) -> None:
        log = open(self._dir / f"m{i}.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            proc = subprocess.Popen(
                self._command(i), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            log.close()
        _LIVE.add(proc)
        self._procs[i] = proc
        self._started_once[i] = True

    def start(self, timeout: float = 20.0) -> EtcdCluster:
        """Starts every member and waits until the cluster has a leader."""
        try:
            for i in range(self.size):
                self._spawn(i)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stops every member this cluster started and deletes its directory."""
        for i in range(self.size):
            self.kill(i, sig=signal.SIGTERM)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults ------------------------------------------------------------

    def alive(self, i: int) -> bool:
        """True while member ``i`` runs."""
        proc = self._procs[i]
        return proc is not None and proc.poll() is None

    def kill(self, i: int, *, sig: int = signal.SIGKILL) -> None:
        """Stops member ``i`` with ``sig`` (SIGKILL by default: a crash)."""
        proc = self._procs[i]
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _LIVE.discard(proc)
        self._procs[i] = None

    def restart(self, i: int) -> None:
        """Starts member ``i`` again on its old data directory and ports."""
        if self.alive(i):
            return
        self._spawn(i)

    # -- status ------------------------------------------------------------

    def status(self, i: int) -> dict[str, Any] | None:
        """Member ``i``'s ``/v3/maintenance/status``, or None when it does not answer."""
        if not self.alive(i):
            return None
        try:
            return _post(f"http://{self.endpoints[i]}/v3/maintenance/status", {})
        except (OSError, ValueError):
            return None

    def leader(self) -> int | None:
        """The index of the current leader, or None while there is none."""
        for i in range(self.size):
            st = self.status(i)
            if st is not None and st.get("leader") and st["leader"] == st["header"]["member_id"]:
                return i
        return None

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Waits until a leader exists and every running member answers a linearizable read."""
        deadline = time.monotonic() + timeout
        while True:
            if self.leader() is not None and all(
                self._read_ok(i) for i in range(self.size) if self.alive(i)
            ):
                return
            for i in range(self.size):
                proc = self._procs[i]
                if proc is not None and proc.poll() is not None:
                    log = (self._dir / f"m{i}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"etcd member m{i} exited early:\n{log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"The etcd cluster in {self._dir} did not become healthy.")
            time.sleep(0.05)

    def _read_ok(self, i: int) -> bool:
        try:
            _post(f"http://{self.endpoints[i]}/v3/kv/range", {"key": "AA=="})
            return True
        except (OSError, ValueError, urllib.error.URLError):
            return False


@contextmanager
def etcd_cluster(size: int = 1) -> Iterator[EtcdCluster]:
    """A started :class:`EtcdCluster` that is stopped on exit."""
    with EtcdCluster(size) as cluster:
        yield cluster


_SHARED: dict[int, EtcdCluster] = {}


def etcd_tests_skipped() -> bool:
    """True when the etcd tests should be skipped: etcd is missing and CI does not require it."""
    return not etcd_available() and not os.environ.get("KVMODEL_REQUIRE_ETCD")


def skip_without_etcd() -> None:
    """Skips the calling test when etcd is missing, unless KVMODEL_REQUIRE_ETCD is set.

    CI sets KVMODEL_REQUIRE_ETCD=1, so a missing etcd fails there instead of
    passing quietly with every etcd test skipped.
    """
    import pytest

    if etcd_available():
        return
    if os.environ.get("KVMODEL_REQUIRE_ETCD"):
        pytest.fail("KVMODEL_REQUIRE_ETCD is set but etcd is not installed: " + INSTALL_HINT)
    pytest.skip(INSTALL_HINT)


def shared_cluster(size: int = 1) -> EtcdCluster:
    """A cluster of ``size`` members shared by the whole test run, started on first use.

    Tests keep apart by key prefix; the cluster stops when the interpreter exits.
    Skips the calling test when etcd is not installed.
    """

    skip_without_etcd()
    cluster = _SHARED.get(size)
    if cluster is None:
        cluster = _SHARED[size] = EtcdCluster(size).start()
        atexit.register(cluster.stop)
    return cluster


def etcd_store_factory(size: int = 1) -> Any:
    """A conformance-suite store factory: a fresh key prefix on a shared cluster per test."""

    def factory(tmp_path: Path) -> Any:
        from kvmodel.engines.etcd import EtcdEngine
        from kvmodel.testing import KvStore

        url = shared_cluster(size).url(f"t-{uuid.uuid4().hex[:12]}")
        ops = shared_cluster(size).max_txn_ops
        return KvStore(
            lambda **options: EtcdEngine.from_url(url, max_txn_ops=ops, **options), path=url
        )

    return factory
