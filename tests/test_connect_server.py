"""Tests of kvmodel.connect's server (``kvmodel serve``): what it refuses, and how values travel.

Requests go over loopback HTTP to the app under hypercorn in a thread
(tests/connect_server.py). Every refused request is checked to have written nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("hypercorn", reason="the connect extra is not installed")

import httpx
from connect_server import ThreadServer

import kvmodel as km
from kvmodel.connect._protocol import MAX_REQUEST_SIZE, pb
from kvmodel.keys import encode_key

TOKEN = "test-token"  # connect_server's token
V8_STRING_HI = b"\xff\x0f\x22\x02hi"  # V8's serialization of "hi" (version 15, one-byte string)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def kv() -> Iterator[km.Kv]:
    with km.open_kv() as kv:
        yield kv


_servers: list[tuple[ThreadServer, httpx.Client]] = []


@pytest.fixture(autouse=True)
def _stop_servers() -> Iterator[None]:
    yield
    while _servers:
        server, client = _servers.pop()
        client.close()
        server.stop()


def client_for(kv: km.Kv, **options: Any) -> httpx.Client:
    """An HTTP client of a new server on ``kv`` (stopped after the test)."""
    server = ThreadServer(kv, **options).start()
    client = httpx.Client(base_url=server.url)
    _servers.append((server, client))
    return client


def exchange(client: httpx.Client, versions: Any = (1, 2, 3), token: str = TOKEN) -> Any:
    return client.post(
        "/",
        content=json.dumps({"supportedVersions": list(versions)}),
        headers={"authorization": f"Bearer {token}"},
    )


def data_headers(meta: dict[str, Any]) -> dict[str, str]:
    return {
        "authorization": f"Bearer {meta['token']}",
        "x-denokv-version": str(meta["version"]),
        "x-denokv-database-id": meta["databaseId"],
        "content-type": "application/x-protobuf",
    }


def set_request(key: tuple[Any, ...], data: bytes, encoding: int = pb.VE_BYTES) -> bytes:
    write = pb.AtomicWrite(
        mutations=[
            pb.Mutation(
                key=encode_key(key),
                mutation_type=pb.M_SET,
                value=pb.KvValue(data=data, encoding=encoding),
            )
        ]
    )
    return bytes(write.SerializeToString())


def commit(client: httpx.Client, body: bytes, meta: dict[str, Any] | None = None) -> Any:
    meta = meta or exchange(client).json()
    return client.post("/v2/atomic_write", content=body, headers=data_headers(meta))


def test_the_metadata_exchange_answers_version_endpoints_token_and_expiry(kv: km.Kv) -> None:
    """The exchange picks the highest common version and answers the v2 schema's fields."""
    client = client_for(kv)
    meta = exchange(client).json()
    assert set(meta) == {"version", "databaseId", "endpoints", "token", "expiresAt"}
    assert meta["version"] == 3
    assert meta["endpoints"] == [{"url": "/v2", "consistency": "strong"}]
    assert meta["token"] != TOKEN
    assert meta["expiresAt"].endswith("Z")
    assert exchange(client, versions=[1, 2]).json()["version"] == 2


@pytest.mark.parametrize(
    ("body", "token", "status", "says"),
    [
        (b"", TOKEN, 400, "supportedVersions"),
        (b"not json", TOKEN, 400, "supportedVersions"),
        (b'{"supportedVersions": [1]}', TOKEN, 400, "No common protocol version"),
        (b'{"supportedVersions": [2, 3]}', "wrong", 401, "access token is not valid"),
    ],
)
def test_a_bad_metadata_exchange_is_a_4xx_with_a_sentence(
    kv: km.Kv, body: bytes, token: str, status: int, says: str
) -> None:
    """A missing body, version 1 only or a wrong token is refused with a plain-text reason."""
    response = client_for(kv).post("/", content=body, headers={"authorization": f"Bearer {token}"})
    assert response.status_code == status
    assert says in response.text
    assert response.headers["content-type"].startswith("text/plain")


def test_data_path_requests_need_a_valid_unexpired_token(kv: km.Kv) -> None:
    """An unknown or expired data path token is a 401; a wrong version or database id a 400."""
    clock = Clock()
    client = client_for(kv, clock=clock, token_ttl=60)
    meta = exchange(client).json()
    body = set_request(("a",), b"1")
    nil = "00000000-0000-0000-0000-000000000000"
    for headers, status in [
        ({**data_headers(meta), "authorization": f"Bearer {TOKEN}"}, 401),
        ({**data_headers(meta), "x-denokv-version": "1"}, 400),
        (
            {**data_headers(meta), "x-denokv-database-id": nil},
            400,
        ),
    ]:
        assert client.post("/v2/atomic_write", content=body, headers=headers).status_code == status
    clock.now += 61
    expired = client.post("/v2/atomic_write", content=body, headers=data_headers(meta))
    assert expired.status_code == 401
    assert "expired" in expired.text
    assert kv.get(("a",)).versionstamp is None
    assert commit(client, body).status_code == 200  # a fresh exchange works again
    assert kv.get(("a",)).value == b"1"


def test_malformed_protobuf_is_a_400_and_writes_nothing(kv: km.Kv) -> None:
    """A body that is not the operation's protobuf message is refused, naming the message."""
    client = client_for(kv)
    response = commit(client, b"\xff\xff\xff garbage")
    assert response.status_code == 400
    assert "com.deno.kv.datapath.AtomicWrite" in response.text
    assert list(kv.list(prefix=())) == []


