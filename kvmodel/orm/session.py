"""The unit of work: :class:`Session` tracks objects and commits them atomically.

A session keeps an identity map (one object per primary key), remembers the
stored form and versionstamp of every object it read, and on :meth:`Session.commit`
asks the pure planner (``kvmodel.orm._planner``) for ONE atomic operation, which
it sends through the public Kv API. It never touches an engine, so it works the
same on every engine.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from kvmodel._accel import speedups
from kvmodel._atomic import check_commit_limits
from kvmodel._options import duration_ms
from kvmodel._values import decode_value
from kvmodel.errors import (
    ConflictError,
    EncodeError,
    InvalidArgumentError,
    KvClosedError,
    LimitExceededError,
    UniqueViolationError,
)
from kvmodel.limits import MAX_EXPIRE_IN_SECONDS, MAX_GET_MANY_KEYS
from kvmodel.orm import refs
from kvmodel.orm._catalog import attach
from kvmodel.orm._convert import Key
from kvmodel.orm._planner import (
    Plan,
    PlannedCheck,
    PlannedEnqueue,
    PlannedMutation,
    Tracked,
    plan_commit,
    session_advice,
)
from kvmodel.orm.index import pointed_key
from kvmodel.orm.model import EXPIRY_FIELD, VERSION_FIELD, Model, ModelInfo, model_info

if TYPE_CHECKING:
    from kvmodel._atomic import AtomicOperation
    from kvmodel._kv import Kv
    from kvmodel._records import CommitResult
    from kvmodel.engines.base import RawEntry
    from kvmodel.orm.index import IndexBase
    from kvmodel.orm.query import Page
    from kvmodel.orm.refs import Ref

__all__ = ["Session", "expires_at"]

M = TypeVar("M", bound=Model)


class Session:
    """A unit of work over a Kv: an identity map plus one atomic commit of the changes.

    Use it as a context manager: it commits on a clean exit and discards the
    pending changes when the block raises.

    >>> import kvmodel as km
    >>> class Pet(km.Model, prefix="pets"):
    ...     name: str = km.field(primary_key=True)
    ...     kind: str
    >>> kv = km.open_kv()
    >>> with km.Session(kv) as s:
    ...     s.add(Pet(name="rex", kind="dog"))
    >>> with km.Session(kv) as s:
    ...     rex = s.get(Pet, "rex")
    ...     rex.kind = "wolf"              # tracked: committed on exit
    >>> km.Session(kv).get(Pet, "rex").kind
    'wolf'
    """

    __slots__ = ("__weakref__", "_by_id", "_closed", "_enqueues", "_identity", "_kv", "_ref")

    def __init__(self, kv: Kv) -> None:
        self._kv = kv
        self._identity: dict[Key, Tracked] = {}
        self._by_id: dict[int, Tracked] = {}
        self._enqueues: list[PlannedEnqueue] = []
        self._closed = False
        # Tracked objects point back at their session through this one weak
        # reference, so another session can tell that an object is taken.
        self._ref = weakref.ref(self)

    @property
    def kv(self) -> Kv:
        """The Kv this session reads and commits through."""
        return self._kv

    # -- context manager ---------------------------------------------------------

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._closed:
            return
        try:
            if exc_type is None:
                self.commit()
            else:
                self.rollback()
        finally:
            self.close()

    def close(self) -> None:
        """Ends the session: its objects become detached, its pending changes are dropped.

        A detached object keeps the versionstamp it was read or written with, so
        another session can :meth:`merge` it. Every later call on this session
        raises ``KvClosedError``; closing twice is fine. Leaving a ``with`` block
        commits (or rolls back on an exception) and then closes.
        """
        if self._closed:
            return
        # The objects keep their Tracked records: a closed owner no longer
        # claims them (see _refuse_foreign), and merge() reads the stored
        # document and versionstamp from the record, so closing costs nothing
        # per object.
        self._identity.clear()
        self._by_id.clear()
        self._enqueues.clear()
        self._closed = True

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (or a ``with`` block ended)."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise KvClosedError(
                "This Session is closed (its with block ended, or close() was called); "
                "start a new km.Session(kv)."
            )

    # -- tracking ----------------------------------------------------------------

    def add(self, obj: Model, *, expire_in: object = None) -> None:
        """Tracks a new object; the next commit creates it (and fails if its key exists).

        Adding an object the session already tracks does nothing (but give it
        ``expire_in`` to set a new deadline), except that an object deleted in
        this session is un-deleted; adding a new object with the key of one
        deleted in this session replaces that one.

        ``expire_in`` (seconds or a timedelta) makes the document and all its
        index entries expire together, at one deadline; without it a new object
        takes its model's ``expire_in`` class keyword, if any. Later saves keep
        the deadline; :func:`kvmodel.expires_at` tells it.

        Raises:
            TypeError: ``obj`` is not a model instance.
            InvalidArgumentError: another object with the same key is tracked.
        """
        if self._closed:
            self._check_open()
        t = self._by_id.get(id(obj))
        if t is not None:
            t.deleted = False
            if expire_in is not None:
                t.expire_at_ms = self._deadline(expire_in)
            return
        info = model_info(type(obj))
        attach(self._kv, info)
        state = getattr(obj, "_km_state", None)
        if state is not None:
            self._refuse_known(obj, info, state)
        if expire_in is None:
            expire_in = info.expire_in
        pk = info.pk_parts(obj)
        key: Key = (info.prefix, *pk)
        current = self._identity.get(key)
        if current is not None:
            if not current.deleted:
                raise InvalidArgumentError(
                    f"The session already tracks another object with the key {key!r} "
                    f"({info.describe(pk)}); change that object instead of adding a new one."
                )
            # Replace the deleted object: the new one is written over it, with
            # the deleted object's versionstamp check and index entries.
            del self._by_id[id(current.obj)]
            _detach(current)
            current.obj = obj
            current.deleted = False
            current.expire_at_ms = None if expire_in is None else self._deadline(expire_in)
            self._track(current)
            return
        t = Tracked(obj, info, pk, None, None)
        if expire_in is not None:
            t.expire_at_ms = self._deadline(expire_in)
        self._track(t)

    def _deadline(self, expire_in: object) -> int:
        """The absolute deadline (ms) for a relative ``expire_in``, validated like Kv.set's."""
        return self._kv.now_ms() + duration_ms(
            "expire_in", expire_in, maximum_s=MAX_EXPIRE_IN_SECONDS
        )

    def _track(self, t: Tracked) -> None:
        self._identity[t.key] = t
        self._by_id[id(t.obj)] = t
        t.session = self._ref
        object.__setattr__(t.obj, "_km_state", t)

    def _refuse_foreign(self, state: Tracked, advice: str) -> None:
        """Refuses an object that another live session tracks (two sessions would
        write it against different versionstamps)."""
        owner = state.session() if state.session is not None else None
        if owner is not None and owner is not self and not owner._closed:
            raise InvalidArgumentError(
                f"{state.describe()} is tracked by another session ({owner!r}); {advice}."
            )

    def _refuse_known(self, obj: Model, info: ModelInfo, state: Any) -> None:
        """add() is for new objects: one another session tracks, or one read or written
        before, gets advice instead of a commit that fails on an existing key."""
        if isinstance(state, Tracked):
            self._refuse_foreign(state, "change it there, or close that session and merge() it")
            if state.stored is None:
                return  # added to a session that never committed it: still new
        elif state[1] is None:
            return
        raise InvalidArgumentError(
            f"{info.describe(info.pk_parts(obj))} was read from or written to the database "
            "before, so add() (which creates) would fail on its existing key; attach it with "
            "session.merge(obj), or overwrite it with session.put(obj)."
        )

    def merge(self, obj: M) -> M:
        """Attaches a detached object (from a query on a Kv, or a closed session).

        The next commit writes the object's changes, checked against the
        versionstamp it was read with: if the document changed since, the
        commit raises ``ConflictError``. Merging an object this session tracks
        returns it as it is.

        Raises:
            InvalidArgumentError: the object was never read or written (add() it),
                another session tracks it, or this session tracks another
                object with its key.
        """
        self._check_open()
        if id(obj) in self._by_id:
            return obj
        info = model_info(type(obj))
        attach(self._kv, info)
        state = getattr(obj, "_km_state", None)
        if isinstance(state, Tracked):
            self._refuse_foreign(state, "close that session first, or change the object there")
            state = (state.key, state.stored, state.versionstamp)
        if state is None or state[1] is None:
            raise InvalidArgumentError(
                f"{info.describe(info.pk_parts(obj))} was never read from or written to the "
                "database, so there is nothing to merge it with; add() it instead."
            )
        key, doc, versionstamp = state
        if self._identity.get(key) is not None:
            raise InvalidArgumentError(
                f"The session already tracks another object with the key {key!r}; change "
                "that object instead of merging this one."
            )
        _, source, baseline = info.load(doc, key)
        self._track(Tracked(obj, info, key[1:], doc, versionstamp, source, baseline))
        return obj

    def put(self, obj: Model, *, expire_in: object = None) -> None:
        """Writes ``obj`` at the next commit whether or not its document exists (an upsert).

        ``expire_in`` sets the document's deadline as for :meth:`add`; without
        it an existing document keeps its deadline and a new one takes the
        model's ``expire_in``.

        The current document is read now, so the commit replaces it with an
        exact index diff and keeps the fields the model does not declare; the
        commit is checked against what was read, so a document changed in
        between raises ``ConflictError`` (retry with :func:`kvmodel.transaction`).

        Raises:
            InvalidArgumentError: the session tracks another object with its key,
                or another session tracks this one.
        """
        self._check_open()
        t = self._by_id.get(id(obj))
        if t is not None:
            t.deleted = False
            t.force = True
            if expire_in is not None:
                t.expire_at_ms = self._deadline(expire_in)
            return
        info = model_info(type(obj))
        attach(self._kv, info)
        deadline = None if expire_in is None else self._deadline(expire_in)
        state = getattr(obj, "_km_state", None)
        if isinstance(state, Tracked):
            self._refuse_foreign(state, "put() it there, or close that session first")
        pk = info.pk_parts(obj)
        key: Key = (info.prefix, *pk)
        if self._identity.get(key) is not None:
            raise InvalidArgumentError(
                f"The session already tracks another object with the key {key!r} "
                f"({info.describe(pk)}); change that object instead of putting this one."
            )
        entry = self._kv.get(key)
        if entry.versionstamp is None:
            t = Tracked(obj, info, pk, None, None)
            if deadline is None and info.expire_in is not None:
                deadline = self._deadline(info.expire_in)
            t.expire_at_ms = deadline
            self._track(t)
            return
        _, source, baseline = info.load(entry.value, key)
        t = Tracked(obj, info, pk, entry.value, entry.versionstamp, source, baseline)
        t.force = True
        if deadline is not None:
            t.expire_at_ms = deadline
        self._track(t)

    def add_all(self, objs: Iterable[Model]) -> None:
        """Adds several objects (see :meth:`add`)."""
        for obj in objs:
            self.add(obj)

    def delete(self, obj: Model) -> None:
        """Deletes an object at the next commit (with its index entries).

        Deleting an object added in this session and never committed just
        forgets it.

        Raises:
            InvalidArgumentError: the session does not track ``obj``.
        """
        if self._closed:
            self._check_open()
        t = self._tracked(obj)
        if t.stored is None:
            self._forget(t)
        else:
            t.deleted = True

    def __contains__(self, obj: object) -> bool:
        t = self._by_id.get(id(obj))
        return t is not None and not t.deleted

    def _tracked(self, obj: Model) -> Tracked:
        t = self._by_id.get(id(obj))
        if t is None:
            raise InvalidArgumentError(
                f"The session does not track {obj!r}; get() or add() it first."
            )
        return t

    def _forget(self, t: Tracked) -> None:
        self._identity.pop(t.key, None)
        self._by_id.pop(id(t.obj), None)
        _detach(t)

    def enqueue(
        self,
        value: object,
        *,
        delay: object = 0,
        keys_if_undelivered: Iterable[Sequence[Any]] = (),
        backoff_schedule: Sequence[object] | None = None,
    ) -> None:
        """Queues ``value`` in the next commit: sent if and only if the commit succeeds.

        The options are those of ``Kv.enqueue``.
        """
        if self._closed:
            self._check_open()
        options: dict[str, Any] = {"delay": delay}
        if keys_if_undelivered:
            options["keys_if_undelivered"] = [tuple(k) for k in keys_if_undelivered]
        if backoff_schedule is not None:
            options["backoff_schedule"] = backoff_schedule
        self._enqueues.append(PlannedEnqueue(value, options))

    # -- reads -------------------------------------------------------------------

    def get(self, model: type[M], *pk: Any) -> M | None:
        """The object of ``model`` with this primary key, or None if there is none.

        The identity map answers first: the same key gives the same object for
        the life of the session (call :meth:`refresh` to re-read it).
        """
        if self._closed:
            self._check_open()
        info = model_info(model)
        key = info.key_for(pk)
        attach(self._kv, info)
        t = self._identity.get(key)
        if t is not None:
            return None if t.deleted else t.obj
        entry = self._kv.get(key)
        if entry.versionstamp is None:
            return None
        return self._load(info, key, entry.value, entry.versionstamp)  # type: ignore[no-any-return]

    def get_many(self, model: type[M], pks: Iterable[Any]) -> list[M | None]:
        """The objects for several primary keys, in order (None for missing ones).

        A pk is a value, or a tuple for a composite primary key. Keys are read in
        groups of 10 (the ``get_many`` limit); each document is as read then.
        """
        if self._closed:
            self._check_open()
        info = model_info(model)
        attach(self._kv, info)
        single = len(info.pk_fields) == 1
        keys = [info.key_for((pk,) if single else _pk_tuple(info, pk)) for pk in pks]
        out: list[M | None] = [None] * len(keys)
        todo: list[int] = []
        for i, key in enumerate(keys):
            t = self._identity.get(key)
            if t is not None:
                out[i] = None if t.deleted else t.obj
            else:
                todo.append(i)
        for start in range(0, len(todo), MAX_GET_MANY_KEYS):
            chunk = todo[start : start + MAX_GET_MANY_KEYS]
            for i, entry in zip(chunk, self._kv.get_many([keys[i] for i in chunk]), strict=True):
                if entry.versionstamp is not None:
                    out[i] = self._load(info, keys[i], entry.value, entry.versionstamp)
        return out

    def load(self, ref: Ref[M] | None) -> M | None:
        """The target of a reference, through the identity map; None for None or a
        missing target.

        >>> import kvmodel as km
        >>> class Author(km.Model, prefix="authors_load_doc"):
        ...     id: str = km.field(primary_key=True)
        >>> class Book(km.Model, prefix="books_load_doc"):
        ...     id: str = km.field(primary_key=True)
        ...     author: km.Ref[Author]
        >>> kv = km.open_kv()
        >>> with km.Session(kv) as s:
        ...     ada = Author(id="ada")
        ...     s.add_all([ada, Book(id="b1", author=km.Ref(ada))])
        >>> s = km.Session(kv)
        >>> s.load(s.get(Book, "b1").author) is s.get(Author, "ada")
        True

        Raises:
            InvalidArgumentError: ``ref`` is not a km.Ref or None.
        """
        if self._closed:
            self._check_open()
        return refs.load(self, ref)

    def load_refs(self, objs: Iterable[Model], *fields: str) -> int:
        """Loads the targets of the reference ``fields`` of many objects in batched reads.

        Eager loading: after it, :meth:`load` of those references answers from
        the identity map without a read. Targets the session holds already are
        not read again; the others are read ten keys per ``get_many`` (each
        batch at one consistent point), not one read per object.

        Returns:
            How many targets were read (missing ones included).

        Raises:
            InvalidArgumentError: an object's model has no reference field of that name.
        """
        if self._closed:
            self._check_open()
        return refs.load_refs(self, objs, fields)

    def refresh(self, obj: Model) -> None:
        """Re-reads an object from the Kv, dropping its uncommitted changes.

        Raises:
            ConflictError: the document no longer exists (the object is detached).
        """
        if self._closed:
            self._check_open()
        t = self._tracked(obj)
        entry = self._kv.get(t.key)
        if entry.versionstamp is None:
            self._forget(t)
            raise ConflictError(
                f"{t.describe()} no longer exists (key {t.key!r}); it was detached "
                "from the session.",
                keys=(t.key,),
            )
        fresh, source, baseline = t.info.load(entry.value, t.key)
        self._assign(t, fresh)
        t.stored = entry.value
        t.source = source
        t.baseline = baseline
        t.versionstamp = entry.versionstamp
        t.deleted = False
        t.force = False

    def all(
        self,
        model: type[M],
        *pk: Any,
        start: Any = None,
        end: Any = None,
        limit: int | None = None,
        reverse: bool = False,
        cursor: str | None = None,
    ) -> Page[M]:
        """The documents of ``model`` in primary key order, a page at a time.

        ``pk`` narrows the listing to the documents whose first primary key
        fields have these values; see :meth:`kvmodel.Model.all`.
        """
        if self._closed:
            self._check_open()
        from kvmodel.orm.query import list_documents

        return list_documents(
            self, model, pk, start=start, end=end, limit=limit, reverse=reverse, cursor=cursor
        )

    def find(
        self,
        index: IndexBase[M],
        *values: Any,
        start: Any = None,
        end: Any = None,
        limit: int | None = None,
        reverse: bool = False,
        cursor: str | None = None,
        **named: Any,
    ) -> Page[M]:
        """Queries an index; see :meth:`kvmodel.Index.find` (values by position or by name)."""
        if self._closed:
            self._check_open()
        return index.find(
            self,
            *values,
            start=start,
            end=end,
            limit=limit,
            reverse=reverse,
            cursor=cursor,
            **named,
        )

    def _load(self, info: ModelInfo, key: Key, value: Any, versionstamp: str | None) -> Any:
        """The object for a document read from the Kv, through the identity map.

        A tracked object wins over the fresh read (its pending changes and the
        versionstamp they were made against are kept); None if it is deleted.
        """
        t = self._identity.get(key)
        if t is not None:
            return None if t.deleted else t.obj
        obj, source, baseline = info.load(value, key)
        # _track, inlined: a listing loads every object through here.
        t = Tracked(obj, info, key[1:], value, versionstamp, source, baseline, key)
        self._identity[key] = t
        self._by_id[id(obj)] = t
        t.session = self._ref
        object.__setattr__(obj, "_km_state", t)
        return obj

    @staticmethod
    def _assign(t: Tracked, fresh: Any) -> None:
        """Overwrites the fields of a tracked object with those of a freshly loaded one."""
        for name in t.info.field_names:
            object.__setattr__(t.obj, name, getattr(fresh, name))

    # -- commit ------------------------------------------------------------------

    def plan(self) -> Plan:
        """The atomic commit the next :meth:`commit` would send (no I/O)."""
        if self._closed:
            self._check_open()
        kv = self._kv
        return plan_commit(list(self._by_id.values()), self._enqueues, kv.limits, kv.engine.limits)

    def commit(self) -> CommitResult | None:
        """Writes every change as ONE atomic commit; None when there was nothing to write.

        On failure nothing is written, and the session and its objects keep
        their state, so the caller can refresh and retry.

        Deleting an object that ``on_delete`` references point at deletes,
        refuses or updates the referring objects in the same commit (see
        :class:`kvmodel.Ref`).

        Raises:
            ConflictError: a checked versionstamp moved (``.keys`` names the keys).
            UniqueViolationError: a unique value is taken (index, value, owner key).
            ReferentialIntegrityError: an ``on_delete="restrict"`` reference points
                at a deleted object, or a saved reference names a missing target.
            LimitExceededError: the commit is too large; the message names the object.
        """
        if len(self._by_id) >= LARGE_COMMIT and gc.isenabled():
            # A commit of thousands of objects (limits="embedded") allocates
            # hundreds of thousands of records that all stay alive until it
            # returns, so each collection the allocations trigger walks them
            # again for nothing: planning 10,000 objects took 0.17 to 0.42 s
            # with it running, 0.09 s with it paused. It runs again
            # as soon as the commit returns (a concurrent pauser at worst
            # shortens another's pause; a collector the caller disabled stays so).
            gc.disable()
            try:
                return self.commit()
            finally:
                gc.enable()
        if self._closed:
            self._check_open()
        if refs.ACTIVE:
            return refs.commit(self)  # on_delete and reference checks join the commit
        return self._commit_plan(self.plan())

    def _commit_plan(self, plan: Plan) -> CommitResult | None:
        """Sends one planned commit and records its outcome (see :meth:`commit`)."""
        if plan.empty:
            return None
        op = self._kv.atomic()
        for c in plan.checks:
            op.check((c.key, c.versionstamp))
        for m in plan.mutations:
            try:
                _add_mutation(op, m)
            except (LimitExceededError, EncodeError) as exc:
                raise type(exc)(
                    f"{m.owner.describe()} cannot be stored at {m.key!r}: {exc}",
                    **_limit_facts(exc),
                ) from exc
        for e in plan.enqueues:
            op.enqueue(e.value, **e.options)
        try:
            result = op.commit()
        except LimitExceededError as exc:
            raise self._blame_size(plan, exc) from exc
        if not result.ok:
            raise self._failure(plan, result.failed_checks)
        versionstamp = result.versionstamp
        assert versionstamp is not None
        for t, doc in plan.written:
            t.written(doc, versionstamp)
        for t in plan.removed:
            self._forget(t)
        self._enqueues.clear()
        return result

    def rollback(self) -> None:
        """Discards the pending changes.

        New objects and enqueues are dropped, deletions undone, and changed
        objects get their stored values back.
        """
        if self._closed:
            self._check_open()
        for t in list(self._by_id.values()):
            if t.stored is None:
                self._forget(t)
                continue
            t.deleted = False
            t.force = False
            try:
                unchanged = t.unchanged(t.info.unstructure(t.obj))
            except Exception:
                unchanged = False  # a field holds a value of the wrong type
            if not unchanged:
                self._assign(t, t.info.load(t.stored, t.key)[0])
        self._enqueues.clear()

    def _failure(self, plan: Plan, failed_keys: Sequence[Any]) -> ConflictError:
        """The error for a commit whose checks failed: a conflict or a unique violation."""
        failed = {tuple(k) for k in failed_keys}
        if not failed:
            # The engine could not say which checks failed: find them by reading.
            failed = self._find_failed(plan.checks)
        stale = [c for c in plan.checks if c.key in failed and c.unique_index is None]
        if stale:
            parts = []
            for c in stale:
                what = (
                    "already exists"
                    if c.versionstamp is None
                    else ("was changed or deleted since it was read")
                )
                parts.append(f"{c.owner.describe()} {what}")
            return ConflictError(
                f"The commit was rejected and nothing was written: {'; '.join(parts)}. "
                "Refresh the objects (or rerun the transaction) and try again.",
                keys=[c.key for c in stale],
            )
        for c in plan.checks:
            if c.key in failed and c.unique_index is not None:
                owner = self._kv.get(c.key)
                if owner.versionstamp is None:
                    break  # released again meanwhile: a plain conflict, worth a retry
                index = c.unique_index
                owner_key: Key = pointed_key(owner.value) or ()
                owner_pk = owner_key[1:]
                value = c.value[0] if len(c.value) == 1 else c.value
                return UniqueViolationError(
                    f"{c.owner.describe()} cannot take the value {value!r} of the unique "
                    f"index {index.qualname}: {index.info.describe(owner_pk)} "
                    f"(key {owner_key!r}) holds it. Nothing was written.",
                    index=index.qualname,
                    value=value,
                    owner_key=owner_key,
                    keys=[c.key],
                )
        return ConflictError(
            "The commit was rejected because data it checked changed meanwhile; nothing "
            "was written. Try again.",
            keys=sorted(failed, key=repr),
        )

    def _find_failed(self, checks: Sequence[PlannedCheck]) -> set[Key]:
        failed: set[Key] = set()
        for start in range(0, len(checks), MAX_GET_MANY_KEYS):
            chunk = checks[start : start + MAX_GET_MANY_KEYS]
            for c, entry in zip(chunk, self._kv.get_many([c.key for c in chunk]), strict=True):
                if entry.versionstamp != c.versionstamp:
                    failed.add(c.key)
        return failed

    def _blame_size(self, plan: Plan, exc: LimitExceededError) -> LimitExceededError:
        """Names the first object whose writes push the commit past a size limit.

        The commit is built once, object by object, remembering where each
        object's records end; a binary search over those ends then finds the
        first object past a limit (the sizes only grow), so a large session's
        error costs O(n log n), not one build per object.
        """
        kv = self._kv
        op = kv.atomic()
        for e in plan.enqueues:
            op.enqueue(e.value, **e.options)
        by_owner: dict[int, tuple[list[PlannedCheck], list[Any]]] = {}
        order: list[Tracked] = []
        for c in plan.checks:
            if id(c.owner) not in by_owner:
                by_owner[id(c.owner)] = ([], [])
                order.append(c.owner)
            by_owner[id(c.owner)][0].append(c)
        for m in plan.mutations:
            by_owner.setdefault(id(m.owner), ([], []))[1].append(m)
        ends: list[tuple[int, int]] = []
        for t in order:
            checks, mutations = by_owner[id(t)]
            for c in checks:
                op.check((c.key, c.versionstamp))
            for m in mutations:
                _add_mutation(op, m)
            ends.append((len(op._checks), len(op._mutations)))

        def crossing(k: int) -> LimitExceededError | None:
            n_checks, n_mutations = ends[k]
            try:
                check_commit_limits(
                    op._checks[:n_checks],
                    op._mutations[:n_mutations],
                    op._enqueues,
                    kv.limits,  # no capacity: the advice below names limits="embedded"
                )
            except LimitExceededError as crossed:
                return crossed
            return None

        low, high = 0, len(order) - 1
        if not order or crossing(high) is None:
            return exc
        while low < high:  # the first k whose prefix crosses a limit
            mid = (low + high) // 2
            if crossing(mid) is None:
                low = mid + 1
            else:
                high = mid
        crossed = crossing(low)
        assert crossed is not None
        advice = session_advice(kv.limits, kv.engine.limits, _field_of(crossed, kv))
        return LimitExceededError(
            f"Committing {order[low].describe()} makes the commit too large: {crossed} {advice}",
            limit=crossed.limit,
            actual=crossed.actual,
        )

    def __repr__(self) -> str:
        return f"<Session tracking {len(self._by_id)} object(s) on {self._kv!r}>"


