"""Tests of kvmodel.cli._text: the command line's text form and typed JSON of keys and values."""

from __future__ import annotations

import json
import math
import zoneinfo
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvmodel import InvalidArgumentError, KvU64
from kvmodel._values import decode_value, encode_value
from kvmodel.cli._text import (
    format_key,
    format_value,
    key_from_json,
    key_to_json,
    parse_key,
    parse_value,
    value_from_json,
    value_to_json,
)
from kvmodel.testing.strategies import keys

_zones = st.one_of(
    st.none(),
    st.just(UTC),
    st.integers(min_value=-23 * 60, max_value=23 * 60).map(
        lambda m: timezone(timedelta(minutes=m))
    ),
    st.integers(min_value=-12, max_value=12).map(lambda h: timezone(timedelta(hours=h), "Zed")),
    st.sampled_from(["Europe/Paris", "America/New_York", "Asia/Kolkata"]).map(zoneinfo.ZoneInfo),
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(),  # NaN, infinities and -0.0 included
    st.text(),
    st.binary(),
    st.integers(min_value=0, max_value=2**64 - 1).map(KvU64),
    st.builds(
        lambda dt, fold: dt.replace(fold=fold),
        st.datetimes(timezones=_zones),
        st.integers(0, 1),
    ),
)
map_keys = st.one_of(
    st.text(max_size=6),
    st.integers(),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=3).map(tuple),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=6), children, max_size=4),
        st.dictionaries(map_keys, children, max_size=4),
    ),
    max_leaves=12,
)


def same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down; NaN equals NaN, -0.0 is not 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, datetime):
        return (
            a.replace(tzinfo=None) == b.replace(tzinfo=None)
            and a.fold == b.fold
            and type(a.tzinfo) is type(b.tzinfo)
            and a.utcoffset() == b.utcoffset()
            and a.tzname() == b.tzname()
            and str(a.tzinfo) == str(b.tzinfo)
        )
    return bool(a == b)


@given(keys(min_size=0, max_size=5, allow_nan=True))
def test_a_key_formats_and_parses_back_exactly(key: tuple[Any, ...]) -> None:
    """format_key then parse_key gives the same parts, with the same types."""
    assert same(parse_key(format_key(key)), key)


@given(keys(min_size=0, max_size=5, allow_nan=True))
def test_a_key_survives_typed_json(key: tuple[Any, ...]) -> None:
    """A key through key_to_json, json.dumps, json.loads and key_from_json is unchanged."""
    text = json.dumps(key_to_json(key), allow_nan=False)
    assert same(key_from_json(json.loads(text)), key)


@given(values)
def test_a_value_formats_and_parses_back_exactly(value: Any) -> None:
    """format_value then parse_value gives an equal value of the same types."""
    assert same(parse_value(format_value(value)), value)


@given(values)
def test_a_value_survives_typed_json(value: Any) -> None:
    """A value through typed JSON text is unchanged (allow_nan=False: the JSON is standard)."""
    text = json.dumps(value_to_json(value), allow_nan=False)
    assert same(value_from_json(json.loads(text)), value)


@given(values)
def test_the_text_form_reads_back_what_the_store_reads_back(value: Any) -> None:
    """A value read from a store (tuples as lists) also round-trips through the text form."""
    stored = decode_value(*encode_value(value))
    assert same(parse_value(format_value(stored)), stored)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("users,ada,42", ("users", "ada", 42)),
        ('"a b",-0.0,nan,inf,-inf', ("a b", -0.0, math.nan, math.inf, -math.inf)),
        ('x"00ff",true,false,"true"', (b"\x00\xff", True, False, "true")),
        ("1e3, 1.5, 123456789012345678901234567890", (1000.0, 1.5, 123456789012345678901234567890)),
        ("", ()),
    ],
)
def test_documented_key_examples(text: str, key: tuple[Any, ...]) -> None:
    """The examples of the how-to read as documented."""
    assert same(parse_key(text), key)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("users,01M95P6WMWB0WFC90HRV3ZTRFC", ("users", "01M95P6WMWB0WFC90HRV3ZTRFC")),
        ("days,2024-05-01,3d", ("days", "2024-05-01", "3d")),
        ('orders,42,"42",1e3', ("orders", 42, "42", 1000.0)),
        ('["users", "ada", 42]', ("users", "ada", 42)),
        (' ["b", {"$bytes": "AP8="}, {"$float": "inf"}]', ("b", b"\x00\xff", math.inf)),
        ("[]", ()),
    ],
)
def test_id_shaped_words_and_json_arrays_are_keys(text: str, key: tuple[Any, ...]) -> None:
    """A ULID or a date is a str part without quotes; the array --json prints is a key."""
    assert same(parse_key(text), key)


