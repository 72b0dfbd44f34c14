"""The sockets and settings ``kvmodel serve`` runs hypercorn with (kvmodel/connect/_tcp.py).

Deno's KV client writes a request of more than 1,024 bytes in two ``send``
calls with Nagle's algorithm on, so its second part waited for an ACK that
Linux delays by up to 40 ms: every getMany of ten keys and every checked
commit took 45 ms. These tests check the state that removes the stall (the
connection is in quick-ACK mode after every read), not timings; the speed
itself is measured by benchmarks/connect_bench.py.
"""

from __future__ import annotations

import socket
import sys

import pytest

pytest.importorskip("hypercorn", reason="the connect extra is not installed")

from kvmodel.connect._server import _hypercorn_config, _listening_sockets
from kvmodel.connect._tcp import TCP_QUICKACK, QuickAckConnection, QuickAckListener


def _exchange(client: socket.socket, server: socket.socket) -> None:
    """One request and response, as Deno and the server trade them."""
    client.sendall(b"q" * 1024)
    received = 0
    while received < 1024:
        received += len(server.recv(65536))


def test_serve_listens_on_quick_ack_sockets_with_hypercorns_options() -> None:
    """The listener keeps hypercorn's bind and TCP_NODELAY, and accepts QuickAckConnections."""
    config = _hypercorn_config("127.0.0.1", 0)
    sockets = _listening_sockets(config)
    assert sockets.secure_sockets == [] and sockets.quic_sockets == []
    (listener,) = sockets.insecure_sockets
    try:
        assert isinstance(listener, QuickAckListener)
        assert listener.getsockname()[0] == "127.0.0.1"
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        listener.setblocking(True)
        listener.listen()
        with socket.create_connection(listener.getsockname()):
            connection, _ = listener.accept()
            with connection:
                assert isinstance(connection, QuickAckConnection)
                assert connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        listener.close()


@pytest.mark.skipif(TCP_QUICKACK is None, reason="TCP_QUICKACK is Linux's")
def test_a_served_connection_is_in_quick_ack_mode_after_every_read() -> None:
    """After each request is read the pending ACK goes at once, however many came before.

    A plain socket leaves quick-ACK mode after the first request and response
    (the kernel then delays ACKs, which held Deno's second write for 40 ms);
    the served connection is put back after every read.
    """
    assert TCP_QUICKACK is not None
    (listener,) = _listening_sockets(_hypercorn_config("127.0.0.1", 0)).insecure_sockets
    listener.setblocking(True)
    listener.listen()
    with listener, socket.create_connection(listener.getsockname()) as client:
        connection, _ = listener.accept()
        with connection:
            modes = []
            for _ in range(6):
                _exchange(client, connection)
                modes.append(connection.getsockopt(socket.IPPROTO_TCP, TCP_QUICKACK))
                connection.sendall(b"r" * 100)
                client.recv(65536)
            assert modes == [1] * 6


def test_recv_into_also_acknowledges() -> None:
    """asyncio may read with recv_into; that read re-arms quick ACK as recv does."""
    (listener,) = _listening_sockets(_hypercorn_config("127.0.0.1", 0)).insecure_sockets
    listener.setblocking(True)
    listener.listen()
    with listener, socket.create_connection(listener.getsockname()) as client:
        connection, _ = listener.accept()
        with connection:
            client.sendall(b"abc")
            buffer = bytearray(16)
            assert connection.recv_into(buffer) == 3
            assert bytes(buffer[:3]) == b"abc"
            if TCP_QUICKACK is not None:
                assert connection.getsockopt(socket.IPPROTO_TCP, TCP_QUICKACK) == 1


def test_serve_keeps_a_connection_for_any_number_of_requests() -> None:
    """Hypercorn's default closes a connection after 1,000 requests; Deno then retried after 5 s."""
    assert _hypercorn_config("127.0.0.1", 0).keep_alive_max_requests == sys.maxsize
