"""Listening sockets whose connections acknowledge what they read at once.

Deno's KV client (hyper's HTTP/2 client) leaves Nagle's algorithm on
(``TCP_NODELAY`` off) and writes a request of more than about a kilobyte in
two ``send`` calls: the first 1,024 bytes, then the rest. Nagle holds the
rest until the first part is acknowledged, and Linux delays that ACK by up to
40 ms (the delayed-ACK timer), because the server has nothing to send until
the whole request is in. Every getMany of ten keys and every checked commit
with a value stalled for those 40 ms.

The server cannot turn the client's Nagle off, but it can acknowledge
immediately: on Linux, setting ``TCP_QUICKACK`` sends an ACK that is being
delayed and leaves delayed-ACK mode. The kernel re-enters that mode on its own
as the exchange goes on, so the option is set again after every read that
returns data (one ``setsockopt`` call per read). Elsewhere (no
``TCP_QUICKACK``) the sockets are plain.
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class QuickAckConnection(socket.socket):
    """An accepted connection that sets ``TCP_QUICKACK`` after every read with data."""

    def _ack_now(self) -> None:
        if TCP_QUICKACK is None:
            return
        with contextlib.suppress(OSError):  # gone: the next read reports it
            self.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        data = super().recv(bufsize, flags)
        if data:
            self._ack_now()
        return data

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0, /) -> int:
        count = super().recv_into(buffer, nbytes, flags)
        if count:
            self._ack_now()
        return count


class QuickAckListener(socket.socket):
    """A listening socket whose ``accept`` returns :class:`QuickAckConnection` objects."""

    def accept(self) -> tuple[socket.socket, object]:
        fd, address = self._accept()  # type: ignore[attr-defined]
        connection = QuickAckConnection(self.family, self.type, self.proto, fileno=fd)
        if socket.getdefaulttimeout() is None and self.gettimeout():
            connection.setblocking(True)
        return connection, address


def quick_ack(listener: socket.socket) -> QuickAckListener:
    """The same listening socket (bound, with its options) as a :class:`QuickAckListener`."""
    family, kind, proto = listener.family, listener.type, listener.proto
    return QuickAckListener(family, kind, proto, fileno=listener.detach())