def expires_at(obj: Model) -> datetime | None:
    """When the document of ``obj`` expires, as last read or written; None if it does not.

    For an object a session tracks with a new deadline not yet committed,
    that deadline.

    >>> import kvmodel as km
    >>> class Visit(km.Model, prefix="visits"):
    ...     id: str = km.field(primary_key=True)
    >>> kv = km.open_kv()
    >>> with km.Session(kv) as s:
    ...     s.add(Visit(id="v1"), expire_in=3600)
    >>> visit = km.Session(kv).get(Visit, "v1")
    >>> 3590 < (km.expires_at(visit) - km.utcnow()).total_seconds() <= 3600
    True
    >>> kv.close()

    Raises:
        KvTypeError: ``obj`` is not a model instance.
    """
    model_info(type(obj))
    state = getattr(obj, "_km_state", None)
    if isinstance(state, Tracked):
        deadline = state.expire_at_ms
    elif state is not None and isinstance(state[1], dict):
        found = state[1].get(EXPIRY_FIELD)
        deadline = found if type(found) is int else None
    else:
        deadline = None
    if deadline is None:
        return None
    return datetime.fromtimestamp(deadline / 1000, UTC)


def _detach(t: Tracked) -> None:
    """Leaves an object with what it was last read or written as, owned by no session."""
    t.session = None
    state = (t.key, t.stored, t.versionstamp) if t.stored is not None and not t.deleted else None
    object.__setattr__(t.obj, "_km_state", state)


