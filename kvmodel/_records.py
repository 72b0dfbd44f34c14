"""The value objects the Kv API returns: Entry, CommitResult and the VERSIONSTAMP marker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final, Generic, TypeVar

import attrs

__all__ = ["VERSIONSTAMP", "CommitResult", "Entry", "Versionstamp"]

T = TypeVar("T")

Key = tuple[Any, ...]


class _VersionstampMarker:
    """The type of :data:`VERSIONSTAMP`; there is one instance."""

    _instance: _VersionstampMarker | None = None

    def __new__(cls) -> _VersionstampMarker:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "kvmodel.VERSIONSTAMP"

    def __reduce__(self) -> str:
        return "VERSIONSTAMP"


Versionstamp = _VersionstampMarker

VERSIONSTAMP: Final = _VersionstampMarker()
"""Put as the last part of a key in ``AtomicOperation.set`` to have it replaced by the
commit's versionstamp (a 20-character hex string), like Deno's ``commitVersionstamp()``.

    >>> import kvmodel as km
    >>> kv = km.open_kv()
    >>> r = kv.atomic().set(("events", km.VERSIONSTAMP), "hello").commit()
    >>> [e.key for e in kv.list(prefix=("events",))] == [("events", r.versionstamp)]
    True
"""


@attrs.frozen(slots=True)
class Entry(Generic[T]):
    """A key, its value and its versionstamp, as read at one moment.

    A missing key reads as ``Entry(key, None, None)``. Pass an Entry to
    ``AtomicOperation.check`` to commit only if the key has not changed since.
    """

    key: Key
    value: T | None
    versionstamp: str | None

    def __iter__(self) -> Iterator[Any]:
        """Unpacks as ``key, value, versionstamp = entry``."""
        yield self.key
        yield self.value
        yield self.versionstamp


@attrs.frozen(slots=True)
class CommitResult:
    """The outcome of a commit.

    ``ok`` is False when a check failed; then ``versionstamp`` is None, nothing
    was written, and ``failed_checks`` holds the keys whose check failed.
    """

    ok: bool
    versionstamp: str | None
    failed_checks: tuple[Key, ...] = ()

    def __bool__(self) -> bool:
        return self.ok
