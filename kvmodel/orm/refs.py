"""References between models: the :class:`Ref` field type and what ``on_delete`` does.

A field declared ``author: km.Ref[User]`` holds a :class:`Ref`, the key of a
``User``; the document stores the target's primary key (its one value, or a
list for a compound key), so an index on the field works like any other:
its key part is the target's primary key part (the encoded key tuple, as
bytes, for a compound key, which keeps the order).

``km.field(on_delete=...)`` makes a session keep the references whole when a
target is deleted, in the same atomic commit as the delete:

* the objects referring to a deleted target are found through an index whose
  first field is the reference (declaring ``on_delete`` without one is a
  ``ModelDefinitionError``), plus the objects of the session that refer to it;
* ``"cascade"`` deletes them too (and, in turn, what refers to them; a cycle
  ends because each object is deleted once), ``"restrict"`` refuses the
  commit with :class:`~kvmodel.errors.ReferentialIntegrityError`, and
  ``"nullify"`` sets the field to None (the field must be Optional);
* the referrers read are checked at their versionstamps, as every object a
  session writes or deletes.

A concurrent writer could add a new referrer between the read of the
referrers and the delete's commit. Two checks close that race. Saving an
object whose on_delete reference is new or changed checks the target's
versionstamp (a target deleted meanwhile fails that commit, and a target that
does not exist is refused), and sets a *guard* key of the target,
``("kvmodel_refs", *target_key)``. Deleting a target reads its guard before
the referrers and checks it at commit: a referrer saved in between moved it,
so the delete conflicts and a retry (``km.transaction``) sees the new
referrer. The guard is deleted with its target.

Only the object mapper's commits do this (bulk writes commit through
sessions, so each of their commits does too); plain Kv writes, other
programs and expiring targets can still leave a reference dangling.
"""

from __future__ import annotations

import typing
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar, overload

import attrs

from kvmodel._text import brief_repr
from kvmodel.errors import (
    InvalidArgumentError,
    KvError,
    KvTypeError,
    LimitExceededError,
    ModelDefinitionError,
    ReferentialIntegrityError,
)
from kvmodel.keys import encode_key
from kvmodel.limits import MAX_GET_MANY_KEYS
from kvmodel.orm import _convert
from kvmodel.orm._convert import CONVERTER, Key, KeyPart

if TYPE_CHECKING:
    from kvmodel._records import CommitResult
    from kvmodel.orm._planner import Plan, Tracked
    from kvmodel.orm.index import IndexBase
    from kvmodel.orm.model import Model, ModelInfo
    from kvmodel.orm.session import Session

__all__ = ["ON_DELETE", "OnDelete", "Ref", "RefField"]

M = TypeVar("M", bound="Model")

OnDelete = Literal["cascade", "restrict", "nullify"]
"""What deleting a reference's target does to the objects referring to it."""

ON_DELETE: tuple[str, ...] = ("cascade", "restrict", "nullify")
ON_DELETE_METADATA = "kvmodel.on_delete"
"""The attrs metadata entry :func:`kvmodel.field` sets for ``on_delete=``."""

GUARD_PREFIX = "kvmodel_refs"
"""The first part of the guard keys: ``(GUARD_PREFIX, *target_key)``."""

# Referrers read per index page while looking for the objects referring to a
# deleted target (each page one snapshot of index entries and documents).
_REFERRER_PAGE = 1000


