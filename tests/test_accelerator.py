"""The compiled accelerator against its pure-Python reference: same answers, same errors.

kvmodel._speedups (Cython) mirrors the key codec, SQLite's row checks and the
decoding of a batch of entries. Hypothesis feeds both implementations the same
well-formed and hostile input; they must return equal results or raise the same
error with the same message, so the two can never drift apart.

Without the compiled module these tests skip, unless KVMODEL_REQUIRE_ACCELERATOR=1
(as ``make test`` and CI set it), which turns a missing build into a failure.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import attrs
import msgpack
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import kvmodel as km
from kvmodel import _accel, _list, keys
from kvmodel._values import encode_value
from kvmodel.engines import _sqlite_rows
from kvmodel.engines.base import (
    VALUE_ENCODING_BYTES,
    VALUE_ENCODING_LE64,
    VALUE_ENCODING_MSGPACK,
    VALUE_ENCODING_V8,
    RawEntry,
)
from kvmodel.testing.strategies import corrupted, key_parts, values

REQUIRED = os.environ.get("KVMODEL_REQUIRE_ACCELERATOR", "") not in ("", "0")
FORCED_PURE = os.environ.get(_accel.PURE_PYTHON_ENV, "") not in ("", "0")

if REQUIRED and not FORCED_PURE and not _accel.accelerated:
    raise RuntimeError(
        "KVMODEL_REQUIRE_ACCELERATOR=1 but kvmodel._speedups is not built: "
        "run `make dev` (pip install -e . with Cython and a C compiler)."
    )

needs_accelerator = pytest.mark.skipif(
    not _accel.accelerated, reason="the compiled accelerator is not built or is switched off"
)


def _outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """What a call gives: ("ok", result) or ("error", (type, message))."""
    try:
        return "ok", fn(*args)
    except Exception as exc:
        return "error", (type(exc), str(exc))


def _same(a: Any, b: Any) -> bool:
    """Equality that counts NaN equal to NaN and tells -0.0 from 0.0 (keys do)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, RawEntry | km.Entry):
        return _same(
            tuple(attr(a) for attr in _FIELDS[type(a)]), tuple(attr(b) for attr in _FIELDS[type(b)])
        )
    return bool(a == b)


_FIELDS: dict[type, tuple[Callable[[Any], Any], ...]] = {
    RawEntry: (lambda e: e.key, lambda e: e.value, lambda e: e.encoding, lambda e: e.versionstamp),
    km.Entry: (lambda e: e.key, lambda e: e.value, lambda e: e.versionstamp),
}


def _agree(compiled: Callable[..., Any], pure: Callable[..., Any], *args: Any) -> None:
    got, want = _outcome(compiled, *args), _outcome(pure, *args)
    assert got[0] == want[0], (got, want)
    if got[0] == "ok":
        assert _same(got[1], want[1]), (got, want)
    else:
        assert got[1] == want[1]


class _Str(str):
    pass


class _Int(int):
    pass


# Parts of every kind the codec meets: the edges of each C fast path (63 and 64
# bits, NaN and -0.0, NUL bytes) and what it must hand over (subclasses,
# bytes-likes, lone surrogates, huge ints, wrong types).
_edge_ints = st.sampled_from(
    [
        0,
        1,
        -1,
        255,
        256,
        -256,
        -257,
        2**56,
        2**63 - 1,
        2**63,
        -(2**63),
        -(2**63) - 1,
        2**64 - 1,
        2**64,
        -(2**64) + 1,
        -(2**64),
        2**2040 - 1,
        -(2**2040) + 1,
        2**2040,
    ]
)
_odd_parts = st.one_of(
    _edge_ints,
    st.integers(),
    st.floats(allow_nan=True),
    st.sampled_from([-0.0, 0.0, math.inf, -math.inf, float("nan"), -float("nan")]),
    st.text(alphabet=st.characters(codec=None)),  # lone surrogates included
    st.binary(),
    st.builds(_Str, st.text(max_size=5)),
    st.builds(_Int, st.integers()),
    st.builds(bytearray, st.binary(max_size=5)),
    st.binary(max_size=5).map(memoryview),
    st.sampled_from([None, [], (), object, {"a": 1}, 1j]),
)
_any_keys = st.one_of(
    st.tuples(),
    st.lists(st.one_of(key_parts(allow_nan=True), _odd_parts), max_size=6).map(tuple),
    st.lists(key_parts(), max_size=4),  # a list, not a tuple
    st.sampled_from(["users", b"users", 7, None]),
    st.lists(st.text(max_size=300), min_size=1, max_size=12).map(tuple),  # past the C buffer
)


