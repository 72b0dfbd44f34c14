"""Model.query (kvmodel.orm.queries and its planner): results, plans, pages, errors, async.

The property test compares random queries (AND/OR of conditions, orders,
limits, pages) with filtering every document in Python.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kvmodel as km
from kvmodel import F, Kv, aio
from kvmodel.orm import _query_streams


class Order(km.Model, prefix="q_orders"):
    id: int = km.field(primary_key=True)
    status: str
    total_cents: int
    customer: str = "c0"
    title: str = ""
    tags: list[str] = km.field(factory=list)
    note: str | None = None
    by_status_total = km.Index("status", "total_cents")
    by_status = km.Index("status")
    by_customer = km.Index("customer")
    by_tag = km.Index("tags", each=True)


STATUSES = ("paid", "open", "void")


def _seed(kv: Kv, n: int = 40) -> list[Order]:
    orders = [
        Order(
            id=i,
            status=STATUSES[i % 3],
            total_cents=(i * 37) % 50 * 100,
            customer=f"c{i % 4}",
            title=f"{'ab'[i % 2]}{i}",
            tags=[f"t{i % 5}", f"u{i % 2}"],
        )
        for i in range(n)
    ]
    with km.Session(kv) as s:
        s.add_all(orders)
    return orders


def test_an_equality_and_a_range_read_one_index_in_its_order(kv: Kv) -> None:
    orders = _seed(kv)
    q = Order.query(kv, F("total_cents") > 1000, status="paid").order_by("-total_cents")
    want = sorted(
        (o for o in orders if o.status == "paid" and o.total_cents > 1000),
        key=lambda o: (-o.total_cents, -o.id),
    )
    assert [o.id for o in q] == [o.id for o in want]
    assert q.count() == len(want)
    text = q.explain()
    assert "Order.by_status_total" in text and "check in Python" not in text
    assert f"scanned {len(want)} entries, returned {len(want)}" in text
    assert q.exists()


def test_and_across_two_indexes_is_a_merge_on_the_primary_key(kv: Kv) -> None:
    orders = _seed(kv)
    q = Order.query(kv, F("tags").contains("t1"), customer="c1")
    assert [o.id for o in q] == [o.id for o in orders if "t1" in o.tags and o.customer == "c1"]
    assert "intersect on the primary key" in q.explain()


def test_or_is_a_union_without_repeats(kv: Kv) -> None:
    orders = _seed(kv)
    q = Order.query(kv, (F("status") == "void") | F("tags").contains("t1"))
    got = [o.id for o in q]
    assert got == sorted({o.id for o in orders if o.status == "void" or "t1" in o.tags})
    assert "union, merged" in q.explain()
    mixed = Order.query(
        kv, (F("status") == "void") | (F("status") == "paid") & (F("total_cents") < 500)
    )
    assert sorted(o.id for o in mixed) == sorted(
        o.id for o in orders if o.status == "void" or (o.status == "paid" and o.total_cents < 500)
    )


def test_residual_conditions_are_checked_in_python_and_max_scan_stops_them(kv: Kv) -> None:
    orders = _seed(kv)
    q = Order.query(kv, F("title").startswith("a"), status="open")
    assert [o.id for o in q] == [o.id for o in orders if o.status == "open" and o.title[0] == "a"]
    assert "then check in Python: title.startswith('a')" in q.explain()
    with pytest.raises(km.ScanLimitError) as info:
        Order.query(kv, F("title").startswith("zz"), status="open", max_scan=5).first()
    assert info.value.limit == 5 and "max_scan=5" in str(info.value)


def test_an_in_on_the_equality_field_merges_one_stream_per_value_in_order(kv: Kv) -> None:
    orders = _seed(kv)
    q = Order.query(kv, F("status").in_(["paid", "void"])).order_by("-total_cents")
    got = [o.total_cents for o in q]
    assert got == sorted((o.total_cents for o in orders if o.status != "open"), reverse=True)
    assert "status == 'paid' (of the in_)" in q.explain() and "merged in order" in q.explain()


def test_an_intersection_pages_with_cursors(kv: Kv) -> None:
    orders = _seed(kv, 60)
    q = Order.query(kv, F("tags").contains("u1"), customer="c1")
    want = [o.id for o in orders if "u1" in o.tags and o.customer == "c1"]
    seen, cursor = [], None
    while True:
        page = q.page(limit=2, cursor=cursor)
        seen += [o.id for o in page]
        if not page.has_more:
            break
        cursor = page.cursor
    assert seen == want and "intersect" in q.explain()


def test_an_intersection_of_two_large_streams_is_a_leapfrog_merge(kv: Kv) -> None:
    km.bulk_save(
        kv,
        [
            Order(id=i, status="x", total_cents=i, customer=f"c{i % 2}", tags=[f"t{i % 3}"])
            for i in range(300)
        ],
    )
    q = Order.query(kv, F("tags").contains("t1"), customer="c0")
    want = [i for i in range(300) if i % 3 == 1 and i % 2 == 0]
    assert [o.id for o in q] == want
    first = q.page(limit=7)
    assert [o.id for o in q.page(limit=500, cursor=first.cursor)] == want[7:]
    assert q.count() == len(want)


def test_scan_limit_error_carries_the_facts(kv: Kv) -> None:
    _seed(kv)
    q = Order.query(kv, F("title") == "zz", status="open", max_scan=3)
    with pytest.raises(km.ScanLimitError) as info:
        q.count()
    assert isinstance(info.value, km.LimitExceededError)
    assert info.value.limit == 3 and info.value.actual > 3
    assert "max_scan=3" in str(info.value)
    # Entries count as examined, not as read ahead: the first open order matches.
    found = Order.query(kv, F("title").startswith("b"), status="open", max_scan=1).first()
    assert found is not None and found.id == 1


def test_deleting_more_than_one_commit_holds_from_a_kv_deletes_nothing(kv: Kv) -> None:
    km.bulk_save(kv, [Order(id=i, status="old", total_cents=i) for i in range(120)])
    with pytest.raises(km.LimitExceededError):
        Order.query(kv, status="old").delete()
    assert Order.query(kv, status="old").count() == 120


def test_or_branches_that_each_fix_the_order_field_are_not_merged_by_primary_key(
    kv: Kv,
) -> None:
    with km.Session(kv) as s:
        s.add_all(Order(id=i, status="x", total_cents=(i % 2) * 10) for i in range(6))
    cond = ((F("status") == "x") & (F("total_cents") == 10)) | (
        (F("status") == "x") & (F("total_cents") == 0)
    )
    with pytest.raises(km.IndexRequiredError):
        Order.query(kv, cond).order_by("total_cents").first()
    got = Order.query(kv, cond, allow_scan=True).order_by("total_cents")
    assert [o.total_cents for o in got] == [0, 0, 0, 10, 10, 10]


def test_an_or_in_an_order_no_index_serves_needs_allow_scan(kv: Kv) -> None:
    orders = _seed(kv)
    cond = (F("status") == "void") | F("tags").contains("t1")
    suggested = r"km\.Index\('tags', 'total_cents', each=True\)"
    with pytest.raises(km.IndexRequiredError, match=suggested):
        Order.query(kv, cond).order_by("total_cents").first()
    got = [o.total_cents for o in Order.query(kv, cond, allow_scan=True).order_by("total_cents")]
    assert got == sorted(o.total_cents for o in orders if o.status == "void" or "t1" in o.tags)


def test_a_query_no_index_serves_names_the_index_that_would(kv: Kv) -> None:
    orders = _seed(kv)
    with pytest.raises(km.IndexRequiredError) as info:
        Order.query(kv, F("title") == "a0").first()
    assert "by_title = km.Index('title')" in str(info.value) and info.value.model == "Order"
    with pytest.raises(km.IndexRequiredError):
        Order.query(kv, status="paid").order_by("title").first()
    scanned = Order.query(kv, F("title") == "a0", allow_scan=True)
    assert [o.id for o in scanned] == [0]
    by_title = Order.query(kv, status="paid", allow_scan=True).order_by("-title")
    assert [o.title for o in by_title] == sorted(
        (o.title for o in orders if o.status == "paid"), reverse=True
    )


def test_pages_resume_and_refuse_the_cursor_of_another_query(kv: Kv) -> None:
    orders = _seed(kv)
    q = Order.query(kv, (F("status") == "paid") | (F("status") == "void")).order_by("total_cents")
    seen, cursor = [], None
    while True:
        page = q.page(limit=7, cursor=cursor)
        seen += [o.id for o in page]
        if not page.has_more:
            break
        cursor = page.cursor
    assert sorted(seen) == sorted(o.id for o in orders if o.status != "open")
    assert len(seen) == len(set(seen))
    first = q.page(limit=3)
    with pytest.raises(km.InvalidArgumentError, match="not made by this query"):
        Order.query(kv, status="paid").page(limit=3, cursor=first.cursor)
    with pytest.raises(km.InvalidArgumentError):
        Order.by_status.find(kv, "paid", cursor=first.cursor)


def test_bad_input_names_the_model_and_field_and_reads_nothing(kv: Kv) -> None:
    _seed(kv, 3)
    cases = [
        lambda: Order.query(kv, F("nope") == 1),
        lambda: Order.query(kv, total_cents="much"),
        lambda: Order.query(kv, F("tags") == ["t1"]),
        lambda: Order.query(kv, F("status").contains("x")),
        lambda: Order.query(kv, F("total_cents").startswith("1")),
        lambda: Order.query(kv, status=None),
        lambda: Order.query(kv).order_by("nope"),
        lambda: Order.query(kv).limit(0),
        lambda: Order.query(kv).page(limit=-1),
    ]
    for case in cases:
        with pytest.raises(km.InvalidArgumentError) as info:
            case()
        assert "Order" in str(info.value) or "limit" in str(info.value)
    with pytest.raises(km.KvTypeError, match="no truth value"):
        bool(F("total_cents") > 1)


def test_delete_in_a_session_commits_with_it(kv: Kv) -> None:
    orders = _seed(kv)
    with km.Session(kv) as s:
        n = Order.query(s, status="void").delete()
        assert Order.query(kv, status="void").count() == n  # not committed yet
    assert n == sum(o.status == "void" for o in orders)
    assert Order.query(kv, status="void").count() == 0
    assert Order.by_status.count(kv, "void") == 0
    assert Order.query(kv, F("total_cents") >= 0, status="paid").delete() > 0
    assert not Order.query(kv, status="paid").exists()


class Member(km.Model, prefix="q_members"):
    id: str = km.field(primary_key=True)
    team: str = ""
    by_team = km.Index("team")


def test_a_building_index_is_not_used(kv: Kv) -> None:
    # Documents written before the index existed: it is building until rebuilt.
    for i in range(3):
        kv.set(("q_members", f"m{i}"), {"id": f"m{i}", "team": "red"})
    with pytest.raises(km.IndexNotReadyError, match=r"Member\.by_team"):
        Member.query(kv, team="red").first()
    assert [m.id for m in Member.query(kv, team="red", allow_scan=True)] == ["m0", "m1", "m2"]
    km.rebuild_indexes(kv, Member)
    q = Member.query(kv, team="red")
    assert [m.id for m in q] == ["m0", "m1", "m2"] and "Member.by_team" in q.explain()


def test_index_accessors_take_their_fields_by_keyword(kv: Kv) -> None:
    _seed(kv)
    assert len(Order.by_status_total.find(kv, status="paid")) == len(
        Order.by_status_total.find(kv, "paid")
    )
    assert Order.by_status_total.count(
        kv, status="paid", total_cents=0
    ) == Order.by_status_total.count(kv, "paid", 0)
    for bad in (
        lambda: Order.by_status_total.find(kv, "paid", status="paid"),
        lambda: Order.by_status_total.find(kv, total_cents=0),
        lambda: Order.by_status_total.find(kv, nope=0),
    ):
        with pytest.raises(km.InvalidArgumentError, match=r"Order\.by_status_total"):
            bad()
    with km.Session(kv) as s:
        by_name = s.find(Order.by_status_total, status="paid", total_cents=0)
        assert [o.id for o in by_name] == [o.id for o in s.find(Order.by_status_total, "paid", 0)]
        with pytest.raises(km.InvalidArgumentError, match=r"no field 'nope'"):
            s.find(Order.by_status_total, nope=0)


def test_the_async_session_finds_by_keyword() -> None:
    async def main() -> None:
        async with await aio.open_kv() as kv:
            async with aio.AsyncSession(kv) as s:
                s.add_all([Order(id=i, status=STATUSES[i % 3], total_cents=i) for i in range(9)])
            async with aio.AsyncSession(kv) as s:
                page = await s.find(Order.by_status_total, status=STATUSES[0])
                assert [o.id for o in page] == [0, 3, 6]

    asyncio.run(main())


def test_the_async_twin_awaits_the_same_results() -> None:
    async def main() -> None:
        async with await aio.open_kv() as kv:
            async with aio.AsyncSession(kv) as s:
                s.add_all([Order(id=i, status=STATUSES[i % 3], total_cents=i) for i in range(9)])
            q = Order.query(kv, F("total_cents") >= 3, status="paid")
            assert [o.id async for o in q] == [3, 6]
            assert await q.count() == 2 and await q.exists()
            assert (await q.first()) is not None
            page = await q.page(limit=1)
            assert len(page) == 1 and page.has_more
            async with aio.AsyncSession(kv) as s:
                assert await Order.query(s, status="void").delete() == 3
            assert await Order.query(kv, status="void").count() == 0
            assert "by_status_total" in await q.explain()

    asyncio.run(main())


# -- property test against filtering in Python -------------------------------

_field_values = {
    "status": st.sampled_from(STATUSES),
    "customer": st.sampled_from(["c0", "c1", "c2"]),
    "total_cents": st.integers(0, 20),
    "title": st.sampled_from(["a", "ab", "b", "ba", ""]),
}


@st.composite
def _condition(draw: st.DrawFn) -> tuple[km.Condition, object]:
    field = draw(
        st.sampled_from(["status", "customer", "total_cents", "title", "tags", "status+total"])
    )
    if field == "status+total":
        # Equality on every field of by_status_total: a branch in primary key order.
        sv, tv = draw(_field_values["status"]), draw(_field_values["total_cents"])
        pair = (F("status") == sv) & (F("total_cents") == tv)
        return pair, lambda o: o.status == sv and o.total_cents == tv
    if field == "tags":
        v = draw(st.sampled_from(["t0", "t1", "t2"]))
        return F("tags").contains(v), lambda o: v in o.tags
    op = draw(
        st.sampled_from(
            ["==", "!=", "<", "<=", ">", ">=", "in"] + (["sw"] if field == "title" else [])
        )
    )
    v = draw(_field_values[field])
    if op == "in":
        vs = draw(st.lists(_field_values[field], max_size=3))
        return F(field).in_(vs), lambda o: getattr(o, field) in vs
    if op == "sw":
        return F(field).startswith(v), lambda o: getattr(o, field).startswith(v)
    ops = {
        "==": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
    }
    f = F(field)
    cond = {"==": f == v, "!=": f != v, "<": f < v, "<=": f <= v, ">": f > v, ">=": f >= v}[op]
    return cond, lambda o: ops[op](getattr(o, field), v)


@st.composite
def _query(draw: st.DrawFn) -> tuple[km.Condition, object]:
    branches = draw(
        st.lists(st.lists(_condition(), min_size=1, max_size=3), min_size=1, max_size=3)
    )
    cond = km.or_(*(km.and_(*(c for c, _ in b)) for b in branches))

    def pred(o: Order) -> bool:
        return any(all(p(o) for _, p in b) for b in branches)  # type: ignore[operator]

    return cond, pred


_docs = st.lists(
    st.builds(
        dict,
        status=_field_values["status"],
        customer=_field_values["customer"],
        total_cents=_field_values["total_cents"],
        title=_field_values["title"],
        tags=st.lists(st.sampled_from(["t0", "t1", "t2"]), max_size=2, unique=True),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    docs=_docs,
    query=_query(),
    order=st.sampled_from([None, "total_cents", "-total_cents", "title"]),
    page_size=st.integers(1, 6),
    probe=st.sampled_from([1, 2, 128]),
)
def test_random_queries_equal_filtering_every_document(
    docs: list[dict[str, object]],
    query: tuple[km.Condition, object],
    order: str | None,
    page_size: int,
    probe: int,
) -> None:
    # probe: how many keys of each stream an AND reads to find a small side;
    # 1 and 2 make the leapfrog merge run on these small data sets too.
    saved = _query_streams._PROBE_BATCH
    _query_streams._PROBE_BATCH = probe
    try:
        _check_random_query(docs, query, order, page_size)
    finally:
        _query_streams._PROBE_BATCH = saved


def _check_random_query(
    docs: list[dict[str, object]],
    query: tuple[km.Condition, object],
    order: str | None,
    page_size: int,
) -> None:
    kv = km.open_kv()
    objs = [Order(id=i, **d) for i, d in enumerate(docs)]  # type: ignore[arg-type]
    with km.Session(kv) as s:
        s.add_all(objs)
    cond, pred = query
    q = Order.query(kv, cond, allow_scan=True)
    if order is not None:
        q = q.order_by(order)
    want = [o for o in objs if pred(o)]  # type: ignore[operator]
    if order is not None:
        name = order.lstrip("-")
        want.sort(key=lambda o: getattr(o, name), reverse=order.startswith("-"))
    got = list(q)
    assert sorted(o.id for o in got) == sorted(o.id for o in want)
    if order is not None:
        name = order.lstrip("-")
        assert [getattr(o, name) for o in got] == [getattr(o, name) for o in want]
    assert q.count() == len(want) and q.exists() == bool(want)
    paged, cursor = [], None
    while True:
        page = q.page(limit=page_size, cursor=cursor)
        paged += [o.id for o in page]
        if not page.has_more:
            break
        cursor = page.cursor
    assert paged == [o.id for o in got]
    kv.close()


_TYPED = """
from typing import assert_type

