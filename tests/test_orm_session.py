"""Tests of kvmodel.orm.session and kvmodel.orm.query: the seed's scenarios on every engine."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest

import kvmodel.orm as km
from kvmodel import Kv
from kvmodel.errors import (
    ConflictError,
    InvalidArgumentError,
    LimitExceededError,
    UniqueViolationError,
)
from kvmodel.keys import decode_key, encode_key
from kvmodel.testing.conformance_queue import require_queue_delivery

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def utcnow_ms() -> datetime:
    """The current UTC time to the millisecond: every engine stores it exactly, the Deno
    file's V8 values included (a JavaScript Date holds milliseconds)."""
    now = km.utcnow()
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@attrs.define
class OrderItem:
    product_id: str
    quantity: int
    price_cents: int


class Order(km.Model, prefix="orders"):
    id: str = km.field(primary_key=True, factory=km.new_id)
    customer_id: str
    status: str = "pending"
    total_cents: int = 0
    items: list[OrderItem] = km.field(factory=list)
    created_at: datetime = km.field(factory=utcnow_ms)

    by_customer = km.Index("customer_id", "created_at")
    by_status = km.Index("status")


class User(km.Model, prefix="users"):
    id: str = km.field(primary_key=True, factory=km.new_id)
    email: str
    nickname: str | None = None

    by_email = km.Unique("email")
    by_nickname = km.Unique("nickname")


class Blob(km.Model, prefix="blobs"):
    id: int = km.field(primary_key=True)
    data: str = ""
    tag: str = ""
    by_tag = km.Index("tag")


def entries(kv: Kv, prefix: str) -> list[tuple[Any, ...]]:
    """The keys stored under one first key part."""
    return [e.key for e in kv.list(prefix=(prefix,))]


def assert_consistent(kv: Kv) -> None:
    """The index entries are exactly those the documents imply."""
    report = km.check_indexes(kv, Order, User)
    assert report.ok, str(report)


def make_orders(kv: Kv, customer: str, n: int) -> list[str]:
    """Creates n orders of one customer, one minute apart; returns their ids."""
    ids = []
    with km.Session(kv) as s:
        for i in range(n):
            o = Order(customer_id=customer, total_cents=i, created_at=T0 + timedelta(minutes=i))
            s.add(o)
            ids.append(o.id)
    return ids


def test_create_and_get(kv: Kv) -> None:
    """An added order is stored at (prefix, id) with its index entries, and reads back equal."""
    order = Order(customer_id="c1", items=[OrderItem("p1", 2, 150)], total_cents=300)
    with km.Session(kv) as s:
        s.add(order)
    assert kv.get(("orders", order.id)).value["items"] == [
        {"product_id": "p1", "quantity": 2, "price_cents": 150}
    ]
    with km.Session(kv) as s:
        got = s.get(Order, order.id)
        assert got == order
        assert s.get(Order, order.id) is got  # identity map
        assert s.get(Order, "missing") is None
    assert entries(kv, "orders_by_status") == [("orders_by_status", "pending", order.id)]
    assert_consistent(kv)


def test_get_many_reads_in_groups_and_keeps_order(kv: Kv) -> None:
    """get_many returns one object or None per key, in order, beyond 10 keys."""
    ids = make_orders(kv, "c1", 13)
    with km.Session(kv) as s:
        got = s.get_many(Order, [*ids, "nope"])
    assert [o.id if o else None for o in got] == [*ids, None]


def test_list_by_customer_newest_first_with_pagination(kv: Kv) -> None:
    """The customer index lists newest first, page by page, through cursors."""
    ids = make_orders(kv, "c1", 7)
    make_orders(kv, "c2", 2)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = Order.by_customer.find(kv, "c1", limit=3, reverse=True, cursor=cursor)
        seen += [o.id for o in page]
        pages += 1
        if not page.cursor:
            break
        cursor = page.cursor
    assert seen == list(reversed(ids))
    assert pages == 3
    assert Order.by_customer.count(kv, "c1") == 7