@needs_accelerator
@given(_any_keys)
@example(("a\x00b", b"\x00\xff", -(2**63), 2**63))
@example(("\ud800",))
@example(tuple("x" * 2000 for _ in range(3)))
def test_encode_key_agrees_with_the_reference(key: Any) -> None:
    _agree(keys.encode_key, keys.encode_key_py, key)


@st.composite
def _key_bytes(draw: st.DrawFn) -> bytes:
    """Encoded keys, whole or damaged (cut, flipped, tags swapped), or random bytes."""
    kind = draw(st.integers(0, 2))
    if kind == 2:
        return draw(st.binary(max_size=40))
    key = draw(st.lists(st.one_of(key_parts(allow_nan=True), _edge_ints), max_size=5).map(tuple))
    try:
        data = keys.encode_key_py(key)
    except km.InvalidKeyError:  # an int past 2**2040 has no encoding
        return draw(st.binary(max_size=40))
    return data if kind == 0 or not data else draw(corrupted(st.just(data)))


@needs_accelerator
@given(_key_bytes())
@example(b"\x02a\x00\xff\x00")  # an escaped NUL in a str
@example(b"\x15\x00")  # an int with a leading zero byte
@example(b"\x02\xff\x00")  # bad UTF-8
@example(b"\x21\x7f\xf8\x00\x00\x00\x00\x00\x01")  # a NaN that is not canonical
@example(b"\x1d\x09\x01\x00\x00\x00\x00\x00\x00\x00\x00")  # a 9-byte int
@example(b"\x0c\x00\x00\x00\x00\x00\x00\x00\x00")  # -(2**64 - 1)
def test_decode_key_agrees_with_the_reference(data: bytes) -> None:
    _agree(keys.decode_key, keys.decode_key_py, data)


@needs_accelerator
@given(st.one_of(st.builds(bytearray, st.binary(max_size=10)), st.sampled_from(["ab", None, 3])))
def test_decode_key_of_other_types_agrees_with_the_reference(data: Any) -> None:
    _agree(keys.decode_key, keys.decode_key_py, data)


_column = st.one_of(
    st.binary(max_size=20),
    st.integers(min_value=-3, max_value=2**65),
    st.sampled_from([None, "text", 1.5, b"x" * 70_000, 2**64 - 1, 2**64, True]),
)


