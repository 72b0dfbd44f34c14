"""Tests of kvmodel.orm.watch: Model.watch and Model.watch_many, sync and async, on every engine.

A watch emits its current state first and then an item after each change; a
test writes before asking for the next item, so no test needs a second thread
or a timed wait (changes between two reads may coalesce, never vanish).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

import kvmodel as km
from kvmodel import aio

T = TypeVar("T")


class Ticket(km.Model, prefix="watch_tickets"):
    id: str = km.field(primary_key=True)
    status: str = "open"
    by_status = km.Index("status")


class Seat(km.Model, prefix="watch_seats"):
    row: str = km.field(primary_key=True)
    number: int = km.field(primary_key=True)
    holder: str | None = None


class Note(km.Model, prefix="watch_notes", version=2):
    id: str = km.field(primary_key=True)
    text: str


@km.upgrade(Note, from_version=1)
def _rename_body(doc: dict[str, Any]) -> dict[str, Any]:
    doc["text"] = doc.pop("body")
    return doc


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


def set_status(kv: km.Kv, pk: str, status: str) -> None:
    with km.Session(kv) as s:
        t = s.get(Ticket, pk)
        assert t is not None
        t.status = status


def test_watch_yields_none_then_each_state_then_none_after_delete(kv: km.Kv) -> None:
    """The first item is the current state (None: no document), then one item per change."""
    with Ticket.watch(kv, "t1") as watch:
        assert next(watch) is None
        with km.Session(kv) as s:
            s.add(Ticket(id="t1"))
        assert next(watch) == Ticket(id="t1", status="open")
        set_status(kv, "t1", "closed")
        assert next(watch) == Ticket(id="t1", status="closed")
        kv.delete(("watch_tickets", "t1"))
        assert next(watch) is None


def test_watch_starts_with_the_stored_object_and_gives_fresh_detached_objects(kv: km.Kv) -> None:
    """Each item is a new object no session tracks: changing it writes nothing."""
    with km.Session(kv) as s:
        s.add(Ticket(id="t1"))
    with Ticket.watch(kv, "t1") as watch:
        first = next(watch)
        assert first == Ticket(id="t1")
        assert first is not None
        first.status = "changed locally"
        set_status(kv, "t1", "closed")
        second = next(watch)
        assert second == Ticket(id="t1", status="closed")
        assert second is not first
    assert [t.id for t in Ticket.by_status.find(kv, "changed locally")] == []


def test_watch_upgrades_documents_of_older_model_versions(kv: km.Kv) -> None:
    """A document written by version 1 arrives upgraded, as a session would load it."""
    kv.set(("watch_notes", "n1"), {"id": "n1", "body": "hello"})
    with Note.watch(kv, "n1") as watch:
        assert next(watch) == Note(id="n1", text="hello")


def test_watch_raises_decode_error_naming_the_key_for_a_misfit(kv: km.Kv) -> None:
    """A document that does not fit the model raises DecodeError naming its key."""
    kv.set(("watch_seats", "bad", 1), {"row": "bad", "number": "one"})
    with Seat.watch(kv, "bad", 1) as watch, pytest.raises(km.DecodeError, match="'bad'"):
        next(watch)


def test_watch_many_lists_objects_in_the_order_of_the_keys(kv: km.Kv) -> None:
    """watch_many yields one object or None per key, compound keys given as tuples."""
    with km.Session(kv) as s:
        s.add(Seat(row="a", number=2, holder="ada"))
    with Seat.watch_many(kv, [("a", 1), ("a", 2)]) as watch:
        assert next(watch) == [None, Seat(row="a", number=2, holder="ada")]
        with km.Session(kv) as s:
            s.add(Seat(row="a", number=1, holder="bob"))
        assert next(watch) == [
            Seat(row="a", number=1, holder="bob"),
            Seat(row="a", number=2, holder="ada"),
        ]


def test_watch_many_takes_plain_values_for_a_single_field_key(kv: km.Kv) -> None:
    """For a one-field primary key each key may be the plain value."""
    with km.Session(kv) as s:
        s.add(Ticket(id="t2"))
    with Ticket.watch_many(kv, ["t1", "t2"]) as watch:
        assert next(watch) == [None, Ticket(id="t2")]


def test_watch_rejects_bad_calls_at_the_call(kv: km.Kv) -> None:
    """Too many keys, a wrong key arity, a session or a bare string fail before iteration."""
    with pytest.raises(km.LimitExceededError):
        Ticket.watch_many(kv, [f"t{i}" for i in range(11)])
    with pytest.raises(km.KvTypeError, match="primary key fields"):
        Seat.watch(kv, "a")
    with pytest.raises(km.KvTypeError, match="a session cannot be watched"):
        Ticket.watch(km.Session(kv), "t1")  # type: ignore[call-overload]
    with pytest.raises(km.InvalidArgumentError, match=r"Ticket\.watch"):
        Ticket.watch_many(kv, "t1")


def test_closing_the_watch_or_the_kv_ends_it(kv_store: Any) -> None:
    """close() ends the iteration, and so does closing the Kv."""
    kv = kv_store.open()
    watch = Ticket.watch(kv, "t1")
    assert next(watch) is None
    watch.close()
    assert list(watch) == []
    other = Ticket.watch_many(kv, ["t1"])
    assert next(other) == [None]
    kv.close()
    assert list(other) == []


def test_async_watch_follows_changes_over_an_async_kv(kv: km.Kv) -> None:
    """``async for`` over Model.watch(AsyncKv) yields the same items as the sync watch."""

    async def main() -> None:
        akv = aio.AsyncKv(kv)
        async with Ticket.watch(akv, "t1") as watch:
            assert await anext(watch) is None
            async with aio.AsyncSession(akv) as s:
                s.add(Ticket(id="t1"))
            assert await anext(watch) == Ticket(id="t1")
            await akv.delete(("watch_tickets", "t1"))
            assert await anext(watch) is None
        assert [item async for item in watch] == []

    run(main())


def test_async_watch_many_and_its_end_when_the_kv_closes(kv: km.Kv) -> None:
    """Model.watch_many over an AsyncKv yields lists and ends when the Kv closes."""

    async def main() -> None:
        akv = aio.AsyncKv(kv)
        watch = Seat.watch_many(akv, [("a", 1)])
        assert await anext(watch) == [None]
        async with aio.AsyncSession(akv) as s:
            s.add(Seat(row="a", number=1))
        items = []
        async for item in watch:
            items.append(item)
            await akv.close()
        assert items == [[Seat(row="a", number=1)]]

    run(main())
