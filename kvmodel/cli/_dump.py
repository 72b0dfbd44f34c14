"""``kvmodel dump`` and ``kvmodel load``: a store as newline-delimited JSON, and back.

The dump format (one JSON object per line, values in the typed JSON of
:mod:`kvmodel.cli._text`):

* a header ``{"kvmodel_dump": 1, "engine": "sqlite", "dumped_at_ms": ...}``;
* one line per entry: ``{"key": [...], "value": ..., "versionstamp": "...",
  "expire_at_ms": null | ms since the epoch}``; an entry of the reserved
  keyspace, where the object mapper keeps its model descriptions and index
  states, has ``"system_key": "base64"`` instead of ``"key"``;
* a trailer ``{"kvmodel_dump_end": true, "entries": N}``, so a cut-short dump is
  told from a whole one.

Every entry comes from one :class:`kvmodel.engines.base.Snapshot`: no commit
is half in a dump. Queue messages are not carried (they are not entries; a
dump taken while messages wait loses them), and versionstamps cannot be: the
loading store's commits make new ones. The dump's versionstamp is there for
reading.

A load writes entries in commits as large as the target's limits allow.
Without an option a key the target already holds stops the load; with
``if_absent`` such keys are skipped (so running the same load again resumes
it), with ``overwrite`` they are replaced. An entry whose deadline has passed
is skipped.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from kvmodel._atomic import check_commit_limits
from kvmodel._kv import Kv
from kvmodel._values import decode_value
from kvmodel.cli._text import format_key, key_from_json, key_to_json, value_from_json, value_to_json
from kvmodel.engines.base import (
    AtomicWrite,
    Check,
    Consistency,
    Mutation,
    MutationKind,
    ReadRange,
    Snapshot,
    SnapshotSource,
    describe_stored_key,
)
from kvmodel.errors import ConflictError, InvalidArgumentError
from kvmodel.keys import decode_key

__all__ = ["DumpError", "LoadReport", "dump", "load", "open_snapshot", "snapshot_entries"]

FORMAT_VERSION = 1
SYSTEM_PREFIX = b"\xff"
_PAGE = 1000
_STRONG = Consistency.STRONG


class DumpError(InvalidArgumentError):
    """A dump file that cannot be loaded, or a store that cannot be dumped."""


def open_snapshot(kv: Kv) -> Snapshot:
    """The engine's snapshot, or a DumpError when the engine offers none."""
    engine = kv.engine
    if not isinstance(engine, SnapshotSource):
        raise DumpError(
            f"The {type(engine).__name__} cannot read all its data at one point "
            "(it has no open_snapshot), so a dump could be torn; dump is refused."
        )
    return engine.open_snapshot()


def snapshot_entries(snapshot: Snapshot) -> Iterator[Any]:
    """Every entry of a snapshot in key order, user keys then the reserved keyspace."""
    start, end = b"", b"\xff" * 2050
    while True:
        page = snapshot.read(start, end, _PAGE)
        yield from page
        if len(page) < _PAGE:
            return
        start = page[-1].entry.key + b"\x00"


def dump(
    kv: Kv, out: IO[str], *, engine_name: str, now_ms: int, progress: Callable[[int], object]
) -> int:
    """Writes the whole store to ``out`` from one snapshot; returns the number of entries."""
    snapshot = open_snapshot(kv)
    try:
        out.write(
            json.dumps(
                {"kvmodel_dump": FORMAT_VERSION, "engine": engine_name, "dumped_at_ms": now_ms}
            )
            + "\n"
        )
        count = 0
        for item in snapshot_entries(snapshot):
            raw = item.entry
            line: dict[str, Any] = {}
            if raw.key.startswith(SYSTEM_PREFIX):
                line["system_key"] = base64.b64encode(raw.key).decode("ascii")
            else:
                line["key"] = key_to_json(decode_key(raw.key))
            # Refused, naming the key: a dump that skipped it would not restore the store.
            line["value"] = value_to_json(decode_value(raw.value, raw.encoding, raw.key))
            line["versionstamp"] = raw.versionstamp.hex()
            line["expire_at_ms"] = item.expire_at_ms
            out.write(json.dumps(line, ensure_ascii=False, allow_nan=False) + "\n")
            count += 1
            progress(count)
        out.write(json.dumps({"kvmodel_dump_end": True, "entries": count}) + "\n")
        return count
    finally:
        snapshot.close()


def count_entries(kv: Kv) -> int:
    """How many entries a dump of ``kv`` would write now (for a progress bar's total)."""
    snapshot = open_snapshot(kv)
    try:
        return sum(1 for _ in snapshot_entries(snapshot))
    finally:
        snapshot.close()


class LoadReport:
    """What a load did: entries read, written, skipped as present, skipped as expired."""

    def __init__(self) -> None:
        self.read = 0
        self.written = 0
        self.present = 0
        self.expired = 0
        self.complete = False

    def __str__(self) -> str:
        text = (
            f"{self.read} entries read: {self.written} written, "
            f"{self.present} already present, {self.expired} expired."
        )
        if not self.complete:
            text += " The dump has no trailer: it was cut short."
        return text


