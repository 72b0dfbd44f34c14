"""Tests of the object mapper's data safety (kvmodel.orm model, session, planner, catalog):
no write on read, unknown fields kept, validation, unsupported types, typed lookups,
keyspace collisions and decode errors, on every engine."""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime, time
from typing import Any, Literal

import attrs
import pytest

import kvmodel as km
from kvmodel import Kv


class User(km.Model, prefix="users"):
    id: str = km.field(primary_key=True)
    email: str
    post_count: int = 0
    score: float = 0.0
    by_email = km.Unique("email")
    by_score = km.Index("score")


@attrs.define
class Line:
    sku: str
    qty: int


class Cart(km.Model, prefix="carts"):
    id: str = km.field(primary_key=True)
    lines: list[Line] = km.field(factory=list)
    tags: dict[str, int] = km.field(factory=dict)
    kind: Literal["web", "shop"] = "web"


class Point(km.Model, prefix="points"):
    x: float = km.field(primary_key=True)
    label: str = ""


class Slot(km.Model, prefix="slots"):
    n: int = km.field(primary_key=True)
    day: date | None = None
    at: datetime | None = None
    by_at = km.Index("at")


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Paint(km.Model, prefix="paints"):
    id: str = km.field(primary_key=True)
    color: Color = Color.RED
    by_color = km.Index("color")


class Checked(km.Model, prefix="checked"):
    id: str = km.field(primary_key=True)
    age: int = km.field(default=0, validator=attrs.validators.ge(0))


def _vs(kv: Kv, key: tuple[Any, ...]) -> str | None:
    return kv.get(key).versionstamp


# -- 1. a session that only reads writes nothing ---------------------------------


def test_a_read_only_session_writes_nothing_whatever_the_document_holds(kv: Kv) -> None:
    """get, all and find in a session leave lossy values, unknown fields and the
    versionstamp as they are."""
    doc = {"id": "u1", "email": "a@x", "post_count": 5.9, "score": 1, "bio": "kept"}
    kv.set(("users", "u1"), doc)
    kv.set(("users_by_email", "a@x"), km.keys.encode_key(("users", "u1")))
    kv.set(("users_by_score", 1.0, "u1"), km.keys.encode_key(("users", "u1")))
    before = _vs(kv, ("users", "u1"))
    with km.Session(kv) as s:
        u = s.get(User, "u1")
        assert u is not None and u.post_count == 5 and u.score == 1.0
        assert len(s.all(User)) == 1
        assert User.by_email.get(s, "a@x") is u
        assert [x.id for x in User.by_score.find(s, 1)] == ["u1"]
        assert s.plan().empty
    assert _vs(kv, ("users", "u1")) == before
    assert kv.get(("users", "u1")).value == doc


def test_a_str_field_holding_an_int_is_not_rewritten_on_read(kv: Kv) -> None:
    """A stored 12345 in a str field loads as '12345' without a write."""
    kv.set(("users", "u2"), {"id": "u2", "email": 12345})
    before = _vs(kv, ("users", "u2"))
    with km.Session(kv) as s:
        assert s.get(User, "u2").email == "12345"  # type: ignore[union-attr]
    assert _vs(kv, ("users", "u2")) == before


def test_defaults_filled_in_on_load_are_not_written_back(kv: Kv) -> None:
    """A document missing fields with defaults (factories included) is not rewritten."""
    kv.set(("carts", "c1"), {"id": "c1"})
    before = _vs(kv, ("carts", "c1"))
    with km.Session(kv) as s:
        cart = s.get(Cart, "c1")
        assert cart is not None and cart.lines == [] and cart.kind == "web"
    assert _vs(kv, ("carts", "c1")) == before
    assert kv.get(("carts", "c1")).value == {"id": "c1"}