def test_an_id_shaped_part_prints_bare_and_a_numeric_str_quoted() -> None:
    """What ls prints pastes back: ids bare, a str that reads as a number in quotes."""
    assert format_key(("users", "01M95P6WMWB0WFC90HRV3ZTRFC")) == "users,01M95P6WMWB0WFC90HRV3ZTRFC"
    assert format_key(("12", "1e5", "-1a")) == '"12","1e5","-1a"'


@pytest.mark.parametrize("text", ["[1,", "[null]", '["a", [1]]', "[true"])
def test_a_bad_json_key_is_an_error(text: str) -> None:
    """A key that starts with [ but is not a typed JSON array of key parts is refused."""
    with pytest.raises(InvalidArgumentError):
        parse_key(text)


def test_documented_value_examples() -> None:
    """u64(), datetime() with zone= and fold=, bytes and non-str map keys read as documented."""
    v = parse_value(
        '{"n": u64(5), 2: x"00", [1, 2]: null, '
        '"t": datetime("2024-11-03T01:30:00-05:00", zone="America/New_York", fold=1)}'
    )
    assert v["n"] == KvU64(5)
    assert v[2] == b"\x00"
    assert v[(1, 2)] is None
    assert v["t"].tzinfo == zoneinfo.ZoneInfo("America/New_York")
    assert v["t"].fold == 1


@pytest.mark.parametrize(
    "text",
    ["null", "users,", '"unterminated', 'x"zz"', "1 2", "{1: 2"],
)
def test_malformed_keys_are_one_sentence_errors(text: str) -> None:
    """Bad key text raises InvalidArgumentError naming the text and the position."""
    with pytest.raises(InvalidArgumentError, match="Cannot read the key"):
        parse_key(text)


@pytest.mark.parametrize("text", ["hello", "[1, 2", "u64(-1)", 'datetime("nope")', "1 2"])
def test_malformed_values_are_errors(text: str) -> None:
    """A bare word, an unclosed list, a negative KvU64 or a bad date is refused."""
    with pytest.raises(InvalidArgumentError):
        parse_value(text)


def test_typed_json_refuses_unknown_tags() -> None:
    """A "$" object that is not one of the documented tags is an error, not a dict."""
    with pytest.raises(InvalidArgumentError):
        value_from_json({"$nope": 1})
    with pytest.raises(InvalidArgumentError):
        key_from_json([None])


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('t,datetime("2024-05-01T12:00:00+00:00")', ("t", 1_714_564_800_000_000)),
        ('t,datetime("2024-05-01T14:00:00.000001+02:00")', ("t", 1_714_564_800_000_001)),
        ('t,date("2024-05-01")', ("t", 739_007)),
        ('t,uuid("00000000-0000-0000-0000-000000000007")', ("t", b"\x00" * 15 + b"\x07")),
        ("datetime,date,uuid", ("datetime", "date", "uuid")),  # bare words stay words
    ],
)
def test_typed_key_literals_are_the_parts_indexes_store(text: str, key: tuple[Any, ...]) -> None:
    """datetime(), date() and uuid() in a key read as UTC microseconds, the ordinal and
    the 16 bytes an index stores for those values."""
    assert same(parse_key(text), key)


@pytest.mark.parametrize(
    "text",
    ['t,datetime("2024-05-01T12:00:00")', 't,date("May 1")', 't,uuid("123")', "t,uuid(7)"],
)
def test_bad_typed_key_literals_are_one_sentence_errors(text: str) -> None:
    """A naive datetime (no instant), a malformed date or UUID, a non-string is refused."""
    with pytest.raises(InvalidArgumentError, match="Cannot read the key"):
        parse_key(text)


def test_key_value_literal_is_an_encoded_key() -> None:
    """key(...) in a value is the encoded key an index entry holds."""
    from kvmodel.keys import encode_key

    assert parse_value('key(orders,01HX,uuid("00000000-0000-0000-0000-000000000007"))') == (
        encode_key(("orders", "01HX", b"\x00" * 15 + b"\x07"))
    )
    assert parse_value("key()") == b""
    with pytest.raises(InvalidArgumentError):
        parse_value("key(a,null)")


@given(
    when=st.datetimes(timezones=st.just(UTC)),
    day=st.dates(),
    ident=st.uuids(),
    word=st.text(max_size=8),
)
def test_described_keys_print_and_parse_back_to_the_stored_parts(
    when: datetime, day: Any, ident: Any, word: str
) -> None:
    """A key printed with its description's typed literals reads back as the same parts."""
    from kvmodel.cli._described import Descriptions, _Space
    from kvmodel.orm._convert import to_key_part

    described = Descriptions({"ix": _Space(["datetime", "date", "uuid", "str"], "docs")})
    key = ("ix", to_key_part(when), to_key_part(day), to_key_part(ident), word)
    text = described.format_key(key)
    assert same(parse_key(text), key)
    assert text.startswith('ix,datetime("')
