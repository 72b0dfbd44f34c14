"""Tests of kvmodel.orm.model, .index and ._convert: declarations and conversions."""

from __future__ import annotations

import enum
import random
import threading
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kvmodel.orm as km
from kvmodel.errors import (
    DecodeError,
    InvalidArgumentError,
    InvalidKeyError,
    ModelDefinitionError,
)
from kvmodel.keys import decode_key, encode_key
from kvmodel.orm._convert import CONVERTER, form_part_converter, to_key_part
from kvmodel.orm.model import model_info, snake_case


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@attrs.define
class Address:
    street: str
    zip: str | None = None


class Everything(km.Model):
    id: uuid.UUID = km.field(primary_key=True, factory=uuid.uuid4)
    name: str = ""
    n: int = 0
    big: int = 2**70
    ratio: float = 0.5
    flag: bool = False
    blob: bytes = b""
    color: Color = Color.RED
    level: Level = Level.LOW
    when: datetime = km.field(factory=km.utcnow)
    day: date = date(2024, 2, 29)
    token: uuid.UUID = km.field(factory=uuid.uuid4)
    price: Decimal = Decimal("1.10")
    maybe: datetime | None = None
    tags: list[str] = km.field(factory=list)
    pair: tuple[int, str] = (1, "a")
    seq: tuple[int, ...] = ()
    unique_tags: frozenset[str] = frozenset()
    scores: dict[str, int] = km.field(factory=dict)
    home: Address | None = None
    extra: Any = None
    wait: timedelta = timedelta(seconds=1.5)

    by_color_when = km.Index("color", "when")
    by_day = km.Index("day")
    by_token = km.Unique("token")
    by_level = km.Index("level", "flag", "ratio", "blob")


class Composite(km.Model, prefix="comp"):
    tenant: str = km.field(primary_key=True)
    number: int = km.field(primary_key=True)
    label: str = ""


class HTTPServerConfig(km.Model):
    name: str = km.field(primary_key=True)


def test_models_are_slotted_keyword_only_attrs_classes() -> None:
    """A Model subclass is an attrs class with slots and keyword-only arguments."""
    assert attrs.has(Composite)
    assert "__slots__" in Composite.__dict__
    with pytest.raises(TypeError):
        Composite("t", 1)  # type: ignore[misc]
    c = Composite(tenant="t", number=1)
    with pytest.raises(AttributeError):
        c.nonexistent = 1  # type: ignore[attr-defined]


def test_prefix_defaults_to_snake_case_and_keys_follow_declaration_order() -> None:
    """The prefix defaults to the snake_case class name; composite keys keep field order."""
    assert model_info(HTTPServerConfig).prefix == "http_server_config"
    assert model_info(Everything).prefix == "everything"
    assert snake_case("OrderItem") == "order_item"
    info = model_info(Composite)
    assert info.pk_fields == ("tenant", "number")
    assert info.key_for(("acme", 7)) == ("comp", "acme", 7)


def test_index_prefixes_are_model_prefix_plus_index_name() -> None:
    """An index named by_x on prefix p lives under p_by_x (DESIGN section 3)."""
    assert Everything.by_color_when.key_prefix == "everything_by_color_when"
    assert Everything.by_token.qualname == "Everything.by_token"
    assert Everything.by_token.unique and not Everything.by_day.unique


def test_model_without_primary_key_is_rejected() -> None:
    """A model without a primary key field is a ModelDefinitionError at class creation."""
    with pytest.raises(ModelDefinitionError, match="no primary key"):

        class NoKey(km.Model):
            name: str


def test_index_on_unknown_field_is_rejected() -> None:
    """An index naming a field the model lacks is a ModelDefinitionError at class creation."""
    with pytest.raises(ModelDefinitionError, match="'nope'"):

        class BadIndex(km.Model):
            id: str = km.field(primary_key=True)
            by_nope = km.Index("nope")


def test_index_on_unorderable_type_is_rejected() -> None:
    """An index over a Decimal or list field has no key form and is rejected."""
    with pytest.raises(ModelDefinitionError, match="Decimal"):

        class BadType(km.Model):
            id: str = km.field(primary_key=True)
            amount: Decimal = Decimal(0)
            by_amount = km.Index("amount")


