"""Field types: what a model may declare, and whether a value fits what it declares.

For each declared field type this module builds, once per model, a *checker*: a
function that takes a field's Python value and returns it (an int given for a
float field comes back as a float) or raises :class:`Mismatch`. The session runs
the checkers on every object it is about to write, so a value of the wrong type
is refused before anything is stored instead of breaking every later read.

Building a checker is also how a model's field types are vetted when the class
is created: a type kvmodel cannot store (``complex``, ``datetime.time``, a plain
class) has no checker, and :func:`checker_for` raises ``ModelDefinitionError``
naming the field and pointing at :func:`register_type`.
"""

from __future__ import annotations

import collections.abc as cabc
import enum
import types
import typing
from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Union
from uuid import UUID

import attrs

from kvmodel._text import brief_repr
from kvmodel.errors import InvalidArgumentError, ModelDefinitionError
from kvmodel.orm._convert import CONVERTER

__all__ = ["Checker", "Mismatch", "checker_for", "describe_type", "register_type"]

Checker = Callable[[Any, int], Any]
"""``check(value, depth) -> value``: the value, possibly widened (int -> float)."""

# Nested containers deeper than this are refused: the checkers recurse, and a
# value that contains itself must end in an error, not a RecursionError.
MAX_DEPTH = 64


