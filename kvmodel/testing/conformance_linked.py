"""Conformance: ``Engine.snapshot_read_linked``, through ``Kv.read_linked``.

kvmodel's one engine operation beyond denokv's: a range read paired with the
entries its bytes values link to (an index entry holds its document's encoded
key), all at one point in time. See ``docs/reference/engine-protocol.md``.
"""

from __future__ import annotations

import threading
from typing import Any

from kvmodel import Kv
from kvmodel._values import decode_value
from kvmodel.engines.base import Consistency, RawEntry, ReadRange
from kvmodel.keys import decode_key, encode_key, prefix_range
from kvmodel.testing.conformance_support import wait_until

_STRONG = Consistency.STRONG


def _read(kv: Kv, prefix: tuple[Any, ...], limit: int = 100, reverse: bool = False) -> Any:
    start, end = prefix_range(prefix)
    return kv.read_linked(ReadRange(start, end, limit, reverse), _STRONG)


def _pairs(batch: list[tuple[RawEntry, RawEntry | None]]) -> list[tuple[Any, Any]]:
    """(entry key, linked key or None) for each pair, keys as bytes."""
    return [(e.key, None if t is None else t.key) for e, t in batch]


def _link(kv: Kv, at: tuple[Any, ...], to: tuple[Any, ...]) -> None:
    kv.set(at, encode_key(to))


def test_linked_read_pairs_each_entry_with_the_entry_its_bytes_name(kv: Kv) -> None:
    """A bytes value links to the key it spells; the pair is that key's current entry."""
    kv.set(("doc", 1), {"n": 1})
    kv.set(("doc", 2), {"n": 2})
    _link(kv, ("ix", "a"), ("doc", 2))
    _link(kv, ("ix", "b"), ("doc", 1))
    batch = _read(kv, ("ix",))
    assert _pairs(batch) == [
        (encode_key(("ix", "a")), encode_key(("doc", 2))),
        (encode_key(("ix", "b")), encode_key(("doc", 1))),
    ]
    entry, target = batch[0]
    assert entry.value == encode_key(("doc", 2))
    assert target is not None
    doc = kv.get(("doc", 2))
    assert target.versionstamp.hex() == doc.versionstamp
    assert decode_value(target.value, target.encoding) == {"n": 2}


def test_linked_read_pairs_absent_targets_and_other_values_with_none(kv: Kv) -> None:
    """A link to a missing key, a bytes value that is no key and a msgpack value pair with None."""
    _link(kv, ("ix", "a"), ("doc", "missing"))
    kv.set(("ix", "b"), b"\x00\xff not a key")
    kv.set(("ix", "c"), "a str is msgpack, not a link")
    kv.set(("ix", "d"), ["doc", 1])
    kv.set(("doc", 1), 1)
    assert [t for _, t in _read(kv, ("ix",))] == [None, None, None, None]


def test_linked_read_honours_limit_and_reverse(kv: Kv) -> None:
    """The range part reads like snapshot_read: bytewise order, limit, reverse."""
    for i in range(5):
        kv.set(("doc", i), i)
        _link(kv, ("ix", i), ("doc", 4 - i))
    forward = _read(kv, ("ix",), limit=2)
    assert [e.key for e, _ in forward] == [encode_key(("ix", 0)), encode_key(("ix", 1))]
    assert [t.key for _, t in forward] == [encode_key(("doc", 4)), encode_key(("doc", 3))]
    backward = _read(kv, ("ix",), limit=2, reverse=True)
    assert [e.key for e, _ in backward] == [encode_key(("ix", 4)), encode_key(("ix", 3))]
    assert [t.key for _, t in backward] == [encode_key(("doc", 0)), encode_key(("doc", 1))]
    assert _read(kv, ("nothing",)) == []
    start, _ = prefix_range(("ix",))
    assert kv.read_linked(ReadRange(start, start, 10), _STRONG) == []


def test_linked_read_hides_expired_entries_and_expired_targets(kv: Kv) -> None:
    """Expired keys are absent on both sides of a pair."""
    kv.set(("doc", "short"), 1, expire_in=0.4)
    kv.set(("doc", "long"), 2)
    _link(kv, ("ix", "a"), ("doc", "short"))
    kv.set(("ix", "b"), encode_key(("doc", "long")), expire_in=0.4)
    _link(kv, ("ix", "c"), ("doc", "long"))
    assert [t is not None for _, t in _read(kv, ("ix",))] == [True, True, True]
    assert wait_until(lambda: len(_read(kv, ("ix",))) == 2)
    batch = _read(kv, ("ix",))
    assert _pairs(batch) == [
        (encode_key(("ix", "a")), None),
        (encode_key(("ix", "c")), encode_key(("doc", "long"))),
    ]


def test_linked_read_sees_entries_and_targets_of_one_moment(kv: Kv) -> None:
    """While a writer moves documents between index entries in single commits, every
    linked read sees each document where its entry says it is."""
    for i in range(8):
        kv.set(("doc", i), {"slot": i})
        _link(kv, ("ix", i, i), ("doc", i))
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            round_ = 0
            while not stop.is_set():
                round_ += 1
                for i in range(8):
                    current: Any = kv.get(("doc", i)).value
                    old = current["slot"]
                    new = (old + 1) % 8
                    op = kv.atomic().set(("doc", i), {"slot": new})
                    op.delete(("ix", old, i)).set(("ix", new, i), encode_key(("doc", i)))
                    op.commit()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(150):
            batch = _read(kv, ("ix",))
            assert len(batch) == 8
            for entry, target in batch:
                assert target is not None
                slot = decode_key(entry.key)[1]
                doc: Any = decode_value(target.value, target.encoding)
                assert doc["slot"] == slot, "a document paired with an entry of another moment"
    finally:
        stop.set()
        t.join()
    assert not errors