class Ref(Generic[M]):
    """A reference to one object of the model ``M``: its model and primary key.

    Build one from the target object, ``km.Ref(user)``, or from the model and
    its primary key values, ``km.Ref(User, "u1")`` (one value per key field).
    A field declared ``km.Ref[User]`` also accepts, at runtime, the ``User``
    itself or its key (the session converts them when it validates the
    object), but a type checker sees the field as ``Ref[User]``: write
    ``km.Ref(user)`` in typed code. Refs are immutable, hashable, and equal
    when they name the same document. ``session.load(ref)`` reads the target.

    >>> import kvmodel as km
    >>> class Person(km.Model, prefix="people_ref_doc"):
    ...     id: str = km.field(primary_key=True)
    >>> ada = Person(id="ada")
    >>> km.Ref(ada) == km.Ref(Person, "ada"), km.Ref(ada).key
    (True, ('people_ref_doc', 'ada'))

    Attributes:
        model: the target's model class.
        pk: the target's primary key values, in key field order.
        key: the target document's key, ``(prefix, *pk)`` as key parts.

    Raises:
        KvTypeError: not a model instance or class, or not one value per key field.
        InvalidKeyError: a None key value.
        InvalidArgumentError: a key value of the wrong kind.
    """

    __slots__ = ("key", "model", "pk")
    __km_ref__: ClassVar[bool] = True

    model: type[M]
    pk: tuple[Any, ...]
    key: Key

    @overload
    def __init__(self, target: M, /) -> None: ...
    @overload
    def __init__(self, target: type[M], /, *pk: Any) -> None: ...
    def __init__(self, target: M | type[M], /, *pk: Any) -> None:
        from kvmodel.orm.model import Model, model_info

        if isinstance(target, type) and issubclass(target, Model):
            info = model_info(target)
            values = pk
        elif isinstance(target, Model):
            if pk:
                raise KvTypeError(
                    f"km.Ref({brief_repr(target, 60)}) takes the target object alone; "
                    f"give key values with the model instead: km.Ref({type(target).__name__}, "
                    "*pk)."
                )
            info = model_info(type(target))
            values = tuple(getattr(target, n) for n in info.pk_fields)
        else:
            raise KvTypeError(
                f"km.Ref takes a model object or a model class and its key, not "
                f"{brief_repr(target, 80)}."
            )
        _init(self, info, values)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"A km.Ref is immutable; make a new one instead of setting {name}.")

    def __eq__(self, other: object) -> bool:
        if type(other) is not Ref:
            return NotImplemented
        return self.model is other.model and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Ref({self.model.__qualname__}, {', '.join(repr(p) for p in self.pk)})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Ref, (self.model, *self.pk))


def _init(ref: Ref[Any], info: ModelInfo, values: tuple[Any, ...]) -> None:
    key = info.key_for(values)
    setter = object.__setattr__
    setter(ref, "model", info.cls)
    setter(ref, "pk", _pk_values(info, values))
    setter(ref, "key", key)


def _make(info: ModelInfo, values: tuple[Any, ...]) -> Ref[Any]:
    ref: Ref[Any] = Ref.__new__(Ref)
    _init(ref, info, values)
    return ref


def _pk_values(info: ModelInfo, values: tuple[Any, ...]) -> tuple[Any, ...]:
    """The key values as the target's key fields hold them (an int for a float key
    becomes a float, so the stored reference reads back equal)."""
    from kvmodel.orm import _validate

    out = []
    for name, value in zip(info.pk_fields, values, strict=True):
        checker = _field_checker(info, name)
        try:
            out.append(checker(value, 0))
        except _validate.Mismatch:
            # key_for accepted it (an integral float for an int key): its key form.
            out.append(int(value) if isinstance(value, float) else value)
    return tuple(out)


def _field_checker(info: ModelInfo, name: str) -> Callable[[Any, int], Any]:
    for n, _, check in info._checkers:
        if n == name:
            return check
    raise AssertionError(name)  # pragma: no cover - a prepared model has every field


def is_ref_type(tp: Any) -> bool:
    """Whether a declared type is ``Ref`` or ``Ref[X]``."""
    return tp is Ref or typing.get_origin(tp) is Ref


