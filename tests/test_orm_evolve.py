"""Tests of kvmodel.orm.evolve and the stored descriptions (kvmodel.orm._catalog): model
versions and upgrade steps, rolling deploys, migrate beside live writers, index states,
orphaned indexes and drop_index, on every engine."""

from __future__ import annotations

import enum
import threading
import uuid
from datetime import UTC, date, datetime
from typing import Any

import pytest

import kvmodel as km
from kvmodel import Kv
from kvmodel.engines.base import Consistency, ReadRange
from kvmodel.orm._catalog import description_key


class ArticleV1(km.Model, prefix="articles"):
    """The first release, as an old process still runs it."""

    id: str = km.field(primary_key=True)
    headline: str
    views: int = 0


class Article(km.Model, prefix="articles", version=3):
    """Version 2 renamed headline to title; version 3 stores tags."""

    id: str = km.field(primary_key=True)
    title: str
    views: int = 0
    tags: list[str] = km.field(factory=list)
    by_title = km.Index("title")


@km.upgrade(Article, from_version=1)
def _rename_headline(doc: dict[str, Any]) -> dict[str, Any]:
    doc["title"] = doc.pop("headline")
    return doc


@km.upgrade(Article, from_version=2)
def _add_tags(doc: dict[str, Any]) -> dict[str, Any]:
    doc["tags"] = [t for t in doc.pop("tag_line", "").split(",") if t]
    return doc


def _other_view(kv: Kv) -> Kv:
    """A second Kv on the same engine: another process running another release."""
    return Kv(kv.engine)


def _seed_v1(kv: Kv, n: int) -> None:
    for i in range(n):
        kv.set(("articles", f"a{i:03}"), {"id": f"a{i:03}", "headline": f"h{i}", "views": i})


def test_old_documents_are_upgraded_on_load_and_written_only_when_saved(kv: Kv) -> None:
    """Loading runs the steps in memory; the stored document stays until a change is saved."""
    kv.set(("articles", "a"), {"id": "a", "headline": "Hello", "views": 1})
    kv.set(("articles", "b"), {"id": "b", "title": "Two", "tag_line": "x,y", "$v": 2})
    before = kv.get(("articles", "a")).versionstamp
    with km.Session(kv) as s:
        a = s.get(Article, "a")
        b = s.get(Article, "b")
        assert a == Article(id="a", title="Hello", views=1)
        assert b == Article(id="b", title="Two", tags=["x", "y"])
    assert kv.get(("articles", "a")).versionstamp == before
    with km.Session(kv) as s:
        s.get(Article, "a").views = 2  # type: ignore[union-attr]
    assert kv.get(("articles", "a")).value == {
        "id": "a",
        "title": "Hello",
        "views": 2,
        "tags": [],
        "$v": 3,
    }


