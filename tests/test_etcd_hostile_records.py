"""Records under an etcd prefix that kvmodel did not write (kvmodel.engines._etcd_records).

Anything with access to the cluster can put keys under the engine's prefix.
Each test writes such a record with a raw put, then reads or listens with
kvmodel: data values raise DecodeError naming the key, and damaged queue
records are dead-lettered or moved aside while the listener goes on.
"""

from __future__ import annotations

import logging
import struct
import uuid
from collections.abc import Iterator

import msgpack
import pytest
from etcd_cluster import INSTALL_HINT, etcd_tests_skipped, shared_cluster

import kvmodel as km
from kvmodel.engines._etcd_records import NO_DEADLINE, prefix_end
from kvmodel.engines._etcd_transport import b64, unb64
from kvmodel.engines.etcd import EtcdEngine
from kvmodel.keys import encode_key
from kvmodel.testing.conformance_queue import Recorder, listening

pytestmark = [
    pytest.mark.etcd,
    pytest.mark.skipif(etcd_tests_skipped(), reason=INSTALL_HINT),
]

KEY = ("doc", 1)


@pytest.fixture
def url() -> str:
    """A fresh prefix of the shared one-member cluster."""
    return shared_cluster(1).url(f"t-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def kv(url: str) -> Iterator[km.Kv]:
    """A Kv on the prefix (listening closes it)."""
    with km.open_kv(url, lease_timeout=2) as kv:
        yield kv


@pytest.fixture
def observer(url: str) -> Iterator[km.Kv]:
    """A second Kv on the prefix, for raw reads after ``kv`` closed."""
    with km.open_kv(url) as kv:
        yield kv


def engine_of(kv: km.Kv) -> EtcdEngine:
    engine = kv.engine
    assert isinstance(engine, EtcdEngine)
    return engine


def raw_put(kv: km.Kv, key: bytes, value: bytes) -> None:
    engine_of(kv)._call("/v3/kv/put", {"key": b64(key), "value": b64(value)}, write=True)


def raw_keys(kv: km.Kv, prefix: bytes) -> list[bytes]:
    resp = engine_of(kv)._call(
        "/v3/kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
    )
    return [unb64(item["key"]) for item in resp.get("kvs", [])]


@pytest.mark.parametrize(
    ("stored", "says"),
    [
        pytest.param(b"\x01\x02", "no kvmodel header", id="no-header"),
        pytest.param(struct.pack(">QB", NO_DEADLINE, 99) + b"v", "unknown encoding 99", id="enc"),
        pytest.param(struct.pack(">QB", NO_DEADLINE, 3) + b"x" * 70000, "70000 bytes", id="long"),
    ],
)
def test_a_foreign_data_value_raises_decode_error_naming_the_key(
    kv: km.Kv, stored: bytes, says: str
) -> None:
    """get and list raise DecodeError naming the key; other keys stay readable."""
    kv.set(("other",), 1)
    raw_put(kv, engine_of(kv)._data + encode_key(KEY), stored)
    for read in (lambda: kv.get(KEY), lambda: list(kv.list(prefix=("doc",)))):
        with pytest.raises(km.DecodeError) as info:
            read()
        assert "('doc', 1)" in str(info.value) and says in str(info.value)
    assert kv.get(("other",)).value == 1


def queue_key(kv: km.Kv) -> bytes:
    """A ready queue key under the engine's queue subspace (ready time 0)."""
    return engine_of(kv)._queue_key(0, b"\x00" * 12, 0)


def test_a_foreign_queue_record_is_quarantined_and_the_listener_goes_on(
    kv: km.Kv, observer: km.Kv, caplog: pytest.LogCaptureFixture
) -> None:
    """A record that is not msgpack is moved under the X subspace; nothing is written."""
    caplog.set_level(logging.WARNING, logger="kvmodel.queue")
    raw_put(kv, queue_key(kv), b"\xc1 not a record")
    got = Recorder()
    with listening(kv, got.add):
        kv.enqueue("next")
        got.wait_for_value("next")
    engine = engine_of(observer)
    assert raw_keys(observer, engine._quarantine) == [engine._quarantine + queue_key(kv)[-22:]]
    assert got.values == ["next"]
    assert any("moved aside" in r.getMessage() for r in caplog.records)


def test_a_queue_record_with_a_bad_schedule_is_dead_lettered_unchecked_keys_are_not(
    kv: km.Kv, observer: km.Kv
) -> None:
    """A bad schedule with sound keys is dead-lettered; a key that is not a key encoding is not."""
    engine = engine_of(kv)
    value = msgpack.packb("job")
    dead = encode_key(("dead",))
    raw_put(kv, queue_key(kv), msgpack.packb([1, 1, value, [dead], "soon"]))
    other = engine._queue_key(0, b"\x01" * 12, 0)
    raw_put(kv, other, msgpack.packb([1, 1, value, [b"\xff\xffsystem"], []]))
    got = Recorder()
    with listening(kv, got.add):
        kv.enqueue("next")
        got.wait_for_value("next")
    assert got.values == ["next"]
    assert observer.get(("dead",)).value == "job"
    # The record whose dead-letter key is not a key encoding wrote nothing: quarantined.
    assert raw_keys(observer, engine._data) == [engine._data + dead]
    assert len(raw_keys(observer, engine._quarantine)) == 1