def ref_target(tp: Any, what: str) -> type[Model]:
    """The target model of a declared ``Ref[X]`` type (``| None`` allowed).

    Raises:
        ModelDefinitionError: a bare ``Ref``, or a target that is not a model.
    """
    from kvmodel.orm.model import Model

    tp = _convert.plain_type(tp)
    args = typing.get_args(tp)
    if not args:
        raise ModelDefinitionError(f"{what} is a bare km.Ref; name the target model: km.Ref[User].")
    target = args[0]
    if not (isinstance(target, type) and issubclass(target, Model)):
        raise ModelDefinitionError(
            f"{what} is a km.Ref to {brief_repr(target, 60)}, which is not a km.Model class; "
            "a reference names a model: km.Ref[User] (or km.Ref['User'] before it is defined)."
        )
    return target


def coerce(target: type[Model], value: Any) -> Ref[Any]:
    """The Ref for a value given for a ``Ref[target]`` field or query: a Ref, a target
    object, or the target's key (a tuple of values for a compound key).

    Raises:
        InvalidArgumentError: the value is none of these (the message says why).
    """
    from kvmodel.orm.model import Model, model_info

    if type(value) is Ref:
        if value.model is not target:
            raise InvalidArgumentError(
                f"{value!r} refers to a {value.model.__qualname__}, not to a {target.__qualname__}."
            )
        return value
    if isinstance(value, Model):
        if type(value) is not target:
            raise InvalidArgumentError(
                f"{brief_repr(value, 60)} is a {type(value).__qualname__}, not a "
                f"{target.__qualname__}."
            )
        try:
            return Ref(value)
        except KvError as exc:
            raise InvalidArgumentError(f"{exc}") from None
    info = model_info(target)
    if len(info.pk_fields) > 1:
        if not isinstance(value, tuple | list):
            raise InvalidArgumentError(
                f"{brief_repr(value, 60)} is not a key of {info.name}, whose primary key has "
                f"the fields {info.pk_fields!r}; give a tuple of {len(info.pk_fields)} values."
            )
        values = tuple(value)
    else:
        values = (value,)
    try:
        return _make(info, values)
    except KvError as exc:
        raise InvalidArgumentError(
            f"{brief_repr(value, 60)} is not a key of {info.name}: {exc}"
        ) from None


def key_part(key: Key) -> KeyPart:
    """The index key part of a reference to the document at ``key``: its one primary key
    part, or the encoded tuple of a compound key (bytes, in the same order)."""
    if len(key) == 2:
        return key[1]
    return encode_key(key[1:])


# ---------------------------------------------------------------------------
# Conversions: documents, index key parts, validation.


def _pk_hooks(target: type[Model]) -> tuple[tuple[Any, Any, Any], ...]:
    """Per primary key field of ``target``: (type, structure hook, unstructure hook)."""
    from kvmodel.orm.model import model_info

    info = model_info(target)
    types = _convert.resolve_types(target)
    return tuple(
        (
            types[n],
            CONVERTER.get_structure_hook(types[n]),
            CONVERTER.get_unstructure_hook(types[n]),
        )
        for n in info.pk_fields
    )


_hook_cache: weakref.WeakKeyDictionary[type, tuple[tuple[Any, Any, Any], ...]] = (
    weakref.WeakKeyDictionary()
)


def _hooks_of(target: type[Model]) -> tuple[tuple[Any, Any, Any], ...]:
    found = _hook_cache.get(target)
    if found is None:
        found = _hook_cache[target] = _pk_hooks(target)
    return found


def _unstructure(value: Any) -> Any:
    # The form of a Ref is its target's key form. cattrs dispatches an Optional
    # field on the value's class, so the declared target is not known here: the
    # value carries its own model, and validation checks it is the right one.
    if type(value) is not Ref:
        raise TypeError(
            f"{brief_repr(value, 60)} is not a km.Ref; build one with km.Ref(target) or "
            "km.Ref(Model, *pk)"
        )
    hooks = _hooks_of(value.model)
    if len(hooks) == 1:
        return hooks[0][2](value.pk[0])
    return [h[2](v) for h, v in zip(hooks, value.pk, strict=True)]


