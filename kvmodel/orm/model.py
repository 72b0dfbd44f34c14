"""Declarative models: :class:`Model`, :func:`field`, :func:`new_id` and :func:`utcnow`.

A ``Model`` subclass becomes an attrs class (keyword-only, slotted) when it is
created; the metaclass then gathers its primary key fields and indexes into a
:class:`ModelInfo` that the session, the planner and the queries share. All
per-model work (key prefixes, index extractors, cattrs hooks) happens once, so
the hot path only calls precomputed functions.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast, dataclass_transform, overload

import attrs

from kvmodel._text import brief_repr
from kvmodel.errors import (
    DecodeError,
    InvalidKeyError,
    KvError,
    KvTypeError,
    ModelDefinitionError,
    ValidationError,
)
from kvmodel.keys import decode_key, encode_key
from kvmodel.orm import _convert, _validate, refs
from kvmodel.orm._convert import Key, KeyPart, query_part_converter
from kvmodel.orm.index import IndexBase
from kvmodel.orm.refs import ON_DELETE_METADATA, OnDelete

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from kvmodel._kv import Kv
    from kvmodel.aio._kv import AsyncKv
    from kvmodel.aio._model_watch import AsyncModelWatch, AsyncModelWatchMany
    from kvmodel.aio._query import AsyncQuery
    from kvmodel.aio._session import AsyncSession
    from kvmodel.orm.conditions import Condition
    from kvmodel.orm.queries import Query
    from kvmodel.orm.query import Page
    from kvmodel.orm.session import Session
    from kvmodel.orm.watch import ModelWatch, ModelWatchMany

__all__ = ["Model", "ModelInfo", "field", "new_id", "utcnow", "model_info"]

PRIMARY_KEY_METADATA = "kvmodel.primary_key"
"""The attrs metadata flag :func:`field` sets on primary key fields."""

VERSION_FIELD = "$v"
"""The document entry that records the model version a document was written with.

No Python identifier contains ``$``, so it never collides with a field; a
document without it was written at version 1.
"""

EXPIRY_FIELD = "$exp"
"""The document entry that records when an expiring document expires (ms since the epoch).

