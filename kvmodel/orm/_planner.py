"""The unit-of-work planner: session state in, one atomic commit plan out, no I/O.

The sync :class:`~kvmodel.orm.session.Session` and the async one share it. For
each tracked object the plan holds (see ``docs/explanation/unit-of-work.md``):

* a check: a new object's primary key is absent; a changed or deleted object's
  primary key still has the versionstamp it was loaded with;
* its primary write (a set of its form, or a delete);
* the index diff between the stored form and the current one: entries that no
  longer exist are deleted, new ones are set, unchanged ones are left alone;
* for every unique value it newly takes, a check that the index key is absent,
  unless another object of the same commit releases that value (then that
  object's own versionstamp check guards the entry, which makes swaps work).

Unchanged objects contribute nothing. The plan names the object behind every
check and mutation so errors can say which object failed or made the commit
too large.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import attrs

from kvmodel._atomic import COMMIT_WIDE_LIMITS, EMBEDDED_LIMITS, lift_hint
from kvmodel.errors import (
    EncodeError,
    InvalidArgumentError,
    LimitExceededError,
    UniqueViolationError,
)
from kvmodel.limits import DEFAULT_LIMITS, EngineLimits
from kvmodel.orm._convert import Key, KeyPart
from kvmodel.orm.index import IndexBase
from kvmodel.orm.model import EXPIRY_FIELD, VERSION_FIELD, ModelInfo

__all__ = [
    "Plan",
    "PlannedCheck",
    "PlannedEnqueue",
    "PlannedMutation",
    "Tracked",
    "plan_commit",
    "session_advice",
]


class Tracked:
    """What a session knows about one object it tracks.

    ``stored`` is the document as last read or written (None for a new object),
    exactly as stored, and ``versionstamp`` the primary key's versionstamp at
    that moment. ``source`` is that document as this model version reads it
    (upgraded from an older version; the same dict when it is current), and
    ``baseline`` the object's form as loaded, when it cannot be derived from
    ``source`` field by field (see :meth:`ModelInfo.load`). ``force`` makes the
    next commit write the object even if it did not change (a migration).
    """

    __slots__ = (
        "baseline",
        "deleted",
        "expire_at_ms",
        "force",
        "info",
        "key",
        "obj",
        "pk",
        "session",
        "source",
        "stored",
        "versionstamp",
    )

    def __init__(
        self,
        obj: Any,
        info: ModelInfo,
        pk: tuple[KeyPart, ...],
        stored: dict[str, Any] | None,
        versionstamp: str | None,
        source: dict[str, Any] | None = None,
        baseline: dict[str, Any] | None = None,
        key: Key | None = None,
    ) -> None:
        self.obj = obj
        self.info = info
        self.pk = pk
        # ``key`` is (info.prefix, *pk), given by loaders that decoded it already.
        self.key: Key = (info.prefix, *pk) if key is None else key
        self.stored = stored
        self.source = source if source is not None else stored
        self.baseline = baseline
        self.versionstamp = versionstamp
        self.deleted = False
        self.force = False
        self.session: Any = None
        # The deadline the next write gives the document and all its index
        # entries; None: it does not expire. It starts as the stored one
        # (stored_expire_at_ms, inlined: a listing builds one Tracked per object).
        expiry = stored.get(EXPIRY_FIELD) if stored is not None else None
        self.expire_at_ms: int | None = expiry if type(expiry) is int else None

    @property
    def stored_expire_at_ms(self) -> int | None:
        """The deadline the stored document records (ms since the epoch), or None."""
        expiry = self.stored.get(EXPIRY_FIELD) if self.stored is not None else None
        return expiry if type(expiry) is int else None

    def unchanged(self, form: dict[str, Any]) -> bool:
        """Whether ``form`` (the object's form now) is what the object was when loaded.

        The stored document is not compared as it is: it may hold values a
        save would convert (5.9 in an int field), fields this model does not
        declare, an older version, or a version marker. Only what the code
        changed counts, so a session that only reads never writes.
        """
        stored = self.stored
        if stored is None or self.force or self.expire_at_ms != self.stored_expire_at_ms:
            return False
        if form == stored:
            return True
        baseline = self.baseline
        if baseline is not None:
            return form == baseline
        source = self.source
        assert source is not None
        info = self.info
        for name, value in form.items():
            old = source[name]
            if old == value:
                continue
            try:
                if info.field_roundtrip(name, old) == value:
                    continue
            except Exception:
                pass  # the stored value does not load: the object must have been changed
            return False
        return True

    def indexed_form(self) -> dict[str, Any]:
        """The form the stored document's index entries were derived from (its loaded form)."""
        if self.baseline is not None:
            return self.baseline
        assert self.source is not None
        return self.source

    def document(self, form: dict[str, Any]) -> dict[str, Any]:
        """The document to store for ``form``: the model's fields, plus the fields and
        version marker of the stored document that this model does not own."""
        info = self.info
        source = self.source
        expiry = self.expire_at_ms
        if source is None or source.keys() <= info.field_set:
            if info.version == 1 and expiry is None:
                return form  # the common case: the form is the document
            doc = dict(form)
        else:
            doc = {k: v for k, v in source.items() if k not in info.field_set}
            doc.update(form)
        stored_version = self.stored.get(VERSION_FIELD, 1) if self.stored is not None else 1
        if type(stored_version) is not int:
            stored_version = 1
        version = max(stored_version, info.version)
        if version > 1:
            doc[VERSION_FIELD] = version
        else:
            doc.pop(VERSION_FIELD, None)
        if expiry is not None:
            doc[EXPIRY_FIELD] = expiry
        else:
            doc.pop(EXPIRY_FIELD, None)
        return doc

    def written(self, doc: dict[str, Any], versionstamp: str) -> None:
        """Records a successful write of ``doc``."""
        self.stored = doc
        self.source = doc
        self.baseline = None
        self.versionstamp = versionstamp
        self.force = False

    def describe(self) -> str:
        """The object as messages name it: ``Order('01HX...')``."""
        return self.info.describe(self.pk)

    def __repr__(self) -> str:
        state = "deleted" if self.deleted else "new" if self.stored is None else "loaded"
        return f"<Tracked {self.describe()} {state} vs={self.versionstamp}>"


# The records are NamedTuples: the planner builds several per object on the hot
# path, and a tuple is the cheapest immutable record to construct.


class PlannedCheck(NamedTuple):
    """A check of the plan; ``unique_index`` and ``value`` are set for a unique-value check."""

    key: Key
    versionstamp: str | None
    owner: Tracked
    unique_index: IndexBase[Any] | None = None
    value: tuple[KeyPart, ...] = ()


class PlannedMutation(NamedTuple):
    """A set (``delete=False``) or a delete of one key, on behalf of ``owner``; a set
    with ``expire_at_ms`` expires at that deadline (milliseconds since the epoch)."""

    key: Key
    value: Any
    delete: bool
    owner: Tracked
    expire_at_ms: int | None = None


class PlannedEnqueue(NamedTuple):
    """A queue message that joins the commit (the session's outbox)."""

    value: Any
    options: dict[str, Any]


@attrs.frozen
class Plan:
    """One atomic commit: checks, mutations, enqueues, and the session updates on success.

    Attributes:
        written: ``(tracked, form)`` for every object whose primary is set.
        removed: the tracked objects whose primary is deleted.
    """

    checks: tuple[PlannedCheck, ...]
    mutations: tuple[PlannedMutation, ...]
    enqueues: tuple[PlannedEnqueue, ...]
    written: tuple[tuple[Tracked, dict[str, Any]], ...]
    removed: tuple[Tracked, ...]

    @property
    def empty(self) -> bool:
        """True when committing would change nothing."""
        return not (self.mutations or self.enqueues)


_DELETE = object()


def plan_commit(
    tracked: list[Tracked],
    enqueues: list[PlannedEnqueue],
    limits: EngineLimits = DEFAULT_LIMITS,
    capacity: EngineLimits | None = None,
) -> Plan:
    """Plans one atomic commit for the tracked objects (in the order given).

    ``limits`` are the Kv's; ``capacity``, the engine's own, lets a message
    about a commit that is too large say when ``limits="embedded"`` lifts it.

    Raises:
        InvalidArgumentError: an object's primary key was changed after loading.
        UniqueViolationError: two objects of the session claim one unique value.
        LimitExceededError: too many checks or mutations; names the object that
            crossed the limit.
    """
    written: list[tuple[Tracked, dict[str, Any]]] = []
    removed: list[Tracked] = []
    # Per object, in order: (primary check, primary mutation).
    primary: list[tuple[Tracked, PlannedCheck, PlannedMutation]] = []
    # Index keys: the final operation and the object it is done for. A set
    # always wins over a delete of the same key (a value moving between objects).
    index_ops: dict[Key, tuple[Any, Tracked]] = {}
    released: set[Key] = set()
    taken: dict[Key, tuple[Tracked, IndexBase[Any], tuple[KeyPart, ...]]] = {}
    unique_prefixes: dict[str, IndexBase[Any]] = {}

    for t in tracked:
        info = t.info
        unique_prefixes.update(info.unique_indexes)
        if t.deleted:
            if t.stored is None:
                continue
            primary.append(
                (
                    t,
                    PlannedCheck(t.key, t.versionstamp, t),
                    PlannedMutation(t.key, None, True, t),
                )
            )
            for key in info.index_entries(t.indexed_form(), t.pk):
                if key[0] in unique_prefixes:
                    released.add(key)
                if key not in index_ops:
                    index_ops[key] = (_DELETE, t)
            removed.append(t)
            continue

        stored = t.stored
        try:
            form: dict[str, Any] | None = info.unstructure(t.obj)
        except Exception:
            form = None  # a value of the wrong type: validate() says which
        if form is not None and stored is not None and t.unchanged(form):
            continue  # unchanged: no check, no write
        if info.validate(t.obj, t.key) or form is None:
            form = _unstructure(t)
        pk = info.pk_parts(t.obj)
        if pk != t.pk:
            raise InvalidArgumentError(
                f"The primary key of {t.describe()} was changed to {pk!r}; a primary key "
                "cannot change: delete the object and add a new one instead."
            )
        doc = t.document(form)
        expiry = t.expire_at_ms
        primary.append(
            (
                t,
                PlannedCheck(t.key, t.versionstamp, t),
                PlannedMutation(t.key, doc, False, t, expiry),
            )
        )
        written.append((t, doc))
        # A new deadline is given to every entry, unchanged ones included, so the
        # document and its entries always expire together.
        same_deadline = expiry == t.stored_expire_at_ms
        old = info.index_entries(t.indexed_form(), t.pk) if stored is not None else {}
        new = info.index_entries(form, t.pk)
        for key, value in old.items():
            if key not in new or new[key] != value:
                if key[0] in unique_prefixes:
                    released.add(key)
                if key not in index_ops:
                    index_ops[key] = (_DELETE, t)
        for key, value in new.items():
            if key in old and old[key] == value:
                if not same_deadline:
                    index_ops[key] = (value, t)
                continue
            index_ops[key] = (value, t)
            if key[0] in unique_prefixes:
                index = unique_prefixes[key[0]]
                parts = key[1:]
                if key in taken:
                    other = taken[key][0]
                    raise UniqueViolationError(
                        f"{t.describe()} and {other.describe()} both claim the value "
                        f"{_show(parts)} of the unique index {index.qualname}; "
                        "give one of them another value.",
                        index=index.qualname,
                        value=_value(parts),
                        owner_key=other.key,
                    )
                taken[key] = (t, index, parts)

    # Assemble the plan grouped by object, in session order, so that the
    # object crossing a limit is the first one past it.
    unique_checks: dict[int, list[PlannedCheck]] = {}
    for key, (t, index, parts) in taken.items():
        if key not in released:
            unique_checks.setdefault(id(t), []).append(PlannedCheck(key, None, t, index, parts))
    ops_by_owner: dict[int, list[PlannedMutation]] = {}
    for key, (op, t) in index_ops.items():
        mutation = (
            PlannedMutation(key, None, True, t)
            if op is _DELETE
            else (PlannedMutation(key, op, False, t, t.expire_at_ms))
        )
        ops_by_owner.setdefault(id(t), []).append(mutation)
    checks: list[PlannedCheck] = []
    mutations: list[PlannedMutation] = []
    max_writes = limits.max_mutations - len(enqueues)
    for t, check, mutation in primary:
        alone = not checks and not enqueues
        checks.append(check)
        checks.extend(unique_checks.get(id(t), ()))
        mutations.append(mutation)
        mutations.extend(ops_by_owner.get(id(t), ()))
        if len(checks) > limits.max_checks:
            _too_large(t, "checks", len(checks), "max_checks", limits, capacity, alone)
        if len(mutations) > max_writes:
            _too_large(
                t,
                "mutations and enqueues",
                len(mutations) + len(enqueues),
                "max_mutations",
                limits,
                capacity,
                alone,
            )
    if len(enqueues) > limits.max_mutations:
        raise LimitExceededError(
            f"The session has {len(enqueues)} enqueued messages; {limits.name} allows at "
            f"most {limits.max_mutations} mutations and enqueues in one commit."
            + lift_hint("max_mutations", len(enqueues), limits, capacity),
            limit=limits.max_mutations,
            actual=len(enqueues),
        )
    return Plan(tuple(checks), tuple(mutations), tuple(enqueues), tuple(written), tuple(removed))


def _unstructure(t: Tracked) -> dict[str, Any]:
    """The form of a validated object; a registered conversion that fails is an EncodeError."""
    try:
        return t.info.unstructure(t.obj)
    except Exception as exc:
        raise EncodeError(
            f"{t.describe()} cannot be converted to a document: {type(exc).__name__}: {exc}"
        ) from exc


def _too_large(
    t: Tracked,
    what: str,
    actual: int,
    field: str,
    limits: EngineLimits,
    capacity: EngineLimits | None,
    alone: bool = False,
) -> None:
    limit: int = getattr(limits, field)
    if alone:
        # No batching helps one object: its own index entries are too many.
        raise LimitExceededError(
            f"{t.describe()} alone needs {actual} {what} (its document and the index entries "
            f"that change); {limits.name} allows at most {limit} in one commit. Give it fewer "
            "elements in its each=True index fields, or change them over several commits."
            + lift_hint(field, actual, limits, capacity),
            limit=limit,
            actual=actual,
        )
    raise LimitExceededError(
        f"Committing {t.describe()} brings the commit to {actual} {what}; {limits.name} "
        f"allows at most {limit} in one commit. " + session_advice(limits, capacity, field, actual),
        limit=limit,
        actual=actual,
    )


def session_advice(
    limits: EngineLimits, capacity: EngineLimits | None, field: str = "", actual: int = 0
) -> str:
    """What to do about a session commit that is too large, on this Kv.

    When the engine can hold the embedded limits (SQLite, memory), the Kv
    enforces smaller ones, and the embedded ``field`` would hold ``actual``
    (any commit-wide field when ``field`` is empty), the advice names
    ``limits="embedded"`` first: it keeps the commit atomic, which batches
    and ``bulk_save`` do not.
    """
    advice = (
        "Commit the session in smaller batches, or save many objects with "
        "km.bulk_save(kv, objs), which packs them into as many commits as the limits need."
    )
    fields = (field,) if field else COMMIT_WIDE_LIMITS
    if any(lift_hint(f, actual, limits, capacity) for f in fields):
        allows = _ALLOWS.get(field, _ALLOWS[""])
        return (
            "To commit it atomically, open the store with limits='embedded' "
            f"(kvmodel.open_kv(path, limits='embedded')), which allows up to {allows} "
            f"in one commit. Or {advice[0].lower()}{advice[1:]}"
        )
    return advice


_EMBEDDED = EMBEDDED_LIMITS
_ALLOWS = {
    "max_checks": f"{_EMBEDDED.max_checks:,} checks",
    "max_mutations": f"{_EMBEDDED.max_mutations:,} mutations and enqueues",
    "max_total_mutation_size": (
        f"{_EMBEDDED.max_total_mutation_size >> 20} MiB of total mutation size"
    ),
    "max_total_key_size": f"{_EMBEDDED.max_total_key_size >> 20} MiB of total key size",
    "": (
        f"{_EMBEDDED.max_checks:,} checks, {_EMBEDDED.max_mutations:,} mutations and "
        f"{_EMBEDDED.max_total_mutation_size >> 20} MiB"
    ),
}


def _value(parts: tuple[KeyPart, ...]) -> Any:
    """A unique value as errors report it: the part itself, or a tuple when compound."""
    return parts[0] if len(parts) == 1 else parts


def _show(parts: tuple[KeyPart, ...]) -> str:
    return repr(_value(parts))
