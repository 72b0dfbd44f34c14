"""Query terms: conditions bound to a model's fields, as intervals over key part encodings.

A condition on a field becomes a set of intervals over the encoding of the
field's key part (``==`` is the interval of one part, ``<`` everything below
it, ``in_`` a union of points, ``startswith`` the range of the encoded
prefix). Laid over an index's key layout the intervals are the key ranges to
read (see :mod:`kvmodel.orm._query_plan`); tested against a document's own key
part they are the residual check in Python. One meaning for both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from kvmodel._text import brief_repr
from kvmodel._values import decode_value
from kvmodel.engines.base import RawEntry
from kvmodel.errors import (
    DecodeError,
    InvalidArgumentError,
    KvError,
    ModelDefinitionError,
)
from kvmodel.keys import encode_key
from kvmodel.orm import _convert
from kvmodel.orm.conditions import AndCondition, Condition, FieldCondition, OrCondition
from kvmodel.orm.index import _element_type
from kvmodel.orm.model import VERSION_FIELD

if TYPE_CHECKING:
    from kvmodel.orm.model import ModelInfo


__all__ = ["Bound", "FieldKind", "Residual", "Term", "bind", "doc_form", "field_kinds"]

Interval = tuple[bytes, bytes]
"""``[lo, hi)`` over the encoding of one key part (``b"\\x00"``..``b"\\xff"`` is everything)."""

ALL: list[Interval] = [(b"\x00", b"\xff")]
_MAX_BRANCHES = 32


# ---------------------------------------------------------------------------
# The fields of a model, as queries see them.


class FieldKind:
    """How a query compares one field: its key part conversions, and whether it is a collection."""

    __slots__ = ("collection", "form_part", "name", "query_part", "type_text")

    def __init__(
        self,
        name: str,
        query_part: Callable[[Any], Any] | None,
        form_part: Callable[[Any], Any] | None,
        collection: bool,
        type_text: str,
    ) -> None:
        self.name = name
        self.query_part = query_part
        self.form_part = form_part
        self.collection = collection
        self.type_text = type_text


_KINDS: dict[ModelInfo, dict[str, FieldKind]] = {}


def field_kinds(info: ModelInfo) -> dict[str, FieldKind]:
    """Every field of a model with its query conversions (None where it has no key form)."""
    kinds = _KINDS.get(info)
    if kinds is not None:
        return kinds
    types = _convert.resolve_types(info.cls)
    kinds = {}
    for name in info.field_names:
        tp = types[name]
        element = _element_type(tp, "", strict=False)
        what = f"{info.name}.{name}"
        query_part: Callable[[Any], Any] | None
        form_part: Callable[[Any], Any] | None
        try:
            target = element if element is not None else tp
            query_part = _convert.query_part_converter(target, what)
            form_part = _convert.form_part_converter(target, what)
        except ModelDefinitionError:
            query_part = form_part = None
        kinds[name] = FieldKind(name, query_part, form_part, element is not None, repr(tp))
    _KINDS[info] = kinds
    return kinds


def part_bytes(part: Any) -> bytes:
    return encode_key((part,))


# ---------------------------------------------------------------------------
# Terms: one bound condition on one field.


class Term:
    """A condition bound to a model field: intervals over the field's key part encoding.

    ``point`` is the one encoded part an equality names (None otherwise);
    ``each`` marks ``contains`` (any element of a collection field matches).
    """

    __slots__ = ("each", "field", "intervals", "point", "points", "text")

    def __init__(
        self,
        field: str,
        intervals: list[Interval],
        point: bytes | None,
        each: bool,
        text: str,
        points: list[bytes] | None = None,
    ) -> None:
        # ``points``: the encoded values of an ``in_`` (the planner may read
        # each as an equality, and merge them).
        self.points = points
        self.field = field
        self.intervals = intervals
        self.point = point
        self.each = each
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def matches_part(self, encoded: bytes) -> bool:
        for lo, hi in self.intervals:
            if encoded < lo:
                return False
            if encoded < hi:
                return True
        return False


def intersect(a: list[Interval], b: list[Interval]) -> list[Interval]:
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo = max(a[i][0], b[j][0])
        hi = min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _bind_term(info: ModelInfo, cond: FieldCondition) -> Term:
    """The term of one field condition on ``info``'s model.

    Raises:
        InvalidArgumentError: an unknown field, a field with no key form, a
            value that does not fit the field, or an operator the field does
            not take.
    """
    kinds = field_kinds(info)
    kind = kinds.get(cond.field)
    where = f"The condition {cond!r} of {info.name}.query"
    if kind is None:
        raise InvalidArgumentError(
            f"{where} names the field {cond.field!r}, which {info.name} does not have; its "
            f"fields are {info.field_names!r}."
        )
    if kind.query_part is None:
        raise InvalidArgumentError(
            f"{where} is on {info.name}.{cond.field}, of type {kind.type_text}, which has no "
            "key form to compare; query str, int, float, bool, bytes, Enum, datetime, date "
            "or UUID fields (or lists of them, with contains)."
        )
    if kind.collection and cond.op != "contains":
        raise InvalidArgumentError(
            f"{where} compares the collection field {info.name}.{cond.field} as a whole; "
            f"use km.F({cond.field!r}).contains(value) to match one of its elements."
        )
    if not kind.collection and cond.op == "contains":
        raise InvalidArgumentError(
            f"{where} uses contains on {info.name}.{cond.field}, which is not a list, set or "
            f"tuple; use km.F({cond.field!r}) == value."
        )

    def encoded(value: Any) -> bytes:
        if value is None:
            raise InvalidArgumentError(
                f"{where} compares with None; a document whose {cond.field!r} is None "
                "matches no condition on it (an index has no entry for it), so leave the "
                "condition out."
            )
        assert kind is not None and kind.query_part is not None
        try:
            part = kind.query_part(value)
        except KvError as exc:
            raise InvalidArgumentError(f"{where} has a value that does not fit: {exc}") from None
        return part_bytes(part)

    op = cond.op
    if op == "in":
        points = sorted({encoded(v) for v in cond.value})
        intervals = [(p, p + b"\xff") for p in points]
        point = points[0] if len(points) == 1 else None
        return Term(cond.field, intervals, point, False, repr(cond), points)
    if op == "startswith":
        if kind.type_text != repr(str) and "str" not in kind.type_text:
            raise InvalidArgumentError(
                f"{where} uses startswith on {info.name}.{cond.field}, which is not a str "
                "field; startswith matches string prefixes only."
            )
        lo = part_bytes(cond.value)[:-1]  # the str's encoding without its terminator
        return Term(cond.field, [(lo, lo + b"\xff")], None, False, repr(cond))
    p = encoded(cond.value)
    table: dict[str, list[Interval]] = {
        "==": [(p, p + b"\xff")],
        "contains": [(p, p + b"\xff")],
        "!=": [(b"\x00", p), (p + b"\xff", b"\xff")],
        "<": [(b"\x00", p)],
        "<=": [(b"\x00", p + b"\xff")],
        ">": [(p + b"\xff", b"\xff")],
        ">=": [(p, b"\xff")],
    }
    point = p if op in ("==", "contains") else None
    return Term(cond.field, table[op], point, op == "contains", repr(cond))


def _dnf(cond: Condition) -> list[list[FieldCondition]]:
    if isinstance(cond, FieldCondition):
        return [[cond]]
    if isinstance(cond, OrCondition):
        return [branch for part in cond.parts for branch in _dnf(part)]
    if isinstance(cond, AndCondition):
        branches: list[list[FieldCondition]] = [[]]
        for part in cond.parts:
            branches = [a + b for a in branches for b in _dnf(part)]
            if len(branches) > _MAX_BRANCHES:
                break
        return branches
    raise InvalidArgumentError(f"{brief_repr(cond, 60)} is not a query condition.")


class Bound:
    """A query's conditions bound to its model: OR branches of AND-ed terms, and the order."""

    __slots__ = ("branches", "info", "order", "text")

    def __init__(
        self,
        info: ModelInfo,
        branches: list[list[Term]],
        order: tuple[str, bool] | None,
        text: str,
    ) -> None:
        self.info = info
        self.branches = branches
        self.order = order
        self.text = text


