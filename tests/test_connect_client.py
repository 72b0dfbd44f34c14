"""Tests of kvmodel.engines.connect (ConnectEngine) beyond the conformance suite.

The conformance suite runs on it through ``STORE_FACTORIES["connect"]``; these
tests cover what only a network engine meets: a server restart (new tokens, a
new database id), tokens expiring, a watch stream cut and reopened, wrong
tokens, and the queue the protocol can only fill.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

pytest.importorskip("hypercorn", reason="the connect extra is not installed")

from connect_server import TOKEN, ThreadServer

import kvmodel as km
from kvmodel.engines.connect import ConnectEngine


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store() -> Iterator[km.Kv]:
    with km.open_kv() as kv:
        yield kv


@pytest.fixture
def server(store: km.Kv) -> Iterator[ThreadServer]:
    server = ThreadServer(store).start()
    yield server
    server.stop()


def test_open_kv_dispatches_http_urls_to_the_connect_engine(server: ThreadServer) -> None:
    """open_kv('http://...', token=...) opens a ConnectEngine; data goes to the served store."""
    with km.open_kv(server.url, token=TOKEN) as kv:
        assert isinstance(kv.engine, ConnectEngine)
        kv.set(("a",), {"n": 1})
    assert server.kv.get(("a",)).value == {"n": 1}


def test_a_wrong_token_fails_at_open_with_the_servers_sentence(server: ThreadServer) -> None:
    """A token the server refuses is an EngineError at open, carrying the server's reason."""
    with pytest.raises(km.EngineError, match="access token is not valid"):
        km.open_kv(server.url, token="wrong")


def test_no_token_at_all_is_an_invalid_argument(
    server: ThreadServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without token= and without $DENO_KV_ACCESS_TOKEN, open_kv says what to do."""
    monkeypatch.delenv("DENO_KV_ACCESS_TOKEN", raising=False)
    with pytest.raises(km.InvalidArgumentError, match="DENO_KV_ACCESS_TOKEN"):
        km.open_kv(server.url)


def test_the_client_reconnects_after_a_server_restart(server: ThreadServer) -> None:
    """After a restart (old tokens and database id gone) the next call re-exchanges and works."""
    with km.open_kv(server.url, token=TOKEN) as kv:
        kv.set(("a",), 1)
        server.stop()
        server.start()  # same port and store, new tokens and database id
        assert kv.get(("a",)).value == 1
        assert kv.set(("b",), 2).ok
    assert server.kv.get(("b",)).value == 2


def test_an_expired_token_is_replaced_by_a_new_exchange(store: km.Kv) -> None:
    """A token expired on the server (its clock ran ahead) gets a 401; the client re-exchanges."""
    server_clock = Clock()
    server = ThreadServer(store, clock=server_clock, token_ttl=60).start()
    try:
        with km.open_kv(server.url, token=TOKEN) as kv:
            kv.set(("a",), 1)
            server_clock.now += 3600  # every issued token is now expired on the server
            assert kv.get(("a",)).value == 1
            kv.set(("a",), 2)
        assert store.get(("a",)).value == 2
    finally:
        server.stop()


def test_the_client_refreshes_its_token_before_expiry(store: km.Kv) -> None:
    """With a client clock past the refresh point, the next call exchanges first (no 401 needed)."""
    client_clock = Clock()
    server = ThreadServer(store, token_ttl=60).start()
    try:
        engine = ConnectEngine(server.url, token=TOKEN, clock=client_clock)
        with km.Kv(engine) as kv:
            kv.set(("a",), 1)
            first = engine._metadata
            client_clock.now += 10**9  # far past any expiry
            kv.set(("a",), 2)
            assert engine._metadata is not first
    finally:
        server.stop()


def test_a_call_while_the_server_is_down_fails_after_retry_for(store: km.Kv) -> None:
    """A server that stays down turns into an EngineError after retry_for seconds."""
    server = ThreadServer(store).start()
    with km.open_kv(server.url, token=TOKEN, retry_for=0.3) as kv:
        server.stop()
        with pytest.raises(km.EngineError, match="failed"):
            kv.get(("a",))


def test_a_watch_survives_a_server_restart(server: ThreadServer) -> None:
    """A watch stream cut by a restart reopens and reports the change made after it."""
    with km.open_kv(server.url, token=TOKEN) as kv, kv.watch([("w",)]) as stream:
        it = iter(stream)
        assert next(it)[0].value is None
        server.stop()
        server.start()
        server.kv.set(("w",), "after restart")
        got: list[object] = []
        reader = threading.Thread(target=lambda: got.append(next(it)[0].value), daemon=True)
        reader.start()
        reader.join(15)
        assert got == ["after restart"]


def test_enqueue_through_the_client_is_delivered_on_the_servers_store(
    server: ThreadServer,
) -> None:
    """A message enqueued over KV Connect reaches a listener on the served store unchanged."""
    received: list[object] = []
    done = threading.Event()

    def handler(value: object) -> None:
        received.append(value)
        if len(received) == 3:
            done.set()

    listener = threading.Thread(target=server.kv.listen_queue, args=(handler,), daemon=True)
    listener.start()
    with km.open_kv(server.url, token=TOKEN) as kv:
        kv.enqueue({"job": 1})
        kv.enqueue(b"raw bytes")
        kv.atomic().set(("k",), 1).enqueue(km.KvU64(5)).commit()
        assert done.wait(10), received
    assert received == [{"job": 1}, b"raw bytes", km.KvU64(5)]


def test_listen_queue_on_the_client_says_the_protocol_cannot_deliver(
    server: ThreadServer,
) -> None:
    """KV Connect has no dequeue: listen_queue raises an EngineError saying where to listen."""
    with km.open_kv(server.url, token=TOKEN) as kv:
        assert kv.engine.capabilities.queue_delivery is False
        with pytest.raises(km.EngineError, match="cannot deliver queue messages"):
            kv.listen_queue(lambda value: None)


class Note(km.Model, prefix="notes"):
    id: str = km.field(primary_key=True, factory=km.new_id)
    owner: str
    text: str = ""
    by_owner = km.Index("owner")


def test_the_object_mapper_works_through_the_client(server: ThreadServer) -> None:
    """Sessions commit documents and index entries over KV Connect; index queries read them."""
    with km.open_kv(server.url, token=TOKEN) as kv:
        with km.Session(kv) as s:
            s.add(Note(owner="ada", text="one"))
            s.add(Note(owner="ada", text="two"))
            s.add(Note(owner="bob"))
        with km.Session(kv) as s:
            assert sorted(n.text for n in Note.by_owner.find(s, "ada")) == ["one", "two"]
    assert len(list(server.kv.list(prefix=("notes_by_owner",)))) == 3