def test_a_missing_or_failing_step_is_a_decode_error(kv: Kv) -> None:
    """No step from a version, or a step that raises, names the document and the version."""

    class Post(km.Model, prefix="posts_v", version=2):
        id: str = km.field(primary_key=True)

    kv.set(("posts_v", "p"), {"id": "p"})
    with pytest.raises(km.DecodeError, match=r"Post, from_version=1\)"):
        km.Session(kv).get(Post, "p")

    @km.upgrade(Post, from_version=1)
    def broken(doc: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("oops")

    with pytest.raises(km.DecodeError, match=r"Post from version 1 failed"):
        km.Session(kv).get(Post, "p")
    with pytest.raises(km.ModelDefinitionError):
        km.upgrade(Post, from_version=2)


def test_old_code_keeps_the_fields_and_version_of_newer_documents(kv: Kv) -> None:
    """A rolling deploy: version 1 code saves a version 3 document without losing anything."""
    old = _other_view(kv)
    newer_doc = {"id": "m", "headline": "Old", "title": "New", "tags": ["t"], "$v": 3}
    kv.set(("articles", "m"), newer_doc)
    with km.Session(old) as s:
        doc = s.get(ArticleV1, "m")
        assert doc is not None and doc.headline == "Old"
        doc.views = 7
    assert kv.get(("articles", "m")).value == {
        "id": "m",
        "headline": "Old",
        "title": "New",
        "tags": ["t"],
        "views": 7,
        "$v": 3,
    }


def test_a_document_missing_a_field_old_code_needs_is_reported(kv: Kv) -> None:
    """Old code meets a newer document without a field it requires: a clear DecodeError."""
    with km.Session(kv) as s:
        s.add(Article(id="n", title="New"))
    with pytest.raises(km.DecodeError, match="missing required field 'headline'"):
        km.Session(_other_view(kv)).get(ArticleV1, "n")


def test_migrate_upgrades_every_old_document_and_is_idempotent(kv: Kv) -> None:
    """migrate rewrites old documents, reports progress, and a second run finds nothing to do."""
    _seed_v1(kv, 25)
    kv.set(("articles", "zbad"), {"id": "zbad", "views": 1})  # no headline: its step fails
    seen: list[int] = []
    report = km.migrate(kv, Article, batch_size=10, progress=lambda r: seen.append(r.scanned))
    assert (report.scanned, report.upgraded, report.current) == (26, 25, 0)
    assert [k for k, _ in report.failed] == [("articles", "zbad")]
    assert "headline" in report.failed[0][1]
    assert seen == [10, 20, 26]
    assert kv.get(("articles", "a003")).value == {
        "id": "a003",
        "title": "h3",
        "views": 3,
        "tags": [],
        "$v": 3,
    }
    again = km.migrate(kv, Article)
    assert (again.upgraded, again.current, len(again.failed)) == (0, 25, 1)
    kv.delete(("articles", "zbad"))
    assert km.rebuild_indexes(kv, Article).ok
    assert [a.id for a in Article.by_title.find(kv, "h3")] == ["a003"]


def test_migrate_runs_beside_live_writers(kv: Kv) -> None:
    """Two writers change documents while migrate runs; no change is lost, all end current."""
    _seed_v1(kv, 40)
    stop = threading.Event()
    bumps = {"n": 0}
    errors: list[BaseException] = []

    def writer(ids: list[str]) -> None:
        try:
            while not stop.is_set():
                for i in ids:
                    km.transaction(kv, lambda s, i=i: _bump(s, i), retries=50)
                    bumps["n"] += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=([f"a{i:03}" for i in range(0, 40, 2)],)),
        threading.Thread(target=writer, args=([f"a{i:03}" for i in range(1, 40, 2)],)),
    ]
    for t in threads:
        t.start()
    try:
        report = km.migrate(kv, Article, batch_size=7)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert report.ok, str(report)
    assert report.scanned == 40
    total_views = 0
    for e in kv.list(prefix=("articles",)):
        assert e.value["$v"] == 3 and "headline" not in e.value, e
        total_views += e.value["views"]
    assert total_views == sum(range(40)) + bumps["n"]


def _bump(s: km.Session, article_id: str) -> None:
    a = s.get(Article, article_id)
    assert a is not None
    a.views += 1


def test_a_new_index_on_existing_documents_is_building_until_rebuilt(kv: Kv) -> None:
    """Queries on a building index raise IndexNotReadyError; rebuild_indexes makes it ready
    for every Kv on the database."""

    class Book(km.Model, prefix="books"):
        id: str = km.field(primary_key=True)
        author: str

    with km.Session(kv) as s:
        s.add_all([Book(id="b1", author="ann"), Book(id="b2", author="bo")])
    newer = _other_view(kv)

    class BookV2(km.Model, prefix="books"):
        id: str = km.field(primary_key=True)
        author: str
        by_author = km.Index("author")
        by_id_author = km.Unique("author")

    with pytest.raises(km.IndexNotReadyError, match=r"BookV2\.by_author") as info:
        BookV2.by_author.find(newer, "ann")
    assert info.value.index.endswith("BookV2.by_author")
    with pytest.raises(km.IndexNotReadyError):
        BookV2.by_id_author.get(newer, "ann")
    with km.Session(newer) as s:  # sessions maintain it meanwhile
        s.add(BookV2(id="b3", author="cy"))
    assert km.rebuild_indexes(newer, BookV2).ok
    third = _other_view(kv)
    assert [b.id for b in BookV2.by_author.find(third, "ann")] == ["b1"]
    assert BookV2.by_id_author.get(third, "cy").id == "b3"  # type: ignore[union-attr]