import kvmodel as km
from kvmodel import aio
from kvmodel.aio import AsyncQuery


class Order(km.Model, prefix="o"):
    id: int = km.field(primary_key=True)
    status: str
    by_status = km.Index("status")


async def check(kv: km.Kv, akv: aio.AsyncKv) -> None:
    q = Order.query(kv, km.F("status") == "x", status="y").order_by("-id").limit(3)
    assert_type(q, km.Query[Order])
    assert_type(q.first(), Order | None)
    assert_type(q.page(limit=2), km.Page[Order])
    assert_type(next(iter(q)), Order)
    aq = Order.query(akv, status="x")
    assert_type(aq, AsyncQuery[Order])
    assert_type(await aq.first(), Order | None)
    assert_type(await aq.count(), int)
    async for o in aq:
        assert_type(o, Order)
    assert_type(Order.by_status.find(kv, status="x"), km.Page[Order])
"""


def test_queries_are_typed_for_mypy(tmp_path: Path) -> None:
    """mypy --strict sees Query[Order], AsyncQuery[Order] and Order results."""
    api = pytest.importorskip("mypy.api")
    source = tmp_path / "typed_queries.py"
    source.write_text(_TYPED, encoding="utf-8")
    out, err, status = api.run(
        ["--strict", "--no-incremental", "--python-version", "3.11", str(source)]
    )
    assert status == 0, out + err