def test_bad_index_declarations_are_rejected() -> None:
    """An index needs at least one distinct field name, and a bad prefix is refused."""
    with pytest.raises(ModelDefinitionError):
        km.Index()
    with pytest.raises(ModelDefinitionError):
        km.Index("a", "a")
    with pytest.raises(ModelDefinitionError):
        km.Unique(3)  # type: ignore[arg-type]
    with pytest.raises(ModelDefinitionError, match="prefix"):

        class EmptyPrefix(km.Model, prefix=""):
            id: str = km.field(primary_key=True)


def test_inherited_indexes_are_rebound_to_the_subclass() -> None:
    """A subclass of a model gets its own copy of each inherited index."""

    class Base(km.Model, prefix="base"):
        id: str = km.field(primary_key=True)
        kind: str = ""
        by_kind = km.Index("kind")

    class Child(Base, prefix="child"):
        extra: int = 0

    assert Child.by_kind is not Base.by_kind
    assert Child.by_kind.key_prefix == "child_by_kind"
    assert Base.by_kind.key_prefix == "base_by_kind"


def test_new_id_is_sortable_unique_and_url_safe() -> None:
    """new_id gives 26-character Crockford base32 ids that increase within a process."""
    ids = [km.new_id() for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    alphabet = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
    assert all(len(i) == 26 and set(i) <= alphabet for i in ids)


def test_new_id_is_unique_across_threads() -> None:
    """Ids made concurrently by several threads never collide."""
    out: list[list[str]] = [[] for _ in range(4)]

    def work(bucket: list[str]) -> None:
        bucket.extend(km.new_id() for _ in range(2000))

    threads = [threading.Thread(target=work, args=(b,)) for b in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for b in out for i in b]
    assert len(set(every)) == len(every)


def test_new_id_starts_with_the_millisecond_timestamp() -> None:
    """The first 10 characters encode the creation time in milliseconds."""
    before = int(datetime.now(UTC).timestamp() * 1000)
    value = km.new_id()
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    n = 0
    for ch in value[:10]:
        n = n * 32 + alphabet.index(ch)
    assert before - 5 <= n <= before + 1000


def test_utcnow_is_aware_utc() -> None:
    """utcnow returns a timezone-aware datetime in UTC."""
    now = km.utcnow()
    assert now.utcoffset() == timedelta(0)


def test_every_supported_type_round_trips_through_the_converter() -> None:
    """Structuring the unstructured form gives back an equal object."""
    obj = Everything(
        name="x",
        tags=["a"],
        pair=(2, "b"),
        seq=(1, 2),
        unique_tags=frozenset({"t"}),
        scores={"a": 1},
        home=Address("main st"),
        extra={"k": [1, 2]},
        maybe=datetime(2020, 1, 1, tzinfo=timezone(timedelta(hours=2))),
    )
    info = model_info(Everything)
    form = info.unstructure(obj)
    assert info.structure(form) == obj


def test_forms_hold_only_value_codec_types() -> None:
    """Forms use lists for every sequence and strings for UUID, Decimal and date."""
    obj = Everything(pair=(2, "b"), seq=(1,), unique_tags=frozenset({"t"}))
    form = model_info(Everything).unstructure(obj)
    assert form["pair"] == [2, "b"] and form["seq"] == [1] and form["unique_tags"] == ["t"]
    assert form["token"] == str(obj.token) and form["id"] == str(obj.id)
    assert form["price"] == "1.10" and form["day"] == "2024-02-29"
    assert form["color"] == "red" and form["level"] == 1
    assert isinstance(form["when"], datetime)
    assert form["wait"] == 1.5


def test_structured_objects_share_no_containers_with_the_stored_form() -> None:
    """Editing a loaded object in place never edits the stored form kept for change detection."""
    form = model_info(Everything).unstructure(Everything(extra={"k": [1]}, tags=["a"]))
    obj = model_info(Everything).structure(form)
    obj.extra["k"].append(2)
    obj.tags.append("b")
    assert form["extra"] == {"k": [1]} and form["tags"] == ["a"]


def test_key_parts_of_python_values() -> None:
    """Python values convert to order-preserving key parts as DESIGN section 3 says."""
    utc = UTC
    assert to_key_part("a") == "a" and to_key_part(True) is True and to_key_part(b"x") == b"x"
    assert to_key_part(Color.BLUE) == "blue" and to_key_part(Level.HIGH) == 2
    assert type(to_key_part(Level.HIGH)) is int
    assert to_key_part(datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=utc)) == 1_000_005
    later = datetime(1970, 1, 1, 2, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    assert to_key_part(later) == 0  # the same instant as the epoch
    assert to_key_part(date(1, 1, 1)) == 1
    u = uuid.uuid4()
    assert to_key_part(u) == u.bytes


def test_naive_datetimes_are_rejected_as_key_parts() -> None:
    """A naive datetime has no instant, so it cannot be an index value."""
    with pytest.raises(InvalidArgumentError, match="naive"):
        to_key_part(datetime(2020, 1, 1))
    with pytest.raises(InvalidKeyError):
        to_key_part([1])


@given(
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7, minutes=-30))])),
    st.dates(),
    st.uuids(),
)
def test_form_conversion_agrees_with_python_values(
    when: datetime, day: date, token: uuid.UUID
) -> None:
    """Index parts built from stored forms equal those built from Python query values."""
    for tp, value in [(datetime, when), (date, day), (uuid.UUID, token), (Color, Color.RED)]:
        form = CONVERTER.unstructure(value, tp)
        assert form_part_converter(tp, "X.f")(form) == to_key_part(value)