def test_a_unique_backfill_with_duplicates_stays_building(kv: Kv) -> None:
    """A Unique whose rebuild meets two documents with one value is not marked ready."""
    kv.set(("badges", "x"), {"id": "x", "code": "same"})
    kv.set(("badges", "y"), {"id": "y", "code": "same"})

    class Badge(km.Model, prefix="badges"):
        id: str = km.field(primary_key=True)
        code: str
        by_code = km.Unique("code")

    report = km.rebuild_indexes(kv, Badge)
    assert [p.kind for p in report.problems] == ["duplicate"]
    assert "('badges', 'x')" in report.problems[0].detail
    with pytest.raises(km.IndexNotReadyError):
        Badge.by_code.get(_other_view(kv), "same")
    kv.set(("badges", "y"), {"id": "y", "code": "other"})
    assert km.rebuild_indexes(kv, Badge).ok
    assert Badge.by_code.get(kv, "other").id == "y"  # type: ignore[union-attr]


def test_an_index_on_an_empty_keyspace_is_ready_at_once(kv: Kv) -> None:
    """No documents yet: nothing to backfill."""

    class Tag(km.Model, prefix="tags_empty"):
        name: str = km.field(primary_key=True)
        group: str = ""
        by_group = km.Index("group")

    assert Tag.by_group.find(kv, "g").items == []


def test_orphaned_index_entries_are_reported_and_dropped(kv: Kv) -> None:
    """check_indexes reports entries of an index the model no longer declares; drop_index
    deletes them and forgets the index."""

    class Seat(km.Model, prefix="seats"):
        id: str = km.field(primary_key=True)
        row: str
        by_row = km.Index("row")

    with km.Session(kv) as s:
        s.add_all([Seat(id=f"s{i}", row="r") for i in range(5)])
    later = _other_view(kv)

    class SeatV2(km.Model, prefix="seats"):
        id: str = km.field(primary_key=True)
        row: str

    report = km.check_indexes(later, SeatV2)
    assert [(p.kind, p.index.split(".")[-2:], p.key) for p in report.problems] == [
        ("orphan", ["SeatV2", "by_row"], ("seats_by_row",))
    ]
    assert "5 entries" in report.problems[0].detail and "drop_index" in report.problems[0].detail
    with pytest.raises(km.InvalidArgumentError, match="still declares"):
        km.drop_index(kv, Seat, "by_row")
    assert km.drop_index(later, SeatV2, "by_row") == 5
    assert list(kv.list(prefix=("seats_by_row",))) == []
    assert km.check_indexes(_other_view(kv), SeatV2).ok


def test_the_description_lives_in_the_reserved_keyspace(kv: Kv) -> None:
    """The stored description holds the model's fields, version and index states."""
    with km.Session(kv) as s:
        s.add(Article(id="d", title="t"))
    key = description_key("articles")
    [raw] = kv.read_range(ReadRange(key, key + b"\x00", 1), Consistency.STRONG)
    from kvmodel._values import decode_value

    desc = decode_value(raw.value, raw.encoding)
    assert desc["version"] == 3
    assert desc["fields"] == ["id", "title", "views", "tags"]
    by_title = {"fields": ["title"], "unique": False, "state": "ready", "parts": ["str", "str"]}
    assert desc["indexes"] == {"by_title": by_title}
    assert desc["primary_key_parts"] == ["str"]
    keys = [e.key for e in kv.list(prefix=())]
    assert keys == [("articles", "d"), ("articles_by_title", "t", "d")]


class Colour(enum.Enum):
    RED = "red"


class Visit(km.Model, prefix="visits"):
    """Key parts of every form: the description names each."""

    id: uuid.UUID = km.field(primary_key=True)
    at: datetime
    day: date | None = None
    kind: Colour = Colour.RED
    tags: list[str] = km.field(factory=list)

    by_at = km.Index("at", "day")
    by_kind = km.Unique("kind", "at")
    by_tag = km.Index("tags", each=True)


def _description(kv: Kv, prefix: str) -> dict[str, Any]:
    from kvmodel._values import decode_value

    key = description_key(prefix)
    [raw] = kv.read_range(ReadRange(key, key + b"\x00", 1), Consistency.STRONG)
    desc: dict[str, Any] = decode_value(raw.value, raw.encoding)
    return desc


