"""The etcd engine's watcher thread: follows etcd watch streams and calls back on change."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from kvmodel.engines._etcd_records import as_int
from kvmodel.engines._etcd_transport import (
    STALE_TOKEN_ANSWERS,
    EtcdTransport,
    WatchConnection,
    b64,
)
from kvmodel.errors import EngineError

Json = dict[str, Any]


def _token_refused(result: Json) -> bool:
    """True when etcd cancelled a watch because of its token (stale, or none sent)."""
    reason = str(result.get("cancel_reason", ""))
    return any(m in reason for m in STALE_TOKEN_ANSWERS)


class Watcher:
    """A background thread following etcd watch streams, calling ``on_change`` per event.

    It reconnects (to another member if needed) from the last revision it saw,
    and calls ``on_change`` after a reconnect or a compaction too, since events
    may have been missed: the caller re-reads.
    """

    def __init__(
        self,
        transport: EtcdTransport,
        ranges: list[tuple[bytes, bytes | None]],
        start_revision: int,
        on_change: Callable[[], None],
    ) -> None:
        self._transport = transport
        self._ranges = ranges
        self._next_revision = start_revision
        self._on_change = on_change
        self._stopped = False
        self._conn: WatchConnection | None = None
        self._index = 0
        self._thread = threading.Thread(target=self._run, name="kvmodel-etcd-watch", daemon=True)
        self._thread.start()

    def _requests(self) -> list[Json]:
        out = []
        for start, end in self._ranges:
            req: Json = {"key": b64(start)}
            if end is not None:
                req["range_end"] = b64(end)
            if self._next_revision:
                req["start_revision"] = str(self._next_revision)
            out.append({"create_request": req})
        return out

    def _run(self) -> None:
        pause = 0.05
        while not self._stopped:
            try:
                conn = self._transport.open_stream("/v3/watch", self._requests(), start=self._index)
            except EngineError:
                time.sleep(pause)
                continue
            self._conn = conn
            self._index = conn.index
            if self._stopped:
                conn.close()
                return
            conn.set_timeout(None)
            try:
                for result in conn.messages():
                    revision = as_int(result.get("header", {}).get("revision"))
                    if result.get("canceled") and _token_refused(result):
                        # etcd checks the token when a watch is created; log in
                        # again and resume from the same revision.
                        self._renew_token(conn.token)
                        pause = min(pause * 2, 1.0)
                        break
                    pause = 0.05
                    if result.get("compact_revision") or result.get("canceled"):
                        # Events were compacted away: resume at the present and re-read.
                        self._next_revision = revision + 1
                        self._on_change()
                        break
                    if not self._next_revision and revision:
                        self._next_revision = revision + 1
                    events = result.get("events")
                    if events:
                        last = max(as_int(e.get("kv", {}).get("mod_revision")) for e in events)
                        self._next_revision = max(self._next_revision, last + 1)
                        self._on_change()
            except (OSError, ValueError):
                pass
            finally:
                conn.close()
            if not self._stopped:
                # The stream broke (a member died): wake the reader, try the next member.
                self._index += 1
                self._on_change()
                time.sleep(pause)

    def _renew_token(self, rejected: str | None) -> None:
        if self._transport.credentials is None:
            return  # nothing to log in with: retried with backoff, reads raise the error
        # A member down or a changed password: the next round tries again.
        with contextlib.suppress(EngineError):
            self._transport.renew_token(rejected)

    def stop(self) -> None:
        """Ends the thread and closes its stream."""
        self._stopped = True
        if self._conn is not None:
            self._conn.interrupt()