class Mismatch(Exception):
    """A value does not fit a declared type: ``path`` leads from the field to it."""

    def __init__(self, expected: str, value: Any, path: str = "", reason: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.value = value
        self.path = path
        self.reason = reason

    def under(self, step: str) -> Mismatch:
        """The same mismatch seen from one level up (``step`` is ``[0]`` or ``.name``)."""
        self.path = step + self.path
        return self

    def describe(self) -> str:
        """``must be int, not 'seven' (str)``: the tail of a ValidationError message."""
        if self.reason:
            return self.reason
        return (
            f"must be {self.expected}, not {brief_repr(self.value, 60)} "
            f"({type(self.value).__name__})"
        )


_registered: dict[type, str] = {}


def register_type(
    cls: type,
    *,
    unstructure: Callable[[Any], Any],
    structure: Callable[[Any], Any],
) -> None:
    """Teaches kvmodel to store model fields of type ``cls``.

    ``unstructure`` turns a value into something the value codec stores (None,
    bool, int, float, str, bytes, datetime, lists and dicts of those);
    ``structure`` turns that back into a ``cls``. Register before the first
    model that uses the type is defined. Field values must be instances of ``cls``.

    >>> import types
    >>> import kvmodel as km
    >>> km.register_type(
    ...     types.SimpleNamespace, unstructure=vars, structure=lambda d: types.SimpleNamespace(**d)
    ... )
    >>> class Sensor(km.Model, prefix="sensors"):
    ...     name: str = km.field(primary_key=True)
    ...     calibration: types.SimpleNamespace
    >>> kv = km.open_kv()
    >>> with km.Session(kv) as s:
    ...     s.add(Sensor(name="s1", calibration=types.SimpleNamespace(gain=2.5)))
    >>> km.Session(kv).get(Sensor, "s1").calibration
    namespace(gain=2.5)

    Raises:
        InvalidArgumentError: ``cls`` is not a class, or a conversion is not callable.
    """
    if not isinstance(cls, type):
        raise InvalidArgumentError(f"register_type needs a class, not {cls!r}.")
    if not callable(unstructure) or not callable(structure):
        raise InvalidArgumentError(
            f"register_type({cls.__name__}) needs callable unstructure= and structure= conversions."
        )
    CONVERTER.register_unstructure_hook(cls, unstructure)
    CONVERTER.register_structure_hook(cls, lambda value, _: structure(value))
    _registered[cls] = cls.__qualname__


def describe_type(tp: Any) -> str:
    """A declared type as messages show it: ``int``, ``list[OrderItem]``, ``str | None``."""
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    text = repr(tp).replace("typing.", "")
    return text.replace("datetime.", "").replace("uuid.", "").replace("decimal.", "")


def _strip_newtype(tp: Any) -> Any:
    while hasattr(tp, "__supertype__"):
        tp = tp.__supertype__
    return tp


def _plain(expected: type, name: str) -> Checker:
    def check(value: Any, depth: int) -> Any:
        if isinstance(value, expected):
            return value
        raise Mismatch(name, value)

    return check


def _check_int(value: Any, depth: int) -> Any:
    if type(value) is int or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise Mismatch("int", value)


def _check_float(value: Any, depth: int) -> Any:
    if type(value) is float:
        return value
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise Mismatch("float", value, reason="is too large for a float") from None
    raise Mismatch("float", value)


def _check_str(value: Any, depth: int) -> Any:
    if type(value) is str or isinstance(value, str):
        return value
    raise Mismatch("str", value)


def _check_bool(value: Any, depth: int) -> Any:
    if value is True or value is False:
        return value
    raise Mismatch("bool", value)


def _check_date(value: Any, depth: int) -> Any:
    # A datetime is a date subclass, but it would be stored as a datetime.
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    raise Mismatch("date", value)


def _check_any(value: Any, depth: int) -> Any:
    return value


_SIMPLE: dict[Any, Checker] = {
    int: _check_int,
    float: _check_float,
    str: _check_str,
    bool: _check_bool,
    bytes: _plain(bytes, "bytes"),
    datetime: _plain(datetime, "datetime"),
    date: _check_date,
    UUID: _plain(UUID, "UUID"),
    Decimal: _plain(Decimal, "Decimal"),
    timedelta: _plain(timedelta, "timedelta"),
    type(None): _plain(type(None), "None"),
}

_SEQUENCES = {list, cabc.Sequence, cabc.MutableSequence, typing.List}  # noqa: UP006
_SETS = {set, frozenset, cabc.Set, cabc.MutableSet, typing.Set, typing.FrozenSet}  # noqa: UP006
_MAPPINGS = {dict, cabc.Mapping, cabc.MutableMapping, typing.Dict}  # noqa: UP006


def _too_deep(value: Any) -> Mismatch:
    return Mismatch(
        "", value, reason=f"is nested more than {MAX_DEPTH} levels deep (or contains itself)"
    )


def _sequence(item: Checker, name: str, kinds: tuple[type, ...]) -> Checker:
    def check(value: Any, depth: int) -> Any:
        if not isinstance(value, kinds):
            raise Mismatch(name, value)
        if depth >= MAX_DEPTH:
            raise _too_deep(value)
        if item is not _check_any:
            items: Any = value
            for i, v in enumerate(items):
                try:
                    item(v, depth + 1)
                except Mismatch as m:
                    raise m.under(f"[{i}]") from None
        return value

    return check


def _fixed_tuple(items: list[Checker], name: str) -> Checker:
    def check(value: Any, depth: int) -> Any:
        if not isinstance(value, tuple | list) or len(value) != len(items):
            raise Mismatch(name, value)
        if depth >= MAX_DEPTH:
            raise _too_deep(value)
        for i, (c, v) in enumerate(zip(items, value, strict=True)):
            try:
                c(v, depth + 1)
            except Mismatch as m:
                raise m.under(f"[{i}]") from None
        return value

    return check


def _mapping(key: Checker, val: Checker, name: str) -> Checker:
    def check(value: Any, depth: int) -> Any:
        if not isinstance(value, dict):
            raise Mismatch(name, value)
        if depth >= MAX_DEPTH:
            raise _too_deep(value)
        for k, v in value.items():
            try:
                key(k, depth + 1)
                val(v, depth + 1)
            except Mismatch as m:
                raise m.under(f"[{brief_repr(k, 40)}]") from None
        return value

    return check


def _union(options: list[Checker], name: str) -> Checker:
    def check(value: Any, depth: int) -> Any:
        for c in options:
            try:
                return c(value, depth)
            except Mismatch:
                continue
        raise Mismatch(name, value)

    return check


def _optional(inner: Checker) -> Checker:
    def check(value: Any, depth: int) -> Any:
        return None if value is None else inner(value, depth)

    return check


# attrs classes nested in models: one checker per class, built lazily so that
# a class that refers to itself (a tree of nodes) does not recurse forever.
_attrs_checkers: dict[type, Checker] = {}


def _attrs_class(cls: type, what: str) -> Checker:
    found = _attrs_checkers.get(cls)
    if found is not None:
        return found
    fields: list[tuple[str, type | None, Checker]] = []

    def check(value: Any, depth: int) -> Any:
        if not isinstance(value, cls):
            raise Mismatch(cls.__qualname__, value)
        if depth >= MAX_DEPTH:
            raise _too_deep(value)
        for name, exact, c in fields:
            v = getattr(value, name)
            if type(v) is exact:
                continue
            try:
                checked = c(v, depth + 1)
            except Mismatch as m:
                raise m.under(f".{name}") from None
            if checked is not v:
                object.__setattr__(value, name, checked)
        return value

    _attrs_checkers[cls] = check
    try:
        attrs.resolve_types(cls)
        for a in attrs.fields(cls):
            c = checker_for(a.type, f"{what} ({cls.__qualname__}.{a.name})")
            fields.append((a.name, exact_type(a.type), c))
    except BaseException:
        del _attrs_checkers[cls]
        raise
    return check


_LEAF_TYPES = frozenset({int, float, str, bool, bytes, datetime, date, UUID, Decimal, timedelta})


def exact_type(tp: Any) -> type | None:
    """The one type whose instances need no check for a field of type ``tp`` (None if none).

    Validation runs on every object a commit writes; testing ``type(v) is t``
    first keeps the common case to one comparison per field.
    """
    tp = _strip_newtype(tp)
    if tp in _LEAF_TYPES or tp in _registered:
        return tp  # type: ignore[no-any-return]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp
    return None


def checker_for(tp: Any, what: str) -> Checker:
    """The checker of one declared type; ``what`` names the field in errors.

    Raises:
        ModelDefinitionError: kvmodel cannot store values of this type.
    """
    tp = _strip_newtype(tp)
    if tp is Any or tp is object:
        return _check_any
    simple = _SIMPLE.get(tp)
    if simple is not None:
        return simple
    if tp in _registered:
        return _plain(tp, describe_type(tp))
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    name = describe_type(tp)
    if origin is Union or origin is types.UnionType:
        inner = [a for a in args if a is not type(None)]
        options = [checker_for(a, what) for a in inner]
        _require_structurable(tp, what)
        one = options[0] if len(options) == 1 else _union(options, name)
        return _optional(one) if len(inner) < len(args) else one
    if origin is typing.Literal:
        allowed = args

        def check_literal(value: Any, depth: int) -> Any:
            if any(value == a and type(value) is type(a) for a in allowed):
                return value
            raise Mismatch(name, value)

        return check_literal
    if tp in _SEQUENCES or origin in _SEQUENCES:
        item = checker_for(args[0], what) if args else _check_any
        return _sequence(item, name, (list, tuple))
    if tp in _SETS or origin in _SETS:
        item = checker_for(args[0], what) if args else _check_any
        return _sequence(item, name, (set, frozenset))
    if tp is tuple or origin is tuple:
        if not args:
            return _sequence(_check_any, name, (tuple, list))
        if len(args) == 2 and args[1] is Ellipsis:
            return _sequence(checker_for(args[0], what), name, (tuple, list))
        return _fixed_tuple([checker_for(a, what) for a in args], name)
    if tp in _MAPPINGS or origin in _MAPPINGS:
        if not args:
            return _mapping(_check_any, _check_any, name)
        return _mapping(checker_for(args[0], what), checker_for(args[1], what), name)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _plain(tp, name)
    if getattr(origin or tp, "__km_ref__", False) is True:
        from kvmodel.orm import refs

        return refs.checker(tp, what)
    if isinstance(tp, type) and attrs.has(tp):
        return _attrs_class(tp, what)
    raise ModelDefinitionError(
        f"{what} has the type {name}, which kvmodel cannot store. Use str, int, float, "
        "bool, bytes, datetime, date, UUID, Decimal, timedelta, an Enum, a Literal, an "
        "attrs class, or a list, set, tuple or dict of those; or teach kvmodel the type "
        "with km.register_type(cls, unstructure=..., structure=...) before the model "
        "is defined."
    )


def _require_structurable(tp: Any, what: str) -> None:
    """Unions are checkable member by member, but cattrs must also be able to read them."""
    from cattrs.errors import StructureHandlerNotFoundError

    try:
        CONVERTER.get_structure_hook(tp)
    except StructureHandlerNotFoundError:
        raise ModelDefinitionError(
            f"{what} has the type {describe_type(tp)}, a union kvmodel cannot read back "
            "(it could not tell its members apart when loading). Use one type, X | None, "
            "or a union of attrs classes."
        ) from None