def test_the_description_names_the_form_of_every_key_part(kv: Kv) -> None:
    """Each index lists its key parts' forms (values, then the primary key of a
    non-unique index), and the primary key its own, so a reader without the model
    can decode UTC microseconds, ordinals and UUID bytes."""
    with km.Session(kv) as s:
        s.add(Visit(id=uuid.uuid4(), at=datetime(2024, 5, 1, tzinfo=UTC)))
    desc = _description(kv, "visits")
    assert desc["primary_key_parts"] == ["uuid"]
    parts = {name: ix["parts"] for name, ix in desc["indexes"].items()}
    assert parts == {
        "by_at": ["datetime", "date", "uuid"],
        "by_kind": ["enum", "datetime"],
        "by_tag": ["str", "uuid"],
    }


def test_a_description_without_part_forms_gets_them_and_keeps_its_index_states(kv: Kv) -> None:
    """A description an earlier release wrote (no "parts") is completed on first use;
    a building index stays building."""
    from kvmodel.orm._catalog import _write_description

    kv.set(("articles", "old"), {"id": "old", "title": "t"})
    earlier = {
        "model": "tests.test_orm_evolve.Article",
        "version": 3,
        "fields": ["id", "title", "views", "tags"],
        "primary_key": ["id"],
        "indexes": {"by_title": {"fields": ["title"], "unique": False, "state": "building"}},
    }
    assert _write_description(kv, "articles", earlier, None)
    with pytest.raises(km.IndexNotReadyError):
        Article.by_title.find(kv, "t")
    desc = _description(kv, "articles")
    assert desc["indexes"]["by_title"] == {
        **earlier["indexes"]["by_title"],
        "parts": ["str", "str"],
    }
    assert desc["primary_key_parts"] == ["str"]


def test_an_index_on_a_new_field_with_a_default_is_built_from_loaded_documents(kv: Kv) -> None:
    """Documents without the new field are indexed under its default, as they load."""
    kv.set(("crew", "c1"), {"id": "c1"})
    kv.set(("crew", "c2"), {"id": "c2", "team": "ops"})

    class Crew(km.Model, prefix="crew"):
        id: str = km.field(primary_key=True)
        team: str = "core"
        by_team = km.Index("team")

    assert km.rebuild_indexes(kv, Crew).ok
    assert [c.id for c in Crew.by_team.find(kv, "core")] == ["c1"]
    assert km.check_indexes(kv, Crew).ok
    with km.Session(kv) as s:  # moving it on deletes the entry it had under the default
        s.get(Crew, "c1").team = "ops"  # type: ignore[union-attr]
    assert [c.id for c in Crew.by_team.find(kv, "ops")] == ["c1", "c2"]
    assert km.check_indexes(kv, Crew).ok


def test_migrate_resumes_after_a_crash(kv: Kv) -> None:
    """A migration stopped half way (here by its progress callback) finishes on the next run."""
    _seed_v1(kv, 30)

    class Crash(Exception):
        pass

    def crash_after_first_batch(report: km.MigrationReport) -> None:
        raise Crash

    with pytest.raises(Crash):
        km.migrate(kv, Article, batch_size=10, progress=crash_after_first_batch)
    half = km.migrate(kv, Article, batch_size=10)
    assert (half.scanned, half.upgraded, half.current) == (30, 20, 10)
    assert all(e.value.get("$v") == 3 for e in kv.list(prefix=("articles",)))


def test_completing_a_description_is_skipped_where_the_client_may_not_write(
    kv: Kv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adding the part forms to an earlier release's description is a convenience: a
    client whose write is refused still uses the model, and the description stays."""
    from kvmodel.orm import _catalog

    earlier = {
        "model": "tests.test_orm_evolve.Article",
        "version": 3,
        "fields": ["id", "title", "views", "tags"],
        "primary_key": ["id"],
        "indexes": {"by_title": {"fields": ["title"], "unique": False, "state": "ready"}},
    }
    assert _catalog._write_description(kv, "articles", earlier, None)

    def refused(*args: Any) -> bool:
        raise km.EngineError("permission denied")

    monkeypatch.setattr(_catalog, "_write_description", refused)
    assert list(Article.by_title.find(kv, "t")) == []
    monkeypatch.undo()
    assert "parts" not in _description(kv, "articles")["indexes"]["by_title"]