def _pk_tuple(info: ModelInfo, pk: Any) -> tuple[Any, ...]:
    if not isinstance(pk, tuple | list):
        raise InvalidArgumentError(
            f"{info.name} has a composite primary key {info.pk_fields!r}; give each key as a "
            f"tuple of {len(info.pk_fields)} values, not {pk!r}."
        )
    return tuple(pk)


def _add_mutation(op: AtomicOperation, m: PlannedMutation) -> None:
    """Adds one planned mutation to an atomic operation (a set keeps its deadline)."""
    if m.delete:
        op.delete(m.key)
    else:
        op._set_until(m.key, m.value, m.expire_at_ms)


LARGE_COMMIT = 1000
"""Tracked objects from which a commit pauses the cyclic garbage collector."""


def _field_of(exc: LimitExceededError, kv: Kv) -> str:
    """The commit-wide limit field an error of ``kv``'s commit reports ("" if none)."""
    for field in ("max_total_mutation_size", "max_total_key_size", "max_checks", "max_mutations"):
        if getattr(kv.limits, field) == exc.limit:
            return field
    return ""


def _limit_facts(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, LimitExceededError):
        return {"limit": exc.limit, "actual": exc.actual}
    return {}


if speedups is not None:
    speedups.install_documents(version_field=VERSION_FIELD, state_attr="_km_state", tracked=Tracked)