def test_a_change_is_still_written(kv: Kv) -> None:
    """Changing a field of a lossy document writes it, converted, with its unknown fields."""
    kv.set(("users", "u3"), {"id": "u3", "email": "c@x", "post_count": 5.9, "bio": "kept"})
    with km.Session(kv) as s:
        u = s.get(User, "u3")
        assert u is not None
        u.score = 2.5
    assert kv.get(("users", "u3")).value == {
        "id": "u3",
        "email": "c@x",
        "post_count": 5,
        "score": 2.5,
        "bio": "kept",
    }


def test_rollback_restores_a_changed_object_and_keeps_unchanged_ones(kv: Kv) -> None:
    """rollback() puts back the loaded values; nothing is written afterwards."""
    kv.set(("users", "u4"), {"id": "u4", "email": "d@x", "post_count": 3})
    s = km.Session(kv)
    u = s.get(User, "u4")
    assert u is not None
    u.post_count = 99
    s.rollback()
    assert u.post_count == 3
    assert s.commit() is None


# -- 2. unknown fields are kept --------------------------------------------------


def test_fields_the_model_does_not_declare_survive_a_save(kv: Kv) -> None:
    """A stored field unknown to the model is written back beside the model's fields."""
    kv.set(("users", "u5"), {"id": "u5", "email": "e@x", "avatar": b"\x89PNG", "prefs": {"a": 1}})
    with km.Session(kv) as s:
        s.get(User, "u5").post_count = 1  # type: ignore[union-attr]
    assert kv.get(("users", "u5")).value == {
        "id": "u5",
        "email": "e@x",
        "post_count": 1,
        "score": 0.0,
        "avatar": b"\x89PNG",
        "prefs": {"a": 1},
    }
    with km.Session(kv) as s:  # and again, after a save by this session
        u = s.get(User, "u5")
        assert u is not None
        u.post_count = 2
        s.commit()
        u.post_count = 3
    assert kv.get(("users", "u5")).value["avatar"] == b"\x89PNG"


# -- 3. validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "expected"),
    [
        ({"post_count": "seven"}, "post_count", "int"),
        ({"email": 12345}, "email", "str"),
        ({"post_count": True}, "post_count", "int"),
        ({"score": False}, "score", "float"),
        ({"score": "1.5"}, "score", "float"),
    ],
)
def test_wrongly_typed_values_are_refused_and_nothing_is_written(
    kv: Kv, kwargs: dict[str, Any], field: str, expected: str
) -> None:
    """ValidationError names model, key, field, type and value; the session stays usable."""
    s = km.Session(kv)
    ok = User(id="good", email="g@x")
    bad = User(id="bad", **{"email": "b@x", **kwargs})
    s.add_all([ok, bad])
    with pytest.raises(km.ValidationError) as info:
        s.commit()
    err = info.value
    assert isinstance(err, km.KvError) and isinstance(err, ValueError)
    facts = (err.model, err.key, err.field, err.expected)
    assert facts == ("User", ("users", "bad"), field, expected)
    assert "User('bad')" in str(err) and field in str(err) and repr(kwargs[field]) in str(err)
    assert list(kv.list(prefix=())) == []
    s.delete(bad)
    s.commit()
    assert kv.get(("users", "good")).value["email"] == "g@x"


def test_an_int_in_a_float_field_is_stored_as_a_float(kv: Kv) -> None:
    """int is accepted for float, stored (and indexed) as float."""
    with km.Session(kv) as s:
        u = User(id="f", email="f@x", score=3)
        s.add(u)
    assert u.score == 3.0 and type(u.score) is float
    stored = kv.get(("users", "f")).value
    assert type(stored["score"]) is float
    assert kv.get(("users_by_score", 3.0, "f")).versionstamp is not None


def test_nested_values_are_validated_with_a_path(kv: Kv) -> None:
    """A wrong value inside a list of attrs objects names its path."""
    s = km.Session(kv)
    s.add(Cart(id="c", lines=[Line("a", 1), Line("b", "two")]))  # type: ignore[arg-type]
    with pytest.raises(km.ValidationError, match=r"Cart\('c'\)\.lines\[1\]\.qty must be int"):
        s.commit()
    s2 = km.Session(kv)
    s2.add(Cart(id="d", kind="mail"))  # type: ignore[arg-type]
    with pytest.raises(km.ValidationError, match=r"kind must be Literal"):
        s2.commit()
    s3 = km.Session(kv)
    s3.add(Cart(id="e", tags={"x": "1"}))  # type: ignore[dict-item]
    with pytest.raises(km.ValidationError, match=r"tags\['x'\]"):
        s3.commit()