@given(st.lists(st.datetimes(timezones=st.just(UTC)), min_size=2, max_size=2))
def test_datetime_key_parts_sort_like_the_instants(pair: list[datetime]) -> None:
    """Encoded keys of datetime index values sort as the datetimes do."""
    a, b = pair
    ka, kb = encode_key((to_key_part(a),)), encode_key((to_key_part(b),))
    assert (a < b) == (ka < kb) and (a == b) == (ka == kb)


def test_index_entries_follow_the_key_layout() -> None:
    """Non-unique entries are (prefix, *values, *pk), unique ones (prefix, *values);
    every entry holds the document's encoded primary key."""
    when = datetime(2024, 1, 1, tzinfo=UTC)
    obj = Everything(color=Color.BLUE, when=when)
    info = model_info(Everything)
    pk = info.pk_parts(obj)
    entries = info.index_entries(info.unstructure(obj), pk)
    micros = to_key_part(when)
    pointer = encode_key((info.prefix, *pk))
    assert entries[("everything_by_color_when", "blue", micros, *pk)] == pointer
    assert entries[("everything_by_token", obj.token.bytes)] == pointer
    assert set(entries.values()) == {pointer}
    assert ("everything_by_day", date(2024, 2, 29).toordinal(), *pk) in entries
    assert ("everything_by_level", 1, False, 0.5, b"", *pk) in entries


def test_a_none_value_leaves_no_entry() -> None:
    """A document with None in an indexed field has no entry in that index."""

    class Opt(km.Model):
        id: str = km.field(primary_key=True)
        tag: str | None = None
        by_tag = km.Index("tag")

    info = model_info(Opt)
    assert info.index_entries(info.unstructure(Opt(id="a")), ("a",)) == {}
    assert len(info.index_entries(info.unstructure(Opt(id="a", tag="t")), ("a",))) == 1


def test_random_nested_values_round_trip() -> None:
    """The converter handles random nested values (seeded) without aliasing."""
    rng = random.Random(4)
    for _ in range(50):
        extra = {str(rng.random()): [rng.randint(0, 9) for _ in range(3)]}
        obj = Everything(extra=extra)
        info = model_info(Everything)
        assert info.structure(info.unstructure(obj)).extra == extra


@given(
    st.one_of(
        st.tuples(st.just("everything"), st.text()),
        st.tuples(st.just("everything"), st.binary() | st.integers() | st.booleans()),
        st.tuples(st.just("everything"), st.text(), st.text()),
        st.tuples(st.just("everythinh"), st.text()),
        st.tuples(st.text(), st.text()),
    )
)
def test_document_keys_decode_as_decode_key_does(key: tuple[Any, ...]) -> None:
    """The sliced fast path for one-str primary keys agrees with decode_key everywhere."""
    encoded = encode_key(key)
    assert model_info(Everything).decode_doc_key(encoded) == decode_key(encoded)


def test_a_document_key_with_bad_utf8_is_a_decode_error() -> None:
    """The fast path hands bytes it cannot decode to decode_key, which names the problem."""
    bad = encode_key(("everything",)) + b"\x02\xff\xfe\x00"
    with pytest.raises(DecodeError, match="UTF-8"):
        model_info(Everything).decode_doc_key(bad)