def load_documents(
    info: ModelInfo,
    docs: Iterable[RawEntry | None],
    out: list[Any],
    session: Session | None,
) -> None:
    """Appends the objects of documents read raw from the engine to ``out``.

    The fast path of listings and index queries: each record is decoded here,
    without building ``Entry`` objects. None (an index entry whose document is
    missing: only writes that bypass the sessions leave one) and a document of
    another model are skipped. With a session the objects go through its
    identity map (see :meth:`Session._load`); without one (a query on a Kv)
    they are detached, and cost no tracking. The compiled accelerator runs
    this loop when it is there (``load_detached``, ``load_tracked``).
    """
    if speedups is None:
        load_documents_py(info, docs, out, session)
    elif session is None:
        speedups.load_detached(info, docs, out)
    else:
        speedups.load_tracked(info, docs, out, session)


def load_documents_py(
    info: ModelInfo,
    docs: Iterable[RawEntry | None],
    out: list[Any],
    session: Session | None,
) -> None:
    """:func:`load_documents` in pure Python: the reference of the compiled loop."""
    prefix = info.prefix
    decode_doc_key = info.decode_doc_key
    for raw in docs:
        if raw is None:
            continue
        key = decode_doc_key(raw.key)
        if key[0] != prefix:
            continue
        form: Any = decode_value(raw.value, raw.encoding, raw.key)
        if session is None:
            obj = info.load(form, key)[0]
            object.__setattr__(obj, "_km_state", (key, form, raw.versionstamp.hex()))
            out.append(obj)
        else:
            obj = session._load(info, key, form, raw.versionstamp.hex())
            if obj is not None:
                out.append(obj)