def test_a_value_that_contains_itself_is_refused(kv: Kv) -> None:
    """A cycle ends in a ValidationError, not a RecursionError."""
    loop: list[Any] = []
    loop.append(loop)
    s = km.Session(kv)
    s.add(Cart(id="loop", tags={}, lines=loop))
    with pytest.raises(km.ValidationError, match=r"lines\[0\] must be Line"):
        s.commit()


def test_attrs_validators_run_at_commit(kv: Kv) -> None:
    """A validator the model declares rejects a value that got past attrs' own checks."""
    s = km.Session(kv)
    c = Checked(id="c1")
    s.add(c)
    object.__setattr__(c, "age", -1)  # attrs validates on setattr; this goes around it
    with pytest.raises(km.ValidationError, match="age") as info:
        s.commit()
    assert info.value.field == "age"
    assert kv.get(("checked", "c1")).versionstamp is None


# -- 4. unsupported field types ----------------------------------------------------


class _Plain:
    pass


@pytest.mark.parametrize("tp", [complex, time, bytearray, _Plain, "int | str"])
def test_unsupported_field_types_fail_when_the_class_is_created(tp: Any) -> None:
    """ModelDefinitionError names the model and field and says how to add support."""
    annotation = eval(tp) if isinstance(tp, str) else tp
    with pytest.raises(km.ModelDefinitionError, match=r"Bad\.x") as info:
        type(
            "Bad",
            (km.Model,),
            {"__annotations__": {"id": str, "x": annotation}, "id": km.field(primary_key=True)},
            prefix="bad",
        )
    assert "register_type" in str(info.value) or "union" in str(info.value)


def test_a_registered_type_can_be_stored(kv: Kv) -> None:
    """register_type makes a field type storable."""

    class Money:
        def __init__(self, cents: int) -> None:
            self.cents = cents

    km.register_type(Money, unstructure=lambda m: m.cents, structure=Money)
    Wallet = type(
        "Wallet",
        (km.Model,),
        {"__annotations__": {"id": str, "cash": Money}, "id": km.field(primary_key=True)},
        prefix="wallets",
    )
    with km.Session(kv) as s:
        s.add(Wallet(id="w", cash=Money(250)))
    assert kv.get(("wallets", "w")).value == {"id": "w", "cash": 250}
    assert km.Session(kv).get(Wallet, "w").cash.cents == 250
    s = km.Session(kv)
    s.add(Wallet(id="v", cash=250))
    with pytest.raises(km.ValidationError, match="must be Money"):
        s.commit()


# -- 5. typed lookups --------------------------------------------------------------


def test_int_and_float_find_the_same_documents(kv: Kv) -> None:
    """Query values and primary keys are converted to the field's declared type."""
    with km.Session(kv) as s:
        s.add(User(id="p", email="p@x", score=10.0))
        s.add(Point(x=1, label="one"))  # an int for a float key
        s.add(Slot(n=2))
    assert [u.id for u in User.by_score.find(kv, 10)] == ["p"]
    assert User.by_score.count(kv, 10) == 1
    assert [u.id for u in User.by_score.find(kv, start=9, end=11)] == ["p"]
    assert km.Session(kv).get(Point, 1).label == "one"  # type: ignore[union-attr]
    assert km.Session(kv).get(Point, 1.0).label == "one"  # type: ignore[union-attr]
    assert km.Session(kv).get(Slot, 2.0) is not None
    s = km.Session(kv)
    s.add(Point(x=1.0))
    with pytest.raises(km.ConflictError, match="already exists"):
        s.commit()


