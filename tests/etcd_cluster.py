"""A throwaway etcd cluster on loopback ports, for the etcd engine's tests.

The cluster runs the ``etcd`` binary of the system package (Debian's
``etcd-server``) with its data in a temporary directory on ``/dev/shm`` (tmpfs,
so fsync is cheap). It stops exactly the processes it started, also when a test
fails or the interpreter exits, and never touches an etcd it did not start.

A cluster can serve its clients over TLS (certificates made by
:func:`make_tls_files` with the ``openssl`` command) and have etcd's
authentication enabled (:meth:`EtcdCluster.enable_auth`, through the JSON
gateway, so no ``etcdctl`` is needed).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


OPENSSL_BINARY = shutil.which("openssl")


def openssl_available() -> bool:
    """True when the ``openssl`` command is installed (to make test certificates)."""
    return OPENSSL_BINARY is not None


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throwaway CA, a member certificate for 127.0.0.1 and a client one."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    """A second CA that signed nothing here: trusting it alone must fail."""


def make_tls_files(directory: Path) -> TlsFiles:
    """Makes a CA, a member certificate (127.0.0.1, localhost) and a client certificate.

    Uses the ``openssl`` command; P-256 keys, valid for two days. The member
    certificate may also act as a client: etcd's gateway dials its own gRPC
    port with it, which ``--client-cert-auth`` checks. The client
    certificate has no common name: etcd's gateway refuses one that has
    (it could not pass the name on as the etcd user).
    """
    if OPENSSL_BINARY is None:
        raise RuntimeError("The openssl command is not installed; `apt-get install openssl`.")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([OPENSSL_BINARY, *args], check=True, capture_output=True, cwd=directory)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"]
    for name in ("ca", "other-ca"):
        run("req", "-x509", *ec, "-subj", f"/CN=kvmodel test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", f"{name}.key", "-out", f"{name}.crt")  # fmt: skip
    leaves = {
        "server": ("127.0.0.1", ["subjectAltName=IP:127.0.0.1,DNS:localhost",
                                 "extendedKeyUsage=serverAuth,clientAuth"]),
        "client": ("", ["extendedKeyUsage=clientAuth"]),
    }  # fmt: skip
    for name, (cn, ext) in leaves.items():
        lines = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature", *ext]
        (directory / f"{name}.ext").write_text("\n".join(lines) + "\n")
        subject = f"/CN={cn}" if cn else "/O=kvmodel test client"
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", subject, "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
            "-out", f"{name}.crt")  # fmt: skip
    return TlsFiles(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.crt",
    )


def _post(
    url: str,
    body: dict[str, Any],
    timeout: float = 1.0,
    *,
    context: ssl.SSLContext | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = token
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


class EtcdCluster:
    """One or three etcd members on free loopback ports, in a temporary directory.

    Use it as a context manager; ``endpoints`` are ``"127.0.0.1:port"`` strings
    for :class:`kvmodel.engines.etcd.EtcdEngine`.

    Args:
        tls: serve clients over TLS with these files (peers stay on plain HTTP).
        client_cert_auth: with ``tls``, demand a client certificate signed by the CA.
        auth_token_ttl: etcd's ``--auth-token-ttl``, seconds a token lives unused.
    """

    def __init__(
        self,
        size: int = 1,
        *,
        base_dir: str | None = None,
        max_txn_ops: int = 2048,
        tls: TlsFiles | None = None,
        client_cert_auth: bool = False,
        auth_token_ttl: int | None = None,
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
        self.tls = tls
        self.client_cert_auth = client_cert_auth
        self.auth_token_ttl = auth_token_ttl
        self._root_password: str | None = None

    # -- lifecycle -------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        """The members' client addresses as ``host:port``."""
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    @property
    def scheme(self) -> str:
        """``"https"`` for a TLS cluster, else ``"http"``."""
        return "https" if self.tls is not None else "http"

    def url(self, prefix: str = "") -> str:
        """An ``etcd://`` (``etcds://`` with TLS) URL naming every member and a key prefix."""
        scheme = "etcds" if self.tls is not None else "etcd"
        return f"{scheme}://" + ",".join(self.endpoints) + (f"/{prefix}" if prefix else "")

    def _command(self, i: int) -> list[str]:
        initial = ",".join(f"m{j}=http://127.0.0.1:{self.peer_ports[j]}" for j in range(self.size))
        client = f"{self.scheme}://127.0.0.1:{self.client_ports[i]}"
        peer = f"http://127.0.0.1:{self.peer_ports[i]}"
        security = []
        if self.tls is not None:
            security += [
                f"--cert-file={self.tls.server_cert}",
                f"--key-file={self.tls.server_key}",
                f"--trusted-ca-file={self.tls.ca}",
            ]
            if self.client_cert_auth:
                security.append("--client-cert-auth")
        if self.auth_token_ttl is not None:
            security.append(f"--auth-token-ttl={self.auth_token_ttl}")
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
            *security,
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

    # -- requests and auth ---------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext | None:
        """The context the test harness talks TLS with (CA and client certificate)."""
        if self.tls is None:
            return None
        ctx = ssl.create_default_context(cafile=str(self.tls.ca))
        ctx.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return ctx

    def post(self, i: int, path: str, body: dict[str, Any], timeout: float = 1.0) -> Any:
        """Sends ``body`` to member ``i``'s gateway as root (once auth is enabled)."""
        url = f"{self.scheme}://{self.endpoints[i]}{path}"
        token = None
        if self._root_password is not None:
            login = {"name": "root", "password": self._root_password}
            token = _post(
                f"{self.scheme}://{self.endpoints[i]}/v3/auth/authenticate",
                login,
                timeout,
                context=self.ssl_context(),
            )["token"]
        return _post(url, body, timeout, context=self.ssl_context(), token=token)

    def enable_auth(self, root_password: str) -> None:
        """Creates the root user and role and enables authentication, through the gateway."""
        leader = self.leader()
        assert leader is not None, "enable_auth needs a healthy cluster"
        self.post(leader, "/v3/auth/user/add", {"name": "root", "password": root_password})
        self.post(leader, "/v3/auth/role/add", {"name": "root"})
        self.post(leader, "/v3/auth/user/grant", {"user": "root", "role": "root"})
        self.post(leader, "/v3/auth/enable", {})
        self._root_password = root_password

    def add_user(self, name: str, password: str, *, prefix: bytes) -> None:
        """Adds a user whose role may read and write keys under ``prefix`` only."""
        import base64

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()

        end = prefix[:-1] + bytes([prefix[-1] + 1])
        leader = self.leader()
        assert leader is not None
        self.post(leader, "/v3/auth/user/add", {"name": name, "password": password})
        self.post(leader, "/v3/auth/role/add", {"name": name})
        perm = {"permType": "READWRITE", "key": b64(prefix), "range_end": b64(end)}
        self.post(leader, "/v3/auth/role/grant", {"name": name, "perm": perm})
        self.post(leader, "/v3/auth/user/grant", {"user": name, "role": name})

    # -- status ------------------------------------------------------------

    def status(self, i: int) -> dict[str, Any] | None:
        """Member ``i``'s ``/v3/maintenance/status``, or None when it does not answer."""
        if not self.alive(i):
            return None
        try:
            return _post(
                f"{self.scheme}://{self.endpoints[i]}/v3/maintenance/status",
                {},
                context=self.ssl_context(),
            )
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
            self.post(i, "/v3/kv/range", {"key": "AA=="})
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
