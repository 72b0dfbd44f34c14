"""The query planner of :meth:`kvmodel.Model.query`: conditions in, a tree of key-range streams out.

Everything a query compares is a key part, in key order: a condition on a field
becomes a set of intervals over the encoding of that field's key part (``==``
is the interval of one part, ``<`` everything below it, ``in_`` a union of
points, ``startswith`` the range of the encoded prefix). The same intervals
serve two purposes: laid over an index's key layout they are the key ranges to
read, and tested against a document's own key part they are the residual check
in Python. One meaning for both, so a condition never finds in an index what
the residual check would reject, or the reverse.

Planning, per OR branch (the condition is put in disjunctive normal form):

1. Every ready index, and the primary key, is an *access path* with ordered
   fields. On each, take the longest prefix of fields with an equality
   (``==``, or ``contains`` on the multi-value field of an ``each=True``
   index), then the conditions on the next field as ranges.
2. The best path has the longest equality prefix, then a range, then serves the
   requested order. Its entries come in key order; the conditions it does not
   serve are residual, checked on each document.
3. When there is no requested order and two or more paths have equality on
   *all* their fields, their entries come in primary key order (the primary key
   ends every such entry): the branch reads them side by side and keeps the
   primary keys that all of them hold, a streaming merge with no buffering.
4. Branches combine as a streaming union: merged by position when they share
   an order (all in primary key order, or all ordered by the same field),
   otherwise one after the other, a document of a later branch skipped when it
   matches an earlier branch (which returns it).

Every stream yields ``(position, document)``: the position is the entry's place
in the query's order, as bytes, and a page's cursor is the last position it
returned. A stream resumes strictly after a position by starting its key
ranges there, so paging re-reads nothing.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from kvmodel._text import brief_repr
from kvmodel._values import decode_value
from kvmodel.engines.base import Consistency, RawEntry, ReadRange
from kvmodel.errors import (
    DecodeError,
    IndexNotReadyError,
    IndexRequiredError,
    InvalidArgumentError,
    KvError,
    ModelDefinitionError,
    ScanLimitError,
)
from kvmodel.keys import encode_key
from kvmodel.orm import _convert
from kvmodel.orm._catalog import READY, attach
from kvmodel.orm.conditions import AndCondition, Condition, FieldCondition, OrCondition
from kvmodel.orm.index import _element_type
from kvmodel.orm.model import VERSION_FIELD

if TYPE_CHECKING:
    from kvmodel._kv import Kv
    from kvmodel.orm.index import IndexBase
    from kvmodel.orm.model import ModelInfo

__all__ = ["Bound", "Plan", "Term", "bind", "plan_query"]

Interval = tuple[bytes, bytes]
"""``[lo, hi)`` over the encoding of one key part (``b"\\x00"``..``b"\\xff"`` is everything)."""
Item = tuple[bytes, RawEntry]
"""A stream's ``(position, document)``."""

_ALL: list[Interval] = [(b"\x00", b"\xff")]
_MAX_BRANCHES = 32
_FIRST_BATCH = 100
# Documents read by primary key in one snapshot (etcd allows 128 operations per transaction).
_DOC_BATCH = 100
# The first read of a stream in an intersection; it doubles while the stream is read on.
_SEEK_BATCH = 32


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


def _part_bytes(part: Any) -> bytes:
    return encode_key((part,))


# ---------------------------------------------------------------------------
# Terms: one bound condition on one field.


class Term:
    """A condition bound to a model field: intervals over the field's key part encoding.

    ``point`` is the one encoded part an equality names (None otherwise);
    ``each`` marks ``contains`` (any element of a collection field matches).
    """

    __slots__ = ("each", "field", "intervals", "point", "text")

    def __init__(
        self, field: str, intervals: list[Interval], point: bytes | None, each: bool, text: str
    ) -> None:
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