def test_an_oversized_request_is_a_413_and_writes_nothing(kv: km.Kv) -> None:
    """A body over MAX_REQUEST_SIZE is refused before it is parsed."""
    client = client_for(kv)
    response = commit(client, set_request(("a",), b"x" * (MAX_REQUEST_SIZE + 1)))
    assert response.status_code == 413
    assert list(kv.list(prefix=())) == []


@pytest.mark.parametrize(
    ("write", "says"),
    [
        (
            pb.AtomicWrite(
                mutations=[
                    pb.Mutation(
                        key=encode_key(("a", i)),
                        mutation_type=pb.M_SET,
                        value=pb.KvValue(data=b"", encoding=pb.VE_BYTES),
                    )
                    for i in range(1001)
                ]
            ),
            "mutations",
        ),
        (
            pb.AtomicWrite(
                mutations=[
                    pb.Mutation(
                        key=encode_key(("a",)),
                        mutation_type=pb.M_SET,
                        value=pb.KvValue(data=b"x" * 65537, encoding=pb.VE_BYTES),
                    )
                ]
            ),
            "65537 bytes",
        ),
        (
            pb.AtomicWrite(
                mutations=[
                    pb.Mutation(
                        key=b"\x02unterminated",
                        mutation_type=pb.M_SET,
                        value=pb.KvValue(data=b"", encoding=pb.VE_BYTES),
                    )
                ]
            ),
            "not a valid key encoding",
        ),
        (
            pb.AtomicWrite(
                mutations=[
                    pb.Mutation(
                        key=encode_key(("a",)),
                        mutation_type=pb.M_SUM,
                        value=pb.KvValue(data=b"\x01" * 8, encoding=pb.VE_LE64),
                        sum_clamp=True,
                    )
                ]
            ),
            "clamping",
        ),
        (
            pb.AtomicWrite(checks=[pb.Check(key=encode_key(("a",)), versionstamp=b"short")]),
            "versionstamp",
        ),
    ],
)
def test_writes_over_a_limit_or_malformed_are_refused_whole(
    kv: km.Kv, write: Any, says: str
) -> None:
    """Too many mutations, a big value, a bad key, clamped sums, bad checks: 400, no write."""
    response = commit(client_for(kv), write.SerializeToString())
    assert response.status_code == 400
    assert says in response.text
    assert list(kv.list(prefix=())) == []


def test_sum_on_a_value_that_is_not_a_kvu64_names_the_kvmodel_error(kv: km.Kv) -> None:
    """A KvTypeError in the engine is a 400 whose x-kvmodel-error header names it."""
    kv.set(("n",), "text")
    write = pb.AtomicWrite(
        mutations=[
            pb.Mutation(
                key=encode_key(("n",)),
                mutation_type=pb.M_SUM,
                value=pb.KvValue(data=b"\x01" + b"\x00" * 7, encoding=pb.VE_LE64),
            )
        ]
    )
    response = commit(client_for(kv), write.SerializeToString())
    assert response.status_code == 400
    assert response.headers["x-kvmodel-error"] == "KvTypeError"
    assert kv.get(("n",)).value == "text"


def test_v8_values_are_stored_under_kvmodels_v8_tag_and_served_as_v8(kv: km.Kv) -> None:
    """Wire tag 1 holding V8 bytes is stored as V8 (read back by kvmodel) and served as tag 1."""
    client = client_for(kv)
    assert commit(client, set_request(("s",), V8_STRING_HI, pb.VE_V8)).status_code == 200
    assert kv.get(("s",)).value == "hi"
    read = pb.SnapshotRead(
        ranges=[pb.ReadRange(start=encode_key(("s",)), end=encode_key(("s",)) + b"\x00", limit=1)]
    )
    meta = exchange(client).json()
    response = client.post(
        "/v2/snapshot_read", content=read.SerializeToString(), headers=data_headers(meta)
    )
    out = pb.SnapshotReadOutput()
    out.ParseFromString(response.content)
    assert out.status == pb.SR_SUCCESS
    (entry,) = out.ranges[0].values
    assert (entry.value, entry.encoding) == (V8_STRING_HI, pb.VE_V8)


@pytest.mark.parametrize(
    ("mode", "data", "accepted"),
    [
        ("any", V8_STRING_HI, True),
        ("any", b"\xa2hi", True),  # msgpack "hi"
        ("v8", V8_STRING_HI, True),
        ("v8", b"\xa2hi", False),
        ("msgpack", V8_STRING_HI, False),
        ("msgpack", b"\xa2hi", True),
    ],
)
def test_the_values_mode_keeps_a_store_in_one_object_format(
    kv: km.Kv, mode: str, data: bytes, accepted: bool
) -> None:
    """values='v8' refuses msgpack object values, values='msgpack' refuses V8, 'any' takes both."""
    response = commit(client_for(kv, values=mode), set_request(("v",), data, pb.VE_V8))
    assert (response.status_code == 200) is accepted
    if accepted:
        assert kv.get(("v",)).value == "hi"
    else:
        assert "--values" in response.text or "V8 values" in response.text
        assert kv.get(("v",)).versionstamp is None


def test_bytes_and_kvu64_values_pass_in_every_mode(kv: km.Kv) -> None:
    """Raw bytes and LE64 values are the same in both formats, so no mode refuses them."""
    for mode in ("v8", "msgpack"):
        client = client_for(kv, values=mode)
        assert commit(client, set_request(("b", mode), b"\x00\x01")).status_code == 200
        le = (7).to_bytes(8, "little")
        assert commit(client, set_request(("u", mode), le, pb.VE_LE64)).status_code == 200
        assert kv.get(("b", mode)).value == b"\x00\x01"
        assert kv.get(("u", mode)).value == km.KvU64(7)