@st.composite
def _rows(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """kv rows as SQLite hands them back, mostly well formed, some damaged in any column."""
    out = []
    for _ in range(draw(st.integers(0, 5))):
        row: list[Any] = [
            draw(st.binary(min_size=1, max_size=12)),
            draw(st.binary(max_size=20)),
            draw(st.sampled_from([1, 2, 3, 4])),
            draw(st.integers(0, 2**64 - 1)),
            draw(st.one_of(st.none(), st.integers(0, 2**40))),
        ]
        if draw(st.integers(0, 3)) == 0:
            row[draw(st.integers(0, 4))] = draw(_column)
        out.append(tuple(row))
    return out


@needs_accelerator
@given(_rows())
@example([(b"\x02k\x00", b"v", 1, 5, None), (b"\x02k\x01", "text", 1, 5, None)])
@example([(b"k" * 3000, b"v", 1, 0, None)])
def test_checked_entries_agree_with_the_reference(rows: list[tuple[Any, ...]]) -> None:
    _agree(_sqlite_rows.checked_entries, _sqlite_rows.checked_entries_py, rows)


def _stored(value: Any) -> tuple[bytes, int]:
    return encode_value(value)


@st.composite
def _raw_entries(draw: st.DrawFn) -> list[RawEntry]:
    """Engine records with valid or damaged keys and values of every encoding."""
    out = []
    for _ in range(draw(st.integers(0, 5))):
        key = draw(_key_bytes())
        choice = draw(st.integers(0, 4))
        if choice == 0:
            data, enc = _stored(draw(values(max_leaves=5)))
        elif choice == 1:
            data, enc = draw(st.binary(max_size=16)), VALUE_ENCODING_MSGPACK  # often invalid
        elif choice == 2:
            data, enc = draw(st.binary(max_size=9)), VALUE_ENCODING_LE64
        elif choice == 3:
            data, enc = draw(st.binary(max_size=9)), VALUE_ENCODING_BYTES
        else:
            data, enc = (
                draw(st.binary(max_size=9)),
                draw(st.sampled_from([0, 7, VALUE_ENCODING_V8])),
            )
        stamp = draw(st.binary(min_size=10, max_size=10))
        out.append(RawEntry(key, data, enc, stamp))
    return out


@needs_accelerator
@given(_raw_entries())
@example([RawEntry(b"\x02k\x00", msgpack.packb([1, 2]) + b"\x00", 1, bytes(10))])  # extra data
@example([RawEntry(b"\x02k\x00", b"\xc1", 1, bytes(10))])  # a reserved msgpack byte
@example([RawEntry(b"\x02k\x00", b"\x00" * 70_000, 1, bytes(10))])  # past the value limit
def test_decode_entries_agrees_with_the_reference(raw: list[RawEntry]) -> None:
    _agree(_list.decode_entries, _list.decode_entries_py, raw)


@needs_accelerator
def test_the_public_names_are_the_compiled_twins() -> None:
    assert km.accelerated is True
    assert keys.encode_key is not keys.encode_key_py
    assert keys.decode_key.__doc__ == keys.decode_key_py.__doc__
    assert km.Kv is not None and _list.decode_entries is not _list.decode_entries_py
    assert _sqlite_rows.checked_linked is not _sqlite_rows.checked_linked_py


def _probe(env: dict[str, str]) -> str:
    code = (
        "import kvmodel, kvmodel.keys as k; "
        "print(kvmodel.accelerated, k.encode_key is k.encode_key_py, k.encode_key(('a', 1)).hex())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def test_the_environment_variable_forces_the_pure_python_path() -> None:
    assert _probe({_accel.PURE_PYTHON_ENV: "1"}) == "False True 0261001501"


@needs_accelerator
def test_without_the_variable_the_accelerator_runs() -> None:
    assert _probe({_accel.PURE_PYTHON_ENV: "0"}) == "True False 0261001501"


# -- the object mapper's detached loading --------------------------------------


class Plain(km.Model, prefix="plain"):
    """Scalar fields only: the compiled loop builds it without cattrs."""

    id: str = km.field(primary_key=True)
    n: int | None = None
    ratio: float = 0.0
    flag: bool = False
    blob: bytes = b""
    label: str = "x"
    required: int


class Rich(km.Model, prefix="rich"):
    """A container field: the compiled loop hands each document to the reference."""

    id: int = km.field(primary_key=True)
    tags: list[str] = km.field(factory=list)


_form_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=2),
)


@st.composite
def _documents(draw: st.DrawFn) -> list[RawEntry | None]:
    """Stored documents of Plain and Rich, well formed or not, with strays among them."""
    out: list[RawEntry | None] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            out.append(None)
            continue
        model = Rich if kind == 1 else Plain
        pk: Any = draw(st.integers()) if model is Rich else draw(st.text(max_size=5))
        own = model_prefix(model)
        prefix = draw(st.sampled_from([own, "other"])) if kind == 2 else own
        key = keys.encode_key_py((prefix, pk))
        form: Any
        if kind == 3:
            form = draw(_form_values)  # not a map at all
        else:
            names = ["id", "n", "ratio", "flag", "blob", "label", "required", "tags", "$v", "extra"]
            form = {
                name: draw(_form_values)
                for name in names
                if draw(st.integers(0, 2))  # each field present two times in three
            }
            if draw(st.booleans()):  # mostly values of the declared types
                form.update(
                    {
                        "id": pk,
                        "n": draw(st.none() | st.integers()),
                        "ratio": 1.5,
                        "flag": True,
                        "blob": b"b",
                        "label": "l",
                        "required": 3,
                        "tags": ["t"],
                    }
                )
                if draw(st.booleans()):
                    form.pop("$v", None)
                for name in ("n", "ratio", "flag", "blob", "label", "tags", "extra"):
                    if draw(st.integers(0, 3)) == 0:
                        form.pop(name, None)
        data, enc = encode_value(form)
        if kind == 4:
            data = draw(st.binary(max_size=6))  # bytes that may not be msgpack
        out.append(RawEntry(key, data, enc, draw(st.binary(min_size=10, max_size=10))))
    return out


