"""How long opening an etcd store waits: fast on a wrong address, patient on a slow member.

A port that refuses connections (no etcd there, a typo) fails at open within
``connect_timeout`` (1 s by default) instead of retrying for
``retry_timeout``; a member that accepts the connection but answers slowly
keeps ``retry_timeout``'s patience; ``connect_timeout=`` (or the URL's
``?connect_timeout=``) waits for a cluster that is still starting.
The bounds below are behaviour (seconds against 15), not speed targets.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from etcd_cluster import INSTALL_HINT, EtcdCluster, etcd_tests_skipped

import kvmodel as km
from kvmodel.engines.etcd import EtcdEngine
from kvmodel.errors import EngineError, InvalidArgumentError


def _refusing_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def _open_timed(url: str, **options: object) -> tuple[str, float]:
    start = time.monotonic()
    with pytest.raises(EngineError) as info:
        km.open_kv(url, **options)
    return str(info.value), time.monotonic() - start


def test_a_refused_port_fails_at_open_within_a_second_naming_the_option() -> None:
    url = f"etcd://user:pw@127.0.0.1:{_refusing_port()}/app"
    message, took = _open_timed(url)
    assert took < 2.0  # was 14.7 s: retry_timeout's 15 s of retries
    assert "No etcd member accepts connections" in message
    assert "connect_timeout" in message
    assert "pw" not in message.replace("pw@", "")  # the password never shows


def test_several_refusing_endpoints_fall_through_fast() -> None:
    ports = [_refusing_port() for _ in range(3)]
    message, took = _open_timed("etcd://" + ",".join(f"127.0.0.1:{p}" for p in ports))
    assert took < 2.0
    assert all(str(p) in message for p in ports)


def test_connect_timeout_asks_for_longer_retries() -> None:
    port = _refusing_port()
    message, took = _open_timed(f"etcd://127.0.0.1:{port}?connect_timeout=1.5")
    assert 0.9 < took < 4.0  # gives up a retry pause (at most 0.5 s) early rather than late
    assert "connect_timeout=1.5 s" in message
    message, took = _open_timed(f"etcd://127.0.0.1:{port}", connect_timeout=0.2)
    assert took < 1.5


@pytest.fixture()
def silent_member() -> Iterator[int]:
    """A port that accepts connections and never answers: a member that is up but stuck."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield server.getsockname()[1]
    stop.set()
    t.join()
    server.close()
    for conn in held:
        conn.close()


def test_a_member_that_accepts_but_answers_slowly_keeps_retry_patience(silent_member: int) -> None:
    message, took = _open_timed(
        f"etcd://127.0.0.1:{silent_member}",
        connect_timeout=0.2,
        request_timeout=0.4,
        retry_timeout=1.5,
    )
    assert took >= 1.2  # retry_timeout's patience, not connect_timeout's
    assert "answered" in message and "1.5 s" in message


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("connect_timeout=soon", "connect_timeout='soon', which is not a number"),
        ("connect_timeout=0", "connect_timeout=0.0 is not a positive number"),
        ("retry_timeout=-1", "retry_timeout=-1.0 is not a positive number"),
        ("connect_timeout=1&connect_timeout=2", "gives connect_timeout twice"),
    ],
)
def test_bad_timeouts_in_the_url_are_named(query: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        EtcdEngine.from_url(f"etcd://127.0.0.1:1?{query}")


def test_a_timeout_from_the_url_and_the_option_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="both give the connect_timeout"):
        EtcdEngine.from_url("etcd://127.0.0.1:1?connect_timeout=2", connect_timeout=3)


@pytest.mark.etcd
@pytest.mark.skipif(etcd_tests_skipped(), reason=INSTALL_HINT)
def test_connect_timeout_waits_for_a_cluster_that_is_starting() -> None:
    cluster = EtcdCluster()
    url = cluster.url("starting") + "?connect_timeout=30"
    starter = threading.Timer(1.0, cluster.start)
    starter.start()
    try:
        with km.open_kv(url) as kv:
            kv.set(("up",), True)
            assert kv.get(("up",)).value is True
    finally:
        starter.join()
        cluster.stop()