def test_range_on_the_next_field(kv: Kv) -> None:
    """start/end bound the field after the equality values to [start, end)."""
    ids = make_orders(kv, "c1", 6)
    with km.Session(kv) as s:
        got = s.find(
            Order.by_customer, "c1", start=T0 + timedelta(minutes=1), end=T0 + timedelta(minutes=4)
        )
        assert [o.id for o in got] == ids[1:4]
        assert [
            o.id for o in Order.by_customer.find(s, "c1", start=T0 + timedelta(minutes=4))
        ] == ids[4:]
        assert [
            o.id for o in Order.by_customer.find(s, "c1", end=T0 + timedelta(minutes=2))
        ] == ids[:2]
    assert Order.by_customer.count(kv, "c1", start=T0 + timedelta(minutes=5)) == 1
    with pytest.raises(InvalidArgumentError):
        Order.by_status.find(kv, "a", "b")
    with pytest.raises(InvalidArgumentError, match="naive"):
        Order.by_customer.find(kv, "c1", start=datetime(2024, 1, 1))


def test_changes_are_tracked_and_indexes_updated(kv: Kv) -> None:
    """Changing a loaded object needs no add; the commit moves its index entries."""
    (oid,) = make_orders(kv, "c1", 1)
    with km.Session(kv) as s:
        o = s.get(Order, oid)
        assert o is not None
        o.status = "shipped"
        o.items.append(OrderItem("p", 1, 1))  # in-place edits are seen too
    assert entries(kv, "orders_by_status") == [("orders_by_status", "shipped", oid)]
    assert Order.by_status.count(kv, "pending") == 0
    assert [o.id for o in Order.by_status.find(kv, "shipped")] == [oid]
    assert km.Session(kv).get(Order, oid).items == [OrderItem("p", 1, 1)]  # type: ignore[union-attr]
    assert_consistent(kv)


def test_an_unchanged_session_writes_nothing(kv: Kv) -> None:
    """Committing a session whose objects did not change sends no commit."""
    (oid,) = make_orders(kv, "c1", 1)
    before = kv.get(("orders", oid)).versionstamp
    with km.Session(kv) as s:
        s.get(Order, oid)
        assert s.commit() is None
    assert kv.get(("orders", oid)).versionstamp == before


def test_concurrent_status_updates_leave_one_state(kv: Kv) -> None:
    """Of two sessions updating one order, one commits and the other gets a ConflictError."""
    (oid,) = make_orders(kv, "c1", 1)
    a, b = km.Session(kv), km.Session(kv)
    oa, ob = a.get(Order, oid), b.get(Order, oid)
    assert oa is not None and ob is not None
    oa.status, ob.status = "processing", "cancelled"
    a.commit()
    with pytest.raises(ConflictError) as info:
        b.commit()
    assert not isinstance(info.value, UniqueViolationError)
    assert info.value.keys == (("orders", oid),)
    assert oid in str(info.value)
    # Nothing of b's commit was written; b can refresh and retry.
    assert entries(kv, "orders_by_status") == [("orders_by_status", "processing", oid)]
    assert ob.status == "cancelled"
    b.refresh(ob)
    assert ob.status == "processing"
    ob.status = "cancelled"
    b.commit()
    assert entries(kv, "orders_by_status") == [("orders_by_status", "cancelled", oid)]
    assert_consistent(kv)


def test_concurrent_transactions_in_threads_leave_one_index_entry(kv: Kv) -> None:
    """Many threads setting an order's status leave exactly one state and one index entry."""
    (oid,) = make_orders(kv, "c1", 1)
    statuses = [f"s{i}" for i in range(6)]
    barrier = threading.Barrier(len(statuses))

    def work(status: str) -> None:
        barrier.wait()

        def fn(s: km.Session) -> None:
            o = s.get(Order, oid)
            assert o is not None
            o.status = status

        km.transaction(kv, fn, retries=50)

    threads = [threading.Thread(target=work, args=(st,)) for st in statuses]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = km.Session(kv).get(Order, oid)
    assert final is not None and final.status in statuses
    assert entries(kv, "orders_by_status") == [("orders_by_status", final.status, oid)]
    assert_consistent(kv)


def test_unique_email_is_enforced(kv: Kv) -> None:
    """A second user with a taken email fails with the index, value and owner's key."""
    ada = User(email="ada@example.com")
    with km.Session(kv) as s:
        s.add(ada)
    s = km.Session(kv)
    other = User(email="ada@example.com")
    s.add(other)
    with pytest.raises(UniqueViolationError) as info:
        s.commit()
    err = info.value
    assert err.index == "User.by_email"
    assert err.value == "ada@example.com"
    assert err.owner_key == ("users", ada.id)
    assert entries(kv, "users") == [("users", ada.id)]
    # The session stays usable: fix the value and commit again.
    other.email = "grace@example.com"
    s.commit()
    assert User.by_email.get(kv, "grace@example.com") == other
    assert User.by_email.get(kv, "nobody@example.com") is None
    assert_consistent(kv)


