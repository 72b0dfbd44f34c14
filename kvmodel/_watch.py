"""``kv.watch``: turns an engine's wake-ups into a stream of changed entries.

Engines may wake a watch spuriously (a commit to another key); unless ``raw``
is set, an item is only emitted when a watched key's versionstamp changed,
which is Deno's rule. Intermediate states between two reads may coalesce.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any

from kvmodel._records import Entry
from kvmodel._values import decode_value
from kvmodel.engines.base import RawEntry, WatchStream
from kvmodel.errors import KvClosedError

__all__ = ["WatchIterator"]

_Stamps = tuple[bytes | None, ...]


class WatchIterator(Iterator[list[Entry[Any]]]):
    """Yields the entries of the watched keys now and after each change; closable.

    Iteration ends when :meth:`close` is called or the Kv closes.
    """

    def __init__(self, stream: WatchStream, keys: list[tuple[Any, ...]], *, raw: bool) -> None:
        self._stream = stream
        self._keys = keys
        self._raw = raw
        self._last: _Stamps | None = None
        self._closed = False

    def poll(self, timeout: float | None = None) -> list[Entry[Any]] | None:
        """The next changed entries, or None if ``timeout`` seconds pass without a change.

        Raises:
            StopIteration: the watch or the Kv was closed.
        """
        while True:
            if self._closed:
                raise StopIteration
            try:
                found = self._stream.next(timeout)
            except KvClosedError:
                self._closed = True
                raise StopIteration from None
            if found is None:
                return None
            stamps = tuple(None if r is None else r.versionstamp for r in found)
            if self._raw or stamps != self._last:
                self._last = stamps
                return self._decode(found)

    def _decode(self, found: list[RawEntry | None]) -> list[Entry[Any]]:
        return [
            Entry(key, None, None)
            if r is None
            else Entry(key, decode_value(r.value, r.encoding, key), r.versionstamp.hex())
            for key, r in zip(self._keys, found, strict=True)
        ]

    def __iter__(self) -> WatchIterator:
        return self

    def __next__(self) -> list[Entry[Any]]:
        while True:
            entries = self.poll(None)
            if entries is not None:
                return entries

    def close(self) -> None:
        """Ends the watch; a ``next`` blocked in another thread returns."""
        self._closed = True
        self._stream.close()

    def __enter__(self) -> WatchIterator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
