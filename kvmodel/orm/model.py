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
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar, dataclass_transform

import attrs

from kvmodel.errors import ModelDefinitionError
from kvmodel.keys import decode_key, encode_key
from kvmodel.orm import _convert
from kvmodel.orm._convert import Key, KeyPart, to_key_part
from kvmodel.orm.index import IndexBase

__all__ = ["Model", "ModelInfo", "field", "new_id", "utcnow", "model_info"]

PRIMARY_KEY_METADATA = "kvmodel.primary_key"
"""The attrs metadata flag :func:`field` sets on primary key fields."""

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
) -> Any:
    """Declares a model field: :func:`attrs.field` plus ``primary_key``.

    Primary key fields form the document's key ``(prefix, *pk)`` in declaration
    order; a model needs at least one.

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


class ModelInfo:
    """Everything kvmodel precomputes about one model class.

    Attributes:
        cls: the model class.
        prefix: the first part of every primary key.
        pk_fields: the primary key field names, in declaration order.
        indexes: the model's bound indexes, in declaration order.
    """

    __slots__ = (
        "_encoded_prefix",
        "_pk_getter",
        "_ready",
        "cls",
        "field_names",
        "indexes",
        "name",
        "pk_fields",
        "prefix",
        "structure",
        "unique_indexes",
        "unstructure",
    )

    def __init__(
        self,
        cls: type[Model],
        prefix: str,
        pk_fields: tuple[str, ...],
        field_names: tuple[str, ...],
        indexes: tuple[IndexBase[Any], ...],
    ) -> None:
        self.cls = cls
        self.name = cls.__qualname__
        self.prefix = prefix
        self._encoded_prefix = encode_key((prefix,))
        self.pk_fields = pk_fields
        self.field_names = field_names
        self.indexes = indexes
        self.unique_indexes: dict[str, IndexBase[Any]] = {}
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
        for index in self.indexes:
            index._prepare(types)
        # Key prefix -> unique index: the planner spots unique entries by prefix.
        self.unique_indexes = {ix.key_prefix: ix for ix in self.indexes if ix.unique}
        unstructure = _convert.unstructure_hook(self.cls)
        structure = _convert.structure_hook(self.cls)
        cls = self.cls
        self.unstructure = unstructure
        self.structure = lambda form: structure(form, cls)
        self._ready = True

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
        return tuple(self._pk_part(v, n) for v, n in zip(parts, self.pk_fields, strict=True))

    def decode_doc_key(self, encoded: bytes) -> Key:
        """The key tuple of one of this model's documents, from its encoded form.

        Listings decode one key per document; a single str primary key without
        NULs (the common ``new_id`` case) is sliced out instead of parsed.
        """
        start = len(self._encoded_prefix)
        if (
            encoded.startswith(self._encoded_prefix)
            and encoded[start : start + 1] == b"\x02"
            and encoded.find(b"\x00", start) == len(encoded) - 1
        ):
            try:
                return (self.prefix, encoded[start + 1 : -1].decode("utf-8"))
            except UnicodeDecodeError:
                pass  # decode_key says what is wrong
        return decode_key(encoded)

    def key_for(self, pk: tuple[Any, ...]) -> Key:
        """The primary key ``(prefix, *pk)`` for Python primary key values."""
        if len(pk) != len(self.pk_fields):
            raise TypeError(
                f"{self.name} has the primary key fields {self.pk_fields!r}; "
                f"got {len(pk)} value(s) {pk!r}."
            )
        return (
            self.prefix,
            *(self._pk_part(v, n) for v, n in zip(pk, self.pk_fields, strict=True)),
        )

    def _pk_part(self, value: Any, name: str) -> KeyPart:
        if value is None:
            raise TypeError(f"The primary key field {self.name}.{name} is None; give it a value.")
        return to_key_part(value, f"{self.name}.{name}")

    def index_entries(self, form: dict[str, Any], pk: tuple[KeyPart, ...]) -> dict[Key, Any]:
        """Every index entry (key -> value) a document with this form and pk has."""
        entries: dict[Key, Any] = {}
        if not self.indexes:
            return entries
        target = encode_key((self.prefix, *pk))
        for index in self.indexes:
            entry = index._entry(form, pk, target)
            if entry is not None:
                entries[entry[0]] = entry[1]
        return entries

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
        model_prefix = prefix if prefix is not None else snake_case(name)
        info = ModelInfo(cls, model_prefix, pk, names, tuple(declared.values()))
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
            for index in declared.values():
                index._prepare(types)
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

    __slots__ = ()
    __kvmodel__: ClassVar[ModelInfo]

    def __init_subclass__(cls, *, prefix: str | None = None, **kwargs: Any) -> None:
        # The metaclass consumes ``prefix``; this signature lets type checkers
        # accept the class keyword.
        super().__init_subclass__(**kwargs)


def model_info(cls: type[Model]) -> ModelInfo:
    """The prepared :class:`ModelInfo` of a model class.

    Raises:
        TypeError: ``cls`` is not a Model subclass.
    """
    info = getattr(cls, "__kvmodel__", None)
    if info is None:
        raise TypeError(f"{cls!r} is not a km.Model subclass.")
    if not info._ready:
        info.prepare()
    return info  # type: ignore[no-any-return]