def test_two_new_objects_claiming_one_value_fail_before_committing(kv: Kv) -> None:
    """Two objects of one session with the same unique value are refused."""
    s = km.Session(kv)
    s.add(User(email="x@example.com"))
    s.add(User(email="x@example.com"))
    with pytest.raises(UniqueViolationError, match="both claim"):
        s.commit()
    assert entries(kv, "users") == []


def test_swapping_unique_values_and_resaving_own_value(kv: Kv) -> None:
    """Two users swap emails in one commit; re-saving a user with its own email works."""
    a, b = User(email="a@x"), User(email="b@x")
    with km.Session(kv) as s:
        s.add_all([a, b])
    with km.Session(kv) as s:
        la, lb = s.get(User, a.id), s.get(User, b.id)
        assert la is not None and lb is not None
        la.email, lb.email = "b@x", "a@x"
    assert User.by_email.get(kv, "a@x").id == b.id  # type: ignore[union-attr]
    assert User.by_email.get(kv, "b@x").id == a.id  # type: ignore[union-attr]
    with km.Session(kv) as s:
        la = s.get(User, a.id)
        assert la is not None
        la.nickname = "ace"  # a change that keeps the unique email
    assert_consistent(kv)


def test_a_value_released_by_a_delete_can_be_taken_in_the_same_commit(kv: Kv) -> None:
    """Deleting a user and giving its email to a new one commits atomically."""
    old = User(email="a@x")
    with km.Session(kv) as s:
        s.add(old)
    with km.Session(kv) as s:
        loaded = s.get(User, old.id)
        assert loaded is not None
        s.delete(loaded)
        s.add(User(email="a@x"))
    assert User.by_email.get(kv, "a@x").id != old.id  # type: ignore[union-attr]
    assert_consistent(kv)


def test_delete_removes_every_index_entry(kv: Kv) -> None:
    """Deleting an order removes its primary and all its index entries."""
    ids = make_orders(kv, "c1", 2)
    with km.Session(kv) as s:
        o = s.get(Order, ids[0])
        assert o is not None
        s.delete(o)
        assert s.get(Order, ids[0]) is None
    assert entries(kv, "orders") == [("orders", ids[1])]
    assert [k[-1] for k in entries(kv, "orders_by_customer")] == [ids[1]]
    assert [k[-1] for k in entries(kv, "orders_by_status")] == [ids[1]]
    assert_consistent(kv)


def test_adding_an_existing_key_is_a_conflict(kv: Kv) -> None:
    """A new object whose key exists fails the absence check, naming the key."""
    (oid,) = make_orders(kv, "c1", 1)
    s = km.Session(kv)
    s.add(Order(id=oid, customer_id="c9"))
    with pytest.raises(ConflictError, match="already exists") as info:
        s.commit()
    assert info.value.keys == (("orders", oid),)
    assert Order.by_customer.count(kv, "c9") == 0


def test_a_changed_primary_key_is_refused(kv: Kv) -> None:
    """Changing the primary key of a loaded object is an error at commit."""
    (oid,) = make_orders(kv, "c1", 1)
    s = km.Session(kv)
    o = s.get(Order, oid)
    assert o is not None
    o.id = "other"
    with pytest.raises(InvalidArgumentError, match="primary key"):
        s.commit()


def test_context_manager_discards_on_exception(kv: Kv) -> None:
    """A block that raises writes nothing and restores the loaded objects."""
    (oid,) = make_orders(kv, "c1", 1)
    s = km.Session(kv)
    with pytest.raises(RuntimeError), s:
        o = s.get(Order, oid)
        assert o is not None
        o.status = "lost"
        s.add(Order(customer_id="c2"))
        raise RuntimeError("boom")
    assert o.status == "pending"
    assert Order.by_customer.count(kv, "c2") == 0
    assert km.Session(kv).get(Order, oid).status == "pending"  # type: ignore[union-attr]


def test_all_lists_documents_in_key_order(kv: Kv) -> None:
    """Session.all pages through a model's documents in primary key order."""
    ids = make_orders(kv, "c1", 5)
    s = km.Session(kv)
    first = s.all(Order, limit=3)
    rest = s.all(Order, limit=3, cursor=first.cursor)
    assert [o.id for o in first] + [o.id for o in rest] == ids
    assert rest.cursor == ""
    assert [o.id for o in s.all(Order, reverse=True)] == list(reversed(ids))