def _structure_factory(tp: Any) -> Callable[[Any, Any], Any]:
    target = ref_target(tp, "A reference field")

    def structure(form: Any, _: Any) -> Ref[Any]:
        from kvmodel.orm.model import model_info

        info = model_info(target)
        hooks = _hooks_of(target)
        if len(hooks) == 1:
            values: tuple[Any, ...] = (hooks[0][1](form, hooks[0][0]),)
        else:
            if not isinstance(form, list | tuple) or len(form) != len(hooks):
                raise ValueError(
                    f"{brief_repr(form, 60)} is not a compound key of {info.name} "
                    f"({len(hooks)} values)"
                )
            values = tuple(h[1](v, h[0]) for h, v in zip(hooks, form, strict=True))
        return _make(info, values)

    return structure


CONVERTER.register_unstructure_hook_factory(is_ref_type, lambda tp: _unstructure)
CONVERTER.register_structure_hook_factory(is_ref_type, _structure_factory)


def form_part_converter(tp: Any, what: str) -> Callable[[Any], KeyPart]:
    """The index key part of a reference field's form value (the target's key form)."""
    target = ref_target(tp, what)
    state: list[Callable[[Any], KeyPart]] = []

    def convert(form: Any) -> KeyPart:
        # Resolved on first use: two models may refer to each other.
        if not state:
            from kvmodel.orm.model import model_info

            info = model_info(target)
            types = _convert.resolve_types(target)
            parts = [
                _convert.form_part_converter(types[n], f"{info.name}.{n}") for n in info.pk_fields
            ]
            if len(parts) == 1:
                state.append(parts[0])
            else:

                def compound(value: Any) -> KeyPart:
                    return encode_key(tuple(p(v) for p, v in zip(parts, value, strict=True)))

                state.append(compound)
        return state[0](form)

    return convert


def query_part_converter(tp: Any, what: str) -> Callable[[Any], KeyPart]:
    """The index key part of a query value for a reference field: a Ref, a target
    object or the target's key."""
    target = ref_target(tp, what)

    def convert(value: Any) -> KeyPart:
        try:
            ref = coerce(target, value)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(
                f"{what} refers to {target.__qualname__}; {exc} Give a km.Ref, a "
                f"{target.__qualname__} or its key."
            ) from None
        return key_part(ref.key)

    return convert


def checker(tp: Any, what: str) -> Callable[[Any, int], Any]:
    """The validation checker of a ``Ref[X]`` field: a Ref to X passes; an X or its key
    becomes a Ref; anything else is a mismatch."""
    from kvmodel.orm import _validate

    target = ref_target(tp, what)
    expected = f"a km.Ref to {target.__qualname__} (or a {target.__qualname__}, or its key)"

    def check(value: Any, depth: int) -> Any:
        if type(value) is Ref and value.model is target:
            return value
        try:
            return coerce(target, value)
        except InvalidArgumentError as exc:
            raise _validate.Mismatch(expected, value, reason=f"must be {expected}: {exc}") from None

    return check


# ---------------------------------------------------------------------------
# Declarations: the reference fields of each model, and who refers to whom.


@attrs.frozen
class RefField:
    """One reference field of a model, as the session enforces it.

    Attributes:
        model: the referring model.
        name: the field name.
        target: the target model.
        on_delete: ``"cascade"``, ``"restrict"``, ``"nullify"`` or None (nothing enforced).
        optional: whether the field may hold None.
        index: the index whose first field is this one (None without on_delete and index).
    """

    model: type[Model]
    name: str
    target: type[Model]
    on_delete: str | None
    optional: bool
    index: IndexBase[Any] | None

    @property
    def qualname(self) -> str:
        """``Post.author``, as messages name the field."""
        return f"{self.model.__qualname__}.{self.name}"


