"""Conversions between models, stored documents and key parts.

Two conversions live here, and nowhere else:

* **Documents.** One cattrs converter, tuned for kvmodel's msgpack value codec,
  turns a model into a plain ``dict`` (its *form*) and back. The codec stores
  datetimes natively, so they stay datetimes; the other types it cannot hold
  become strings or lists (see ``docs/reference/type-mapping.md``). Every
  sequence becomes a list, because the codec reads tuples back as lists and the
  session compares forms to detect changes.
* **Key parts.** Index values and primary key values become key parts in an
  order-preserving way (docs/explanation/models-and-keys.md): str/int/float/bool/bytes as is, Enum
  by value, datetime as UTC microseconds, date as its ordinal, UUID as its 16
  bytes. :func:`to_key_part` converts Python values (what users pass to
  queries); :func:`form_part_converter` builds, for one declared field type, the
  function that converts that field's *form* value to the same key part.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Callable, Set
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Union
from uuid import UUID

import attrs
import cattrs

from kvmodel.errors import InvalidArgumentError, InvalidKeyError, ModelDefinitionError

__all__ = [
    "KeyPart",
    "Key",
    "CONVERTER",
    "to_key_part",
    "form_part_converter",
    "query_part_converter",
    "plain_type",
    "datetime_to_micros",
]

KeyPart = bytes | str | int | float | bool
"""One part of a Kv key."""
Key = tuple[KeyPart, ...]
"""A Kv key as the Kv facade reads it back: a tuple of parts."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def datetime_to_micros(value: datetime, what: str = "the datetime") -> int:
    """Microseconds since the Unix epoch, in UTC, of an aware datetime.

    Integers keep the order of the instants (a float would lose precision), and
    converting to UTC makes equal instants with different offsets one key.

    Raises:
        InvalidArgumentError: the datetime is naive (its instant is unknown).
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgumentError(
            f"{what} {value!r} is a naive datetime, which has no defined instant to index; "
            "use a timezone-aware datetime such as km.utcnow()."
        )
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def to_key_part(value: Any, what: str = "the value") -> KeyPart:
    """The key part for a Python value, in the order-preserving form indexes use.

    Raises:
        InvalidArgumentError: a naive datetime.
        InvalidKeyError: a value with no key form (None, lists, Decimal, ...).
    """
    t = type(value)
    if t is str or t is int or t is bool or t is float or t is bytes:
        return value  # type: ignore[no-any-return]
    if isinstance(value, enum.Enum):
        return to_key_part(value.value, what)
    if isinstance(value, datetime):
        return datetime_to_micros(value, what)
    if isinstance(value, date):
        return value.toordinal()
    if isinstance(value, UUID):
        return value.bytes
    # Subclasses of the plain types (IntEnum was handled above): store the base value.
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise InvalidKeyError(
        f"{what} {value!r} cannot be a key part; use str, int, float, bool, bytes, "
        "an Enum, a timezone-aware datetime, a date or a UUID."
    )


# ---------------------------------------------------------------------------
# Form values -> key parts, one function per declared field type.

_PLAIN_TYPES: frozenset[Any] = frozenset({str, int, float, bool, bytes})


def _identity(value: Any) -> Any:
    return value


def _strip_optional(tp: Any) -> Any:
    """``X`` for ``X | None`` / ``Optional[X]``; the type itself otherwise."""
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def plain_type(tp: Any) -> Any:
    """A declared type without ``| None`` and NewType wrappers."""
    tp = _strip_optional(tp)
    while hasattr(tp, "__supertype__"):  # typing.NewType
        tp = tp.__supertype__
    return tp


def _is_ref(tp: Any) -> bool:
    """Whether ``tp`` is ``km.Ref[X]`` (kvmodel.orm.refs converts those)."""
    return getattr(typing.get_origin(tp) or tp, "__km_ref__", False) is True


def form_part_converter(tp: Any, what: str) -> Callable[[Any], KeyPart]:
    """The function turning a field's *form* value (never None) into its key part.

    ``tp`` is the field's declared type; ``what`` names the field in errors
    (``"Order.created_at"``). The result agrees with :func:`to_key_part` applied
    to the field's Python value, so queries built from Python values find the
    entries built from stored forms.

    Raises:
        ModelDefinitionError: the type has no order-preserving key form.
    """
    tp = _strip_optional(tp)
    while hasattr(tp, "__supertype__"):  # typing.NewType
        tp = tp.__supertype__
    if _is_ref(tp):
        from kvmodel.orm import refs

        return refs.form_part_converter(tp, what)
    if tp is float:
        # Documents written around the session may hold an int here; the key
        # part must be the float a query for the same number builds.
        return _as_float
    if tp in _PLAIN_TYPES or typing.get_origin(tp) is typing.Literal:
        return _identity
    if tp is datetime:

        def from_datetime(value: Any) -> KeyPart:
            if not isinstance(value, datetime):
                value = datetime.fromisoformat(value)
            return datetime_to_micros(value, what)

        return from_datetime
    if tp is date:

        def from_date(value: Any) -> KeyPart:
            return (value if isinstance(value, date) else date.fromisoformat(value)).toordinal()

        return from_date
    if tp is UUID:

        def from_uuid(value: Any) -> KeyPart:
            return (value if isinstance(value, UUID) else UUID(value)).bytes

        return from_uuid
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        # The form holds the enum's value already; convert it like any value.
        return lambda value: to_key_part(value, what)
    if tp is Any or tp is object:
        return lambda value: to_key_part(value, what)
    raise ModelDefinitionError(
        f"{what} has type {tp!r}, which has no order-preserving key form; index only "
        "str, int, float, bool, bytes, Enum, datetime, date or UUID fields."
    )


def _as_float(value: Any) -> Any:
    return float(value) if type(value) is int else value


def query_part_converter(tp: Any, what: str) -> Callable[[Any], KeyPart]:
    """The function turning a Python value given for a field of type ``tp`` (a query
    value, a range bound or a primary key) into the field's key part.

    The value is first converted to the declared type, so ``find(kv, 10)`` on a
    float field finds ``10.0`` and ``get(Point, 1.0)`` on an int key finds ``1``;
    a value of another kind raises instead of silently finding nothing.

    Raises:
        ModelDefinitionError: the type has no order-preserving key form.
    """
    tp = _strip_optional(tp)
    while hasattr(tp, "__supertype__"):  # typing.NewType
        tp = tp.__supertype__
    if _is_ref(tp):
        from kvmodel.orm import refs

        return refs.query_part_converter(tp, what)
    form_part = form_part_converter(tp, what)  # rejects types with no key form

    def wrong(value: Any, expected: str) -> InvalidArgumentError:
        article = "an" if expected[:1].lower() in "aeiou" else "a"
        return InvalidArgumentError(
            f"{what} is {article} {expected} field; {value!r} ({type(value).__name__}) "
            f"is not {article} {expected}."
        )

    if tp is float:

        def to_float(value: Any) -> KeyPart:
            if type(value) is float:
                return value
            if isinstance(value, int | float) and not isinstance(value, bool):
                try:
                    return float(value)
                except OverflowError:
                    raise wrong(value, "float") from None
            raise wrong(value, "float")

        return to_float
    if tp is int:

        def to_int(value: Any) -> KeyPart:
            if type(value) is int:
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, int) and not isinstance(value, bool):
                return int(value)
            raise wrong(value, "int")

        return to_int
    if tp in (str, bool, bytes, datetime, date, UUID):
        kinds: Any = {
            str: str,
            bool: bool,
            bytes: bytes | bytearray | memoryview,
            datetime: datetime,
            date: date,
            UUID: UUID,
        }[tp]
        name = tp.__name__

        def to_part(value: Any) -> KeyPart:
            if not isinstance(value, kinds) or (tp is date and isinstance(value, datetime)):
                raise wrong(value, name)
            return to_key_part(value, f"The value for {what}")

        return to_part
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        enum_type = tp

        def to_enum_part(value: Any) -> KeyPart:
            if not isinstance(value, enum_type):
                try:
                    value = enum_type(value)
                except (ValueError, TypeError):
                    raise wrong(value, enum_type.__name__) from None
            return to_key_part(value.value, what)

        return to_enum_part
    if typing.get_origin(tp) is typing.Literal:
        allowed = typing.get_args(tp)

        def to_literal(value: Any) -> KeyPart:
            if not any(value == a and type(value) is type(a) for a in allowed):
                raise InvalidArgumentError(
                    f"{what} takes one of {allowed!r}; {value!r} is not one of them."
                )
            return to_key_part(value, what)

        return to_literal
    del form_part
    return lambda value: to_key_part(value, f"The value for {what}")


# ---------------------------------------------------------------------------
# The document converter.


def _is_heterogeneous_tuple(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    return (origin is tuple or tp is tuple) and not (
        len(typing.get_args(tp)) == 2 and typing.get_args(tp)[1] is Ellipsis
    )


def _copy_plain(value: Any) -> Any:
    """A copy of the containers in an untyped (``Any``) value.

    A structured object must not share lists or dicts with the stored document
    the session keeps for change detection, or in-place edits would go unseen.
    """
    if type(value) is list:
        return [_copy_plain(v) for v in value]
    if type(value) is dict:
        return {k: _copy_plain(v) for k, v in value.items()}
    return value


def _structure_datetime(value: Any, _: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


def _make_converter() -> cattrs.Converter:
    # detailed_validation=False: the generated hooks skip the error bookkeeping,
    # which roughly halves the cost of structuring a document.
    conv = cattrs.Converter(
        detailed_validation=False, unstruct_collection_overrides={Set: list, tuple: list}
    )
    conv.register_unstructure_hook(datetime, _identity)
    conv.register_structure_hook(datetime, _structure_datetime)
    conv.register_unstructure_hook(date, date.isoformat)
    conv.register_structure_hook(
        date, lambda v, _: v if isinstance(v, date) else date.fromisoformat(v)
    )
    conv.register_unstructure_hook(UUID, str)
    conv.register_structure_hook(UUID, lambda v, _: v if isinstance(v, UUID) else UUID(v))
    conv.register_unstructure_hook(Decimal, str)
    conv.register_structure_hook(Decimal, lambda v, _: Decimal(v))
    conv.register_unstructure_hook(timedelta, timedelta.total_seconds)
    conv.register_structure_hook(timedelta, lambda v, _: timedelta(seconds=v))
    conv.register_structure_hook(Any, lambda v, _: _copy_plain(v))

    def tuple_as_list(tp: Any) -> Callable[[Any], Any]:
        args = typing.get_args(tp)
        if not args:
            return lambda value: [conv.unstructure(v) for v in value]
        hooks = [conv.get_unstructure_hook(a) for a in args]
        return lambda value: [h(v) for h, v in zip(hooks, value, strict=True)]

    conv.register_unstructure_hook_factory(_is_heterogeneous_tuple, tuple_as_list)
    return conv


CONVERTER: cattrs.Converter = _make_converter()
"""The one converter between models and stored documents (forms)."""


def unstructure_hook(cls: type) -> Callable[[Any], dict[str, Any]]:
    """The cached function turning an instance of the attrs class ``cls`` into its form."""
    return CONVERTER.get_unstructure_hook(cls)


_PLAIN_SCALARS = (str, int, float, bool, bytes)
# cattrs' hook for these scalars: structuring is a call of the type.
_CALL_TYPE = CONVERTER.get_structure_hook(str)


def plain_fields(
    cls: type, types: dict[str, Any]
) -> tuple[tuple[str, tuple[type, ...]], ...] | None:
    """Each field's name and the exact types its form value keeps as it is, when every
    field of ``cls`` is a str, int, float, bool or bytes (or one of them ``| None``).

    For such a model cattrs' structuring is ``cls(name=T(value), ...)``, and
    ``T(value)`` is ``value`` itself when ``type(value) is T``: a document whose
    values all have their declared types becomes ``cls(**fields)`` with no
    conversion at all. None for any other model (containers, dates, enums,
    nested models, aliases, fields outside ``__init__``, hooks of the user's).
    """
    out = []
    for a in attrs.fields(cls):
        if not a.init or a.alias != a.name or a.converter is not None:
            return None
        tp = types[a.name]
        base = _strip_optional(tp)
        if base not in _PLAIN_SCALARS or CONVERTER.get_structure_hook(base) is not _CALL_TYPE:
            return None  # another type, or km.register_type gave a scalar a hook of its own
        allowed: tuple[type, ...] = (base,) if base is tp else (base, type(None))
        out.append((a.name, allowed))
    return tuple(out)


def structure_hook(cls: type) -> Callable[[Any, Any], Any]:
    """The cached function turning a form back into an instance of ``cls``."""
    return CONVERTER.get_structure_hook(cls)


def resolve_types(cls: type) -> dict[str, Any]:
    """The resolved declared type of every attrs field of ``cls``, by field name.

    Raises:
        NameError: a string annotation cannot be resolved yet.
    """
    try:
        attrs.resolve_types(cls)
    except NameError:
        # A model that refers to itself (``parent: km.Ref["Comment"] | None``)
        # resolves even while its name is not bound yet, or not in the module.
        attrs.resolve_types(cls, localns={cls.__name__: cls})
    return {a.name: a.type for a in attrs.fields(cls)}
