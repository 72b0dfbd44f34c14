"""Index consistency checks: :func:`check_indexes` and its :class:`IndexReport`.

The invariant kvmodel maintains is that the index entries are exactly those
derivable from the documents: every entry points at a document whose indexed
values are the entry's, every document has all its entries, and no two
documents share a unique value. ``check_indexes`` verifies it by listing every
document and every index entry; run it on a quiescent database (the listings
are not one snapshot).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from kvmodel.errors import DecodeError
from kvmodel.keys import decode_key, encode_key
from kvmodel.orm._convert import Key
from kvmodel.orm.model import Model, model_info

if TYPE_CHECKING:
    from kvmodel._kv import Kv

__all__ = ["IndexProblem", "IndexReport", "check_indexes"]


@attrs.frozen
class IndexProblem:
    """One inconsistency between documents and index entries.

    ``kind`` is one of ``"dangling"`` (an entry with no matching document),
    ``"missing"`` (a document without its entry), ``"wrong_value"`` (an entry
    whose stored value is not its document's encoded primary key) or ``"duplicate"``
    (documents sharing a unique value).
    """

    kind: str
    index: str
    key: Key
    detail: str


@attrs.frozen
class IndexReport:
    """The result of :func:`check_indexes`; truthy when everything is consistent."""

    problems: tuple[IndexProblem, ...]
    documents: int
    entries: int

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.ok:
            return f"{self.documents} documents and {self.entries} index entries are consistent."
        lines = [f"{len(self.problems)} index problem(s):"]
        lines += [f"  {p.kind}: {p.index} {p.key!r}: {p.detail}" for p in self.problems]
        return "\n".join(lines)


def check_indexes(kv: Kv, *models: type[Model]) -> IndexReport:
    """Checks that the index entries of ``models`` are exactly those their documents imply.

    >>> import kvmodel as km
    >>> class Member(km.Model, prefix="members"):
    ...     id: str = km.field(primary_key=True)
    ...     email: str
    ...     by_email = km.Unique("email")
    >>> kv = km.open_kv()
    >>> with km.Session(kv) as s:
    ...     s.add(Member(id="m1", email="a@x"))
    >>> km.check_indexes(kv, Member).ok
    True
    """
    problems: list[IndexProblem] = []
    n_docs = 0
    n_entries = 0
    for model in models:
        info = model_info(model)
        expected: dict[str, dict[Key, Any]] = {ix.key_prefix: {} for ix in info.indexes}
        owners: dict[Key, Key] = {}
        for entry in kv.list(prefix=(info.prefix,), batch_size=1000):
            n_docs += 1
            pk = entry.key[1:]
            form: Any = entry.value
            target = encode_key(entry.key)
            for index in info.indexes:
                e = index._entry(form, pk, target)
                if e is None:
                    continue
                key, value = e
                if key in expected[index.key_prefix]:
                    problems.append(
                        IndexProblem(
                            "duplicate",
                            index.qualname,
                            key,
                            f"documents {owners[key]!r} and {entry.key!r} share this value",
                        )
                    )
                    continue
                expected[index.key_prefix][key] = value
                owners[key] = entry.key
        for index in info.indexes:
            want = expected[index.key_prefix]
            seen: set[Key] = set()
            for entry in kv.list(prefix=(index.key_prefix,), batch_size=1000):
                n_entries += 1
                key = entry.key
                seen.add(key)
                if key not in want:
                    problems.append(
                        IndexProblem(
                            "dangling", index.qualname, key, "no document has these values"
                        )
                    )
                elif entry.value != want[key]:
                    problems.append(
                        IndexProblem(
                            "wrong_value",
                            index.qualname,
                            key,
                            f"points at {_pointee(entry.value)}, but {owners[key]!r} "
                            "holds the value",
                        )
                    )
            for key in want.keys() - seen:
                problems.append(
                    IndexProblem(
                        "missing",
                        index.qualname,
                        key,
                        f"document {owners[key]!r} has no entry in the index",
                    )
                )
    return IndexReport(tuple(problems), n_docs, n_entries)


def _pointee(value: Any) -> str:
    """What an index entry's value points at, for a report: the decoded key if it is one."""
    if isinstance(value, bytes):
        try:
            return repr(decode_key(value))
        except DecodeError:
            pass
    return repr(value)