# Models that declare an on_delete reference, registered when they are created
# (before their types resolve): a delete asks each of them whether it refers
# to the deleted model. Weak, so models defined in a function go away; the
# fields themselves live on each model's ModelInfo.
_referrers: weakref.WeakSet[type] = weakref.WeakSet()


def declare(name: str, fields: Iterable[Any], indexes: Iterable[IndexBase[Any]]) -> bool:
    """Checks the ``on_delete`` declarations of a new model class.

    Returns:
        Whether it declares one (the metaclass then registers the finished
        class with :func:`register`).

    Raises:
        ModelDefinitionError: an unknown on_delete, or no index on the field.
    """
    indexes = tuple(indexes)
    found = False
    for a in fields:
        mode = a.metadata.get(ON_DELETE_METADATA)
        if mode is None:
            continue
        if mode not in ON_DELETE:
            raise ModelDefinitionError(
                f"The field {name}.{a.name} has on_delete={mode!r}; use one of "
                f"{', '.join(repr(m) for m in ON_DELETE)}."
            )
        if _index_on(a.name, indexes) is None:
            raise ModelDefinitionError(
                f"The field {name}.{a.name} has on_delete={mode!r}, which finds the objects "
                f"referring to a deleted target through an index on the field; declare one: "
                f"by_{a.name} = km.Index({a.name!r})."
            )
        found = True
    return found


def register(cls: type[Model]) -> None:
    """Registers a finished model class that declares on_delete references."""
    global ACTIVE
    _referrers.add(cls)
    ACTIVE = True


def _index_on(field: str, indexes: Iterable[IndexBase[Any]]) -> IndexBase[Any] | None:
    for index in indexes:
        if index.fields[0] == field and not index.each:
            return index
    return None


def prepare_model(info: ModelInfo, types: dict[str, Any]) -> None:
    """Records the reference fields of a model whose field types just resolved.

    Raises:
        ModelDefinitionError: on_delete on a field that is not a reference, or
            ``"nullify"`` on one that cannot hold None.
    """
    cls: Any = info.cls
    out = []
    for a in attrs.fields(cls):
        tp = types[a.name]
        mode = a.metadata.get(ON_DELETE_METADATA)
        what = f"The field {info.name}.{a.name}"
        if not is_ref_type(_convert.plain_type(tp)):
            if mode is not None:
                raise ModelDefinitionError(
                    f"{what} has on_delete={mode!r}, but its type "
                    f"{brief_repr(tp, 60)} is not a reference; declare it as km.Ref[Target] "
                    "(or km.Ref[Target] | None)."
                )
            continue
        optional = _convert.plain_type(tp) is not tp and type(None) in typing.get_args(tp)
        if mode == "nullify" and not optional:
            raise ModelDefinitionError(
                f"{what} has on_delete='nullify', which sets it to None when its target is "
                "deleted, so it must be Optional: declare it as km.Ref[Target] | None."
            )
        out.append(
            RefField(
                cls, a.name, ref_target(tp, what), mode, optional, _index_on(a.name, info.indexes)
            )
        )
    info.ref_fields = tuple(out)
    info.on_delete_refs = tuple(rf for rf in out if rf.on_delete is not None)


def fields_of(cls: type[Model]) -> tuple[RefField, ...]:
    """The reference fields of a model (prepared), in declaration order."""
    from kvmodel.orm.model import model_info

    fields: tuple[RefField, ...] = model_info(cls).ref_fields
    return fields


def incoming(cls: type[Model]) -> tuple[RefField, ...]:
    """The on_delete reference fields, of every model, whose target is ``cls``.

    Asked once per deleted object; the registered referrers are few (the
    models declaring on_delete), so this is a short scan, not a cache that
    would have to follow models being defined and collected.
    """
    from kvmodel.orm.model import model_info

    found: list[RefField] = []
    for referrer in list(_referrers):
        try:
            info = model_info(referrer)
        except ModelDefinitionError as exc:
            raise ModelDefinitionError(
                f"Deleting a {cls.__qualname__} needs to know which models refer to it, "
                f"and {referrer.__qualname__} (which declares on_delete) cannot be "
                f"prepared: {exc}"
            ) from exc
        found.extend(rf for rf in info.on_delete_refs if rf.target is cls)
    return tuple(found)


