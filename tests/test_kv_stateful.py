"""Stateful test of kvmodel.Kv against a plain dict model, on the memory and SQLite engines.

Random sequences of set, delete, sum, atomic commits with passing and failing
checks, and listings with random selectors run against both a real Kv and a
dict of key -> (value, versionstamp); after every step the whole keyspace must
equal the model. Run ``pytest --hypothesis-profile=slow`` for longer runs.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kvmodel import InvalidArgumentError, Kv, KvTypeError, KvU64
from kvmodel.engines.memory import MemoryEngine
from kvmodel.engines.sqlite import SqliteEngine

Key = tuple[Any, ...]

# Keys are (str,) or (str, int): within this domain Python's tuple order is the
# order of the key encoding, so the model can sort without the codec. A small
# domain makes collisions (overwrites, stale checks, shared prefixes) common.
_FIRST = st.sampled_from(["a", "ab", "b"])
keys = st.one_of(st.tuples(_FIRST), st.tuples(_FIRST, st.integers(min_value=-2, max_value=3)))
plain_values = st.one_of(
    st.none(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=3),
    st.lists(st.integers(min_value=0, max_value=9), max_size=3),
)
u64s = st.integers(min_value=0, max_value=2**64 - 1).map(KvU64)
values = st.one_of(plain_values, u64s)
# A mutation: ("set", key, value), ("delete", key, None) or ("sum", key, KvU64).
mutations = st.one_of(
    st.tuples(st.just("set"), keys, values),
    st.tuples(st.just("delete"), keys, st.none()),
    st.tuples(st.just("sum"), keys, u64s),
)
# How a check names its versionstamp: the current one, a wrong one, or None.
check_kinds = st.sampled_from(["current", "stale", "absent"])
prefixes = st.sampled_from([(), ("a",), ("ab",), ("b",), ("c",)])

_STALE = "0" * 20  # no commit ever gets this versionstamp (counters start above 0)


class KvModelMachine(RuleBasedStateMachine):
    """Drives one Kv and a dict model with the same random operations."""

    open_engine: Callable[[Path], Any]

    def __init__(self) -> None:
        super().__init__()
        self._dir = Path(tempfile.mkdtemp(prefix="kvmodel-stateful-"))
        self.kv = Kv(type(self).open_engine(self._dir))
        self.model: dict[Key, tuple[Any, str]] = {}
        self.last_stamp = ""

    def teardown(self) -> None:
        self.kv.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------

    def _stamp(self, result: Any) -> str:
        """Checks a successful commit's versionstamp is newer than all before, and returns it."""
        assert result.ok
        stamp: str = result.versionstamp
        assert stamp > self.last_stamp
        self.last_stamp = stamp
        return stamp

    def _expected(self, model: dict[Key, tuple[Any, str]]) -> list[tuple[Key, Any, str]]:
        return [(k, v, s) for k, (v, s) in sorted(model.items())]

    @staticmethod
    def _apply(
        model: dict[Key, tuple[Any, str]], ops: list[tuple[str, Key, Any]], stamp: str
    ) -> bool:
        """Applies mutations to ``model`` in order; False if a sum meets a non-KvU64."""
        for op, key, value in ops:
            if op == "set":
                model[key] = (value, stamp)
            elif op == "delete":
                model.pop(key, None)
            else:
                current = model.get(key)
                if current is None:
                    model[key] = (value, stamp)
                elif not isinstance(current[0], KvU64):
                    return False
                else:
                    model[key] = (KvU64((current[0].value + value.value) % 2**64), stamp)
        return True

    # -- rules -----------------------------------------------------------------------

    @rule(key=keys, value=values)
    def set(self, key: Key, value: Any) -> None:
        """kv.set always succeeds and overwrites."""
        self.model[key] = (value, self._stamp(self.kv.set(key, value)))

    @rule(key=keys)
    def delete(self, key: Key) -> None:
        """kv.delete removes the key if present."""
        self.kv.delete(key)
        self.model.pop(key, None)

    @rule(key=keys, n=u64s)
    def sum(self, key: Key, n: KvU64) -> None:
        """sum adds modulo 2**64, stores n on a missing key, and rejects non-KvU64 values."""
        atomic = self.kv.atomic().sum(key, n)
        scratch = dict(self.model)
        if not self._apply(scratch, [("sum", key, n)], "pending"):
            with pytest.raises(KvTypeError):
                atomic.commit()
            return
        stamp = self._stamp(atomic.commit())
        self._apply(self.model, [("sum", key, n)], stamp)

    @rule(
        checks=st.lists(st.tuples(keys, check_kinds), max_size=3),
        ops=st.lists(mutations, min_size=1, max_size=4),
    )
    def atomic(self, checks: list[tuple[Key, str]], ops: list[tuple[str, Key, Any]]) -> None:
        """An atomic commit applies everything iff all checks pass, else writes nothing."""
        atomic = self.kv.atomic()
        failed: list[Key] = []
        for key, kind in checks:
            current = self.model.get(key)
            current_stamp = None if current is None else current[1]
            stamp = {"current": current_stamp, "stale": _STALE, "absent": None}[kind]
            atomic.check((key, stamp))
            if stamp != current_stamp:
                failed.append(key)
        for op, key, value in ops:
            if op == "set":
                atomic.set(key, value)
            elif op == "delete":
                atomic.delete(key)
            else:
                atomic.sum(key, value)
        scratch = dict(self.model)
        type_ok = self._apply(scratch, ops, "pending")
        if failed and not type_ok:
            # Checks fail and a sum would fail too: either outcome writes nothing.
            try:
                result = atomic.commit()
            except KvTypeError:
                return
            assert not result.ok
            return
        if not type_ok:
            with pytest.raises(KvTypeError):
                atomic.commit()
            return
        result = atomic.commit()
        if failed:
            assert result.ok is False
            assert result.versionstamp is None
            assert result.failed_checks == tuple(failed)
            return
        stamp = self._stamp(result)
        self._apply(self.model, ops, stamp)

    @rule(
        prefix=prefixes,
        bound=st.one_of(st.none(), st.tuples(st.sampled_from(["start", "end"]), keys)),
        limit=st.one_of(st.none(), st.integers(min_value=1, max_value=6)),
        reverse=st.booleans(),
        batch_size=st.one_of(st.none(), st.integers(min_value=1, max_value=4)),
    )
    def list_prefix(
        self,
        prefix: Key,
        bound: tuple[str, Key] | None,
        limit: int | None,
        reverse: bool,
        batch_size: int | None,
    ) -> None:
        """list(prefix, start|end) returns the model's matching keys in order."""
        selector: dict[str, Any] = {"prefix": prefix}
        matching = [k for k in self.model if len(k) > len(prefix) and k[: len(prefix)] == prefix]
        if bound is not None:
            name, key = bound
            selector[name] = key
            if not (len(key) > len(prefix) and key[: len(prefix)] == prefix):
                with pytest.raises(InvalidArgumentError):
                    list(self.kv.list(**selector))
                return
            matching = [k for k in matching if (k >= key if name == "start" else k < key)]
        self._check_listing(selector, matching, limit, reverse, batch_size)

    @rule(
        start=keys,
        end=keys,
        limit=st.one_of(st.none(), st.integers(min_value=1, max_value=6)),
        reverse=st.booleans(),
    )
    def list_range(self, start: Key, end: Key, limit: int | None, reverse: bool) -> None:
        """list(start, end) returns the model's keys in [start, end); start > end is an error."""
        if start > end:
            with pytest.raises(InvalidArgumentError):
                list(self.kv.list(start=start, end=end))
            return
        matching = [k for k in self.model if start <= k < end]
        self._check_listing({"start": start, "end": end}, matching, limit, reverse, None)

    def _check_listing(
        self,
        selector: dict[str, Any],
        matching: list[Key],
        limit: int | None,
        reverse: bool,
        batch_size: int | None,
    ) -> None:
        ordered = sorted(matching, reverse=reverse)
        expected = [(k, *self.model[k]) for k in ordered]
        it = self.kv.list(**selector, limit=limit, reverse=reverse, batch_size=batch_size)
        got = [(e.key, e.value, e.versionstamp) for e in it]
        assert got == expected[:limit]
        if limit is not None and len(expected) > limit:
            # The cursor resumes exactly where the page stopped.
            rest = self.kv.list(**selector, reverse=reverse, cursor=it.cursor)
            assert [(e.key, e.value, e.versionstamp) for e in rest] == expected[limit:]
        elif limit is None or len(expected) < limit:
            assert it.cursor == ""

    # -- invariant -------------------------------------------------------------------

    @invariant()
    def keyspace_equals_model(self) -> None:
        """The whole keyspace, values and versionstamps included, equals the model."""
        got = [(e.key, e.value, e.versionstamp) for e in self.kv.list(prefix=())]
        assert got == self._expected(self.model)


def _memory(directory: Path) -> MemoryEngine:
    return MemoryEngine()


def _sqlite(directory: Path) -> SqliteEngine:
    return SqliteEngine(directory / "kv.db")


# Modest by default so the suite stays fast; ``--hypothesis-profile=slow``
# (registered in conftest.py) runs many more and longer random programs.
if settings.get_current_profile_name() == "default":
    _settings = settings(max_examples=50, stateful_step_count=30, deadline=None, derandomize=True)
else:
    _settings = settings(deadline=None)


class MemoryMachine(KvModelMachine):
    """The model machine on a MemoryEngine."""

    open_engine = staticmethod(_memory)


class SqliteMachine(KvModelMachine):
    """The model machine on a SqliteEngine in a temporary file."""

    open_engine = staticmethod(_sqlite)


TestMemoryKv = MemoryMachine.TestCase
TestMemoryKv.settings = _settings
TestSqliteKv = SqliteMachine.TestCase
TestSqliteKv.settings = _settings
