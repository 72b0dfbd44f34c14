"""What the browser shows, read from a Kv with bounded work; and its checked writes.

Nothing here knows about HTTP: every function takes a :class:`kvmodel.Kv` and
returns plain records the templates render. Every read is bounded:

* a level of the key tree scans at most ``scan_limit`` entries; past that the
  level is *partial*: the children seen so far carry their counts, the
  following ones are found by skipping over each child's key range (one read
  of one key per child, at most :data:`MAX_CHILDREN` children) and show no
  count;
* a page of entries reads at most :data:`MAX_PAGE` entries;
* a model's document count stops at ``scan_limit`` ("at least");
* a level or a count also stops after :data:`MAX_SCAN_BYTES` of keys and
  values, so large values do not make a bounded scan a large read.

Writes go through the Kv API (``kv.atomic()``), so every limit and check of
the library applies; an edit carries the versionstamp the user saw, checked in
the same commit, so a value changed meanwhile is never overwritten.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import attrs

from kvmodel._kv import Kv
from kvmodel._values import decode_value
from kvmodel.cli._engine import QueueInfo, queue_info
from kvmodel.cli._text import format_key, format_value, key_to_json, value_from_json
from kvmodel.engines.base import Consistency, RawEntry, ReadRange, SnapshotSource
from kvmodel.errors import InvalidArgumentError, KvError
from kvmodel.keys import decode_key, encode_key, prefix_range

__all__ = [
    "MAX_CHILDREN",
    "MAX_PAGE",
    "MAX_SCAN_BYTES",
    "Child",
    "Level",
    "ModelView",
    "Page",
    "Row",
    "WriteOutcome",
    "count_keys",
    "delete_entry",
    "entries_page",
    "entry_row",
    "model_views",
    "queue_view",
    "set_entry",
    "tree_level",
]

MAX_PAGE = 200
"""The most entries one page of the table shows."""

MAX_CHILDREN = 500
"""The most children one level of the tree lists."""

MAX_SCAN_BYTES = 32 * 1024 * 1024
"""Bytes (keys plus values) one tree level or one count reads at most, whatever its key count."""

SHORT_VALUE = 240
"""Characters of a value the table shows before cutting it (the entry page shows all)."""

_SCAN_PAGE = 100  # entries per read of a scan, so the byte budget is checked often
_STRONG = Consistency.STRONG
_SYSTEM = b"\xff"
_MODELS = _SYSTEM + encode_key(("kvmodel", "models"))


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _read(kv: Kv, start: bytes, end: bytes, limit: int) -> list[RawEntry]:
    return kv.read_range(ReadRange(start, end, limit), _STRONG)


# ---------------------------------------------------------------------------
# The key tree


@attrs.frozen
class Child:
    """One key part under a prefix: how many keys and bytes lie under it (None: not counted)."""

    part_text: str
    key_text: str
    keys: int | None
    bytes: int | None
    is_key: bool  # the child's own key holds a value
    deeper: bool | None  # keys longer than the child's exist (None: not known)
    counted_all: bool


@attrs.frozen
class Level:
    """The children of one prefix, and whether the scan stopped early."""

    prefix_text: str
    crumbs: tuple[tuple[str, str], ...]  # (part text, key text) from the root
    children: tuple[Child, ...]
    scanned: int
    partial: bool
    more_children: bool


def _crumbs(prefix: tuple[Any, ...]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (format_key(prefix[i : i + 1]), format_key(prefix[: i + 1])) for i in range(len(prefix))
    )


def tree_level(kv: Kv, prefix: tuple[Any, ...], *, scan_limit: int) -> Level:
    """The children of ``prefix`` with key counts and bytes; reads at most ``scan_limit`` keys."""
    lo, hi = prefix_range(prefix) if prefix else (b"", _SYSTEM)
    depth = len(prefix)
    counts: dict[Any, list[int]] = {}
    order: list[Any] = []
    own: set[Any] = set()
    deeper: set[Any] = set()
    scanned = 0
    pos = lo
    partial = False
    last_key: tuple[Any, ...] | None = None
    read_bytes = 0
    while True:
        want = min(_SCAN_PAGE, scan_limit - scanned)
        if want <= 0 or read_bytes >= MAX_SCAN_BYTES:
            partial = bool(_read(kv, pos, hi, 1))
            break
        page = _read(kv, pos, hi, want)
        for raw in page:
            key = decode_key(raw.key)
            part = key[depth]
            row = counts.get(part)
            if row is None:
                row = counts[part] = [0, 0]
                order.append(part)
            row[0] += 1
            size = len(raw.key) + len(raw.value)
            row[1] += size
            read_bytes += size
            if len(key) == depth + 1:
                own.add(part)
            else:
                deeper.add(part)
            last_key = key
        scanned += len(page)
        if len(order) > MAX_CHILDREN:
            # Enough children to show: the first MAX_CHILDREN are counted whole
            # (a key of a later child came after them), the rest is not read.
            scanned = sum(counts[part][0] for part in order[:MAX_CHILDREN])
            break
        if len(page) < want:
            break
        pos = page[-1].key + b"\x00"
    children = [
        Child(
            format_key((part,)),
            format_key((*prefix, part)),
            counts[part][0],
            counts[part][1],
            part in own,
            part in deeper,
            True,
        )
        for part in order[:MAX_CHILDREN]
    ]
    more = len(order) > MAX_CHILDREN
    if partial and last_key is not None and not more:
        # The last child seen may have more keys; the next ones are found by
        # jumping over each child's range, one key read each.
        last_part = last_key[depth]
        children[-1] = attrs.evolve(children[-1], counted_all=False, deeper=None)
        pos = encode_key((*prefix, last_part)) + b"\xff"
        while len(children) < MAX_CHILDREN:
            found = _read(kv, pos, hi, 1)
            if not found:
                break
            key = decode_key(found[0].key)
            part = key[depth]
            children.append(
                Child(
                    format_key((part,)),
                    format_key((*prefix, part)),
                    None,
                    None,
                    len(key) == depth + 1,
                    None,
                    False,
                )
            )
            pos = encode_key((*prefix, part)) + b"\xff"
        else:
            more = bool(_read(kv, pos, hi, 1))
    return Level(format_key(prefix), _crumbs(prefix), tuple(children), scanned, partial, more)


# ---------------------------------------------------------------------------
# Entries


@attrs.frozen
class Row:
    """One entry as the table and the entry page show it."""

    key_text: str
    key_json: list[Any]
    kind: str
    value_text: str
    short_text: str
    versionstamp: str
    expires: str
    expiry_known: bool
    undecodable: bool = False


@attrs.frozen
class Page:
    """One page of entries and where the next one starts (hex of the last key, or "")."""

    rows: tuple[Row, ...]
    after: str
    expiry_known: bool


def _kind(value: object) -> str:
    if value is None:
        return "null"
    module = type(value).__module__
    name = type(value).__qualname__
    return name if module == "builtins" else f"{module.split('.')[0]}.{name}"


def _value_text(value: object) -> str:
    try:
        return format_value(value)
    except (InvalidArgumentError, TypeError, ValueError):
        return repr(value)  # a V8 value with no text form (a JS Map, a class instance, ...)


def _row(raw: RawEntry, expire_at_ms: int | None, expiry_known: bool) -> Row:
    key = decode_key(raw.key)
    try:
        value = decode_value(raw.value, raw.encoding, key)
    except (KvError, ImportError) as exc:
        text = f"<undecodable: {exc}>"
        return Row(
            format_key(key),
            key_to_json(key),
            "?",
            text,
            text,
            raw.versionstamp.hex(),
            _when(expire_at_ms),
            expiry_known,
            True,
        )
    text = _value_text(value)
    short = text if len(text) <= SHORT_VALUE else text[:SHORT_VALUE] + "..."
    return Row(
        format_key(key),
        key_to_json(key),
        _kind(value),
        text,
        short,
        raw.versionstamp.hex(),
        _when(expire_at_ms),
        expiry_known,
    )


def _read_with_expiry(
    kv: Kv, start: bytes, end: bytes, limit: int
) -> tuple[list[tuple[RawEntry, int | None]], bool]:
    """Entries of a range with their deadlines, where the engine can tell them."""
    engine = kv.engine
    if type(engine).__name__ == "MemoryEngine":
        # The memory engine's snapshot copies the whole store; its deadlines
        # are a dict beside the data, read directly (as kvmodel.cli._engine
        # reads engine layouts).
        expire_at: dict[bytes, int] = getattr(engine, "_expire_at", {})
        return [(r, expire_at.get(r.key)) for r in _read(kv, start, end, limit)], True
    if isinstance(engine, SnapshotSource):
        snapshot = engine.open_snapshot()
        try:
            return [(s.entry, s.expire_at_ms) for s in snapshot.read(start, end, limit)], True
        finally:
            snapshot.close()
    return [(r, None) for r in _read(kv, start, end, limit)], False


def entries_page(
    kv: Kv,
    prefix: tuple[Any, ...],
    *,
    start: tuple[Any, ...] | None,
    after: str,
    limit: int,
) -> Page:
    """A page of the entries under ``prefix`` from ``start`` (inclusive) or after ``after``."""
    limit = max(1, min(limit, MAX_PAGE))
    lo, hi = prefix_range(prefix) if prefix else (b"", _SYSTEM)
    if start is not None:
        lo = max(lo, encode_key(start))
    if after:
        try:
            lo = max(lo, bytes.fromhex(after) + b"\x00")
        except ValueError as exc:
            raise InvalidArgumentError(
                f"The page position {after!r} is not the hex of a key; start from the first page."
            ) from exc
    found, known = _read_with_expiry(kv, lo, hi, limit + 1)
    rows = tuple(_row(raw, deadline, known) for raw, deadline in found[:limit])
    next_after = found[limit - 1][0].key.hex() if len(found) > limit else ""
    return Page(rows, next_after, known)


def entry_row(kv: Kv, key: tuple[Any, ...]) -> Row | None:
    """One key's entry, or None when it is absent."""
    encoded = kv.read_key(key)
    found, known = _read_with_expiry(kv, encoded, encoded + b"\x00", 1)
    if not found:
        return None
    return _row(*found[0], known)