def test_listings_longer_than_one_engine_read_come_back_whole(
    kv: Kv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """find and all without a limit read in batches; every document comes back, in order."""
    from kvmodel.orm import query

    monkeypatch.setattr(query, "_FIND_BATCH", 4)
    monkeypatch.setattr(query, "_LIST_BATCH", 3)
    ids = make_orders(kv, "c1", 11)
    s = km.Session(kv)
    page = Order.by_customer.find(s, "c1")
    assert [o.id for o in page] == ids and page.cursor == ""
    assert [o.id for o in Order.by_customer.find(kv, "c1", reverse=True)] == ids[::-1]
    everything = s.all(Order)
    assert [o.id for o in everything] == ids and everything.cursor == ""
    assert [o.id for o in s.all(Order, reverse=True)] == ids[::-1]


def test_find_skips_entries_whose_document_is_missing(kv: Kv) -> None:
    """An index entry left behind by a raw delete of its document is never returned."""
    (oid,) = make_orders(kv, "c1", 1)
    kv.delete(("orders", oid))
    assert Order.by_status.find(kv, "pending").items == []
    assert Order.by_customer.find(kv, "c1").items == []
    assert Order.by_status.count(kv, "pending") == 1  # count() counts entries


def test_unique_get_ignores_an_entry_without_its_document(kv: Kv) -> None:
    """Unique.get returns None when the entry points at a missing or foreign document."""
    u = User(email="a@x")
    with km.Session(kv) as s:
        s.add(u)
    kv.delete(("users", u.id))
    assert User.by_email.get(kv, "a@x") is None
    assert [x.id for x in User.by_email.find(kv, "a@x")] == []
    kv.set(("orders", "o1"), {"id": "o1"})
    kv.set(("users_by_email", "a@x"), encode_key(("orders", "o1")))
    assert User.by_email.get(kv, "a@x") is None
    with km.Session(kv) as s:  # not even when the session tracks that foreign object
        (oid,) = make_orders(kv, "c1", 1)
        order = s.get(Order, oid)
        kv.set(("users_by_email", "b@x"), encode_key(("orders", oid)))
        assert order is not None and User.by_email.get(s, "b@x") is None


def test_queries_on_a_kv_give_detached_objects(kv: Kv) -> None:
    """find/get on a Kv return plain objects no session tracks; a session's query tracks them."""
    (oid,) = make_orders(kv, "c1", 1)
    [detached] = Order.by_customer.find(kv, "c1")
    detached.status = "lost"  # no session: nothing to commit
    assert kv.get(("orders", oid)).value["status"] == "pending"
    with km.Session(kv) as s:
        [tracked] = Order.by_customer.find(s, "c1")
        assert tracked in s and detached not in s
        assert s.find(Order.by_status, "pending")[0] is tracked  # the identity map answers
        tracked.status = "shipped"
    assert Order.by_status.find(kv, "shipped")[0].id == oid


def test_index_entries_hold_the_encoded_primary_key(kv: Kv) -> None:
    """Every index entry's value is its document's encoded key (what the linked read follows)."""
    u = User(email="a@x")
    (oid,) = make_orders(kv, "c1", 1)
    with km.Session(kv) as s:
        s.add(u)
    assert kv.get(("users_by_email", "a@x")).value == encode_key(("users", u.id))
    [status] = kv.list(prefix=("orders_by_status",))
    assert status.value == encode_key(("orders", oid))
    assert decode_key(status.value) == ("orders", oid)


def test_check_indexes_reports_every_kind_of_problem(kv: Kv) -> None:
    """Writes that bypass the object mapper show up as dangling, missing, wrong_value and
    duplicate problems, each naming its index and key."""
    a, b = User(email="a@x"), User(email="b@x")
    (oid,) = make_orders(kv, "c1", 1)
    with km.Session(kv) as s:
        s.add_all([a, b])
    assert km.check_indexes(kv, Order, User).ok
    kv.delete(("orders_by_status", "pending", oid))  # missing
    kv.set(("orders_by_status", "lost", "o-none"), encode_key(("orders", "o-none")))  # dangling
    kv.set(("users_by_email", "a@x"), encode_key(("users", b.id)))  # wrong_value
    kv.set(("users", "dup"), {"id": "dup", "email": "b@x", "nickname": None})  # duplicate
    report = km.check_indexes(kv, Order, User)
    assert not report.ok
    kinds = {(p.kind, p.index, p.key) for p in report.problems}
    assert kinds == {
        ("missing", "Order.by_status", ("orders_by_status", "pending", oid)),
        ("dangling", "Order.by_status", ("orders_by_status", "lost", "o-none")),
        ("wrong_value", "User.by_email", ("users_by_email", "a@x")),
        ("duplicate", "User.by_email", ("users_by_email", "b@x")),
    }
    assert f"points at ('users', {b.id!r})" in str(report)


def test_outbox_message_joins_the_commit(kv: Kv) -> None:
    """An enqueued message is part of the commit plan and is sent only if the commit succeeds."""
    require_queue_delivery(kv)
    (oid,) = make_orders(kv, "c1", 1)
    stale = km.Session(kv)
    so = stale.get(Order, oid)
    assert so is not None
    with km.Session(kv) as s:
        o = s.get(Order, oid)
        assert o is not None
        o.status = "shipped"
    so.status = "cancelled"
    stale.enqueue({"email": "lost"})
    assert [e.value for e in stale.plan().enqueues] == [{"email": "lost"}]
    with pytest.raises(ConflictError):
        stale.commit()
    stale.rollback()
    with km.Session(kv) as s:
        o = s.get(Order, oid)
        assert o is not None
        o.status = "delivered"
        s.enqueue({"email": "delivered", "order": oid})
    got: list[Any] = []
    arrived = threading.Event()

    def handler(value: Any) -> None:
        got.append(value)
        arrived.set()

    listener = threading.Thread(target=kv.listen_queue, args=(handler,))
    listener.start()
    try:
        assert arrived.wait(10)
    finally:
        kv.close()
        listener.join(10)
    # FIFO delivery: the failed commit's message would have come first.
    assert got == [{"email": "delivered", "order": oid}]


def test_too_many_checks_names_the_object(kv: Kv) -> None:
    """A commit past the 100-check limit names the object that crossed it."""
    s = km.Session(kv)
    for i in range(101):
        s.add(Blob(id=i))
    with pytest.raises(LimitExceededError, match=r"Blob\(100\)") as info:
        s.commit()
    assert info.value.limit == 100
    assert entries(kv, "blobs") == []


def test_too_large_a_commit_names_the_object(kv: Kv) -> None:
    """A commit past the total mutation size names the object that crossed it."""
    s = km.Session(kv)
    for i in range(20):
        s.add(Blob(id=i, data="x" * 60000))
    with pytest.raises(LimitExceededError, match=r"Blob\(\d+\)"):
        s.commit()
    with pytest.raises(LimitExceededError, match=r"Blob\(99\)"):
        s2 = km.Session(kv)
        s2.add(Blob(id=99, data="x" * 40000, tag="y" * 30000))
        s2.commit()
    assert entries(kv, "blobs") == []


def test_add_and_delete_bookkeeping(kv: Kv) -> None:
    """Deleting a never-committed object forgets it; tracking rules are enforced."""
    s = km.Session(kv)
    o = Order(customer_id="c1")
    s.add(o)
    s.add(o)  # adding twice is harmless
    assert o in s
    s.delete(o)
    assert o not in s and s.commit() is None
    with pytest.raises(InvalidArgumentError):
        s.delete(Order(customer_id="c1"))
    (oid,) = make_orders(kv, "c1", 1)
    assert s.get(Order, oid) is not None
    with pytest.raises(InvalidArgumentError, match="already tracks"):
        s.add(Order(id=oid, customer_id="c1"))


def test_replacing_a_deleted_object(kv: Kv) -> None:
    """Adding a new object over one deleted in the session rewrites it with its indexes."""
    (oid,) = make_orders(kv, "c1", 1)
    with km.Session(kv) as s:
        old = s.get(Order, oid)
        assert old is not None
        s.delete(old)
        s.add(Order(id=oid, customer_id="c2", created_at=T0))
    assert Order.by_customer.count(kv, "c1") == 0
    assert [o.id for o in Order.by_customer.find(kv, "c2")] == [oid]
    assert_consistent(kv)


def test_refresh_of_a_deleted_document_detaches_it(kv: Kv) -> None:
    """Refreshing an object whose document is gone raises a ConflictError."""
    (oid,) = make_orders(kv, "c1", 1)
    s = km.Session(kv)
    o = s.get(Order, oid)
    assert o is not None
    kv.delete(("orders", oid))
    with pytest.raises(ConflictError):
        s.refresh(o)
    assert o not in s