def _intersect(a: list[Interval], b: list[Interval]) -> list[Interval]:
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
        return _part_bytes(part)

    op = cond.op
    if op == "in":
        points = sorted({encoded(v) for v in cond.value})
        intervals = [(p, p + b"\xff") for p in points]
        point = points[0] if len(points) == 1 else None
        return Term(cond.field, intervals, point, False, repr(cond))
    if op == "startswith":
        if kind.type_text != repr(str) and "str" not in kind.type_text:
            raise InvalidArgumentError(
                f"{where} uses startswith on {info.name}.{cond.field}, which is not a str "
                "field; startswith matches string prefixes only."
            )
        lo = _part_bytes(cond.value)[:-1]  # the str's encoding without its terminator
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
            return any(v is not None and term.matches_part(_part_bytes(convert(v))) for v in value)
        return term.matches_part(_part_bytes(convert(value)))
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


# ---------------------------------------------------------------------------
# Streams.


class Run:
    """One execution's counters, shared by every stream of the plan."""

    __slots__ = ("kv", "max_scan", "returned", "scanned", "what")

    def __init__(self, kv: Kv, max_scan: int | None, what: str) -> None:
        self.kv = kv
        self.max_scan = max_scan
        self.scanned = 0
        self.returned = 0
        self.what = what

    def count(self, n: int) -> None:
        self.scanned += n
        if self.max_scan is not None and self.scanned > self.max_scan:
            raise ScanLimitError(
                f"{self.what} read more than max_scan={self.max_scan} entries (index "
                "entries and documents) before it finished; its conditions are mostly "
                "checked in Python. Declare an index that serves them (see .explain()), "
                "raise max_scan, or ask for a smaller page.",
                limit=self.max_scan,
                actual=self.scanned,
            )


class Node:
    """A stream of ``(position, document)`` in the query's order."""

    linked = True
    kind: tuple[Any, ...] = ("raw",)

    def items(self, run: Run, after: bytes | None, want: int) -> Iterator[Item]:
        raise NotImplementedError

    def describe(self, indent: str) -> list[str]:
        raise NotImplementedError


class Leaf(Node):
    """Entries of one access path over some key ranges, with their documents when ``linked``.

    ``base`` is the key prefix positions are relative to; ``pk_from_value``
    (a unique index) appends the document's primary key, held in the entry's
    value, to the position.
    """

    def __init__(
        self,
        path: Path,
        ranges: list[Interval],
        base: bytes,
        *,
        reverse: bool,
        kind: tuple[Any, ...],
        pk_from_value: bool,
        served: list[Term],
        linked: bool = True,
        clip: bool = True,
    ) -> None:
        self.clip = clip
        self.path = path
        self.ranges = ranges
        self.base = base
        self.reverse = reverse
        self.kind = kind
        self.pk_from_value = pk_from_value
        self.served = served
        self.linked = linked

    def signature(self) -> tuple[Any, ...]:
        return (self.path.name, self.ranges, self.reverse, self.linked)

    def _position(self, entry: RawEntry) -> bytes:
        tail = entry.key[len(self.base) :]
        if self.pk_from_value:
            target = decode_value(entry.value, entry.encoding, entry.key)
            if isinstance(target, bytes):
                tail += target[len(self.path.model_base) :]
        return tail

    def items(self, run: Run, after: bytes | None, want: int) -> Iterator[Item]:
        kv = run.kv
        max_batch = kv.limits.max_list_batch
        batch = max(1, min(want, max_batch))
        ranges = list(reversed(self.ranges)) if self.reverse else self.ranges
        primary = self.path.index is None
        for lo, hi in ranges:
            if after is not None and self.clip:
                # Start the range just past the position (a unique index's
                # single entry is filtered below instead: its position holds
                # the primary key, which its key does not).
                resume = self.base + after
                if self.reverse:
                    hi = min(hi, resume)
                else:
                    lo = max(lo, resume + b"\x00")
            while lo < hi:
                read = ReadRange(lo, hi, batch, self.reverse)
                if primary or not self.linked:
                    raw = kv.read_range(read, Consistency.STRONG)
                    pairs: list[tuple[RawEntry, RawEntry | None]] = [(e, e) for e in raw]
                else:
                    pairs = kv.read_linked(read, Consistency.STRONG)
                run.count(len(pairs))
                for entry, doc in pairs:
                    pos = self._position(entry)
                    if after is not None and (pos <= after if not self.reverse else pos >= after):
                        continue
                    if doc is None and self.linked:
                        continue  # an entry whose document is gone (a write around the sessions)
                    yield pos, doc if doc is not None else entry
                if len(pairs) < batch:
                    break
                last = pairs[-1][0].key
                if self.reverse:
                    hi = last
                else:
                    lo = last + b"\x00"
                batch = min(batch * 2, max_batch)

    def describe(self, indent: str) -> list[str]:
        served = ", ".join(t.text for t in self.served) or "every entry"
        order = "descending" if self.reverse else "ascending"
        what = "keys only" if not self.linked else "with documents"
        n = len(self.ranges)
        return [
            f"{indent}read {self.path.describe()}: {served} "
            f"({n} key range{'s' if n != 1 else ''}, {order}, {what})"
        ]


