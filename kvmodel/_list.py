"""``kv.list``: selector validation, Deno's cursors, and the batched iterator.

The paging state (:class:`ListState`) is pure: it says which range to read next
and turns raw entries into :class:`Entry` objects. The sync :class:`ListIterator`
and the async one in :mod:`kvmodel.aio` only differ in how they fetch.

Deno's rules (ext/kv ``RawSelector``): a selector is a prefix, a prefix with a
start or an end, or a start and an end. A prefix ``P`` covers
``[enc(P)+00, enc(P)+FF)``, so ``P`` itself is not listed. The cursor is the
base64url (padded) encoding of the last yielded key minus the selector's common
prefix; a forward resume starts strictly after it, a reverse one strictly
before.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgpack

from kvmodel._accel import speedups
from kvmodel._options import OptionLimitError
from kvmodel._records import Entry
from kvmodel._text import brief_repr, brief_value
from kvmodel._values import UNPACK_OPTIONS, decode_value
from kvmodel.engines.base import VALUE_ENCODING_MSGPACK, Consistency, RawEntry, ReadRange
from kvmodel.errors import InvalidArgumentError, LimitExceededError
from kvmodel.keys import decode_key, encode_key
from kvmodel.limits import MAX_CURSOR_LENGTH, MAX_READ_KEY_SIZE, MAX_VALUE_SIZE

__all__ = ["ListIterator", "ListState", "decode_entries"]

DEFAULT_BATCH_SIZE = 500


def decode_entries(raw: list[RawEntry]) -> list[Entry[Any]]:
    """The entries of a batch of engine records: keys and values decoded, stamps as hex.

    The pure-Python reference of the accelerator's twin of the same name.

    Raises:
        DecodeError: a key or a value cannot be decoded (the error names the key).
    """
    return [
        Entry(decode_key(r.key), decode_value(r.value, r.encoding, r.key), r.versionstamp.hex())
        for r in raw
    ]


decode_entries_py = decode_entries
if speedups is not None:
    speedups.install_entries(
        entry=Entry,
        decode_value=decode_value,
        unpackb=msgpack.unpackb,
        unpack_options=UNPACK_OPTIONS,
        msgpack_encoding=VALUE_ENCODING_MSGPACK,
        max_value_size=MAX_VALUE_SIZE,
    )
    decode_entries = speedups.decode_entries


def _common_prefix(a: bytes, b: bytes) -> bytes:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return a[:n]


def _encode_cursor(suffix: bytes) -> str:
    return base64.urlsafe_b64encode(suffix).decode("ascii")


# Deno decodes cursors with the padded URL-safe alphabet and nothing else.
_CURSOR_PATTERN = re.compile(r"(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2}==|[A-Za-z0-9_-]{3}=)?")


def _decode_cursor(cursor: object) -> bytes:
    if not isinstance(cursor, str):
        raise InvalidArgumentError(f"cursor must be a str, not {brief_value(cursor)}.")
    if len(cursor) > MAX_CURSOR_LENGTH:
        # A cursor names a key, and no key read is longer than MAX_READ_KEY_SIZE
        # bytes: refused before the pattern and the decoder look at it.
        raise OptionLimitError(
            f"cursor {brief_value(cursor)} is {len(cursor)} characters long; a cursor is at "
            f"most {MAX_CURSOR_LENGTH} (the base64url of a {MAX_READ_KEY_SIZE}-byte key). "
            "Pass the .cursor of an earlier listing.",
            limit=MAX_CURSOR_LENGTH,
            actual=len(cursor),
        )
    if _CURSOR_PATTERN.fullmatch(cursor) is None:
        raise InvalidArgumentError(f"cursor {brief_value(cursor)} is not valid padded base64url.")
    try:
        return base64.urlsafe_b64decode(cursor)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgumentError(f"cursor {brief_value(cursor)} is not valid base64url.") from exc


def _bound(name: str, key: Sequence[Any], *, extra: int = 0) -> bytes:
    """Encodes a selector key; ``extra`` bytes are appended to it to make a range bound."""
    encoded = encode_key(key)
    if len(encoded) + extra > MAX_READ_KEY_SIZE:
        raise LimitExceededError(
            f"The {name} key {brief_repr(key)} makes a range bound of {len(encoded) + extra} "
            f"bytes; read bounds are limited to {MAX_READ_KEY_SIZE} bytes.",
            limit=MAX_READ_KEY_SIZE,
            actual=len(encoded) + extra,
        )
    return encoded


class ListState:
    """Where a listing stands: the remaining byte range, the count, and the cursor."""

    __slots__ = (
        "_common",
        "_first",
        "_last",
        "batch_size",
        "consistency",
        "done",
        "remaining",
        "reverse",
    )

    def __init__(
        self,
        prefix: Sequence[Any] | None,
        start: Sequence[Any] | None,
        end: Sequence[Any] | None,
        *,
        limit: int | None,
        reverse: bool,
        cursor: str | None,
        batch_size: int | None,
        consistency: Consistency,
        max_batch: int,
    ) -> None:
        if not isinstance(reverse, bool):
            raise InvalidArgumentError(f"reverse must be a bool, not {brief_value(reverse)}.")
        if batch_size is not None and batch_size > max_batch:
            raise LimitExceededError(
                f"batch_size {batch_size} is over the limit of {max_batch} entries per batch.",
                limit=max_batch,
                actual=batch_size,
            )
        self.reverse = reverse
        self.consistency = consistency
        self.remaining = limit
        self.batch_size = batch_size or (
            min(limit, max_batch) if limit is not None else min(DEFAULT_BATCH_SIZE, max_batch)
        )
        self.done = False

        # Range bounds [first, last) and the explicit bounds a cursor must respect.
        explicit_start: bytes | None = None
        explicit_end: bytes | None = None
        if prefix is not None:
            # A prefix P reads [P+00, P+FF): Deno checks those bounds' size.
            p = _bound("prefix", prefix, extra=1)
            first, last = p + b"\x00", p + b"\xff"
            self._common = p
            if start is not None and end is not None:
                raise InvalidArgumentError(
                    "list() takes a prefix with a start or an end, not both; "
                    "use start and end without a prefix for a closed range."
                )
            if start is not None:
                explicit_start = first = _bound("start", start)
                if not (first.startswith(p) and first > p):
                    raise InvalidArgumentError(
                        f"start key {brief_repr(start)} is not inside prefix {brief_repr(prefix)}."
                    )
            if end is not None:
                explicit_end = last = _bound("end", end)
                if not (last.startswith(p) and last > p):
                    raise InvalidArgumentError(
                        f"end key {brief_repr(end)} is not inside prefix {brief_repr(prefix)}."
                    )
        else:
            if start is None or end is None:
                raise InvalidArgumentError(
                    "list() needs a prefix, a prefix with a start or an end, "
                    "or both a start and an end; list(prefix=()) lists every key."
                )
            explicit_start = first = _bound("start", start)
            explicit_end = last = _bound("end", end)
            if first > last:
                raise InvalidArgumentError(
                    f"start key {brief_repr(start)} sorts after end key {brief_repr(end)}."
                )
            self._common = _common_prefix(first, last)

        if cursor is not None:
            position = self._common + _decode_cursor(cursor)
            # kvmodel's rule: a cursor naming a key outside an explicit start/end is an
            # error (Deno only rejects the side it resumes from); outside a plain
            # prefix it simply yields nothing, as in Deno.
            if (explicit_start is not None and position < explicit_start) or (
                explicit_end is not None and position >= explicit_end
            ):
                raise InvalidArgumentError(
                    f"cursor {brief_value(cursor)} points outside the range of the selector."
                )
            if reverse:
                last = position
            else:
                first = position + b"\x00"
        self._first = first
        self._last = last
        if first >= last:
            self.done = True

    def cursor_for(self, key: bytes) -> str:
        """Deno's cursor for a position just past (or, reversed, before) ``key``."""
        return _encode_cursor(key[len(self._common) :])

    def next_read(self) -> ReadRange:
        """The next range to read (call only while not :meth:`stopped`)."""
        n = self.batch_size
        if self.remaining is not None:
            n = min(n, self.remaining)
        return ReadRange(self._first, self._last, n, self.reverse)

    def consume(self, read: ReadRange, raw: list[RawEntry]) -> list[Entry[Any]]:
        """Decodes a batch and moves the range past it."""
        entries = decode_entries(raw)
        self.advance(read, len(raw), raw[-1].key if raw else b"")
        return entries

    def advance(self, read: ReadRange, count: int, last_key: bytes) -> None:
        """Moves the range past a batch of ``count`` keys ending at ``last_key``."""
        if count:
            if self.reverse:
                self._last = last_key
            else:
                self._first = last_key + b"\x00"
        if self.remaining is not None:
            self.remaining -= count
        # A short batch means the range is exhausted. A batch cut by the limit
        # is not: the cursor then resumes after it (as in Deno).
        if count < read.limit:
            self.done = True

    def cursor_after(self, last_key: bytes | None, initial: str | None) -> str:
        """The cursor of a listing that yielded up to ``last_key`` (None: nothing yet).

        "" once the range is exhausted; ``initial`` (the cursor the listing
        started from) when nothing was yielded.
        """
        if self.done:
            return ""
        if last_key is None:
            return initial or ""
        return self.cursor_for(last_key)

    def stopped(self) -> bool:
        """True when no further read is needed."""
        return self.done or (self.remaining is not None and self.remaining <= 0)