def model_prefix(model: type[km.Model]) -> str:
    from kvmodel.orm.model import model_info

    return model_info(model).prefix


def _loaded(load: Callable[..., None], model: type[km.Model], docs: list[RawEntry | None]) -> Any:
    from kvmodel.orm.model import model_info

    out: list[Any] = []
    load(model_info(model), docs, out, None)
    return [(tuple(getattr(o, a.name) for a in attrs.fields(type(o))), o._km_state) for o in out]


@needs_accelerator
@pytest.mark.parametrize("model", [Plain, Rich])
@given(docs=_documents())
@example(
    docs=[
        RawEntry(
            keys.encode_key_py(("plain", "a")),
            msgpack.packb({"id": "a", "required": True}),
            1,
            bytes(10),
        )
    ]
)
@example(
    docs=[
        RawEntry(
            keys.encode_key_py(("plain", "a")),
            msgpack.packb({"id": "a", "required": 1, "$v": 2}),
            1,
            bytes(10),
        )
    ]
)
@example(
    docs=[
        RawEntry(
            keys.encode_key_py(("plain", "a")),
            msgpack.packb({"id": "a", "$v": True, "required": 1}),
            1,
            bytes(10),
        )
    ]
)
def test_load_detached_agrees_with_the_reference(
    model: type[km.Model], docs: list[RawEntry | None]
) -> None:
    from kvmodel.orm import session

    compiled = _outcome(_loaded, session.load_documents, model, docs)
    reference = _outcome(_loaded, session.load_documents_py, model, docs)
    assert compiled[0] == reference[0], (compiled, reference)
    if compiled[0] == "ok":
        assert _same(compiled[1], reference[1]), (compiled, reference)
    else:
        assert compiled[1] == reference[1]


def _tracked_state(session: km.Session) -> list[tuple[Any, ...]]:
    """What the session learnt from a listing: each tracked record, in identity order."""
    out = []
    for key, t in session._identity.items():
        fields = tuple(getattr(t.obj, a.name) for a in attrs.fields(type(t.obj)))
        out.append(
            (
                key,
                t.pk,
                t.key,
                fields,
                t.stored,
                t.source,
                t.baseline,
                t.versionstamp,
                t.deleted,
                t.expire_at_ms,
                t.obj._km_state is t,
            )
        )
    return out


def _loaded_in_session(
    load: Callable[..., None], model: type[km.Model], docs: list[RawEntry | None], known: int
) -> Any:
    """Loads ``docs`` into a session that already tracks ``known`` objects (one deleted)."""
    from kvmodel.orm.model import model_info

    kv = km.open_kv()
    session = km.Session(kv)
    own = model_prefix(model)
    stored = [d for d in docs if d is not None]
    for i, raw in enumerate(stored[:known]):
        with contextlib.suppress(km.KvError, IndexError, ValueError):
            key = keys.decode_key_py(raw.key)
            if key[0] != own or len(key) != 2:
                continue
            kv.set(key, {"id": key[1], "required": 0} if model is Plain else {"id": key[1]})
            obj = session.get(model, key[1])
            if i == 0 and obj is not None:
                session.delete(obj)
    out: list[Any] = []
    load(model_info(model), docs, out, session)
    loaded = [tuple(getattr(o, a.name) for a in attrs.fields(type(o))) for o in out]
    return loaded, _tracked_state(session)


@needs_accelerator
@pytest.mark.parametrize("model", [Plain, Rich])
@given(docs=_documents(), known=st.integers(0, 3))
def test_load_tracked_agrees_with_the_reference(
    model: type[km.Model], docs: list[RawEntry | None], known: int
) -> None:
    from kvmodel.orm import session

    compiled = _outcome(_loaded_in_session, session.load_documents, model, docs, known)
    reference = _outcome(_loaded_in_session, session.load_documents_py, model, docs, known)
    assert compiled[0] == reference[0], (compiled, reference)
    if compiled[0] == "ok":
        assert _same(compiled[1], reference[1]), (compiled, reference)
    else:
        assert compiled[1] == reference[1]