class Filter(Node):
    """A stream whose documents must also satisfy residual terms."""

    def __init__(self, child: Node, residual: Residual) -> None:
        self.child = child
        self.residual = residual
        self.kind = child.kind

    def items(self, run: Run, after: bytes | None, want: int) -> Iterator[Item]:
        matches = self.residual.matches
        for pos, doc in self.child.items(run, after, want):
            if matches(doc):
                yield pos, doc

    def describe(self, indent: str) -> list[str]:
        lines = self.child.describe(indent)
        terms = ", ".join(t.text for t, _ in self.residual.checks)
        lines.append(f"{indent}then check in Python: {terms}")
        return lines


class _Seeker:
    """One index stream of an intersection: a buffer of positions that seeks forward.

    ``seek(p)`` returns the first position at or past ``p``: from the buffer
    when it holds one, else by reading on from ``p``'s key (a jump over
    everything in between, not a step through it).
    """

    __slots__ = ("batch", "buf", "done", "hi", "i", "leaf", "next_key", "run")

    def __init__(self, leaf: Leaf, run: Run) -> None:
        self.leaf = leaf
        self.run = run
        self.buf: list[bytes] = []
        self.i = 0
        self.next_key, self.hi = leaf.ranges[0] if leaf.ranges else (b"", b"")
        self.done = not leaf.ranges
        self.batch = _SEEK_BATCH

    def seek(self, target: bytes | None) -> bytes | None:
        leaf = self.leaf
        while True:
            buf = self.buf
            if self.i < len(buf):
                j = self.i if target is None else bisect.bisect_left(buf, target, self.i)
                if j < len(buf):
                    self.i = j
                    return buf[j]
            if self.done:
                return None
            start = self.next_key
            if target is not None and leaf.clip and leaf.base + target > start:
                # A jump: read a short batch there (a long one would mostly
                # hold keys the next jump skips).
                start = leaf.base + target
                self.batch = _SEEK_BATCH
            if start >= self.hi:
                self.done = True
                return None
            kv = self.run.kv
            read = ReadRange(start, self.hi, self.batch)
            entries = kv.read_range(read, Consistency.STRONG)
            self.run.count(len(entries))
            self.buf = [leaf._position(e) for e in entries]
            self.i = 0
            if len(entries) < self.batch:
                self.done = True
            else:
                self.next_key = entries[-1].key + b"\x00"
                self.batch = min(self.batch * 2, kv.limits.max_list_batch)