def bind(
    info: ModelInfo, condition: Condition | None, order: tuple[str, bool] | None, text: str
) -> Bound:
    """Checks a query's conditions and order against its model.

    Raises:
        InvalidArgumentError: see :func:`_bind_term`; an order on an unknown
            or collection field; more than 32 OR branches.
    """
    if condition is None:
        branches: list[list[Term]] = [[]]
    else:
        dnf = _dnf(condition)
        if len(dnf) > _MAX_BRANCHES:
            raise InvalidArgumentError(
                f"{info.name}.query({text}) expands to more than {_MAX_BRANCHES} OR branches "
                "(AND of ORs multiplies out); split it into several queries."
            )
        branches = [[_bind_term(info, c) for c in branch] for branch in dnf]
    if order is not None:
        kind = field_kinds(info).get(order[0])
        if kind is None or kind.query_part is None or kind.collection:
            raise InvalidArgumentError(
                f"{info.name}.query(...).order_by({order[0]!r}) names "
                + (
                    f"no field of {info.name}; its fields are {info.field_names!r}."
                    if kind is None
                    else "a field that has no single key value to sort by (a collection, or "
                    "a type with no key form)."
                )
            )
    return Bound(info, branches, order, text)


# ---------------------------------------------------------------------------
# Document forms and the residual check.


def doc_form(info: ModelInfo, raw: RawEntry, fields: Sequence[str]) -> dict[str, Any]:
    """A stored document's form as its index entries see it (older versions upgraded)."""
    form: Any = decode_value(raw.value, raw.encoding, raw.key)
    if (
        type(form) is dict
        and form.get(VERSION_FIELD, 1) == info.version
        and all(f in form for f in fields)
    ):
        return form
    try:
        key = info.decode_doc_key(raw.key)
        return info.indexed_form(form, key)
    except DecodeError:
        return {}


def term_matches(term: Term, kind: FieldKind, form: dict[str, Any]) -> bool:
    """Whether a document's form satisfies one term (None and misfit values never do)."""
    value = form.get(term.field)
    if value is None:
        return False
    convert = kind.form_part
    assert convert is not None
    try:
        if term.each:
            if not isinstance(value, list | tuple | set | frozenset):
                return False
            return any(v is not None and term.matches_part(part_bytes(convert(v))) for v in value)
        return term.matches_part(part_bytes(convert(value)))
    except (KvError, TypeError, ValueError, OverflowError):
        return False


class Residual:
    """The terms of a branch checked in Python, on each candidate document."""

    __slots__ = ("checks", "fields", "info")

    def __init__(self, info: ModelInfo, terms: Sequence[Term]) -> None:
        kinds = field_kinds(info)
        self.info = info
        self.checks = [(t, kinds[t.field]) for t in terms]
        self.fields = sorted({t.field for t in terms})

    def __bool__(self) -> bool:
        return bool(self.checks)

    def form_matches(self, form: dict[str, Any]) -> bool:
        return all(term_matches(t, k, form) for t, k in self.checks)

    def matches(self, raw: RawEntry) -> bool:
        return self.form_matches(doc_form(self.info, raw, self.fields))