def count_keys(kv: Kv, prefix: tuple[Any, ...], limit: int) -> tuple[int, bool]:
    """How many keys lie under ``prefix``, counting at most ``limit``; and whether all were."""
    lo, hi = prefix_range(prefix)
    count = 0
    read_bytes = 0
    while True:
        want = min(_SCAN_PAGE, limit - count)
        if want <= 0 or read_bytes >= MAX_SCAN_BYTES:
            return count, not _read(kv, lo, hi, 1)
        page = _read(kv, lo, hi, want)
        count += len(page)
        read_bytes += sum(len(r.key) + len(r.value) for r in page)
        if len(page) < want:
            return count, True
        lo = page[-1].key + b"\x00"


# ---------------------------------------------------------------------------
# Models


@attrs.frozen
class IndexView:
    """One index as the stored description lists it."""

    name: str
    fields: tuple[str, ...]
    unique: bool
    each: bool
    state: str
    entries: int
    counted_all: bool


@attrs.frozen
class ModelView:
    """A model as its stored description describes it, with bounded counts."""

    prefix: str
    name: str
    version: int | None
    fields: tuple[str, ...]
    primary_key: tuple[str, ...]
    indexes: tuple[IndexView, ...]
    documents: int
    counted_all: bool


def _described(value: Any, limit: int, kv: Kv) -> ModelView | None:
    if not isinstance(value, dict) or not isinstance(value.get("indexes"), dict):
        return None
    prefix = value.get("_prefix")
    if not isinstance(prefix, str):
        return None
    documents, whole = count_keys(kv, (prefix,), limit)
    indexes = []
    for name, ix in sorted(value["indexes"].items()):
        if not isinstance(ix, dict):
            continue
        entries, all_entries = count_keys(kv, (f"{prefix}_{name}",), limit)
        indexes.append(
            IndexView(
                str(name),
                tuple(str(f) for f in ix.get("fields", ())),
                bool(ix.get("unique")),
                bool(ix.get("each")),
                str(ix.get("state", "?")),
                entries,
                all_entries,
            )
        )
    version = value.get("version")
    return ModelView(
        prefix,
        str(value.get("model", prefix)),
        version if isinstance(version, int) else None,
        tuple(str(f) for f in value.get("fields", ())),
        tuple(str(f) for f in value.get("primary_key", ())),
        tuple(indexes),
        documents,
        whole,
    )


