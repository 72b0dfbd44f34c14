"""Models that change over time: :func:`migrate`, :func:`check_documents`, :func:`drop_index`.

A model's ``version`` class keyword and its :func:`kvmodel.upgrade` steps let
code read documents that older versions wrote: they are upgraded in memory on
load. :func:`migrate` rewrites them in the store, online, one checked commit
per batch. :func:`check_documents` finds the documents that do not fit their
model, and :func:`drop_index` removes the entries of an index a model no longer
declares. ``docs/how-to/evolve-a-model.md`` walks through the common changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from kvmodel._text import brief_repr
from kvmodel.engines.base import AtomicWrite, Consistency, Mutation, MutationKind, ReadRange
from kvmodel.errors import (
    ConflictError,
    DecodeError,
    InvalidArgumentError,
    LimitExceededError,
    ValidationError,
)
from kvmodel.keys import encode_key
from kvmodel.orm import _catalog
from kvmodel.orm._convert import Key
from kvmodel.orm.model import VERSION_FIELD, Model, ModelInfo, model_info
from kvmodel.orm.session import Session

if TYPE_CHECKING:
    from kvmodel._kv import Kv

__all__ = [
    "DocumentProblem",
    "DocumentReport",
    "MigrationReport",
    "check_documents",
    "drop_index",
    "migrate",
]

# A batch whose documents keep changing under the migration is retried this
# many times; what still conflicts then is reported as failed.
_MIGRATE_ATTEMPTS = 10


@attrs.frozen
class MigrationReport:
    """What :func:`migrate` did.

    Attributes:
        scanned: documents read.
        upgraded: documents rewritten at the model's version.
        current: documents already at the model's version, or at a newer one.
        failed: ``(key, reason)`` of every document that could not be upgraded.
    """

    scanned: int
    upgraded: int
    current: int
    failed: tuple[tuple[Key, str], ...]

    @property
    def ok(self) -> bool:
        """True when no document failed."""
        return not self.failed

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        text = (
            f"{self.scanned} documents scanned: {self.upgraded} upgraded, "
            f"{self.current} already current, {len(self.failed)} failed."
        )
        return "\n".join([text] + [f"  {k!r}: {reason}" for k, reason in self.failed])


def migrate(
    kv: Kv,
    model: type[Model],
    *,
    batch_size: int = 100,
    progress: Callable[[MigrationReport], object] | None = None,
) -> MigrationReport:
    """Rewrites every document of ``model`` stored by an older model version.

    Documents are read in key order a batch at a time, upgraded with the
    model's :func:`kvmodel.upgrade` steps and written back in one commit per
    batch, checked against each document's versionstamp with its index entries
    updated. A document changed meanwhile is read again and upgraded from its
    new state, so live sessions may keep writing. Documents already at the
    model's version (or a newer one) are left alone, which makes a second run,
    or a run after a crash, carry on where the first stopped.

    >>> import kvmodel as km
    >>> class Song(km.Model, prefix="songs", version=2):
    ...     id: str = km.field(primary_key=True)
    ...     seconds: int
    >>> @km.upgrade(Song, from_version=1)
    ... def minutes_to_seconds(doc):
    ...     doc["seconds"] = doc.pop("minutes") * 60
    ...     return doc
    >>> kv = km.open_kv()
    >>> kv.set(("songs", "s1"), {"id": "s1", "minutes": 3}).ok
    True
    >>> print(km.migrate(kv, Song))
    1 documents scanned: 1 upgraded, 0 already current, 0 failed.
    >>> kv.get(("songs", "s1")).value
    {'id': 's1', 'seconds': 180, '$v': 2}

    Args:
        kv: the Kv holding the documents.
        model: the model whose documents to upgrade.
        batch_size: documents per commit (fewer when the engine's limits need).
        progress: called with the running report after each batch.

    Raises:
        InvalidArgumentError: ``batch_size`` is not a positive int.
    """
    if type(batch_size) is not int or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive int, not {batch_size!r}.")
    info = model_info(model)
    _catalog.attach(kv, info)
    scanned = upgraded = current = 0
    failed: list[tuple[Key, str]] = []
    base = encode_key((info.prefix,))
    after = base + b"\x00"
    end = base + b"\xff"
    while True:
        batch = kv.read_range(ReadRange(after, end, batch_size), Consistency.STRONG)
        if not batch:
            break
        after = batch[-1].key + b"\x00"
        keys: list[Key] = []
        for raw in batch:
            scanned += 1
            key = info.decode_doc_key(raw.key)
            if _is_old(kv, raw, info):
                keys.append(key)
            else:
                current += 1
        done, stale, bad = _upgrade_keys(kv, info, keys)
        upgraded += done
        current += stale
        failed += bad
        if progress is not None:
            progress(MigrationReport(scanned, upgraded, current, tuple(failed)))
    return MigrationReport(scanned, upgraded, current, tuple(failed))


def _is_old(kv: Kv, raw: Any, info: ModelInfo) -> bool:
    from kvmodel._values import decode_value

    try:
        doc = decode_value(raw.value, raw.encoding)
    except DecodeError:
        return True  # reported with its reason by _upgrade_keys
    if type(doc) is not dict:
        return True
    version = doc.get(VERSION_FIELD, 1)
    return not (type(version) is int and version >= info.version)


def _upgrade_keys(
    kv: Kv, info: ModelInfo, keys: list[Key]
) -> tuple[int, int, list[tuple[Key, str]]]:
    """Upgrades the documents at ``keys``: (upgraded, found current, failed)."""
    upgraded = stale = 0
    failed: list[tuple[Key, str]] = []
    todo = keys
    for _ in range(_MIGRATE_ATTEMPTS):
        if not todo:
            break
        session = Session(kv)
        loaded: list[Key] = []
        entries = [e for lo in range(0, len(todo), 10) for e in kv.get_many(todo[lo : lo + 10])]
        for key, entry in zip(todo, entries, strict=True):
            if entry.versionstamp is None:
                continue  # deleted meanwhile
            doc = entry.value
            version = doc.get(VERSION_FIELD, 1) if type(doc) is dict else 1
            if type(version) is int and version >= info.version:
                stale += 1  # a session saved it at the current version meanwhile
                continue
            try:
                session._load(info, key, doc, entry.versionstamp)
            except DecodeError as exc:
                failed.append((key, str(exc)))
                continue
            session._identity[key].force = True
            loaded.append(key)
        try:
            _commit_in_parts(session, loaded)
        except ConflictError as exc:
            conflicted = set(exc.keys) or set(loaded)
            upgraded += len([k for k in loaded if k not in conflicted])
            todo = [k for k in loaded if k in conflicted]
            continue
        except (ValidationError, LimitExceededError) as exc:
            failed += [(k, str(exc)) for k in loaded]
            return upgraded, stale, failed
        upgraded += len(loaded)
        return upgraded, stale, failed
    failed += [(k, "kept changing while it was migrated; run migrate again") for k in todo]
    return upgraded, stale, failed


def _commit_in_parts(session: Session, keys: list[Key]) -> None:
    """Commits the session; too large a commit is split until each part fits.

    Only the objects of ``keys`` are tracked for writing, so on a conflict the
    parts already committed stay committed (each part is its own commit) and
    the ConflictError names the keys of the part that failed.
    """
    try:
        session.commit()
        return
    except LimitExceededError:
        if len(keys) <= 1:
            raise
    half = len(keys) // 2
    first, second = keys[:half], keys[half:]
    for part, rest in ((first, second), (second, [])):
        for key in rest:
            session._identity[key].force = False
        _commit_in_parts(session, part)
        for key in rest:
            session._identity[key].force = True


@attrs.frozen
class DocumentProblem:
    """A stored document that does not fit its model: its key, the model and why."""

    key: Key
    model: str
    reason: str


@attrs.frozen
class DocumentReport:
    """The result of :func:`check_documents`; truthy when documents fit and rows are reachable."""

    problems: tuple[DocumentProblem, ...]
    documents: int
    unreachable: tuple[str, ...] = ()
    """Rows of the store that no read reaches (engines with ``unreachable_rows``)."""

    @property
    def ok(self) -> bool:
        """True when every document fits its model and every stored row is reachable."""
        return not self.problems and not self.unreachable

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if not self.problems:
            lines = [f"All {self.documents} documents fit their models."]
        else:
            lines = [f"{len(self.problems)} of {self.documents} documents do not fit their models:"]
            lines += [f"  {p.model} {p.key!r}: {p.reason}" for p in self.problems]
        if self.unreachable:
            lines.append(f"{len(self.unreachable)} stored rows no read can reach:")
            lines += [f"  {row}" for row in self.unreachable]
        return "\n".join(lines)


def check_documents(kv: Kv, *models: type[Model], rows: bool = True) -> DocumentReport:
    """Reports every stored document of ``models`` that does not fit its model.

    With ``rows`` (the default) it also reports, on an engine that can find
    them (SQLite's ``unreachable_rows``), stored rows that no read reaches,
    such as a key another program stored as TEXT: no listing shows them, so
    no model check would.

    A document does not fit when it cannot be loaded (not a map, a required
    field missing, a value that does not convert, an upgrade step that fails)
    or when saving it unchanged would alter a value (5.9 in an int field would
    be stored as 5) or the value does not have the declared type. Every
    document is checked; the report names each misfit with its reason.

    >>> import kvmodel as km
    >>> class Post(km.Model, prefix="posts_chk"):
    ...     id: str = km.field(primary_key=True)
    ...     headline: str
    ...     likes: int = 0
    >>> kv = km.open_kv()
    >>> kv.set(("posts_chk", "p1"), {"id": "p1", "headline": "Hi", "likes": 2}).ok
    True
    >>> kv.set(("posts_chk", "p2"), {"id": "p2", "likes": 5.9}).ok
    True
    >>> print(km.check_documents(kv, Post))
    1 of 2 documents do not fit their models:
      Post ('posts_chk', 'p2'): missing required field 'headline'
    """
    problems: list[DocumentProblem] = []
    count = 0
    for model in models:
        info = model_info(model)
        _catalog.attach(kv, info)
        for entry in kv.list(prefix=(info.prefix,), batch_size=500):
            count += 1
            reason = _misfit(info, entry.key, entry.value)
            if reason is not None:
                problems.append(DocumentProblem(entry.key, info.name, reason))
    # An optional engine capability: the SQL that finds such rows stays in the engine.
    find = getattr(kv.engine, "unreachable_rows", None) if rows else None
    unreachable = tuple(str(row) for row in find()) if callable(find) else ()
    return DocumentReport(tuple(problems), count, unreachable)


def _misfit(info: ModelInfo, key: Key, doc: Any) -> str | None:
    try:
        source = info.current_doc(doc, key)
    except DecodeError as exc:
        return str(exc)
    reason = info.misfit(source)
    if reason is not None:
        return reason
    try:
        obj = info.structure(source)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    for name in info.field_names:
        if name not in source:
            continue
        stored = source[name]
        loaded = info.field_roundtrip(name, stored)
        if loaded != stored or _kind(loaded) != _kind(stored):
            return (
                f"the field {name!r} holds {brief_repr(stored, 60)} "
                f"({type(stored).__name__}), which the model would store as "
                f"{brief_repr(loaded, 60)}"
            )
    try:
        info.validate(obj, key)
    except ValidationError as exc:
        return str(exc).split("; nothing was written")[0]
    return None


def _kind(value: Any) -> type:
    """The type that matters for a stored value: an int in a float field is fine."""
    t = type(value)
    return float if t is int else t


def drop_index(kv: Kv, model: type[Model], name: str) -> int:
    """Deletes every entry of an index that ``model`` no longer declares, and forgets it.

    Remove the index from the class first; then this deletes its entries in
    batched commits and removes it from the model's stored description.
    ``check_indexes`` reports such entries as ``"orphan"`` until then.

    Returns:
        The number of entries deleted.

    Raises:
        InvalidArgumentError: the model still declares an index of that name, or
            the name is not a str.
    """
    info = model_info(model)
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"drop_index needs the index name as a str, not {name!r}.")
    if any(ix.name == name for ix in info.indexes):
        raise InvalidArgumentError(
            f"{info.name} still declares the index {name!r}; remove it from the class "
            "before dropping its entries."
        )
    _catalog.attach(kv, info)
    base = encode_key((f"{info.prefix}_{name}",))
    deleted = 0
    limits = kv.limits
    while True:
        batch = kv.read_range(
            ReadRange(base + b"\x00", base + b"\xff", min(1000, limits.max_mutations)),
            Consistency.STRONG,
        )
        if not batch:
            break
        mutations: list[Mutation] = []
        size = 0
        for raw in batch:
            if size + len(raw.key) > limits.max_total_key_size:
                break
            size += len(raw.key)
            mutations.append(Mutation(raw.key, MutationKind.DELETE))
        kv.commit_write(AtomicWrite((), tuple(mutations), ()), [])
        deleted += len(mutations)
    _catalog.remove_index(kv, info, name)
    return deleted