ACTIVE = False
"""True once a model declaring an on_delete reference exists: until then commits skip
this module (one attribute read; it stays True, which costs a commit little)."""


# ---------------------------------------------------------------------------
# Loading.


def load(session: Session, ref: Ref[M] | None) -> M | None:
    """See :meth:`kvmodel.Session.load`."""
    if ref is None:
        return None
    if type(ref) is not Ref:
        raise InvalidArgumentError(
            f"session.load takes a km.Ref (the value of a reference field) or None, not "
            f"{brief_repr(ref, 80)}; use session.get(Model, *pk) for a key."
        )
    return session.get(ref.model, *ref.pk)


def _ref_of(obj: Any, rf: RefField) -> Ref[Any] | None:
    """The reference an object's field holds now (a bare target or key converted)."""
    value = getattr(obj, rf.name)
    if value is None or type(value) is Ref:
        return value
    try:
        return coerce(rf.target, value)
    except InvalidArgumentError:
        return None  # validation at commit says what is wrong


def load_refs(session: Session, objs: Iterable[Model], fields: tuple[str, ...]) -> int:
    """See :meth:`kvmodel.Session.load_refs`."""
    from kvmodel.orm.model import model_info

    if not fields:
        raise InvalidArgumentError("load_refs needs the name of at least one reference field.")
    wanted: dict[Key, Ref[Any]] = {}
    for obj in objs:
        cls = type(obj)
        model_info(cls)
        refs = {rf.name: rf for rf in fields_of(cls)}
        for name in fields:
            rf = refs.get(name)
            if rf is None:
                raise InvalidArgumentError(
                    f"{cls.__qualname__} has no reference field {name!r}; its reference fields "
                    f"are {tuple(refs)!r}."
                )
            ref = _ref_of(obj, rf)
            if ref is not None and ref.key not in session._identity:
                wanted[ref.key] = ref
    keys = list(wanted)
    kv = session.kv
    for start in range(0, len(keys), MAX_GET_MANY_KEYS):
        chunk = keys[start : start + MAX_GET_MANY_KEYS]
        for key, entry in zip(chunk, kv.get_many(chunk), strict=True):
            if entry.versionstamp is not None:
                session._load(model_info(wanted[key].model), key, entry.value, entry.versionstamp)
    return len(keys)


# ---------------------------------------------------------------------------
# Commits: on_delete for deleted targets, target checks and guards for referrers.


def guard_key(target_key: Key) -> Key:
    """The key a referrer's save sets and a target's delete checks."""
    return (GUARD_PREFIX, *target_key)