The document and its index entries are written with this deadline; keeping it
in the document lets a session keep the deadline when it saves the object again.
"""

UpgradeStep = Callable[[dict[str, Any]], dict[str, Any]]

M = TypeVar("M", bound="Model")


def field(
    *,
    primary_key: bool = False,
    default: Any = attrs.NOTHING,
    factory: Callable[[], Any] | None = None,
    validator: Any = None,
    converter: Any = None,
    repr: bool = True,
    eq: bool = True,
    metadata: dict[Any, Any] | None = None,
    alias: str | None = None,
    on_delete: OnDelete | None = None,
) -> Any:
    """Declares a model field: :func:`attrs.field` plus ``primary_key`` and ``on_delete``.

    Primary key fields form the document's key ``(prefix, *pk)`` in declaration
    order; a model needs at least one.

    ``on_delete`` is for a reference field (``km.Ref[Target]``): when a
    session deletes the target, the same commit deletes the referring object
    too (``"cascade"``), refuses the delete (``"restrict"``) or sets the field
    to None (``"nullify"``, for an Optional field). The model must declare an
    index whose first field is this one, through which the referrers are found.

    >>> import kvmodel as km
    >>> class Tag(km.Model):
    ...     name: str = km.field(primary_key=True)
    ...     color: str = "grey"
    >>> Tag(name="urgent")
    Tag(name='urgent', color='grey')
    """
    md = dict(metadata or {})
    if primary_key:
        md[PRIMARY_KEY_METADATA] = True
    if on_delete is not None:
        md[ON_DELETE_METADATA] = on_delete
    return attrs.field(
        default=default,
        factory=factory,
        validator=validator,
        converter=converter,
        repr=repr,
        eq=eq,
        metadata=md,
        alias=alias,
    )


# ---------------------------------------------------------------------------
# Ids and timestamps.

# Crockford's base32 alphabet is in ASCII order, so ids sort as their numbers do.
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two characters per 10 bits: 13 table lookups encode the 130-bit id.
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_PAIR_SHIFTS = tuple(range(120, -1, -10))
_RANDOM_BITS = 80
_RANDOM_LIMIT = 1 << _RANDOM_BITS
_id_lock = threading.Lock()
_id_last_ms = 0
_id_last_random = 0


def _reset_id_state() -> None:
    # A forked child must not continue the parent's sequence within the same
    # millisecond, or both would hand out the same ids.
    global _id_last_ms, _id_last_random
    _id_last_ms = 0
    _id_last_random = 0


os.register_at_fork(after_in_child=_reset_id_state)


def new_id() -> str:
    """A new unique, time-ordered, URL-safe id: 26 characters, ULID layout.

    48 bits of milliseconds since the epoch, then 80 random bits, in Crockford's
    base32. Within one process ids are strictly increasing: in the same
    millisecond (or if the clock steps back) the random part is incremented.

    >>> a, b = new_id(), new_id()
    >>> len(a), a < b
    (26, True)
    """
    global _id_last_ms, _id_last_random
    now_ms = time.time_ns() // 1_000_000
    with _id_lock:
        if now_ms <= _id_last_ms:
            now_ms = _id_last_ms
            rand = _id_last_random + 1
            if rand >= _RANDOM_LIMIT:
                now_ms += 1
                rand = int.from_bytes(os.urandom(10), "big") >> 1
        else:
            # One bit short of 80 leaves room to increment within a millisecond.
            rand = int.from_bytes(os.urandom(10), "big") >> 1
        _id_last_ms = now_ms
        _id_last_random = rand
    n = (now_ms << _RANDOM_BITS) | rand
    # 128 bits as 26 base32 digits (130 bits, the top 2 zero): the ULID encoding.
    pairs = _PAIRS
    return "".join([pairs[(n >> shift) & 1023] for shift in _PAIR_SHIFTS])


def utcnow() -> datetime:
    """The current time as a timezone-aware UTC datetime (what indexes need)."""
    return datetime.now(UTC)


# ---------------------------------------------------------------------------
# Model classes.

_SNAKE_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_case(name: str) -> str:
    """``OrderItem`` -> ``order_item``; ``HTTPRequest`` -> ``http_request``."""
    return _SNAKE_RE.sub("_", name).lower()


def _plain_structure(
    cls: type,
    fields: tuple[tuple[str, tuple[type, ...]], ...],
    slow: Callable[[Any, Any], Any],
) -> Callable[[Any], Any]:
    """cattrs' structuring of a model of scalar fields, without a call per field.

    A document whose values all have their declared types exactly becomes
    ``cls(**fields)``, which is what cattrs builds after its ``T(value)``
    calls (each the identity then). Anything else (a value of another type,
    a missing field) takes cattrs' own path, so results and errors stay its.
    """

    def structure(form: Any) -> Any:
        kwargs = {}
        for name, allowed in fields:
            if name in form:
                value = form[name]
                if type(value) not in allowed:
                    return slow(form, cls)
                kwargs[name] = value
        try:
            return cls(**kwargs)
        except TypeError:  # a field without a default is missing: cattrs says so
            return slow(form, cls)

    return structure


class ModelInfo:
    """Everything kvmodel precomputes about one model class.

    Attributes:
        cls: the model class.
        prefix: the first part of every primary key.
        pk_fields: the primary key field names, in declaration order.
        indexes: the model's bound indexes, in declaration order.
    """

    __slots__ = (
        "_checkers",
        "_encoded_prefix",
        "_field_hooks",
        "_has_validators",
        "_pk_converters",
        "_pk_getter",
        "_pk_is_str",
        "_ready",
        "cls",
        "eager_baseline",
        "expire_in",
        "field_names",
        "field_set",
        "indexes",
        "name",
        "on_delete_refs",
        "pk_fields",
        "plain_fields",
        "prefix",
        "qualified_name",
        "ref_fields",
        "structure",
        "unique_indexes",
        "unstructure",
        "upgrades",
        "version",
    )

    def __init__(
        self,
        cls: type[Model],
        prefix: str,
        pk_fields: tuple[str, ...],
        field_names: tuple[str, ...],
        indexes: tuple[IndexBase[Any], ...],
        version: int = 1,
        expire_in: object = None,
    ) -> None:
        self.cls = cls
        self.expire_in = expire_in
        self.name = cls.__qualname__
        self.qualified_name = f"{cls.__module__}.{cls.__qualname__}"
        self.prefix = prefix
        self._encoded_prefix = encode_key((prefix,))
        self.pk_fields = pk_fields
        self.field_names = field_names
        self.field_set = frozenset(field_names)
        self.indexes = indexes
        self.version = version
        self.upgrades: dict[int, UpgradeStep] = {}
        self.unique_indexes: dict[str, IndexBase[Any]] = {}
        self._checkers: tuple[tuple[str, type | None, _validate.Checker], ...] = ()
        self._has_validators = False
        self._pk_converters: tuple[Callable[[Any], KeyPart], ...] = ()
        self._field_hooks: dict[str, Callable[[Any], Any]] = {}
        self.eager_baseline = False
        # The reference fields (kvmodel.orm.refs.RefField), and those with
        # on_delete, set when the field types resolve: a commit saving this
        # model checks the targets of the latter.
        self.ref_fields: tuple[Any, ...] = ()
        self.on_delete_refs: tuple[Any, ...] = ()
        # Set by prepare() for models of scalar fields only (see _convert.plain_fields).
        self.plain_fields: tuple[tuple[str, tuple[type, ...]], ...] | None = None
        self._pk_is_str = False
        self._ready = False
        self.unstructure: Callable[[Any], dict[str, Any]] = self._lazy_unstructure
        self.structure: Callable[[Any], Any] = self._lazy_structure
        if len(pk_fields) == 1:
            only = pk_fields[0]
            self._pk_getter: Callable[[Any], tuple[Any, ...]] = lambda obj: (getattr(obj, only),)
        else:
            names = pk_fields
            self._pk_getter = lambda obj: tuple(getattr(obj, n) for n in names)

    def prepare(self) -> None:
        """Resolves the field types and builds the cattrs hooks and index extractors.

        Runs once, on first use rather than at class creation, so string
        annotations may refer to classes defined later in the module.
        """
        if self._ready:
            return
        try:
            types = _convert.resolve_types(self.cls)
        except NameError as exc:
            raise ModelDefinitionError(
                f"The field types of {self.name} cannot be resolved ({exc}); "
                "define every annotated class at module level before using the model."
            ) from exc
        self.check_types(types)
        for index in self.indexes:
            index._prepare(types)
        self._pk_converters = tuple(
            query_part_converter(types[n], f"The primary key field {self.name}.{n}")
            for n in self.pk_fields
        )
        self._pk_is_str = (
            len(self.pk_fields) == 1 and _convert.plain_type(types[self.pk_fields[0]]) is str
        )
        self._field_hooks = {n: _roundtrip_hook(types[n]) for n in self.field_names}
        self.eager_baseline = any(_has_nested_defaults(types[n], set()) for n in self.field_names)
        # Key prefix -> unique index: the planner spots unique entries by prefix.
        self.unique_indexes = {ix.key_prefix: ix for ix in self.indexes if ix.unique}
        unstructure = _convert.unstructure_hook(self.cls)
        structure = _convert.structure_hook(self.cls)
        cls = self.cls
        self.unstructure = unstructure
        self.plain_fields = _convert.plain_fields(cls, types)
        if self.plain_fields is None:
            self.structure = lambda form: structure(form, cls)
        else:
            self.structure = _plain_structure(cls, self.plain_fields, structure)
        self._ready = True

    def check_types(self, types: dict[str, Any]) -> None:
        """Builds the field checkers, refusing field types kvmodel cannot store.

        Raises:
            ModelDefinitionError: names the model, the field and how to add support.
        """
        if self._checkers:
            return
        from cattrs.errors import StructureHandlerNotFoundError

        checkers = []
        for name in self.field_names:
            what = f"The field {self.name}.{name}"
            check = _validate.checker_for(types[name], what)
            checkers.append((name, _validate.exact_type(types[name]), check))
            try:
                _convert.CONVERTER.get_structure_hook(types[name])
            except StructureHandlerNotFoundError:
                raise ModelDefinitionError(
                    f"{what} has the type {_validate.describe_type(types[name])}, which "
                    "kvmodel cannot read back; register its conversion with "
                    "km.register_type(cls, unstructure=..., structure=...)."
                ) from None
        refs.prepare_model(self, types)  # before _checkers: a refused model stays refused
        self._checkers = tuple(checkers)
        cls: Any = self.cls
        self._has_validators = any(a.validator is not None for a in attrs.fields(cls))

    def validate(self, obj: Any, key: Key) -> bool:
        """Checks every field of ``obj`` against its declared type, then the attrs validators.

        An int in a float field becomes a float (on the object too), so the
        stored document and its index keys hold the float a query looks for.

        Returns:
            True when a value was converted (the object's form must be taken again).

        Raises:
            ValidationError: names the model, the key, the field, the type and the value.
        """
        converted = False
        for name, exact, check in self._checkers:
            value = getattr(obj, name)
            if type(value) is exact:
                continue
            try:
                checked = check(value, 0)
            except _validate.Mismatch as m:
                raise ValidationError(
                    f"{self.describe(key[1:])}.{name}{m.path} {m.describe()}; nothing was "
                    "written. Give it a value of the declared type.",
                    model=self.name,
                    key=key,
                    field=name + m.path,
                    expected=m.expected,
                    value=m.value,
                ) from None
            if checked is not value:
                object.__setattr__(obj, name, checked)
                converted = True
        if not self._has_validators:
            return converted
        try:
            attrs.validate(obj)
        except (ValueError, TypeError) as exc:
            field = _field_named_in(exc, self.field_names)
            raise ValidationError(
                f"{self.describe(key[1:])} was rejected by a validator"
                f"{f' of the field {field!r}' if field else ''}: {exc}; nothing was written.",
                model=self.name,
                key=key,
                field=field,
                expected="a value its validator accepts",
                value=getattr(obj, field, None) if field else None,
            ) from exc
        return converted

    def field_roundtrip(self, name: str, value: Any) -> Any:
        """What a stored field value becomes after loading and saving it unchanged."""
        return self._field_hooks[name](value)

    def _lazy_unstructure(self, obj: Any) -> dict[str, Any]:
        self.prepare()
        return self.unstructure(obj)

    def _lazy_structure(self, form: Any) -> Any:
        self.prepare()
        return self.structure(form)

    def pk_parts(self, obj: Any) -> tuple[KeyPart, ...]:
        """The primary key parts of an instance (its key without the prefix)."""
        parts = self._pk_getter(obj)
        if type(parts[0]) is str and len(parts) == 1:
            return parts  # the common case: one str id
        return self._pk_tuple(parts)

    def decode_doc_key(self, encoded: bytes) -> Key:
        """The key tuple of one of this model's documents, from its encoded form.

        Listings decode one key per document; a single str primary key without
        NULs (the common ``new_id`` case) is sliced out instead of parsed, and a
        single positive int one read with ``int.from_bytes``.
        """
        start = len(self._encoded_prefix)
        if encoded.startswith(self._encoded_prefix) and len(encoded) > start:
            tag = encoded[start]
            if tag == 0x02 and encoded.find(b"\x00", start) == len(encoded) - 1:
                try:
                    return (self.prefix, encoded[start + 1 : -1].decode("utf-8"))
                except UnicodeDecodeError:
                    pass  # decode_key says what is wrong
            elif (
                # One positive int part of 1..8 bytes, without a leading zero byte.
                0x15 <= tag <= 0x1C
                and len(encoded) == start + 1 + tag - 0x14
                and encoded[start + 1] != 0
            ):
                return (self.prefix, int.from_bytes(encoded[start + 1 :], "big"))
        return decode_key(encoded)

    def key_for(self, pk: tuple[Any, ...]) -> Key:
        """The primary key ``(prefix, *pk)`` for Python primary key values.

        Each value is converted to its field's declared type first (an int for a
        float key field becomes a float), so every spelling of a number finds
        the same document.

        Raises:
            KvTypeError: not one value per primary key field.
            InvalidKeyError: a None value.
            InvalidArgumentError: a value of the wrong kind for its field.
        """
        if len(pk) != len(self.pk_fields):
            raise KvTypeError(
                f"{self.name} has the primary key fields {self.pk_fields!r}; "
                f"got {len(pk)} value(s) {brief_repr(pk)}. Give one value per field."
            )
        if self._pk_is_str and type(pk[0]) is str:
            return (self.prefix, pk[0])
        return (self.prefix, *self._pk_tuple(pk))

    def pk_prefix_parts(self, values: tuple[Any, ...]) -> tuple[KeyPart, ...]:
        """Key parts for values of the first primary key fields (a listing's prefix)."""
        if not self._ready:
            self.prepare()
        return tuple(self.pk_part_at(i, v) for i, v in enumerate(values))

    def pk_part_at(self, position: int, value: Any) -> KeyPart:
        """The key part of a value for the primary key field at ``position``.

        Raises:
            InvalidKeyError: a None value.
            InvalidArgumentError: a value of the wrong kind for its field.
        """
        if not self._ready:
            self.prepare()
        if value is None:
            raise InvalidKeyError(
                f"The primary key field {self.name}.{self.pk_fields[position]} is None; "
                "give it a value."
            )
        return self._pk_converters[position](value)

    def _pk_tuple(self, values: tuple[Any, ...]) -> tuple[KeyPart, ...]:
        if not self._ready:
            self.prepare()
        parts = []
        for value, name, convert in zip(values, self.pk_fields, self._pk_converters, strict=True):
            if value is None:
                raise InvalidKeyError(
                    f"The primary key field {self.name}.{name} is None; give it a value."
                )
            parts.append(convert(value))
        return tuple(parts)

    def index_entries(self, form: dict[str, Any], pk: tuple[KeyPart, ...]) -> dict[Key, Any]:
        """Every index entry (key -> value) a document with this form and pk has."""
        entries: dict[Key, Any] = {}
        if not self.indexes:
            return entries
        target = encode_key((self.prefix, *pk))
        for index in self.indexes:
            for key, value in index._entries(form, pk, target):
                entries[key] = value
        return entries

    def current_doc(self, doc: Any, key: Key) -> dict[str, Any]:
        """A stored document as this model version reads it: older versions upgraded.

        The document itself is returned when it is current (or newer: a newer
        version's document is read as it is, its unknown fields kept aside).

        Raises:
            DecodeError: not a map, a bad version marker, or an upgrade step is
                missing or failed.
        """
        if type(doc) is not dict:
            raise DecodeError(
                f"The document at {brief_repr(key)} is a {type(doc).__name__}, not a map of "
                f"fields, so it cannot be a {self.name}."
            )
        stored_version = doc.get(VERSION_FIELD, 1)
        if stored_version == self.version or (
            type(stored_version) is int and stored_version > self.version
        ):
            return doc
        if type(stored_version) is not int or stored_version < 1:
            raise DecodeError(
                f"The document at {brief_repr(key)} has the version marker "
                f"{brief_repr(stored_version)}, which is not a model version (an int >= 1)."
            )
        upgraded = {k: v for k, v in doc.items() if k != VERSION_FIELD}
        for version in range(stored_version, self.version):
            step = self.upgrades.get(version)
            if step is None:
                raise DecodeError(
                    f"The document at {brief_repr(key)} was written by version {version} of "
                    f"{self.name}, and no upgrade step leads from it to version "
                    f"{version + 1}; declare one with @km.upgrade({self.name}, "
                    f"from_version={version})."
                )
            try:
                result = step(upgraded)
            except Exception as exc:
                raise DecodeError(
                    f"The upgrade step of {self.name} from version {version} failed on the "
                    f"document at {brief_repr(key)}: {type(exc).__name__}: {exc}"
                ) from exc
            if type(result) is not dict:
                raise DecodeError(
                    f"The upgrade step of {self.name} from version {version} returned "
                    f"{brief_repr(result, 60)} for the document at {brief_repr(key)}; "
                    "a step returns the upgraded document as a dict."
                )
            upgraded = result
        return upgraded

    def load(self, doc: Any, key: Key) -> tuple[Any, dict[str, Any], dict[str, Any] | None]:
        """The object of a stored document, the document as read, and its baseline form.

        The baseline is the object's form as loaded, which the session compares
        against to see whether the object changed. It is None when it can be
        derived later from the stored document field by field (every field is
        present and no default is involved): that keeps loading cheap.

        Raises:
            DecodeError: the document does not fit the model (names key, field, reason).
        """
        if type(doc) is dict and doc.get(VERSION_FIELD, 1) == self.version:
            source = doc  # current_doc's common case, without the call
        else:
            source = self.current_doc(doc, key)
        try:
            obj = self.structure(source)
        except Exception as exc:
            raise DecodeError(
                f"The document at {brief_repr(key)} does not fit {self.name}: "
                f"{self.misfit(source) or exc}."
            ) from exc
        if source is doc and not self.eager_baseline and self.field_set <= doc.keys():
            return obj, source, None
        return obj, source, self.unstructure(obj)

    def indexed_form(self, doc: Any, key: Key) -> dict[str, Any]:
        """The form whose values a stored document's index entries hold: the document as
        this model loads it, with older versions upgraded and defaults filled in.

        A document that does not load is indexed as it is stored (or not at all).
        """
        try:
            _, source, baseline = self.load(doc, key)
        except DecodeError:
            return doc if type(doc) is dict else {}
        return baseline if baseline is not None else source

    def misfit(self, doc: dict[str, Any]) -> str | None:
        """Why a current-version document cannot be loaded, field by field (None: it can)."""
        cls: Any = self.cls
        for a in attrs.fields(cls):
            if a.name not in doc:
                if a.default is attrs.NOTHING:
                    return f"missing required field {a.name!r}"
                continue
            try:
                self._field_hooks[a.name](doc[a.name])
            except Exception as exc:
                return (
                    f"the field {a.name!r} holds {brief_repr(doc[a.name], 60)}, which is not "
                    f"a {_validate.describe_type(a.type)} ({type(exc).__name__}: {exc})"
                )
        return None

    def describe(self, pk: tuple[Any, ...]) -> str:
        """A short name for one document in messages: ``Order('01HX...')``."""
        return f"{self.name}({', '.join(repr(p) for p in pk)})"

    def __repr__(self) -> str:
        return f"<ModelInfo {self.name} prefix={self.prefix!r} pk={self.pk_fields!r}>"


@dataclass_transform(kw_only_default=True, field_specifiers=(field, attrs.field))
class ModelMeta(type):
    """Turns every subclass of :class:`Model` into a slotted, keyword-only attrs class."""

    def __new__(
        mcls,
        name: str,
        bases: tuple[type, ...],
        namespace: dict[str, Any],
        /,
        *,
        prefix: str | None = None,
        version: int = 1,
        expire_in: object = None,
        **kwargs: Any,
    ) -> ModelMeta:
        # attrs rebuilds a slotted class by calling the metaclass again with the
        # finished namespace: that call must only create the class.
        if "__attrs_attrs__" in namespace or not any(isinstance(b, ModelMeta) for b in bases):
            return super().__new__(mcls, name, bases, namespace, **kwargs)
        if prefix is not None and (not isinstance(prefix, str) or not prefix):
            raise ModelDefinitionError(
                f"The prefix of {name} must be a non-empty str, not {prefix!r}."
            )
        if type(version) is not int or version < 1:
            raise ModelDefinitionError(
                f"The version of {name} must be an int >= 1, not {version!r}."
            )
        if expire_in is not None:
            from kvmodel._options import duration_ms
            from kvmodel.limits import MAX_EXPIRE_IN_SECONDS

            try:
                duration_ms("expire_in", expire_in, maximum_s=MAX_EXPIRE_IN_SECONDS)
            except KvError as exc:
                raise ModelDefinitionError(f"The expire_in of {name} is invalid: {exc}") from exc
        # Indexes: declared here, plus copies of the ones inherited (an index
        # is bound to exactly one model).
        declared: dict[str, IndexBase[Any]] = {}
        for base in reversed(bases):
            info = getattr(base, "__kvmodel__", None)
            if isinstance(info, ModelInfo):
                for index in info.indexes:
                    declared[index.name] = index._copy()
        for attr, value in namespace.items():
            if isinstance(value, IndexBase):
                declared[attr] = value
        for attr, index in declared.items():
            if attr not in namespace:
                namespace[attr] = index
        raw = super().__new__(mcls, name, bases, namespace, **kwargs)
        cls: Any = attrs.define(raw, kw_only=True, slots=True)
        fields = attrs.fields(cls)
        pk = tuple(f.name for f in fields if f.metadata.get(PRIMARY_KEY_METADATA))
        if not pk:
            raise ModelDefinitionError(
                f"{name} has no primary key; mark a field with km.field(primary_key=True)."
            )
        names = tuple(f.name for f in fields)
        for attr, index in declared.items():
            index.name = attr
            for f in index.fields:
                if f not in names:
                    raise ModelDefinitionError(
                        f"The index {name}.{attr} uses the field {f!r}, which {name} does "
                        f"not have; its fields are {names!r}."
                    )
            if index.model is not None and index.model is not cls:
                raise ModelDefinitionError(
                    f"The index {name}.{attr} is already bound to {index.model.__qualname__}; "
                    "declare a new Index for each model."
                )
        has_on_delete = refs.declare(name, fields, declared.values())
        model_prefix = prefix if prefix is not None else snake_case(name)
        info = ModelInfo(cls, model_prefix, pk, names, tuple(declared.values()), version, expire_in)
        for index in declared.values():
            index._bind(cls, info)
        type.__setattr__(cls, "__kvmodel__", info)
        # Check the index field types now when the annotations resolve already;
        # forward references wait for the first use.
        try:
            types = _convert.resolve_types(cls)
        except NameError:
            pass
        else:
            info.check_types(types)
            for index in declared.values():
                index._prepare(types)
        if has_on_delete:
            refs.register(cls)  # only a class that was created without error
        return cls  # type: ignore[no-any-return]


class Model(metaclass=ModelMeta):
    """Base class of stored documents.

    Subclasses are attrs classes (keyword-only arguments, slots) stored at the key
    ``(prefix, *primary_key)``. ``prefix`` is a class keyword, by default the
    class name in snake_case. Declare indexes as class attributes.

    >>> import kvmodel as km
    >>> class Customer(km.Model, prefix="customers"):
    ...     id: str = km.field(primary_key=True)
    ...     email: str
    ...     by_email = km.Unique("email")
    >>> Customer.__kvmodel__.prefix, Customer.by_email.key_prefix
    ('customers', 'customers_by_email')
    """

    # What kvmodel remembers of an instance: the Tracked record of the session
    # that tracks it, or (key, document, versionstamp) as it was last read or
    # written, so that a detached object can be merged into a session later.
    __slots__ = ("_km_state",)
    __kvmodel__: ClassVar[ModelInfo]

    def __init_subclass__(
        cls,
        *,
        prefix: str | None = None,
        version: int = 1,
        expire_in: object = None,
        **kwargs: Any,
    ) -> None:
        # The metaclass consumes ``prefix``, ``version`` and ``expire_in``; this
        # signature lets type checkers accept the class keywords.
        super().__init_subclass__(**kwargs)

    @overload
    @classmethod
    def all(
        cls: type[M],
        source: Session | Kv,
        *pk: Any,
        start: Any = None,
        end: Any = None,
        limit: int | None = None,
        reverse: bool = False,
        cursor: str | None = None,
    ) -> Page[M]: ...
    @overload
    @classmethod
    def all(
        cls: type[M],
        source: AsyncSession | AsyncKv,
        *pk: Any,
        start: Any = None,
        end: Any = None,
        limit: int | None = None,
        reverse: bool = False,
        cursor: str | None = None,
    ) -> Awaitable[Page[M]]: ...
    @classmethod
    def all(
        cls: type[M],
        source: Session | Kv | AsyncSession | AsyncKv,
        *pk: Any,
        start: Any = None,
        end: Any = None,
        limit: int | None = None,
        reverse: bool = False,
        cursor: str | None = None,
    ) -> Page[M] | Awaitable[Page[M]]:
        """This model's documents in primary key order, a page at a time.

        ``pk`` gives values of the first primary key fields: for a key
        ``(post_id, comment_id)``, ``Comment.all(kv, "p1")`` lists the comments
        of post ``"p1"``. ``start``/``end`` bound the next key field to
        ``[start, end)``. From a Session the objects join its identity map; from
        a Kv they are detached; from an AsyncKv or AsyncSession, await the call.

        >>> import kvmodel as km
        >>> class Comment(km.Model, prefix="comments"):
        ...     post_id: str = km.field(primary_key=True)
        ...     n: int = km.field(primary_key=True)
        ...     text: str = ""
        >>> kv = km.open_kv()
        >>> with km.Session(kv) as s:
        ...     s.add_all([Comment(post_id=p, n=n) for p in ("p1", "p2") for n in range(3)])
        >>> [(c.post_id, c.n) for c in Comment.all(kv, "p1", start=1)]
        [('p1', 1), ('p1', 2)]
        >>> page = Comment.all(kv, "p2", limit=2)
        >>> len(page), page.has_more, len(Comment.all(kv, "p2", cursor=page.cursor))
        (2, True, 1)

        Raises:
            InvalidArgumentError: as many values as key fields (use Session.get),
                or a value of the wrong kind.
        """
        from kvmodel.orm.query import list_documents

        return list_documents(
            source, cls, pk, start=start, end=end, limit=limit, reverse=reverse, cursor=cursor
        )

    @overload
    @classmethod
    def query(
        cls: type[M],
        source: Session | Kv,
        *conditions: Condition,
        allow_scan: bool = False,
        max_scan: int | None = None,
        **equalities: Any,
    ) -> Query[M]: ...
    @overload
    @classmethod
    def query(
        cls: type[M],
        source: AsyncSession | AsyncKv,
        *conditions: Condition,
        allow_scan: bool = False,
        max_scan: int | None = None,
        **equalities: Any,
    ) -> AsyncQuery[M]: ...
    @classmethod
    def query(
        cls: type[M],
        source: Session | Kv | AsyncSession | AsyncKv,
        *conditions: Condition,
        allow_scan: bool = False,
        max_scan: int | None = None,
        **equalities: Any,
    ) -> Query[M] | AsyncQuery[M]:
        """A query of this model's documents: conditions on fields, read through its indexes.

        ``conditions`` are built with :class:`kvmodel.F` (``km.F("total") > 10``,
        combined with ``&`` and ``|``); keywords are equalities
        (``status="paid"``). The planner reads the ready index with the longest
        equality prefix and a range or the order on its next field, merges two
        indexes on the primary key for an AND, and checks what no index serves
        in Python. See docs/how-to/query-your-models.md.

        Args:
            source: a Session (results join its identity map), a Kv (detached
                objects), or their ``kvmodel.aio`` twins (then the query's
                reading methods are awaited).
            conditions: field conditions, AND-ed.
            allow_scan: when no index serves the query, read every document
                of the model (and sort in memory for an order no index
                serves) instead of raising IndexRequiredError.
            max_scan: at most this many entries read per call (a page,
                ``first``, ``count``...); past it the call raises
                :class:`kvmodel.ScanLimitError`.
            equalities: ``field=value`` conditions.

        Raises:
            InvalidArgumentError: an unknown field, or a value that does not fit
                its field (checked here, before anything is read).
        """
        from kvmodel.orm.queries import make_query
        from kvmodel.orm.query import _sync_source

        if _sync_source(source) is None:
            from kvmodel.aio._query import make_async_query

            return make_async_query(
                cls, source, conditions, equalities, allow_scan=allow_scan, max_scan=max_scan
            )
        sync = cast("Session | Kv", source)
        return make_query(
            cls, sync, conditions, equalities, allow_scan=allow_scan, max_scan=max_scan
        )

    @overload
    @classmethod
    def watch(cls: type[M], kv: Kv, *pk: Any) -> ModelWatch[M]: ...
    @overload
    @classmethod
    def watch(cls: type[M], kv: AsyncKv, *pk: Any) -> AsyncModelWatch[M]: ...
    @classmethod
    def watch(cls: type[M], kv: Kv | AsyncKv, *pk: Any) -> ModelWatch[M] | AsyncModelWatch[M]:
        """Streams this model's object with primary key ``pk``: now, then after every change.

        Each item is a fresh detached object, or None while there is no such
        document (not yet written, deleted or expired). With a sync Kv the
        result is an iterator; with a ``kvmodel.aio.AsyncKv`` iterate it with
        ``async for``. Close it (or leave its ``with`` block) to end it; it
        also ends when the Kv closes.

        Raises:
            KvTypeError: ``kv`` is not a Kv or an AsyncKv, or ``pk`` has the
                wrong number of values.
            DecodeError: (while iterating) the document does not fit the model.
        """
        from kvmodel.orm import watch

        return watch.watch(cls, kv, pk)

    @overload
    @classmethod
    def watch_many(cls: type[M], kv: Kv, pks: Iterable[Any]) -> ModelWatchMany[M]: ...
    @overload
    @classmethod
    def watch_many(cls: type[M], kv: AsyncKv, pks: Iterable[Any]) -> AsyncModelWatchMany[M]: ...
    @classmethod
    def watch_many(
        cls: type[M], kv: Kv | AsyncKv, pks: Iterable[Any]
    ) -> ModelWatchMany[M] | AsyncModelWatchMany[M]:
        """Streams several objects of this model (up to 10): a list, one item per change.

        ``pks`` holds one primary key per object: a value, or a tuple for a
        compound key. Each item lists the objects in that order, None for a
        missing one. As :meth:`watch`, sync or async after the Kv given.

        Raises:
            LimitExceededError: more than 10 keys.
        """
        from kvmodel.orm import watch

        return watch.watch_many(cls, kv, pks)


def model_info(cls: type[Model]) -> ModelInfo:
    """The prepared :class:`ModelInfo` of a model class.

    Raises:
        KvTypeError: ``cls`` is not a Model subclass.
    """
    info = getattr(cls, "__kvmodel__", None)
    if not isinstance(info, ModelInfo):
        raise KvTypeError(
            f"{brief_repr(cls, 80)} is not a km.Model subclass or instance; sessions and "
            "queries work on classes declared as `class X(km.Model, prefix=...)`."
        )
    if not info._ready:
        info.prepare()
    return info


def upgrade(model: type[Model], *, from_version: int) -> Callable[[UpgradeStep], UpgradeStep]:
    """Declares the step that upgrades a stored document from one model version to the next.

    The step takes the document as a dict of stored fields (without the version
    marker) written at ``from_version`` and returns it as version
    ``from_version + 1`` stores it. Documents are upgraded in memory when they
    are loaded, step by step; they are written back only when the object is
    saved for another reason, or by :func:`kvmodel.migrate`.

    >>> import kvmodel as km
    >>> class Article(km.Model, prefix="articles_doc", version=2):
    ...     id: str = km.field(primary_key=True)
    ...     title: str
    >>> @km.upgrade(Article, from_version=1)
    ... def rename_headline(doc):
    ...     doc["title"] = doc.pop("headline")
    ...     return doc
    >>> kv = km.open_kv()
    >>> kv.set(("articles_doc", "a1"), {"id": "a1", "headline": "Hello"}).ok
    True
    >>> km.Session(kv).get(Article, "a1").title
    'Hello'

    Raises:
        ModelDefinitionError: not a model, or ``from_version`` is not below the
            model's version.
    """
    info = getattr(model, "__kvmodel__", None)
    if not isinstance(info, ModelInfo):
        raise ModelDefinitionError(f"km.upgrade needs a km.Model class, not {model!r}.")
    if type(from_version) is not int or not 1 <= from_version < info.version:
        raise ModelDefinitionError(
            f"{info.name} is at version {info.version}; an upgrade step's from_version must "
            f"be an int from 1 to {info.version - 1}, not {from_version!r}."
        )

    def register(step: UpgradeStep) -> UpgradeStep:
        if not callable(step):
            raise ModelDefinitionError(f"An upgrade step must be callable, not {step!r}.")
        info.upgrades[from_version] = step
        return step

    return register


def _roundtrip_hook(tp: Any) -> Callable[[Any], Any]:
    """stored field value -> the value saving it unchanged would store."""
    structure = _convert.CONVERTER.get_structure_hook(tp)
    unstructure = _convert.CONVERTER.get_unstructure_hook(tp)
    return lambda value: unstructure(structure(value, tp))


def _has_nested_defaults(tp: Any, seen: set[Any]) -> bool:
    """Whether loading a field of this type may fill in defaults of nested attrs classes.

    A default made by a factory differs each time, so such fields cannot be
    compared against a re-conversion of the stored document later.
    """
    if tp in seen or refs.is_ref_type(tp):
        return False  # a reference holds a key, not the target's fields
    seen.add(tp)
    if isinstance(tp, type) and attrs.has(tp):
        attrs.resolve_types(tp)
        return any(
            a.default is not attrs.NOTHING or _has_nested_defaults(a.type, seen)
            for a in attrs.fields(tp)
        )
    import typing

    return any(_has_nested_defaults(a, seen) for a in typing.get_args(tp))


def _field_named_in(exc: BaseException, names: tuple[str, ...]) -> str:
    """The field an attrs validator error is about (attrs passes the attribute)."""
    for arg in exc.args:
        name = getattr(arg, "name", None)
        if isinstance(name, str) and name in names:
            return name
    text = str(exc)
    return next((n for n in names if f"'{n}'" in text), "")