def model_views(kv: Kv, *, scan_limit: int, only: str | None = None) -> list[ModelView]:
    """The models described in the store (each model prefix's stored description)."""
    out = []
    for raw in _read(kv, _MODELS + b"\x00", _MODELS + b"\xff", MAX_CHILDREN):
        try:
            prefix = decode_key(raw.key[1:])[2]
            value = decode_value(raw.value, raw.encoding)
        except (KvError, IndexError):
            continue
        if only is not None and prefix != only:
            continue
        if isinstance(value, dict) and isinstance(prefix, str):
            view = _described({**value, "_prefix": prefix}, scan_limit, kv)
            if view is not None:
                out.append(view)
    return out


# ---------------------------------------------------------------------------
# Queue


@attrs.frozen
class QueueView:
    """The queue's messages by state (the first ``MAX_PAGE``) and the dead-letter prefixes."""

    supported: bool
    why_not: str
    counts: dict[str, int]
    messages: tuple[dict[str, Any], ...]
    dead_letter_prefixes: tuple[str, ...]


def queue_view(kv: Kv) -> QueueView:
    """The queue as the engine's layout can be read (see kvmodel.cli._engine)."""
    info: QueueInfo = queue_info(kv.engine, kv.now_ms())
    counts = {s: info.count(s) for s in ("ready", "delayed", "leased", "quarantined")}
    prefixes: list[str] = []
    messages = []
    for m in info.messages[:MAX_PAGE]:
        messages.append(
            {
                "id": m.id,
                "state": m.state,
                "ready_at": _when(m.ready_at_ms),
                "attempt": "" if m.attempt is None else str(m.attempt),
                "value": _value_text(m.value),
                "dead": [format_key(k) for k in m.keys_if_undelivered],
                "note": m.note,
            }
        )
    for m in info.messages:
        for k in m.keys_if_undelivered:
            text = format_key(k[:-1]) if len(k) > 1 else format_key(k)
            if text not in prefixes:
                prefixes.append(text)
    return QueueView(info.supported, info.why_not, counts, tuple(messages), tuple(prefixes[:20]))


