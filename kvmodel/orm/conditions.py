"""Field conditions for :meth:`kvmodel.Model.query`: :class:`F`, :func:`and_`, :func:`or_`.

A condition names a field by its string name and compares it with a value:
``km.F("total_cents") > 1000``, ``km.F("status").in_(["paid", "shipped"])``,
``km.F("tags").contains("python")``. Conditions combine with ``&`` and ``|``
(or :func:`and_` / :func:`or_`). A condition is a plain description: it is
checked against a model (does the field exist, does the value fit its type)
only when a query is made from it, by ``Model.query``, so one condition can be
reused across models that share a field name.

Why a field name and not a per-model attribute (``Order.total_cents``): model
classes are slotted attrs classes, whose class attributes are the slot
descriptors attrs and cattrs rely on, so kvmodel does not replace them; and a
name keeps conditions reusable and printable. mypy checks the operators' types
(each returns a :class:`Condition`); the field and the value are checked
against the model when the query is built, and every mismatch raises
:class:`kvmodel.InvalidArgumentError` naming the model and the field.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from kvmodel._text import brief_repr
from kvmodel.errors import InvalidArgumentError, KvTypeError

__all__ = ["Condition", "F", "FieldCondition", "and_", "or_"]

Op = Literal["==", "!=", "<", "<=", ">", ">=", "in", "startswith", "contains"]


class Condition:
    """A condition on the fields of a document; combine conditions with ``&`` and ``|``.

    >>> import kvmodel as km
    >>> (km.F("status") == "paid") & (km.F("total_cents") >= 1000)
    and_(status == 'paid', total_cents >= 1000)
    """

    __slots__ = ()

    def __and__(self, other: Condition) -> Condition:
        return and_(self, other)

    def __or__(self, other: Condition) -> Condition:
        return or_(self, other)

    def __bool__(self) -> bool:
        raise KvTypeError(
            f"The condition {self!r} has no truth value; combine conditions with & and | "
            "(or km.and_ / km.or_), not with `and`, `or` or chained comparisons such as "
            "`1 < km.F('n') < 5`."
        )


class FieldCondition(Condition):
    """One comparison of a field with a value (made by the operators of :class:`F`).

    Attributes:
        field: the field's name.
        op: ``"=="``, ``"!="``, ``"<"``, ``"<="``, ``">"``, ``">="``, ``"in"``,
            ``"startswith"`` or ``"contains"``.
        value: the value compared with (a tuple of values for ``"in"``).
    """

    __slots__ = ("field", "op", "value")

    def __init__(self, field: str, op: Op, value: Any) -> None:
        self.field = field
        self.op: Op = op
        self.value = value

    def __repr__(self) -> str:
        if self.op == "startswith":
            return f"{self.field}.startswith({self.value!r})"
        if self.op == "contains":
            return f"{self.field}.contains({self.value!r})"
        if self.op == "in":
            return f"{self.field}.in_({list(self.value)!r})"
        return f"{self.field} {self.op} {self.value!r}"


class AndCondition(Condition):
    """Every one of ``parts`` holds."""

    __slots__ = ("parts",)

    def __init__(self, parts: tuple[Condition, ...]) -> None:
        self.parts = parts

    def __repr__(self) -> str:
        return f"and_({', '.join(repr(p) for p in self.parts)})"


class OrCondition(Condition):
    """At least one of ``parts`` holds."""

    __slots__ = ("parts",)

    def __init__(self, parts: tuple[Condition, ...]) -> None:
        self.parts = parts

    def __repr__(self) -> str:
        return f"or_({', '.join(repr(p) for p in self.parts)})"


def _conditions(what: str, parts: tuple[Any, ...]) -> tuple[Condition, ...]:
    for p in parts:
        if not isinstance(p, Condition):
            raise KvTypeError(
                f"{what} takes conditions such as km.F('status') == 'paid', not "
                f"{brief_repr(p, 60)}."
            )
    return parts


def and_(*conditions: Condition) -> Condition:
    """A condition that holds when every one of ``conditions`` holds (also ``a & b``).

    Raises:
        KvTypeError: no conditions, or something that is not a condition.
    """
    if not conditions:
        raise KvTypeError("km.and_() needs at least one condition.")
    flat: list[Condition] = []
    for c in _conditions("km.and_", conditions):
        flat.extend(c.parts if isinstance(c, AndCondition) else (c,))
    return flat[0] if len(flat) == 1 else AndCondition(tuple(flat))


def or_(*conditions: Condition) -> Condition:
    """A condition that holds when at least one of ``conditions`` holds (also ``a | b``).

    Raises:
        KvTypeError: no conditions, or something that is not a condition.
    """
    if not conditions:
        raise KvTypeError("km.or_() needs at least one condition.")
    flat: list[Condition] = []
    for c in _conditions("km.or_", conditions):
        flat.extend(c.parts if isinstance(c, OrCondition) else (c,))
    return flat[0] if len(flat) == 1 else OrCondition(tuple(flat))


class F:
    """A model field by name, to build conditions: ``km.F("total_cents") > 1000``.

    Values compare as the field's index keys do: numbers by value, strings by
    code point, datetimes by instant, Enums by value. A document whose field
    is None matches no condition on that field (not even ``!=``), as it has no
    entry in an index of the field.

    >>> import kvmodel as km
    >>> km.F("status").in_(["paid", "shipped"]) | km.F("title").startswith("Re:")
    or_(status.in_(['paid', 'shipped']), title.startswith('Re:'))
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise KvTypeError(f"km.F takes a field name (a non-empty str), not {name!r}.")
        self.name = name

    def __repr__(self) -> str:
        return f"F({self.name!r})"

    # The comparison operators build conditions instead of comparing, as in
    # SQLAlchemy's column expressions; hence the overrides of object's.
    def __eq__(self, value: object) -> FieldCondition:  # type: ignore[override]
        return FieldCondition(self.name, "==", value)

    def __ne__(self, value: object) -> FieldCondition:  # type: ignore[override]
        return FieldCondition(self.name, "!=", value)

    def __lt__(self, value: object) -> FieldCondition:
        return FieldCondition(self.name, "<", value)

    def __le__(self, value: object) -> FieldCondition:
        return FieldCondition(self.name, "<=", value)

    def __gt__(self, value: object) -> FieldCondition:
        return FieldCondition(self.name, ">", value)

    def __ge__(self, value: object) -> FieldCondition:
        return FieldCondition(self.name, ">=", value)

    __hash__ = None  # type: ignore[assignment]

    def in_(self, values: Iterable[Any]) -> FieldCondition:
        """The field equals one of ``values`` (an empty collection matches nothing)."""
        if isinstance(values, str | bytes) or not isinstance(values, Iterable):
            raise InvalidArgumentError(
                f"F({self.name!r}).in_ takes a list, tuple or set of values, not "
                f"{brief_repr(values, 60)}."
            )
        return FieldCondition(self.name, "in", tuple(values))

    def startswith(self, prefix: str) -> FieldCondition:
        """The (str) field starts with ``prefix``."""
        if not isinstance(prefix, str):
            raise InvalidArgumentError(
                f"F({self.name!r}).startswith takes a str prefix, not {brief_repr(prefix, 60)}."
            )
        return FieldCondition(self.name, "startswith", prefix)

    def contains(self, value: Any) -> FieldCondition:
        """The (list, set or tuple) field holds ``value`` among its elements."""
        return FieldCondition(self.name, "contains", value)