def test_a_lookup_value_of_the_wrong_kind_is_an_error(kv: Kv) -> None:
    """A str for a datetime index, 1.5 for an int key, a bool for a float: InvalidArgumentError."""
    with pytest.raises(km.InvalidArgumentError, match=r"Slot.by_at.at is a datetime field"):
        Slot.by_at.find(kv, "2024-01-01")
    with pytest.raises(km.InvalidArgumentError, match="int"):
        km.Session(kv).get(Slot, 1.5)
    with pytest.raises(km.InvalidArgumentError, match="float"):
        User.by_score.find(kv, True)
    with pytest.raises(km.InvalidArgumentError, match="Color"):
        Paint.by_color.find(kv, "green")
    with km.Session(kv) as s:
        s.add(Paint(id="p1", color=Color.BLUE))
    assert [p.id for p in Paint.by_color.find(kv, "blue")] == ["p1"]
    assert [p.id for p in Paint.by_color.find(kv, Color.BLUE)] == ["p1"]
    t = datetime(2024, 1, 1, tzinfo=UTC)
    with km.Session(kv) as s:
        s.add(Slot(n=5, at=t))
    assert [x.n for x in Slot.by_at.find(kv, t)] == [5]


# -- 6. keyspace collisions ----------------------------------------------------------


def test_two_models_with_one_prefix_cannot_share_a_kv(kv: Kv) -> None:
    """The second model's first use raises ModelDefinitionError naming both owners."""

    class Person(km.Model, prefix="people"):
        id: str = km.field(primary_key=True)
        email: str = ""
        by_email = km.Index("email")

    class Human(km.Model, prefix="people"):
        id: str = km.field(primary_key=True)

    class PersonByEmail(km.Model, prefix="people_by_email"):
        id: str = km.field(primary_key=True)

    assert km.Session(kv).get(Person, "x") is None
    with pytest.raises(km.ModelDefinitionError, match=r"'people'.*Human.*Person"):
        km.Session(kv).get(Human, "x")
    with pytest.raises(km.ModelDefinitionError, match=r"people_by_email.*Person"):
        km.Session(kv).add(PersonByEmail(id="y"))


def test_a_redefined_class_is_not_a_collision(kv: Kv) -> None:
    """The same class defined again (a reload) replaces the old one."""

    def define() -> type[km.Model]:
        class Note(km.Model, prefix="notes_reload"):
            id: str = km.field(primary_key=True)

        return Note

    first, second = define(), define()
    with km.Session(kv) as s:
        s.add(first(id="a"))
    with km.Session(kv) as s:
        s.add(second(id="b"))
    assert len(km.Session(kv).all(second)) == 2


def test_reserved_keys_are_invisible_to_listings(kv: Kv) -> None:
    """The stored descriptions live outside every user listing."""
    with km.Session(kv) as s:
        s.add(User(id="z", email="z@x"))
    keys = [e.key[0] for e in kv.list(prefix=())]
    assert keys == ["users", "users_by_email", "users_by_score"]


# -- 7. errors inside the hierarchy ------------------------------------------------


def test_wrong_arguments_to_the_public_api_raise_kv_errors(kv: Kv) -> None:
    """Every misuse of the object mapper's API raises a KvError with the built-in base kept."""
    s = km.Session(kv)
    calls: list[tuple[Any, type[BaseException]]] = [
        (lambda: s.get(User, None), TypeError),
        (lambda: s.get(User), TypeError),
        (lambda: s.get(User, "a", "b"), TypeError),
        (lambda: s.get(object, "a"), TypeError),  # type: ignore[type-var]
        (lambda: s.add(object()), TypeError),  # type: ignore[arg-type]
        (lambda: s.add(Point(x=None)), TypeError),  # type: ignore[arg-type]
        (lambda: s.delete(User(id="n", email="n@x")), ValueError),
        (lambda: s.get_many(User, [None]), TypeError),
        (lambda: User.by_email.get(kv, "a", "b"), ValueError),
        (lambda: User.by_email.get(object(), "a"), TypeError),  # type: ignore[arg-type]
        (lambda: User.by_score.find(kv, None), ValueError),
        (lambda: User.by_score.find(kv, 1, 2), ValueError),
        (lambda: User.by_score.find(kv, [1]), ValueError),
        (lambda: s.all(User, limit=0), ValueError),
        (lambda: s.all(User, cursor="%%%"), ValueError),
        (lambda: km.check_indexes(kv, int), TypeError),  # type: ignore[arg-type]
        (lambda: km.migrate(kv, User, batch_size=0), ValueError),
        (lambda: km.drop_index(kv, User, "by_email"), ValueError),
        (lambda: km.transaction(kv, lambda s: None, retries=-1), ValueError),
    ]
    for call, builtin in calls:
        with pytest.raises(km.KvError) as info:
            call()
        assert isinstance(info.value, builtin), (info.value, builtin)


