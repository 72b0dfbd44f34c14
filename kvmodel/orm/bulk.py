"""Writes too large for one commit: :func:`bulk_save`, :func:`bulk_delete`, ``Index.delete_where``.

A session writes everything in ONE commit, so it can hold only as many objects
as the engine's commit limits allow (about 50 new objects with one unique
index on Deno's limits, 25 on etcd's). These functions take any number of
objects and write them in as few commits as those limits allow. Each commit
is built by a :class:`~kvmodel.orm.session.Session`, so it carries exactly the
checks, index diffs, unique checks, validation and version markers a session
would write; the whole run is NOT atomic: the commits made before a failure
stay made.

How objects are packed: each object is planned alone (``plan_commit`` of that
object) to measure what it adds to a commit: checks, mutations and their
encoded sizes, counted as ``check_commit_limits`` counts them. Objects join the
current batch while the sums stay within every limit, and the batch is then
committed through a session, which plans it again as a whole. Planning a batch
as a whole never needs more than the sum of its objects' plans (two objects
of one commit can share an index key, or one can release a unique value the
other takes, which drops a check), so a batch that fits by the sums fits.

A batch whose commit fails on a conflict (a versionstamp moved, a unique value
is taken) is retried object by object, so one conflicting object does not
fail its neighbours; each object that still fails is reported with its key
and the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs

from kvmodel._atomic import lift_hint
from kvmodel.errors import (
    ConflictError,
    DecodeError,
    EncodeError,
    KvTypeError,
    LimitExceededError,
    ReferentialIntegrityError,
    ValidationError,
)
from kvmodel.keys import encode_key
from kvmodel.limits import MAX_GET_MANY_KEYS
from kvmodel.orm._catalog import attach
from kvmodel.orm._convert import Key
from kvmodel.orm._planner import Tracked, plan_commit
from kvmodel.orm.model import Model, ModelInfo, model_info
from kvmodel.orm.session import Session

if TYPE_CHECKING:
    from kvmodel._kv import Kv
    from kvmodel.orm.index import IndexBase

__all__ = ["BulkReport", "bulk_delete", "bulk_save", "delete_where"]


# Objects read per round: their current documents are read ten keys per
# get_many, then the objects are planned and packed.
_WINDOW = 100
# Index entries (with their documents) read per page by delete_where.
_PAGE = 100
# A document that delete_where finds changed but still matching is read and
# tried again this many times before it is reported as a conflict.
_ATTEMPTS = 10


@attrs.frozen
class BulkReport:
    """What :func:`bulk_save`, :func:`bulk_delete` or ``Index.delete_where`` did.

    Attributes:
        saved: objects written (created or overwritten).
        unchanged: objects already stored exactly as given (nothing written).
        deleted: documents deleted, with their index entries.
        skipped: documents not deleted because they were already gone, or
            (``delete_where``) changed meanwhile so that they no longer match.
        commits: the commits it took.
        conflicts: ``(key, reason)`` of every object that was not written: its
            versionstamp moved, a unique value is held by another document, or
            the model refuses a value.
    """

    saved: int = 0
    unchanged: int = 0
    deleted: int = 0
    skipped: int = 0
    commits: int = 0
    conflicts: tuple[tuple[Key, str], ...] = ()

    @property
    def ok(self) -> bool:
        """True when every object was written (no conflicts)."""
        return not self.conflicts

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        parts = []
        if self.saved or self.unchanged or not self.deleted:
            parts.append(f"{self.saved} saved, {self.unchanged} unchanged")
        if self.deleted or self.skipped:
            parts.append(f"{self.deleted} deleted, {self.skipped} skipped")
        text = f"{', '.join(parts)} in {self.commits} commits; {len(self.conflicts)} not written."
        return "\n".join([text] + [f"  {key!r}: {reason}" for key, reason in self.conflicts])


class _Packer:
    """Packs planned objects into commits within the Kv's limits and commits them.

    ``retry`` decides what to do with an object whose own commit conflicted:
    it returns a fresh :class:`Tracked` to try again, or None once it has
    recorded the outcome.
    """

    def __init__(
        self,
        kv: Kv,
        progress: Callable[[BulkReport], object] | None,
        retry: Callable[[_Packer, Tracked, ConflictError], Tracked | None] | None = None,
    ) -> None:
        self.kv = kv
        self.limits = kv.limits
        self.capacity = kv.engine.limits  # to name limits="embedded" where it lifts them
        self.progress = progress
        self.retry = retry
        self.saved = self.unchanged = self.deleted = self.skipped = self.commits = 0
        self.conflicts: list[tuple[Key, str]] = []
        self.batch: list[Tracked] = []
        self.keys: set[Key] = set()
        self.checks = self.writes = self.payload = self.key_total = 0

    def report(self) -> BulkReport:
        return BulkReport(
            self.saved,
            self.unchanged,
            self.deleted,
            self.skipped,
            self.commits,
            tuple(self.conflicts),
        )

    # -- packing -----------------------------------------------------------------

    def add(self, t: Tracked) -> None:
        """Plans ``t`` alone and adds it to the batch, committing the batch first if full."""
        try:
            plan = plan_commit([t], [], self.limits, self.capacity)
            if plan.empty:
                self.unchanged += 1
                return
            payload = key_total = 0
            for c in plan.checks:
                payload += len(encode_key(c.key))
            for m in plan.mutations:
                if m.delete:
                    payload += len(encode_key(m.key))
                    continue
                # The Kv's own encoders: they refuse an oversized key or value
                # exactly as the commit would.
                size = len(self.kv.write_key(m.key))
                payload += 2 * size + len(self.kv.encode_value(m.value)[0])
                key_total += size
        except (ValidationError, EncodeError, LimitExceededError) as exc:
            self.conflicts.append((t.key, str(exc)))
            return
        checks = len(plan.checks)
        writes = len(plan.mutations)
        if not self._fits(checks, writes, payload, key_total):
            self.flush()
            if not self._fits(checks, writes, payload, key_total):
                self.conflicts.append(
                    (
                        t.key,
                        f"{t.describe()} alone needs {checks} checks, {writes} mutations "
                        f"and about {payload} bytes, more than one commit on "
                        f"{self.limits.name} allows." + self._lift(checks, writes, payload),
                    )
                )
                return
        self.batch.append(t)
        self.keys.add(t.key)
        self.checks += checks
        self.writes += writes
        self.payload += payload
        self.key_total += key_total

    def _lift(self, checks: int, writes: int, payload: int) -> str:
        """The sentence naming limits="embedded" when it would let one object fit."""
        capacity = self.capacity
        for field, actual in (
            ("max_checks", checks),
            ("max_mutations", writes),
            ("max_total_mutation_size", payload),
        ):
            if actual > getattr(self.limits, field):
                return lift_hint(field, actual, self.limits, capacity)
        return ""

    def _fits(self, checks: int, writes: int, payload: int, key_total: int) -> bool:
        limits = self.limits
        checks += self.checks
        writes += self.writes
        payload += self.payload
        return (
            checks <= limits.max_checks
            and writes <= limits.max_mutations
            and (limits.max_operations is None or checks + writes <= limits.max_operations)
            and payload <= limits.max_total_mutation_size
            and key_total + self.key_total <= limits.max_total_key_size
            and (limits.max_request_size is None or payload <= limits.max_request_size)
        )

    # -- committing --------------------------------------------------------------

    def flush(self) -> None:
        """Commits the current batch (if any) and starts an empty one."""
        batch = self.batch
        if not batch:
            return
        self.batch = []
        self.keys = set()
        self.checks = self.writes = self.payload = self.key_total = 0
        self._commit(batch)

    def _commit(self, batch: list[Tracked]) -> None:
        if len(batch) == 1:
            self._commit_one(batch[0])
            return
        try:
            _session_of(self.kv, batch).commit()
        except (ConflictError, ReferentialIntegrityError):
            # One object's conflict (or broken reference) must not fail its
            # neighbours: the failed commit wrote nothing and left every
            # Tracked as it was.
            for t in batch:
                self._commit_one(t)
            return
        except LimitExceededError:
            # Not expected (a whole plan never needs more than the sum of its
            # objects' plans); halving keeps the promise if the engine disagrees.
            half = len(batch) // 2
            self._commit(batch[:half])
            self._commit(batch[half:])
            return
        self._done(batch)

    def _commit_one(self, t: Tracked | None) -> None:
        for _ in range(_ATTEMPTS):
            if t is None:
                return
            try:
                _session_of(self.kv, [t]).commit()
            except (LimitExceededError, ReferentialIntegrityError) as exc:
                self.conflicts.append((t.key, str(exc)))
                return
            except ConflictError as exc:
                if self.retry is None:
                    self.conflicts.append((t.key, str(exc)))
                    return
                t = self.retry(self, t, exc)
                continue
            self._done([t])
            return
        if t is not None:
            self.conflicts.append(
                (t.key, f"{t.describe()} kept changing while it was deleted; run it again.")
            )

    def _done(self, batch: list[Tracked]) -> None:
        self.commits += 1
        for t in batch:
            if t.deleted:
                self.deleted += 1
            else:
                self.saved += 1
        if self.progress is not None:
            self.progress(self.report())


def _session_of(kv: Kv, tracked: list[Tracked]) -> Session:
    """A session tracking exactly ``tracked`` (their read state included)."""
    session = Session(kv)
    for t in tracked:
        # Tracked through the session's own bookkeeping, so a saved object
        # remembers what it was written as and can be merged into a session later.
        session._track(t)
    return session


def _read(kv: Kv, keys: list[Key]) -> list[tuple[Any, str | None]]:
    """``(value, versionstamp)`` of each key, ten keys per get_many."""
    out: list[tuple[Any, str | None]] = []
    for lo in range(0, len(keys), MAX_GET_MANY_KEYS):
        out += [(e.value, e.versionstamp) for e in kv.get_many(keys[lo : lo + MAX_GET_MANY_KEYS])]
    return out


def _rounds(
    kv: Kv, objs: Iterable[Model], packer: _Packer
) -> Iterable[list[tuple[Model, ModelInfo, Key]]]:
    """The objects in rounds of ``_WINDOW``, each with its model and key.

    The same key twice ends a round and commits the pending batch first, so
    the later object is read (and written) after the earlier one: objects
    given in order are written in order.
    """
    attached: set[ModelInfo] = set()
    window: list[tuple[Model, ModelInfo, Key]] = []
    seen: set[Key] = set()
    for obj in objs:
        info = model_info(type(obj))
        if info not in attached:
            attach(kv, info)
            attached.add(info)
        key: Key = (info.prefix, *info.pk_parts(obj))
        if key in seen or key in packer.keys:
            yield window
            packer.flush()
            window, seen = [], set()
        window.append((obj, info, key))
        seen.add(key)
        if len(window) >= _WINDOW:
            yield window
            window, seen = [], set()
    if window:
        yield window


def bulk_save(
    kv: Kv, objs: Iterable[Model], *, progress: Callable[[BulkReport], object] | None = None
) -> BulkReport:
    """Saves any number of objects in as few commits as the engine's limits allow.

    An upsert: an object whose key is absent is created, and one whose key
    holds a document overwrites it. The current documents are read first
    (ten keys per ``get_many``), so the index diff of each write is exact and
    stored fields the model does not declare are kept, and each write is
    checked against the versionstamp read: a document changed by someone
    else in between is not overwritten but reported in ``conflicts``.
    An object already stored exactly as given is not written.

    Each commit is atomic and carries a session's checks (unique values,
    versionstamps) and validation. The run as a whole is NOT atomic: commits
    made before a conflict or an error stay made. A commit that fails on a
    conflict is retried object by object, so only the objects at fault are
    left out, each reported with its key and the reason; run ``bulk_save``
    again on them to retry with fresh reads. An object that appears twice is
    written twice, in order.

    >>> import kvmodel as km
    >>> class Tag(km.Model, prefix="tags_bulk"):
    ...     name: str = km.field(primary_key=True)
    ...     slug: str
    ...     by_slug = km.Unique("slug")
    >>> kv = km.open_kv()
    >>> report = km.bulk_save(kv, [Tag(name=f"t{i}", slug=f"s{i}") for i in range(500)])
    >>> print(report)
    500 saved, 0 unchanged in 10 commits; 0 not written.

    Args:
        kv: the Kv to write to.
        objs: model instances, of one model or several; any iterable (read once,
            a hundred at a time).
        progress: called with the running report after each commit.

    Returns:
        A :class:`BulkReport`; truthy when every object was written.

    Raises:
        TypeError: an item is not a model instance.
        ModelDefinitionError: a model's keyspace is claimed by another model.
    """
    packer = _Packer(kv, progress)
    for window in _rounds(kv, objs, packer):
        found = _read(kv, [key for _, _, key in window])
        for (obj, info, key), (value, versionstamp) in zip(window, found, strict=True):
            pk = key[1:]
            if versionstamp is None:
                packer.add(Tracked(obj, info, pk, None, None))
                continue
            try:
                _, source, baseline = info.load(value, key)
            except DecodeError as exc:
                packer.conflicts.append(
                    (key, f"{exc} Fix or delete the stored document before saving over it.")
                )
                continue
            packer.add(Tracked(obj, info, pk, value, versionstamp, source, baseline))
    packer.flush()
    return packer.report()


def _stored(obj: Any, info: ModelInfo, key: Key, value: Any, versionstamp: str) -> Tracked:
    """A Tracked object for deleting the stored document ``value`` at ``key``.

    A document that does not load is deleted with the index entries it would
    have as stored, as ``check_indexes`` derives them.
    """
    try:
        _, source, baseline = info.load(value, key)
    except DecodeError:
        source = value if type(value) is dict else {}
        baseline = info.indexed_form(value, key)
    t = Tracked(obj, info, key[1:], value, versionstamp, source, baseline)
    t.deleted = True
    return t


def bulk_delete(
    kv: Kv, objs: Iterable[Model], *, progress: Callable[[BulkReport], object] | None = None
) -> BulkReport:
    """Deletes the documents of any number of objects, with their index entries.

    Each object names a document by its primary key; the document stored there
    is read (ten keys per ``get_many``) and deleted with the index entries it
    has, checked against the versionstamp read, in as few commits as the
    engine's limits allow. A key that holds nothing counts as ``skipped``. A
    document changed between the read and the commit is not deleted and is
    reported in ``conflicts``. As with :func:`bulk_save`, each commit is atomic
    and the run as a whole is NOT.

    Args:
        kv: the Kv to delete from.
        objs: model instances (of one model or several), any iterable.
        progress: called with the running report after each commit.

    Returns:
        A :class:`BulkReport`; truthy when every document was deleted or absent.
    """
    packer = _Packer(kv, progress)
    for window in _rounds(kv, objs, packer):
        found = _read(kv, [key for _, _, key in window])
        for (obj, info, key), (value, versionstamp) in zip(window, found, strict=True):
            if versionstamp is None:
                packer.skipped += 1
                continue
            packer.add(_stored(obj, info, key, value, versionstamp))
    packer.flush()
    return packer.report()


def delete_where(
    index: IndexBase[Any],
    kv: Kv,
    values: tuple[Any, ...],
    *,
    start: Any = None,
    end: Any = None,
    progress: Callable[[BulkReport], object] | None = None,
) -> BulkReport:
    """See :meth:`kvmodel.Index.delete_where`."""
    from kvmodel.orm import query

    source_kv, session = query.resolve_source(kv)
    if session is not None:
        raise KvTypeError(
            f"{index.qualname}.delete_where deletes in commits of its own, outside any "
            "session; pass the Kv (session.kv), not a Session."
        )
    kv = source_kv
    info = index.info
    attach(kv, info)
    matches = _matcher(index, values, start, end)

    def retry(packer: _Packer, t: Tracked, exc: ConflictError) -> Tracked | None:
        # The document changed after its page was read: delete it only if it
        # still matches the query, checked against its new versionstamp.
        entry = kv.get(t.key)
        if entry.versionstamp is None:
            packer.skipped += 1
            return None
        form = info.indexed_form(entry.value, t.key)
        found = index._entries(form, t.pk, b"")
        if not any(matches(key) for key, _ in found):
            packer.skipped += 1
            return None
        return _stored(t.obj, info, t.key, entry.value, entry.versionstamp)

    packer = _Packer(kv, progress, retry)
    # A pass reads the selection page by page behind a cursor. A document
    # changed meanwhile to a position the cursor has passed would be missed,
    # so passes repeat until one finds nothing (a few at most, against
    # writers that keep adding matching documents).
    for _ in range(_ATTEMPTS):
        found = 0
        cursor: str | None = None
        while cursor != "":
            reader = Session(kv)
            page = index.find(reader, *values, start=start, end=end, limit=_PAGE, cursor=cursor)
            cursor = page.cursor
            for obj in page:
                t = reader._by_id[id(obj)]
                t.deleted = True
                packer.add(t)
                found += 1
        packer.flush()
        if not found:
            break
    return packer.report()


def _matcher(
    index: IndexBase[Any], values: tuple[Any, ...], start: Any, end: Any
) -> Callable[[Key], bool]:
    """Whether an index entry's key lies in what a query with these arguments selects."""
    from kvmodel.orm import query

    if index.unique and len(values) == len(index.fields) and start is None and end is None:
        whole = (index.key_prefix, *index.key_parts(values))
        return lambda key: key == whole
    selector, _ = query._selector(index, values, start, end)
    prefix = selector.get("prefix")
    lo = encode_key(prefix) + b"\x00" if prefix is not None else None
    hi = encode_key(prefix) + b"\xff" if prefix is not None else None
    if selector.get("start") is not None:
        lo = encode_key(selector["start"])
    if selector.get("end") is not None:
        hi = encode_key(selector["end"])

    def matches(key: Key) -> bool:
        encoded = encode_key(key)
        return (lo is None or encoded >= lo) and (hi is None or encoded < hi)

    return matches
