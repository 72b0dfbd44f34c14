"""The streams a query plan is made of: each yields ``(position, document)`` in the query's order.

A position is an entry's place in the query's order, as bytes, and a page's
cursor is the last position it returned. A stream resumes strictly after a
position by starting its key ranges there, so paging re-reads nothing.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from kvmodel._values import decode_value
from kvmodel.engines.base import Consistency, RawEntry, ReadRange
from kvmodel.errors import KvError, ScanLimitError
from kvmodel.keys import encode_key
from kvmodel.limits import MAX_GET_MANY_KEYS
from kvmodel.orm._query_terms import Interval, Residual, Term, doc_form, field_kinds, part_bytes

if TYPE_CHECKING:
    from kvmodel._kv import Kv
    from kvmodel.orm.index import IndexBase
    from kvmodel.orm.model import ModelInfo


__all__ = [
    "Concat",
    "Filter",
    "Intersect",
    "Leaf",
    "MergeUnion",
    "Node",
    "Path",
    "Run",
    "Sort",
    "count_entries",
    "first_items",
]

Item = tuple[bytes, RawEntry]
"""A stream's ``(position, document)``."""

_FIRST_BATCH = 100
# Keys read by key in one snapshot: Deno KV's get_many limit, which KV Connect
# servers enforce on every snapshot read (and etcd allows 128 operations per transaction).
_DOC_BATCH = MAX_GET_MANY_KEYS
# The first read of a stream in an intersection; it doubles while the stream is read on.
_SEEK_BATCH = 32
# The first keys of each stream of an intersection, read to find a small side.
_PROBE_BATCH = 128


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
                for entry, doc in pairs:
                    # Counted as examined, not as read: a batch reads ahead,
                    # and max_scan bounds what the call needed.
                    run.count(1)
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

    def __init__(self, leaf: Leaf, run: Run, batch: int) -> None:
        self.leaf = leaf
        self.run = run
        self.buf: list[bytes] = []
        self.i = 0
        first: Interval = leaf.ranges[0] if leaf.ranges else (b"", b"")
        self.next_key: bytes = first[0]
        self.hi: bytes = first[1]
        self.done = not leaf.ranges
        self.batch = batch

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
    """Primary keys all children hold; every child lists its entries in primary key order.

    Each stream's first keys are read (keys only, ``_PROBE_BATCH`` of them).
    When a stream ends within them, it is the small side: it is read again
    with its documents and the other streams' conditions are checked on those
    documents (an index entry and its document are written in the same
    commit, so this is the same test as looking the key up in the other
    index, in the document's own snapshot). Otherwise the streams are merged
    on the primary key, leapfrogging: each in turn seeks the first key at or
    past the highest one seen, and a key all of them land on is a match whose
    document is read afterwards, a batch of keys in one snapshot. Either way
    nothing beyond one batch per stream is held.

    The plan's filter checks every condition on the documents again.
    """

    kind = ("pk",)

    def __init__(self, children: list[Leaf], model_base: bytes) -> None:
        self.children = children
        self.model_base = model_base

    def items(self, run: Run, after: bytes | None, want: int) -> Iterator[Item]:
        seekers = [_Seeker(c, run, _PROBE_BATCH) for c in self.children]
        start = None if after is None else after + b"\x00"  # the least position past it
        if any(s.seek(start) is None for s in seekers):
            return iter(())
        small = [i for i, s in enumerate(seekers) if s.done]
        if small:
            i = min(small, key=lambda i: len(seekers[i].buf))
            leaf = self.children[i]
            linked = Leaf(
                leaf.path,
                leaf.ranges,
                leaf.base,
                reverse=False,
                kind=leaf.kind,
                pk_from_value=leaf.pk_from_value,
                served=leaf.served,
                clip=leaf.clip,
            )
            return linked.items(run, after, len(seekers[i].buf) + 1)
        return self._merge(run, seekers, start, want)

    def _merge(
        self, run: Run, seekers: list[_Seeker], target: bytes | None, want: int
    ) -> Iterator[Item]:
        batch = max(1, min(want, _DOC_BATCH))
        pending: list[bytes] = []
        n = len(seekers)
        engine = run.kv.engine
        while True:
            match: bytes | None = None
            first = seekers[0].seek(target)
            if first is not None:
                target, agreed, k = first, 1, 1
                while agreed < n:
                    pos = seekers[k % n].seek(target)
                    if pos is None:
                        break
                    if pos == target:
                        agreed += 1
                    else:
                        target, agreed = pos, 1
                    k += 1
                else:
                    match = target
            if match is not None:
                pending.append(match)
                target = match + b"\x00"
                if len(pending) < batch:
                    continue
            if pending:
                keys = [self.model_base + p for p in pending]
                reads = [ReadRange(k, k + b"\x00", 1) for k in keys]
                found = engine.snapshot_read(reads, consistency=Consistency.STRONG)
                run.count(len(found))
                for p, entries in zip(pending, found, strict=True):
                    if entries:
                        yield p, entries[0]
                pending = []
            if match is None:
                return

    def describe(self, indent: str) -> list[str]:
        lines = [
            f"{indent}intersect on the primary key (the small side read with its documents, "
            "or a leapfrog merge of index keys, chosen on each stream's first keys) of:"
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
                part = part_bytes(convert(value))
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