# -- 8. decode errors and check_documents --------------------------------------------


class Article(km.Model, prefix="articles"):
    id: str = km.field(primary_key=True)
    headline: str
    words: int = 0


def test_a_bad_document_names_key_model_field_and_reason(kv: Kv) -> None:
    """DecodeError says which document and field do not fit, and why."""
    kv.set(("articles", "a1"), {"id": "a1", "words": 3})
    kv.set(("articles", "a2"), {"id": "a2", "headline": "x", "words": "many"})
    kv.set(("articles", "a3"), ["not", "a", "map"])
    with pytest.raises(km.DecodeError) as info:
        km.Session(kv).get(Article, "a1")
    text = str(info.value)
    assert "('articles', 'a1')" in text and "Article" in text
    assert "missing required field 'headline'" in text
    with pytest.raises(km.DecodeError, match=r"'words' holds 'many'"):
        km.Session(kv).get(Article, "a2")
    with pytest.raises(km.DecodeError, match="is a list, not a map"):
        km.Session(kv).get(Article, "a3")


def test_check_documents_reports_every_misfit(kv: Kv) -> None:
    """check_documents lists each document that does not fit, without stopping at the first."""
    kv.set(("articles", "a1"), {"id": "a1", "words": 3})
    kv.set(("articles", "a2"), {"id": "a2", "headline": "x", "words": "many"})
    kv.set(("articles", "a3"), ["not", "a", "map"])
    kv.set(("articles", "a4"), {"id": "a4", "headline": "fine", "words": 5.9})
    kv.set(("articles", "a5"), {"id": "a5", "headline": "fine", "extra": 1})
    report = km.check_documents(kv, Article)
    assert not report.ok and report.documents == 5
    reasons = {p.key: p.reason for p in report.problems}
    assert set(reasons) == {("articles", f"a{i}") for i in (1, 2, 3, 4)}
    assert "missing required field 'headline'" in reasons[("articles", "a1")]
    assert "5.9" in reasons[("articles", "a4")]
    assert "a1" in str(report) and "a4" in str(report)
    kv.delete(("articles", "a1"))
    kv.delete(("articles", "a2"))
    kv.delete(("articles", "a3"))
    kv.delete(("articles", "a4"))
    assert km.check_documents(kv, Article).ok


def test_check_documents_reports_rows_no_read_reaches(tmp_path: Any) -> None:
    """On SQLite, a key stored as TEXT by another program is named; other engines report none."""
    import sqlite3

    path = tmp_path / "rows.db"
    with km.open_kv(path) as kv:
        kv.set(("articles", "a1"), {"id": "a1", "headline": "fine"})
        assert km.check_documents(kv, Article).ok
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO kv VALUES ('articles', X'c0', 1, 1, NULL)")
    conn.close()
    with km.open_kv(path) as kv:
        report = km.check_documents(kv, Article)
        assert not report.ok and report.documents == 1 and not report.problems
        assert len(report.unreachable) == 1 and "stored as TEXT" in report.unreachable[0]
        assert "no read can reach" in str(report)
        assert km.check_documents(kv, Article, rows=False).ok
    with km.open_kv() as memory:
        assert km.check_documents(memory, Article).unreachable == ()