# ---------------------------------------------------------------------------
# Writes


@attrs.frozen
class WriteOutcome:
    """What a write did: ok, or refused as stale with the entry as it is now."""

    ok: bool
    message: str
    current: Row | None = None


def parse_input(text: str, form: str) -> Any:
    """The value a form's text means: the command line's text form, a plain string or typed JSON."""
    import json

    from kvmodel.cli._text import parse_value

    if form == "string":
        return text
    if form == "json":
        try:
            return value_from_json(json.loads(text))
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError(f"The value is not JSON: {exc.msg}.") from exc
    if form == "text":
        return parse_value(text)
    raise InvalidArgumentError(f"The value form {form!r} is not text, string or json.")


def _stale(kv: Kv, key: tuple[Any, ...], verb: str) -> WriteOutcome:
    now = entry_row(kv, key)
    state = "it was deleted" if now is None else f"its versionstamp is now {now.versionstamp}"
    return WriteOutcome(
        False,
        f"The key {format_key(key)} changed since the page showed it ({state}); it was not "
        f"{verb}. Look at the current value below and edit that one.",
        now,
    )


def set_entry(
    kv: Kv,
    key: tuple[Any, ...],
    value: Any,
    *,
    expected: str | None,
    expire_in: float | None = None,
) -> WriteOutcome:
    """Sets ``key`` if its versionstamp is still ``expected`` (None: if it is absent)."""
    result = kv.atomic().check((key, expected)).set(key, value, expire_in=expire_in).commit()
    if not result.ok:
        return _stale(kv, key, "overwritten" if expected else "created")
    return WriteOutcome(True, f"Set {format_key(key)} (versionstamp {result.versionstamp}).")


def delete_entry(kv: Kv, key: tuple[Any, ...], *, expected: str) -> WriteOutcome:
    """Deletes ``key`` if its versionstamp is still ``expected``."""
    result = kv.atomic().check((key, expected)).delete(key).commit()
    if not result.ok:
        return _stale(kv, key, "deleted")
    return WriteOutcome(True, f"Deleted {format_key(key)}.")