def _lines(source: Iterable[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, text in enumerate(source, 1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DumpError(f"Line {number} of the dump is not JSON: {exc.msg}.") from exc
        if not isinstance(obj, dict):
            raise DumpError(f"Line {number} of the dump is not a JSON object.")
        yield number, obj


def _mutation(kv: Kv, number: int, line: dict[str, Any]) -> tuple[Mutation, str]:
    """The SET an entry line stands for, and the key as shown in messages."""
    try:
        if "system_key" in line:
            key = base64.b64decode(line["system_key"], validate=True)
            if not key.startswith(SYSTEM_PREFIX) or len(key) > kv.limits.max_key_size:
                raise DumpError(f"Line {number} of the dump has an invalid system_key.")
            shown = f"system key {describe_stored_key(key)}"
        else:
            parts = key_from_json(line["key"])
            key = kv.write_key(parts)
            shown = f"key {format_key(parts)}"
        data, encoding = kv.encode_value(value_from_json(line["value"]))
        expire_at_ms = line.get("expire_at_ms")
        if expire_at_ms is not None and type(expire_at_ms) is not int:
            raise DumpError(f"Line {number} of the dump has an invalid expire_at_ms.")
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        if isinstance(exc, DumpError):
            raise
        raise DumpError(f"Line {number} of the dump is not an entry: {exc}") from exc
    return Mutation(key, MutationKind.SET, data, encoding, expire_at_ms), shown


class _Batch:
    """Mutations gathered up to the target's commit limits."""

    def __init__(self, kv: Kv, checked: bool, batch_size: int) -> None:
        self.kv = kv
        self.checked = checked
        self.batch_size = batch_size
        self.mutations: list[Mutation] = []
        self.shown: list[str] = []
        self.size = 0
        self.key_size = 0

    def fits(self, m: Mutation) -> bool:
        """True when ``m`` can join the batch (counted as check_commit_limits counts)."""
        limits = self.kv.limits
        n = len(self.mutations) + 1
        ops = 2 * n if self.checked else n
        size = self.size + (len(m.key) if self.checked else 0) + 2 * len(m.key) + len(m.value)
        return (
            n <= self.batch_size
            and n <= limits.max_mutations
            and (not self.checked or n <= limits.max_checks)
            and (limits.max_operations is None or ops <= limits.max_operations)
            and size <= limits.max_total_mutation_size
            and (limits.max_request_size is None or size <= limits.max_request_size)
            and self.key_size + len(m.key) <= limits.max_total_key_size
        )

    def add(self, m: Mutation, shown: str) -> None:
        self.mutations.append(m)
        self.shown.append(shown)
        self.size += (len(m.key) if self.checked else 0) + 2 * len(m.key) + len(m.value)
        self.key_size += len(m.key)


def _present(kv: Kv, keys: list[bytes]) -> set[bytes]:
    """The keys of ``keys`` the target holds now (one point read each)."""
    found: set[bytes] = set()
    for key in keys:
        if kv.read_range(ReadRange(key, key + b"\x00", 1), _STRONG):
            found.add(key)
    return found


def _commit(kv: Kv, batch: _Batch, mode: str, report: LoadReport) -> None:
    """Writes a batch; with checks, drops (if_absent) or reports (strict) present keys."""
    mutations = list(batch.mutations)
    shown = list(batch.shown)
    while mutations:
        checks = tuple(Check(m.key, None) for m in mutations) if batch.checked else ()
        write = AtomicWrite(checks, tuple(mutations), ())
        check_commit_limits(write.checks, write.mutations, (), kv.limits)
        # Each check key is passed as a 1-tuple, so failed_checks names raw keys.
        result = kv.commit_write(write, [(m.key,) for m in mutations])
        if result.ok:
            report.written += len(mutations)
            return
        failed = {k[0] for k in result.failed_checks}
        if not failed:
            failed = _present(kv, [m.key for m in mutations])
        if not failed:  # a key vanished again meanwhile: try the same batch again
            continue
        if mode != "if_absent":
            first = next(s for m, s in zip(mutations, shown, strict=True) if m.key in failed)
            raise ConflictError(
                f"The {first} is already in the target store; load with --if-absent to keep "
                "the keys it holds (this also resumes a load) or --overwrite to replace them.",
                keys=[k for k in failed],
            )
        report.present += len(failed)
        kept = [(m, s) for m, s in zip(mutations, shown, strict=True) if m.key not in failed]
        mutations = [m for m, _ in kept]
        shown = [s for _, s in kept]


def load(
    kv: Kv,
    source: Iterable[str],
    *,
    mode: str,
    batch_size: int,
    progress: Callable[[LoadReport], object],
) -> LoadReport:
    """Writes a dump's entries into ``kv``; ``mode`` is "strict", "if_absent" or "overwrite"."""
    if mode not in ("strict", "if_absent", "overwrite"):
        raise InvalidArgumentError(f"mode={mode!r} is not strict, if_absent or overwrite.")
    report = LoadReport()
    checked = mode != "overwrite"
    batch = _Batch(kv, checked, batch_size)
    lines = _lines(source)
    first = next(lines, None)
    if first is None or first[1].get("kvmodel_dump") != FORMAT_VERSION:
        raise DumpError(
            "The input is not a kvmodel dump: its first line is not "
            f'{{"kvmodel_dump": {FORMAT_VERSION}, ...}}.'
        )
    for number, line in lines:
        if line.get("kvmodel_dump_end") is True:
            if line.get("entries") != report.read:
                raise DumpError(
                    f"The dump's trailer says {line.get('entries')} entries but "
                    f"{report.read} came before it."
                )
            report.complete = True
            continue
        if report.complete:
            raise DumpError(f"Line {number} of the dump comes after its trailer.")
        mutation, shown = _mutation(kv, number, line)
        report.read += 1
        if mutation.expire_at_ms is not None and mutation.expire_at_ms <= kv.now_ms():
            report.expired += 1
            continue
        if not batch.fits(mutation):
            if not batch.mutations:
                raise DumpError(f"The {shown} on line {number} alone breaks the target's limits.")
            _commit(kv, batch, mode, report)
            progress(report)
            batch = _Batch(kv, checked, batch_size)
        batch.add(mutation, shown)
    if batch.mutations:
        _commit(kv, batch, mode, report)
    progress(report)
    return report