# -- pure-Python shortcuts against the general code ------------------------------


class IntKeyed(km.Model, prefix="users"):
    id: int = km.field(primary_key=True)


@given(st.one_of(_key_bytes(), _key_bytes().map(lambda b: keys.encode_key_py(("users",)) + b)))
@example(keys.encode_key_py(("users",)) + b"\x15\x00")  # a leading zero byte
@example(keys.encode_key_py(("users",)) + b"\x16\x01")  # cut short
@example(keys.encode_key_py(("users", 2**64 - 1)))
def test_decode_doc_key_agrees_with_decode_key(data: bytes) -> None:
    """ModelInfo.decode_doc_key's str and int shortcuts give decode_key's answer or error."""
    from kvmodel.orm.model import model_info

    _agree(model_info(IntKeyed).decode_doc_key, keys.decode_key_py, data)


@st.composite
def _point_rows(draw: st.DrawFn) -> tuple[Any, tuple[Any, ...]]:
    """A point read's key and (value, encoding, version, expiry) row, some columns damaged."""
    key = draw(st.one_of(st.binary(min_size=1, max_size=12), st.just(b"k" * 3000)))
    row = [
        draw(st.binary(max_size=20)),
        draw(st.sampled_from([1, 2, 3, 4])),
        draw(st.integers(0, 2**64 - 1)),
        draw(st.one_of(st.none(), st.integers(0, 2**40))),
    ]
    if draw(st.integers(0, 2)) == 0:
        row[draw(st.integers(0, 3))] = draw(_column)
    return key, tuple(row)


@needs_accelerator
@given(_point_rows())
def test_checked_point_agrees_with_the_reference(case: tuple[Any, tuple[Any, ...]]) -> None:
    _agree(_sqlite_rows.checked_point, _sqlite_rows.checked_point_py, *case)


@st.composite
def _linked_rows(draw: st.DrawFn) -> tuple[list[tuple[Any, ...]], int]:
    """Joined index rows (entry, linked document, whether linked) and a read time,
    some columns of either side damaged, some documents past their deadline."""
    rows = []
    for _ in range(draw(st.integers(0, 5))):
        row: list[Any] = [
            draw(st.binary(min_size=1, max_size=12)),
            draw(st.binary(min_size=1, max_size=12)),
            draw(st.sampled_from([1, 2, 3, 4])),
            draw(st.integers(0, 2**64 - 1)),
            draw(st.one_of(st.none(), st.integers(0, 2**40))),
            draw(st.binary(max_size=20)),
            draw(st.sampled_from([1, 2, 3, 4])),
            draw(st.integers(0, 2**64 - 1)),
            draw(st.one_of(st.none(), st.integers(0, 2000))),
            draw(st.sampled_from([0, 1, 1])),
        ]
        if draw(st.integers(0, 3)) == 0:
            row[draw(st.integers(0, 8))] = draw(_column)
        rows.append(tuple(row))
    return rows, draw(st.integers(0, 2000))


@needs_accelerator
@given(_linked_rows())
@example(([(b"i", b"d", 1, 1, None, b"v", 1, 2, 1000, 1)], 1000))
@example(([(b"i", b"d", 1, 1, None, "text", 1, 2, 5, 1)], 1000))
@example(([(b"i", b"d", 1, 1, None, None, None, None, None, 0)], 0))
def test_checked_linked_agrees_with_the_reference(
    case: tuple[list[tuple[Any, ...]], int],
) -> None:
    _agree(_sqlite_rows.checked_linked, _sqlite_rows.checked_linked_py, *case)


@needs_accelerator
@given(_any_keys)
def test_key_tuple_agrees_with_the_reference(key: Any) -> None:
    from kvmodel import _kv

    _agree(_kv.key_tuple, _kv.key_tuple_py, key)


@needs_accelerator
@given(st.tuples(st.tuples(key_parts()), values(max_leaves=3), st.none() | st.text(max_size=20)))
def test_new_entry_builds_what_entry_builds(fields: tuple[Any, Any, Any]) -> None:
    from kvmodel import _kv

    made = _kv._new_entry(*fields)
    assert type(made) is km.Entry
    assert _same(made, km.Entry(*fields))
    assert repr(made) == repr(km.Entry(*fields))