class ListIterator(Iterator[Entry[Any]]):
    """The entries of a ``kv.list`` call, fetched in batches; ``.cursor`` resumes it."""

    def __init__(
        self,
        state: ListState,
        fetch: Callable[[ReadRange, Consistency], list[RawEntry]],
        cursor: str | None = None,
    ) -> None:
        self._state = state
        self._fetch = fetch
        self._raw: list[RawEntry] = []
        self._buffer: list[Entry[Any]] = []
        self._pos = 0
        self._initial_cursor = cursor or ""
        self._exhausted = False

    @property
    def cursor(self) -> str:
        """Where to resume: just past the last entry yielded, or "" once exhausted.

        As in Deno's ``KvListIterator``, the last entry's cursor stays after
        that entry is yielded, even when it is the last of the range; the cursor
        becomes "" only when a ``next`` finds no entry left in the range. A
        listing stopped by its ``limit`` keeps its last entry's cursor. Before
        anything is yielded it is the cursor the listing started from ("" for
        none).
        """
        if self._exhausted:
            return ""
        if self._pos == 0:  # nothing yielded yet
            return self._initial_cursor
        return self._state.cursor_for(self._raw[self._pos - 1].key)

    def needs_fetch(self) -> bool:
        """True when the next entry needs an engine read first."""
        return self._pos >= len(self._buffer) and not self._state.stopped()

    def __iter__(self) -> Iterator[Entry[Any]]:
        # A generator over the same position: a for loop resumes it far more
        # cheaply than it calls __next__, and next(listing) mixed in (or a
        # second loop) still sees each entry once, since both move self._pos.
        while True:
            pos = self._pos
            if pos < len(self._buffer):
                self._pos = pos + 1
                yield self._buffer[pos]
            elif not self._refill():
                return

    def __next__(self) -> Entry[Any]:
        while self._pos >= len(self._buffer):
            if not self._refill():
                raise StopIteration
        entry = self._buffer[self._pos]
        self._pos += 1
        return entry

    def _refill(self) -> bool:
        """Fetches the next batch; False when the listing has ended."""
        state = self._state
        if state.remaining is not None and state.remaining <= 0:
            return False  # the limit: Deno keeps the last entry's cursor
        if state.done:
            self._exhausted = True  # a next that found nothing: Deno's cursor is ""
            return False
        read = state.next_read()
        raw = self._fetch(read, state.consistency)
        self._buffer = state.consume(read, raw)
        self._raw = raw
        self._pos = 0
        return True
