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

from typing import TYPE_CHECKING, Any

from kvmodel.errors import (
    IndexNotReadyError,
    IndexRequiredError,
)
from kvmodel.keys import decode_key
from kvmodel.orm._catalog import READY, attach
from kvmodel.orm._query_streams import (
    Concat,
    Filter,
    Intersect,
    Leaf,
    MergeUnion,
    Node,
    Path,
    Sort,
)
from kvmodel.orm._query_terms import ALL, Bound, Interval, Residual, Term, intersect

if TYPE_CHECKING:
    from kvmodel._kv import Kv
    from kvmodel.orm.model import ModelInfo


__all__ = ["Plan", "plan_query"]


# ---------------------------------------------------------------------------
# Access paths and the planner.


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
                    self.intervals = intersect(
                        ALL if self.intervals is None else self.intervals, t.intervals
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


_MAX_SPLIT = 16


def _mergeable(kinds: set[tuple[Any, ...]], order: tuple[str, bool] | None) -> bool:
    """Whether streams of these kinds merge into the query's order by their positions.

    Without a requested order, streams that share one (all in primary key
    order, or all by one field) merge in it; with one, they must all be in
    that field's order (a branch in primary key order whose equality fixes
    the field is not: its neighbours' values interleave with it).
    """
    if len(kinds) != 1:
        return False
    (kind,) = kinds
    if order is None:
        return kind[0] in ("pk", "field")
    return kind == ("field", order[0])


def _plan_split(
    bound: Bound, terms: list[Term], paths: list[Path], allow_scan: bool, what: str
) -> tuple[Node, Leaf | None]:
    """Plans a branch; when no index serves it, tries its ``in_`` as one equality per value.

    ``status.in_(["paid", "shipped"])`` with ``order_by("created_at")`` is no
    range of ``Index("status", "created_at")``, but each value is an equality
    prefix with the order after it: the values' streams merge in that order.
    """
    try:
        return _plan_branch(bound, terms, paths, False, what)
    except IndexRequiredError as missing:
        for n, term in enumerate(terms):
            points = term.points
            if points is None or not 1 < len(points) <= _MAX_SPLIT:
                continue
            subs: list[Node] = []
            try:
                for p in points:
                    text = f"{term.field} == {decode_key(p)[0]!r} (of the in_)"
                    one = Term(term.field, [(p, p + b"\xff")], p, False, text)
                    sub, _ = _plan_split(
                        bound, [*terms[:n], one, *terms[n + 1 :]], paths, False, what
                    )
                    subs.append(sub)
            except IndexRequiredError:
                continue
            if _mergeable({s.kind for s in subs}, bound.order):
                return MergeUnion(subs, bool(bound.order and bound.order[1])), None
        if not allow_scan:
            raise missing from None
    return _plan_branch(bound, terms, paths, True, what)


def _plan(kv: Kv, bound: Bound, paths: list[Path], allow_scan: bool, what: str) -> Plan:
    info, order = bound.info, bound.order
    nodes: list[Node] = []
    exact: Leaf | None = None
    for terms in bound.branches:
        node, exact = _plan_split(bound, terms, paths, allow_scan, what)
        nodes.append(node)
    if len(nodes) == 1:
        node = nodes[0]
    else:
        exact = None
        reverse = bool(order and order[1])
        if _mergeable({n.kind for n in nodes}, order):
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