class _Cascade:
    """One commit's reference work: what it changed in the session (to undo on failure)
    and the checks and mutations it adds to the plan."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.deleted: list[Tracked] = []  # deleted by a cascade
        self.nulled: list[tuple[Tracked, str, Any]] = []  # (tracked, field, old value)
        self.guards: list[tuple[Key, str | None, Tracked]] = []  # deleted targets' guards
        self.restricted: list[tuple[RefField, Tracked, Tracked]] = []
        self.origin: list[Tracked] = []  # the objects deleted by the caller
        self.target_checks = 0  # checks of the targets of saved references
        self._pending: dict[RefField, dict[Key, list[Tracked]]] = {}

    def run(self) -> None:
        """Applies on_delete for every target the session deletes, transitively."""
        session = self.session
        queue = [
            t
            for t in session._by_id.values()
            if t.deleted and t.stored is not None and incoming(t.info.cls)
        ]
        if not queue:
            return
        self.origin = list(queue)
        done: set[Key] = set()
        while queue:
            target = queue.pop(0)
            if target.key in done:
                continue
            done.add(target.key)
            guard = guard_key(target.key)
            # Read before the referrers: a referrer saved after this read moves it.
            self.guards.append((guard, session.kv.get(guard).versionstamp, target))
            for rf in incoming(target.info.cls):
                for r in self._referrers(rf, target):
                    if rf.on_delete == "restrict":
                        self.restricted.append((rf, r, target))
                    elif rf.on_delete == "cascade":
                        if not r.deleted:
                            r.deleted = True
                            self.deleted.append(r)
                            if r.stored is not None and incoming(r.info.cls):
                                queue.append(r)
                    elif not r.deleted:  # nullify
                        self.nulled.append((r, rf.name, getattr(r.obj, rf.name)))
                        object.__setattr__(r.obj, rf.name, None)
        # Restrict last, so that a referrer deleted by another path of the
        # cascade (or by the caller) does not block the delete.
        for rf, r, target in self.restricted:
            ref = _ref_of(r.obj, rf)
            if not r.deleted and ref is not None and ref.key == target.key:
                raise ReferentialIntegrityError(
                    f"{target.describe()} cannot be deleted: {r.describe()} refers to it "
                    f"through {rf.qualname} (on_delete='restrict'); nothing was written. "
                    "Delete the referring objects or point them elsewhere first.",
                    model=rf.model.__qualname__,
                    key=r.key,
                    field=rf.name,
                    target=target.key,
                )

    def _referrers(self, rf: RefField, target: Tracked) -> list[Tracked]:
        """The objects whose field ``rf`` refers to ``target`` now: stored ones found
        through the field's index, and the session's own (new or changed)."""
        session = self.session
        assert rf.index is not None
        pending = self._pending.get(rf)
        if pending is None:
            pending = self._pending[rf] = {}
            for t in list(session._by_id.values()):
                if t.info.cls is rf.model:
                    ref = _ref_of(t.obj, rf)
                    if ref is not None:
                        pending.setdefault(ref.key, []).append(t)
        found: dict[int, Tracked] = {id(t): t for t in pending.get(target.key, ())}
        ref = _make(target.info, tuple(getattr(target.obj, n) for n in target.info.pk_fields))
        cursor = None
        while True:
            page = rf.index.find(session, ref, limit=_REFERRER_PAGE, cursor=cursor)
            for obj in page:
                t = session._by_id[id(obj)]
                found.setdefault(id(t), t)
            if not page.has_more:
                break
            cursor = page.cursor
        out = []
        for t in found.values():
            now = _ref_of(t.obj, rf)
            if not t.deleted and now is not None and now.key == target.key:
                out.append(t)
        return out

    def undo(self) -> None:
        """Puts back what :meth:`run` changed in the session."""
        for t in self.deleted:
            t.deleted = False
        for t, name, old in reversed(self.nulled):
            object.__setattr__(t.obj, name, old)
        self.deleted.clear()
        self.nulled.clear()

    def extend(self, plan: Plan) -> Plan:
        """The plan plus the guard checks and deletes of the deleted targets, and the
        target checks and guard sets of the referrers it saves."""
        from kvmodel.orm._planner import PlannedCheck, PlannedMutation

        savers = [(t, t.info.on_delete_refs) for t, _ in plan.written if t.info.on_delete_refs]
        if not savers and not self.guards:
            return plan  # the common commit: nothing refers to anything
        session = self.session
        checks = list(plan.checks)
        mutations = list(plan.mutations)
        for key, versionstamp, owner in self.guards:
            checks.append(PlannedCheck(key, versionstamp, owner))
            if versionstamp is not None:
                mutations.append(PlannedMutation(key, None, True, owner))
        planned = {c.key for c in plan.checks}
        removed = {t.key for t in plan.removed}
        guarded: set[Key] = set()
        to_read: dict[Key, tuple[Tracked, RefField]] = {}
        for t, fields in savers:
            old = t.indexed_form() if t.stored is not None else None
            for rf in fields:
                ref = getattr(t.obj, rf.name)
                if ref is None:
                    continue
                if old is not None and old.get(rf.name) == _unstructure(ref):
                    continue  # unchanged: checked when it was saved
                target = ref.key
                if target in removed:
                    raise ReferentialIntegrityError(
                        f"{t.describe()} refers to {_describe(ref)} through {rf.qualname}, "
                        "which this commit deletes; nothing was written.",
                        model=rf.model.__qualname__,
                        key=t.key,
                        field=rf.name,
                        target=target,
                    )
                if target not in guarded:
                    guarded.add(target)
                    mutations.append(PlannedMutation(guard_key(target), True, False, t))
                if target in planned:
                    continue  # the target is written in this commit, checked already
                tracked = session._identity.get(target)
                if tracked is not None and tracked.stored is not None:
                    checks.append(PlannedCheck(target, tracked.versionstamp, t))
                    planned.add(target)
                    self.target_checks += 1
                else:
                    to_read.setdefault(target, (t, rf))
        keys = list(to_read)
        for start in range(0, len(keys), MAX_GET_MANY_KEYS):
            chunk = keys[start : start + MAX_GET_MANY_KEYS]
            for key, entry in zip(chunk, session.kv.get_many(chunk), strict=True):
                t, rf = to_read[key]
                if entry.versionstamp is None:
                    raise ReferentialIntegrityError(
                        f"{t.describe()} refers to {_describe(getattr(t.obj, rf.name))} "
                        f"through {rf.qualname}, which does not exist; nothing was written. "
                        "Save the target first (in this session or before), or refer to an "
                        "existing one.",
                        model=rf.model.__qualname__,
                        key=t.key,
                        field=rf.name,
                        target=key,
                    )
                checks.append(PlannedCheck(key, entry.versionstamp, t))
                self.target_checks += 1
        return attrs.evolve(plan, checks=tuple(checks), mutations=tuple(mutations))

    def too_large(self, exc: LimitExceededError) -> LimitExceededError:
        """A limit error that says the cascade, or the reference checks, made the commit
        too large (the same error when neither did)."""
        if not self.deleted:
            if not self.target_checks:
                return exc
            return LimitExceededError(
                f"The commit saves references checked against {self.target_checks} target(s) "
                f"(one check each, with on_delete), and does not fit in one atomic commit: "
                f"{exc} Commit the session in smaller batches, or open the Kv with "
                "limits='embedded' (SQLite and memory).",
                limit=exc.limit,
                actual=exc.actual,
            )
        counts: dict[str, int] = {}
        for t in self.deleted:
            counts[t.info.name] = counts.get(t.info.name, 0) + 1
        what = ", ".join(f"{n} {name}" for name, n in counts.items())
        first = self.origin[0].describe() if self.origin else "the deleted objects"
        return LimitExceededError(
            f"Deleting {first} cascades to {len(self.deleted)} more objects ({what}), which "
            f"do not fit in one atomic commit: {exc} Open the Kv with limits='embedded' "
            "(SQLite and memory) to commit it at once, or delete the referring objects "
            "first in smaller sessions.",
            limit=exc.limit,
            actual=exc.actual,
        )


def _describe(ref: Ref[Any]) -> str:
    return f"{ref.model.__qualname__}({', '.join(repr(p) for p in ref.pk)})"


def commit(session: Session) -> CommitResult | None:
    """:meth:`Session.commit` when some model declares an on_delete reference."""
    work = _Cascade(session)
    try:
        work.run()
        plan = work.extend(session.plan())
        result = session._commit_plan(plan)
    except LimitExceededError as exc:
        error = work.too_large(exc)
        work.undo()
        if error is exc:
            raise
        raise error from exc
    except BaseException:
        work.undo()
        raise
    for t in work.deleted:
        if t.stored is None:
            session._forget(t)  # a new object cascaded away: never written
    return result