class Intersect(Node):
    """Primary keys all children hold: a merge of streams in primary key order.

    Every child reads index keys only; the documents of the keys all of them
    hold are read afterwards, a batch of keys in one snapshot. Each stream
    advances past the positions below the highest head, so nothing beyond the
    heads and one batch of matches is held.
    """

    kind = ("pk",)

    def __init__(self, children: list[Leaf], model_base: bytes) -> None:
        self.children = children
        self.model_base = model_base

    def _matches(self, run: Run, after: bytes | None, want: int) -> Iterator[bytes]:
        # Leapfrog: each stream in turn seeks the first position at or past
        # the highest one seen; when all of them land on the same position,
        # every stream holds that primary key.
        seekers = [_Seeker(c, run) for c in self.children]
        n = len(seekers)
        target = None if after is None else after + b"\x00"  # the least position past it
        while True:
            first = seekers[0].seek(target)
            if first is None:
                return
            target, agreed, k = first, 1, 1
            while agreed < n:
                pos = seekers[k % n].seek(target)
                if pos is None:
                    return
                if pos == target:
                    agreed += 1
                else:
                    target, agreed = pos, 1
                k += 1
            yield target
            target += b"\x00"

    def items(self, run: Run, after: bytes | None, want: int) -> Iterator[Item]:
        if all(c.clip for c in self.children):
            return self._probe(run, after, want)
        return self._leapfrog(run, after, want)

    def _probe(self, run: Run, after: bytes | None, want: int) -> Iterator[Item]:
        """Walks the sparsest stream and looks each of its keys up in the others.

        The first batch of every stream shows which is sparsest (it ran out,
        or its batch spans the most primary keys). Each batch of its keys is
        then checked in one snapshot: the other streams' entries for those
        primary keys, and the documents, read by key together, so a
        returned document agrees with every index entry that matched it.
        """
        seekers = [_Seeker(c, run) for c in self.children]
        start = None if after is None else after + b"\x00"
        if any(s.seek(start) is None for s in seekers):
            return
        d = max(
            range(len(seekers)),
            key=lambda i: (
                (True, -len(seekers[i].buf)) if seekers[i].done else (False, seekers[i].buf[-1])
            ),
        )
        driver = seekers[d]
        others = [c for i, c in enumerate(self.children) if i != d]
        per = len(others) + 1
        cap = max(1, _DOC_BATCH // per)
        batch = max(1, min(want, cap))
        engine = run.kv.engine
        pos = driver.seek(start)
        while pos is not None:
            candidates: list[bytes] = []
            while pos is not None and len(candidates) < batch:
                candidates.append(pos)
                pos = driver.seek(pos + b"\x00")
            reads = []
            for p in candidates:
                for leaf in others:
                    k = leaf.base + p
                    reads.append(ReadRange(k, k + b"\x00", 1))
                k = self.model_base + p
                reads.append(ReadRange(k, k + b"\x00", 1))
            found = engine.snapshot_read(reads, consistency=Consistency.STRONG)
            run.count(len(reads))
            for j, p in enumerate(candidates):
                group = found[j * per : (j + 1) * per]
                if all(group) and all(
                    leaf.ranges[0][0] <= leaf.base + p < leaf.ranges[0][1] for leaf in others
                ):
                    yield p, group[-1][0]
            batch = min(batch * 2, cap)

    def _leapfrog(self, run: Run, after: bytes | None, want: int) -> Iterator[Item]:
        batch = max(1, min(want, _DOC_BATCH))
        pending: list[bytes] = []
        matches = self._matches(run, after, want)
        while True:
            pos = next(matches, None)
            if pos is not None:
                pending.append(pos)
                if len(pending) < batch:
                    continue
            if not pending:
                return
            keys = [self.model_base + p for p in pending]
            reads = [ReadRange(k, k + b"\x00", 1) for k in keys]
            found = run.kv.engine.snapshot_read(reads, consistency=Consistency.STRONG)
            run.count(len(found))
            for p, entries in zip(pending, found, strict=True):
                if entries:
                    yield p, entries[0]
            pending = []
            if pos is None:
                return
            batch = min(batch * 2, _DOC_BATCH)

    def describe(self, indent: str) -> list[str]:
        lines = [
            f"{indent}intersect on the primary key (a streaming merge of index keys, then "
            "the documents of the keys all hold) of:"
        ]
        for c in self.children:
            lines.extend(c.describe(indent + "  "))
        return lines


class _Desc:
    """Wraps a position so that heapq pops the highest first."""

    __slots__ = ("pos",)

    def __init__(self, pos: bytes) -> None:
        self.pos = pos

    def __lt__(self, other: _Desc) -> bool:
        return self.pos > other.pos


class MergeUnion(Node):
    """Positions any child holds, in order, each once: children share one order."""

    def __init__(self, children: list[Node], reverse: bool) -> None:
        self.children = children
        self.reverse = reverse
        self.kind = children[0].kind

    def items(self, run: Run, after: bytes | None, want: int) -> Iterator[Item]:
        streams = [c.items(run, after, want) for c in self.children]
        heap: list[tuple[Any, int, Item]] = []
        for i, s in enumerate(streams):
            item = next(s, None)
            if item is not None:
                heap.append((_Desc(item[0]) if self.reverse else item[0], i, item))
        heapq.heapify(heap)
        last: bytes | None = None
        while heap:
            _, i, item = heapq.heappop(heap)
            if item[0] != last:
                last = item[0]
                yield item
            nxt = next(streams[i], None)
            if nxt is not None:
                heapq.heappush(heap, (_Desc(nxt[0]) if self.reverse else nxt[0], i, nxt))

    def describe(self, indent: str) -> list[str]:
        lines = [f"{indent}union, merged in order and deduplicated, of:"]
        for c in self.children:
            lines.extend(c.describe(indent + "  "))
        return lines


class Concat(Node):
    """Each branch in turn; a later branch skips documents an earlier branch matches.

    A position is the branch's number (one byte) and its position in the branch.
    """

    def __init__(self, children: list[Node], branches: list[Residual]) -> None:
        self.children = children
        self.branches = branches

    def items(self, run: Run, after: bytes | None, want: int) -> Iterator[Item]:
        start = 0
        inner: bytes | None = None
        if after is not None:
            start, inner = after[0], after[1:]
        for i in range(start, len(self.children)):
            earlier = self.branches[:i]
            tag = bytes([i])
            for pos, doc in self.children[i].items(run, inner if i == start else None, want):
                if earlier:
                    form = doc_form(self.branches[0].info, doc, _fields_of(earlier))
                    if any(b.form_matches(form) for b in earlier):
                        continue
                yield tag + pos, doc

    def describe(self, indent: str) -> list[str]:
        lines = [
            f"{indent}union, one branch after the other (a later branch skips the documents "
            "an earlier one matches), of:"
        ]
        for c in self.children:
            lines.extend(c.describe(indent + "  "))
        return lines


def _fields_of(residuals: list[Residual]) -> list[str]:
    return sorted({f for r in residuals for f in r.fields})


class Sort(Node):
    """Every matching document, sorted in memory by one field (``allow_scan`` only).

    Documents without a value in the field are left out, as an index of it
    would. ``max_scan`` bounds what is read, and so what is held.
    """

    def __init__(self, child: Node, info: ModelInfo, field: str, reverse: bool) -> None:
        self.child = child
        self.info = info
        self.field = field
        self.reverse = reverse
        self.kind = ("field", field)

    def items(self, run: Run, after: bytes | None, want: int) -> Iterator[Item]:
        kind = field_kinds(self.info)[self.field]
        convert = kind.form_part
        assert convert is not None
        model_base = len(encode_key((self.info.prefix,)))
        keyed: list[Item] = []
        for _, doc in self.child.items(run, None, _FIRST_BATCH):
            value = doc_form(self.info, doc, [self.field]).get(self.field)
            if value is None:
                continue
            try:
                part = _part_bytes(convert(value))
            except (KvError, TypeError, ValueError):
                continue
            keyed.append((part + doc.key[model_base:], doc))
        keyed.sort(key=lambda item: item[0], reverse=self.reverse)
        for pos, doc in keyed:
            if after is not None and (pos >= after if self.reverse else pos <= after):
                continue
            yield pos, doc

    def describe(self, indent: str) -> list[str]:
        lines = self.child.describe(indent + "  ")
        way = "descending" if self.reverse else "ascending"
        return [
            f"{indent}sort in memory by {self.field} ({way}; allow_scan) the result of:",
            *lines,
        ]


# ---------------------------------------------------------------------------
# Access paths and the planner.


class Path:
    """An index, or the primary key, as the planner sees it: ordered fields over key ranges."""

    def __init__(self, info: ModelInfo, index: IndexBase[Any] | None) -> None:
        self.info = info
        self.index = index
        self.model_base = encode_key((info.prefix,))
        if index is None:
            self.fields = info.pk_fields
            self.name = f"{info.name} primary key"
            self.key_base = self.model_base
            self.unique = True
            self.each = False
        else:
            self.fields = index.fields
            self.name = index.qualname
            self.key_base = encode_key((index.key_prefix,))
            self.unique = index.unique
            self.each = index.each

    def describe(self) -> str:
        if self.index is None:
            return f"the primary key of {self.info.name} {self.fields!r}"
        kind = "unique index" if self.unique else "index"
        return f"the {kind} {self.name} {self.fields!r}"


class Candidate:
    """One access path's fit to one branch."""

    def __init__(self, path: Path, terms: list[Term], order: tuple[str, bool] | None) -> None:
        self.path = path
        used: set[int] = set()
        self.eq: list[Term] = []
        for i, f in enumerate(path.fields):
            each = path.each and i == 0
            found = next(
                (
                    (n, t)
                    for n, t in enumerate(terms)
                    if n not in used and t.field == f and t.point is not None and t.each == each
                ),
                None,
            )
            if found is None:
                break
            used.add(found[0])
            self.eq.append(found[1])
        k = len(self.eq)
        self.full = k == len(path.fields)
        self.ranged: list[Term] = []
        self.intervals: list[Interval] | None = None
        if not self.full and not (path.each and k == 0):
            nxt = path.fields[k]
            for n, t in enumerate(terms):
                if n not in used and t.field == nxt and not t.each:
                    used.add(n)
                    self.ranged.append(t)
                    self.intervals = _intersect(
                        _ALL if self.intervals is None else self.intervals, t.intervals
                    )
        self.residual = [t for n, t in enumerate(terms) if n not in used]
        self.usable = not (path.each and k == 0)
        self.narrowing = bool(self.eq or self.ranged)
        fixed = {t.field for t in terms if t.point is not None and not t.each}
        self.order_served = order is None or order[0] in fixed
        self.order_scan = False
        if (
            order is not None
            and not self.order_served
            and not self.full
            and self.usable
            and path.fields[k] == order[0]
        ):
            self.order_served = self.order_scan = True
        self.order = order

    def score(self) -> tuple[int, ...]:
        return (
            int(self.narrowing),
            len(self.eq),
            int(bool(self.ranged)),
            int(self.order_served),
            int(self.full),
            int(self.path.index is None and self.full),
            -len(self.residual),
        )

    def pk_ordered(self) -> bool:
        """Whether its entries come in primary key order (equality on all its fields)."""
        return self.usable and (self.full or self.path.index is None)

    def leaf(self, *, linked: bool = True) -> Leaf:
        path = self.path
        base = path.key_base + b"".join(t.point or b"" for t in self.eq)
        reverse = bool(self.order is not None and self.order_scan and self.order[1])
        if self.full and path.unique:
            ranges = [(base, base + b"\x00")]
        elif self.full:
            ranges = [(base + b"\x00", base + b"\xff")]
        elif self.intervals is not None:
            ranges = [(base + lo, base + hi) for lo, hi in self.intervals]
        else:
            ranges = [(base + b"\x00", base + b"\xff")]
        k = len(self.eq)
        if path.index is None:
            kind: tuple[Any, ...] = ("pk",)
            pos_base = path.model_base
            from_value = False
        elif self.full:
            kind = ("pk",)
            pos_base = base
            from_value = path.unique
        else:
            last = k == len(path.fields) - 1
            kind = ("field", path.fields[k]) if last else ("raw", path.name, k)
            pos_base = base
            from_value = path.unique
        return Leaf(
            path,
            ranges,
            pos_base,
            reverse=reverse,
            kind=kind,
            pk_from_value=from_value,
            served=self.eq + self.ranged,
            linked=linked,
            clip=not (self.full and path.unique and path.index is not None),
        )


def _suggest(info: ModelInfo, terms: list[Term], order: tuple[str, bool] | None) -> str:
    eq = [t for t in terms if t.point is not None and not t.each]
    each = [t for t in terms if t.each]
    rest = [t for t in terms if t.point is None and not t.each]
    fields: list[str] = []
    for t in eq:
        if t.field not in fields:
            fields.append(t.field)
    if order is not None and order[0] not in fields:
        fields.append(order[0])
    elif rest and rest[0].field not in fields:
        fields.append(rest[0].field)
    if each and not fields:
        f = each[0].field
        return f"by_{f} = km.Index({f!r}, each=True)"
    if each:
        f = each[0].field
        args = ", ".join(repr(x) for x in [f, *fields])
        return f"by_{'_'.join([f, *fields])} = km.Index({args}, each=True)"
    args = ", ".join(repr(f) for f in fields)
    return f"by_{'_'.join(fields)} = km.Index({args})"


class Plan:
    """A query's plan: the stream tree, what it reads, and whether counting needs documents."""

    def __init__(self, node: Node, exact_leaf: Leaf | None, signature: str) -> None:
        self.node = node
        self.exact_leaf = exact_leaf
        self.signature = signature

    def describe(self) -> list[str]:
        return self.node.describe("  ")


def _ready_paths(kv: Kv, info: ModelInfo, *, ready_only: bool) -> list[Path]:
    state = attach(kv, info)
    paths = [Path(info, None)]
    for index in info.indexes:
        if not ready_only or state.states.get(index.name) == READY:
            paths.append(Path(info, index))
    return paths


def _plan_branch(
    bound: Bound, terms: list[Term], paths: list[Path], allow_scan: bool, what: str
) -> tuple[Node, Leaf | None]:
    info, order = bound.info, bound.order
    cands = [Candidate(p, terms, order) for p in paths]
    cands = [c for c in cands if c.usable]
    served = [c for c in cands if c.order_served]
    best = max(served, key=Candidate.score) if served else None
    # AND across indexes: paths with equality on all their fields stream in
    # primary key order; intersect those that each serve terms the best leaves over.
    if order is None or (best is not None and best.order_served and not best.order_scan):
        full = sorted(
            (c for c in cands if c.pk_ordered() and c.narrowing),
            key=lambda c: -len(c.eq),
        )
        chosen: list[Candidate] = []
        covered: set[int] = set()
        for c in full:
            ids = {id(t) for t in c.eq}
            if not ids - covered:
                continue
            chosen.append(c)
            covered |= ids
        if len(chosen) >= 2 and (best is None or len(covered) > len(best.eq) + len(best.ranged)):
            leaves = [c.leaf(linked=False) for c in chosen]
            node: Node = Intersect(leaves, chosen[0].path.model_base)
            # The documents are read after the index keys, at another
            # snapshot: check every term against them again.
            check = Residual(info, terms)
            return (Filter(node, check) if check else node), None
    if best is not None and (best.narrowing or not terms):
        leaf = best.leaf()
        residual = Residual(info, best.residual)
        if residual:
            return Filter(leaf, residual), None
        return leaf, leaf
    if not allow_scan:
        narrowing = [c for c in cands if c.narrowing]
        suggestion = _suggest(info, terms, order)
        if narrowing and order is not None:
            reason = (
                f"no ready index of {info.name} serves the order {order[0]!r} together with "
                "the conditions"
            )
        else:
            reason = f"no ready index of {info.name} starts with a field it compares"
        fields = sorted({t.field for t in terms} | ({order[0]} if order else set()))
        raise IndexRequiredError(
            f"{what} needs an index: {reason}. Declare `{suggestion}` on {info.name} (and "
            f"run km.rebuild_indexes(kv, {info.name}) if documents exist), or pass "
            f"allow_scan=True to read every {info.name} document"
            + (" and sort them in memory" if order is not None else "")
            + ".",
            model=info.name,
            fields=tuple(fields),
            suggestion=suggestion,
        )
    # allow_scan: an index scan in the requested order when one serves it,
    # else the best narrowing path (or the primary key), sorted in memory.
    if best is not None:
        leaf = best.leaf()
        residual = Residual(info, best.residual)
        return (Filter(leaf, residual) if residual else leaf), (None if residual else leaf)
    base = max(cands, key=Candidate.score)
    plain = Candidate(base.path, terms, None)
    leaf = plain.leaf()
    residual = Residual(info, plain.residual)
    node = Filter(leaf, residual) if residual else leaf
    if order is not None:
        return Sort(node, info, order[0], order[1]), None
    return node, (leaf if not residual else None)


def plan_query(kv: Kv, bound: Bound, *, allow_scan: bool, what: str) -> Plan:
    """Plans a bound query on the indexes that are ready on ``kv``.

    A building index is skipped; when only a building index could serve the
    query, IndexNotReadyError says so (as ``Index.find`` would).

    Raises:
        IndexRequiredError: no ready index serves a branch (without ``allow_scan``).
        IndexNotReadyError: the index that would serve it is still building.
    """
    info = bound.info
    try:
        return _plan(kv, bound, _ready_paths(kv, info, ready_only=True), allow_scan, what)
    except IndexRequiredError as missing:
        everything = _ready_paths(kv, info, ready_only=False)
        try:
            _plan(kv, bound, everything, allow_scan, what)
        except IndexRequiredError:
            raise missing from None
        state = attach(kv, info)
        names = [
            p.name
            for p in everything
            if p.index is not None and state.states.get(p.index.name) != READY
        ]
        raise IndexNotReadyError(
            f"{what} needs the index {', '.join(names)}, which is still being built: "
            "documents stored before it was declared have no entries in it yet. Build it "
            f"with km.rebuild_indexes(kv, {info.name}).",
            index=names[0] if names else "",
        ) from None


def _plan(kv: Kv, bound: Bound, paths: list[Path], allow_scan: bool, what: str) -> Plan:
    info, order = bound.info, bound.order
    nodes: list[Node] = []
    exact: Leaf | None = None
    for terms in bound.branches:
        node, exact = _plan_branch(bound, terms, paths, allow_scan, what)
        nodes.append(node)
    if len(nodes) == 1:
        node = nodes[0]
    else:
        exact = None
        kinds = {n.kind for n in nodes}
        reverse = bool(order and order[1])
        if len(kinds) == 1 and next(iter(kinds))[0] in ("pk", "field"):
            node = MergeUnion(nodes, reverse)
        elif order is None:
            node = Concat(nodes, [Residual(info, terms) for terms in bound.branches])
        elif allow_scan:
            unordered = Bound(info, bound.branches, None, bound.text)
            inner = _plan(kv, unordered, paths, allow_scan, what).node
            node = Sort(inner, info, order[0], order[1])
        else:
            raise IndexRequiredError(
                f"{what} cannot return its OR branches in the order {order[0]!r}: each "
                f"branch needs an index whose last field is {order[0]!r} after its "
                "equalities. Declare such indexes, drop the order, or pass allow_scan=True "
                "to sort in memory.",
                model=info.name,
                fields=(order[0],),
                suggestion="",
            )
    signature = repr(_signature(node))
    return Plan(node, exact, signature)


def _signature(node: Node) -> Any:
    if isinstance(node, Leaf):
        return node.signature()
    if isinstance(node, Filter):
        return ("filter", _signature(node.child), [t.text for t, _ in node.residual.checks])
    if isinstance(node, Intersect | MergeUnion | Concat):
        return (type(node).__name__, [_signature(c) for c in node.children])
    if isinstance(node, Sort):
        return ("sort", node.field, node.reverse, _signature(node.child))
    return type(node).__name__


def count_entries(run: Run, leaf: Leaf) -> int:
    """The number of entries of an exact leaf, read as keys only (no documents)."""
    keys_only = Leaf(
        leaf.path,
        leaf.ranges,
        leaf.base,
        reverse=False,
        kind=leaf.kind,
        pk_from_value=False,
        served=leaf.served,
        linked=False,
        clip=leaf.clip,
    )
    return sum(1 for _ in keys_only.items(run, None, 1000))


def first_items(node: Node, run: Run, after: bytes | None, n: int | None) -> Iterator[Item]:
    """At most ``n`` items of a node (all of them with None)."""
    want = _FIRST_BATCH if n is None else n
    items = node.items(run, after, want)
    return items if n is None else itertools.islice(items, n)
