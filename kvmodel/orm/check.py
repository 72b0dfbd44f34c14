"""Index consistency checks: :func:`check_indexes` and its :class:`IndexReport`.

The invariant kvmodel maintains is that the index entries are exactly those
derivable from the documents: every entry points at a document whose indexed
values are the entry's, every document has all its entries, and no two
documents share a unique value. ``check_indexes`` verifies it by listing every
document and every index entry; run it on a quiescent database (the listings
are not one snapshot).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import attrs

from kvmodel.keys import encode_key
from kvmodel.limits import MAX_GET_MANY_KEYS
from kvmodel.orm import _catalog
from kvmodel.orm._convert import Key
from kvmodel.orm.index import pointed_key
from kvmodel.orm.model import Model, ModelInfo, model_info

if TYPE_CHECKING:
    from kvmodel._kv import Kv
    from kvmodel._records import Entry
    from kvmodel.orm.index import IndexBase

__all__ = ["IndexProblem", "IndexRepairs", "IndexReport", "check_indexes", "rebuild_indexes"]


@attrs.frozen
class IndexProblem:
    """One inconsistency between documents and index entries.

    ``kind`` is one of ``"dangling"`` (an entry with no matching document),
    ``"missing"`` (a document without its entry), ``"wrong_value"`` (an entry
    whose stored value is not its document's encoded primary key), ``"duplicate"``
    (documents sharing a unique value) or ``"orphan"`` (entries of an index the
    model no longer declares; :func:`kvmodel.drop_index` removes them);
    :func:`rebuild_indexes` adds ``"busy"`` (a key that kept changing while it
    tried to settle it).
    """

    kind: str
    index: str
    key: Key
    detail: str


@attrs.frozen
class IndexRepairs:
    """What :func:`rebuild_indexes` changed in one index: entries it wrote that
    were missing, entries whose value it corrected, and entries it deleted."""

    added: int = 0
    corrected: int = 0
    removed: int = 0

    def __str__(self) -> str:
        return f"{self.added} added, {self.corrected} corrected, {self.removed} removed"


_NO_REPAIRS: Mapping[str, IndexRepairs] = MappingProxyType({})


@attrs.frozen
class IndexReport:
    """The result of :func:`check_indexes` and :func:`rebuild_indexes`; truthy when
    everything is consistent.

    ``repairs`` maps an index's name (``"Model.index"``) to what
    :func:`rebuild_indexes` changed in it; only indexes it changed appear, and
    it is empty for :func:`check_indexes`.
    """

    problems: tuple[IndexProblem, ...]
    documents: int
    entries: int
    repairs: Mapping[str, IndexRepairs] = _NO_REPAIRS

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        lines = [f"Repaired {name}: {repairs}." for name, repairs in self.repairs.items()]
        if self.ok:
            lines.append(
                f"{self.documents} documents and {self.entries} index entries are consistent."
            )
            return "\n".join(lines)
        lines.append(f"{len(self.problems)} index problem(s):")
        lines += [f"  {p.kind}: {p.index} {p.key!r}: {p.detail}" for p in self.problems]
        return "\n".join(lines)


def check_indexes(kv: Kv, *models: type[Model]) -> IndexReport:
    """Checks that the index entries of ``models`` are exactly those their documents imply.

    >>> import kvmodel as km
    >>> class Member(km.Model, prefix="members"):
    ...     id: str = km.field(primary_key=True)
    ...     email: str
    ...     by_email = km.Unique("email")
    >>> kv = km.open_kv()
    >>> with km.Session(kv) as s:
    ...     s.add(Member(id="m1", email="a@x"))
    >>> km.check_indexes(kv, Member).ok
    True
    """
    problems: list[IndexProblem] = []
    n_docs = 0
    n_entries = 0
    for model in models:
        info = model_info(model)
        _catalog.attach(kv, info)
        problems += _orphans(kv, info)
        expected: dict[str, dict[Key, Any]] = {ix.key_prefix: {} for ix in info.indexes}
        owners: dict[Key, Key] = {}
        for entry in kv.list(prefix=(info.prefix,), batch_size=1000):
            n_docs += 1
            pk = entry.key[1:]
            form = info.indexed_form(entry.value, entry.key)
            target = encode_key(entry.key)
            for index in info.indexes:
                for key, value in index._entries(form, pk, target):
                    _expect(
                        expected[index.key_prefix], owners, problems, index, key, value, entry.key
                    )
        for index in info.indexes:
            want = expected[index.key_prefix]
            seen: set[Key] = set()
            for entry in kv.list(prefix=(index.key_prefix,), batch_size=1000):
                n_entries += 1
                key = entry.key
                seen.add(key)
                if key not in want:
                    problems.append(
                        IndexProblem(
                            "dangling", index.qualname, key, "no document has these values"
                        )
                    )
                elif entry.value != want[key]:
                    problems.append(
                        IndexProblem(
                            "wrong_value",
                            index.qualname,
                            key,
                            f"points at {_pointee(entry.value)}, but {owners[key]!r} "
                            "holds the value",
                        )
                    )
            for key in want.keys() - seen:
                problems.append(
                    IndexProblem(
                        "missing",
                        index.qualname,
                        key,
                        f"document {owners[key]!r} has no entry in the index",
                    )
                )
    return IndexReport(tuple(problems), n_docs, n_entries)


def _expect(
    want: dict[Key, Any],
    owners: dict[Key, Key],
    problems: list[IndexProblem],
    index: IndexBase[Any],
    key: Key,
    value: Any,
    doc_key: Key,
) -> None:
    """Records an entry a document implies; a unique key two documents imply is a duplicate."""
    if key in want:
        problems.append(
            IndexProblem(
                "duplicate",
                index.qualname,
                key,
                f"documents {owners[key]!r} and {doc_key!r} share this value",
            )
        )
        return
    want[key] = value
    owners[key] = doc_key


def _orphans(kv: Kv, info: ModelInfo) -> list[IndexProblem]:
    """One problem per index of the stored description that the model no longer declares
    and that still has entries."""
    stored, _ = _catalog.stored_description(kv, info.prefix)
    declared = {ix.name for ix in info.indexes}
    problems = []
    for name in sorted((stored or {}).get("indexes", {})):
        if name in declared:
            continue
        space = f"{info.prefix}_{name}"
        count = sum(1 for _ in kv.list(prefix=(space,), batch_size=1000))
        if count:
            problems.append(
                IndexProblem(
                    "orphan",
                    f"{info.name}.{name}",
                    (space,),
                    f"{count} entries of an index {info.name} no longer declares; delete "
                    f"them with km.drop_index(kv, {info.name}, {name!r})",
                )
            )
    return problems


# Each document or entry is re-read and decided again when a commit races a
# writer; a key that keeps moving this often is reported instead.
_REBUILD_ATTEMPTS = 20


def rebuild_indexes(kv: Kv, *models: type[Model]) -> IndexReport:
    """Writes the index entries of ``models`` that their documents imply, and deletes the rest.

    Run it after declaring an index on a model whose documents already exist,
    or to repair entries that writes bypassing the sessions left wrong. Every
    change is its own commit, checked against the versionstamps of the
    document and the entry it was decided on, so sessions may keep writing
    meanwhile: their commits and the rebuild's never undo each other.

    A unique value that two documents hold cannot be settled here; its entry
    is left as it is and reported as a ``"duplicate"``.

    >>> import kvmodel as km
    >>> kv = km.open_kv()
    >>> kv.set(("notes", "n1"), {"id": "n1", "author": "ada"})  # written before the index
    CommitResult(ok=True, ...)
    >>> class Note(km.Model, prefix="notes"):
    ...     id: str = km.field(primary_key=True)
    ...     author: str
    ...     by_author = km.Index("author")
    >>> Note.by_author.count(kv, "ada")
    Traceback (most recent call last):
    kvmodel.IndexNotReadyError: The index Note.by_author is still being built: ...
    >>> km.rebuild_indexes(kv, Note).ok
    True
    >>> [n.id for n in Note.by_author.find(kv, "ada")]
    ['n1']

    Returns:
        An :class:`IndexReport` of what is still inconsistent (duplicates, or a
        key that kept changing), with the numbers of documents and entries read.
    """
    problems: list[IndexProblem] = []
    n_docs = 0
    n_entries = 0
    # (index name, "added" | "corrected" | "removed") -> count
    changed: Counter[tuple[str, str]] = Counter()
    for model in models:
        info = model_info(model)
        _catalog.attach(kv, info)
        found: list[IndexProblem] = []
        for doc in kv.list(prefix=(info.prefix,), batch_size=500):
            n_docs += 1
            found += _settle_document(kv, info, doc.key, changed)
        for index in info.indexes:
            for entry in kv.list(prefix=(index.key_prefix,), batch_size=500):
                n_entries += 1
                found += _settle_entry(kv, index, entry.key, changed)
        # An index every document now has its entries in is ready for queries,
        # in every process; one with a duplicate or a busy key is not.
        unsettled = {p.index for p in found}
        _catalog.mark_ready(
            kv, info, [ix.name for ix in info.indexes if ix.qualname not in unsettled]
        )
        problems += found
    names = sorted({name for name, _ in changed})
    repairs = {
        name: IndexRepairs(
            changed[name, "added"], changed[name, "corrected"], changed[name, "removed"]
        )
        for name in names
    }
    return IndexReport(tuple(problems), n_docs, n_entries, MappingProxyType(repairs))


def _settle_document(
    kv: Kv, info: ModelInfo, key: Key, changed: Counter[tuple[str, str]]
) -> list[IndexProblem]:
    """Writes the entries one document implies that are missing or hold a wrong value."""
    for _ in range(_REBUILD_ATTEMPTS):
        doc = kv.get(key)
        if doc.versionstamp is None:
            return []  # deleted meanwhile, with its entries
        want = info.index_entries(info.indexed_form(doc.value, key), key[1:])
        keys = list(want)
        step = MAX_GET_MANY_KEYS
        current = [e for lo in range(0, len(keys), step) for e in kv.get_many(keys[lo : lo + step])]
        op = kv.atomic().check(doc)
        problems: list[IndexProblem] = []
        changes: list[tuple[str, str]] = []
        for entry in current:
            if entry.versionstamp is not None and entry.value == want[entry.key]:
                continue
            holder = _holder(kv, info, entry)
            if holder is not None:
                index = info.unique_indexes[entry.key[0]]
                problems.append(
                    IndexProblem(
                        "duplicate",
                        index.qualname,
                        entry.key,
                        f"documents {holder.key!r} and {key!r} share this value; "
                        "the entry was left pointing at the first",
                    )
                )
                continue
            op.check(entry).set(entry.key, want[entry.key])
            index_name = next(ix.qualname for ix in info.indexes if ix.key_prefix == entry.key[0])
            changes.append((index_name, "added" if entry.versionstamp is None else "corrected"))
        if not changes or op.commit().ok:
            changed.update(changes)
            return problems
    return [_busy(info.name, key)]


def _holder(kv: Kv, info: ModelInfo, entry: Entry[Any]) -> Entry[Any] | None:
    """The other document that holds a unique entry's value, if one still does."""
    if entry.versionstamp is None or entry.key[0] not in info.unique_indexes:
        return None
    other = _owner_of(info.unique_indexes[entry.key[0]], entry)
    if other is None:
        return None
    doc = kv.get(other)
    if doc.versionstamp is None:
        return None
    form = info.indexed_form(doc.value, other)
    if entry.key not in info.index_entries(form, other[1:]):
        return None
    return doc


def _settle_entry(
    kv: Kv, index: IndexBase[Any], key: Key, changed: Counter[tuple[str, str]]
) -> list[IndexProblem]:
    """Deletes one index entry unless the document it belongs to implies it."""
    info = index.info
    for _ in range(_REBUILD_ATTEMPTS):
        entry = kv.get(key)
        if entry.versionstamp is None:
            return []
        op = kv.atomic().check(entry)
        owner = _owner_of(index, entry)
        if owner is not None:
            doc = kv.get(owner)
            form = info.indexed_form(doc.value, owner) if doc.versionstamp is not None else {}
            if doc.versionstamp is not None and key in info.index_entries(form, owner[1:]):
                return []
            op.check(doc)
        if op.delete(key).commit().ok:
            changed[index.qualname, "removed"] += 1
            return []
    return [_busy(index.qualname, key)]


def _owner_of(index: IndexBase[Any], entry: Entry[Any]) -> Key | None:
    """The key of the document an entry belongs to: from the key for a non-unique
    index, from the value for a unique one (None when the value names no document)."""
    info = index.info
    if not index.unique:
        return (info.prefix, *entry.key[1 + len(index.fields) :])
    owner = pointed_key(entry.value)
    return owner if owner is not None and owner[:1] == (info.prefix,) else None


def _busy(what: str, key: Key) -> IndexProblem:
    return IndexProblem(
        "busy",
        what,
        key,
        f"kept changing through {_REBUILD_ATTEMPTS} attempts; run rebuild_indexes again",
    )


def _pointee(value: Any) -> str:
    """What an index entry's value points at, for a report: the decoded key if it is one."""
    key = pointed_key(value)
    return repr(value if key is None else key)
