"""Conformance: ``Kv.list`` selectors, limit, reverse, batch_size and cursors.

Ranges and cursors as docs/reference/api.md states them for ``Kv.list``. Where the
spec is silent the expected behaviour is Deno's (denoland/deno ext/kv/01_db.ts and lib.rs), and a
comment says so.
"""

from __future__ import annotations

from typing import Any

import pytest

from kvmodel import InvalidArgumentError, Kv, LimitExceededError
from kvmodel.limits import MAX_CURSOR_LENGTH, MAX_KEY_SIZE, MAX_LIST_BATCH
from kvmodel.testing.conformance_support import key_of_size, unchanged

_LETTERS = "abcde"


def _keys(entries: Any) -> list[tuple[Any, ...]]:
    return [e.key for e in entries]


def _fill_letters(kv: Kv) -> None:
    """("a","a")..("a","e") plus neighbours that no ("a",) selector may show."""
    for letter in _LETTERS:
        kv.set(("a", letter), letter)
    kv.set(("a",), "the prefix itself")
    kv.set(("",), "before")
    kv.set(("b",), "after")
    kv.set(("b", "a"), "after")


def _under_a(letters: str) -> list[tuple[str, str]]:
    return [("a", letter) for letter in letters]


# ---------------------------------------------------------------------------
# Selectors


def test_prefix_lists_keys_strictly_under_it(kv: Kv) -> None:
    """A prefix lists the keys that extend it, not the prefix key itself nor its neighbours."""
    _fill_letters(kv)
    entries = list(kv.list(prefix=("a",)))
    assert _keys(entries) == _under_a("abcde")
    assert [e.value for e in entries] == list("abcde")
    assert all(e.versionstamp == kv.get(e.key).versionstamp for e in entries)


def test_empty_prefix_lists_everything(kv: Kv) -> None:
    """prefix=() lists every key in order."""
    _fill_letters(kv)
    assert _keys(kv.list(prefix=())) == [
        ("",),
        ("a",),
        *_under_a("abcde"),
        ("b",),
        ("b", "a"),
    ]


def test_prefix_with_no_keys_lists_nothing(kv: Kv) -> None:
    """A prefix nothing extends lists nothing."""
    _fill_letters(kv)
    assert list(kv.list(prefix=("zzz",))) == []
    assert list(kv.list(prefix=("a", "c"))) == []


def test_prefix_and_start(kv: Kv) -> None:
    """prefix+start lists [start, end of prefix)."""
    _fill_letters(kv)
    assert _keys(kv.list(prefix=("a",), start=("a", "c"))) == _under_a("cde")
    assert _keys(kv.list(prefix=("a",), start=("a", "bb"))) == _under_a("cde")


def test_prefix_and_end(kv: Kv) -> None:
    """prefix+end lists [start of prefix, end), end excluded."""
    _fill_letters(kv)
    assert _keys(kv.list(prefix=("a",), end=("a", "c"))) == _under_a("ab")
    assert _keys(kv.list(prefix=("a",), end=("a", "bb"))) == _under_a("ab")


def test_start_and_end(kv: Kv) -> None:
    """start+end lists [start, end), which may cross prefixes."""
    _fill_letters(kv)
    assert _keys(kv.list(start=("a", "b"), end=("a", "d"))) == _under_a("bc")
    assert _keys(kv.list(start=("a",), end=("b", "a"))) == [("a",), *_under_a("abcde"), ("b",)]


def test_start_equal_to_end_is_empty(kv: Kv) -> None:
    """start == end selects nothing."""
    _fill_letters(kv)
    assert list(kv.list(start=("a", "b"), end=("a", "b"))) == []


_INVALID_SELECTORS: dict[str, dict[str, Any]] = {
    "prefix+start+end": {"prefix": ("a",), "start": ("a", "b"), "end": ("a", "d")},
    "start only": {"start": ("a", "b")},
    "end only": {"end": ("a", "d")},
    "start > end": {"start": ("a", "d"), "end": ("a", "b")},
    "start outside prefix": {"prefix": ("a",), "start": ("b", "a")},
    "start before prefix": {"prefix": ("a",), "start": ("",)},
    "end outside prefix": {"prefix": ("a",), "end": ("b", "a")},
    # The prefix key itself is outside the prefix's range [P+00, P+FF); Deno
    # rejects it too ("start.len() == prefix.len()" in ext/kv lib.rs).
    "start is the prefix": {"prefix": ("a",), "start": ("a",)},
    "end is the prefix": {"prefix": ("a",), "end": ("a",)},
}


@pytest.mark.parametrize("selector", _INVALID_SELECTORS.values(), ids=_INVALID_SELECTORS.keys())
def test_invalid_selectors_raise_invalid_argument_error(kv: Kv, selector: dict[str, Any]) -> None:
    """Each invalid selector combination is an InvalidArgumentError."""
    _fill_letters(kv)
    with unchanged(kv), pytest.raises(InvalidArgumentError):
        list(kv.list(**selector))


# ---------------------------------------------------------------------------
# limit, reverse, batch_size


def test_limit_takes_the_first_keys(kv: Kv) -> None:
    """limit=n yields the first n keys of the range."""
    _fill_letters(kv)
    assert _keys(kv.list(prefix=("a",), limit=2)) == _under_a("ab")
    assert _keys(kv.list(prefix=("a",), limit=5)) == _under_a("abcde")
    assert _keys(kv.list(prefix=("a",), limit=50)) == _under_a("abcde")


def test_reverse_lists_highest_first(kv: Kv) -> None:
    """reverse=True yields the range highest key first; with limit, the last n keys."""
    _fill_letters(kv)
    assert _keys(kv.list(prefix=("a",), reverse=True)) == _under_a("edcba")
    assert _keys(kv.list(prefix=("a",), reverse=True, limit=2)) == _under_a("ed")
    assert _keys(kv.list(start=("a", "b"), end=("a", "d"), reverse=True)) == _under_a("cb")
    assert _keys(kv.list(prefix=("a",), start=("a", "c"), reverse=True)) == _under_a("edc")
    assert _keys(kv.list(prefix=("a",), end=("a", "c"), reverse=True)) == _under_a("ba")


def test_limit_above_the_batch_maximum_is_fine(kv: Kv) -> None:
    """limit is not capped by the per-read batch limit (the iterator reads in batches)."""
    _fill_letters(kv)
    assert _keys(kv.list(prefix=("a",), limit=MAX_LIST_BATCH * 5)) == _under_a("abcde")


def _fill_numbers(kv: Kv, count: int = 50) -> list[tuple[str, int]]:
    keys = [("n", i) for i in range(count)]
    atomic = kv.atomic()
    for i, key in enumerate(keys):
        atomic.set(key, i)
    assert atomic.commit().ok
    kv.set(("m",), "before")
    kv.set(("o",), "after")
    return keys


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("limit", [None, 1, 13, 50, 51])
def test_batch_size_does_not_change_results(kv: Kv, reverse: bool, limit: int | None) -> None:
    """Batch sizes 1, 2, 7 and 1000 yield the same entries and cursor, also with limit/reverse."""
    keys = _fill_numbers(kv)
    expected = (keys[::-1] if reverse else keys)[:limit]
    outcomes = []
    for batch_size in (1, 2, 7, 1000, None):
        it = kv.list(prefix=("n",), limit=limit, reverse=reverse, batch_size=batch_size)
        entries = list(it)
        outcomes.append(([(e.key, e.value, e.versionstamp) for e in entries], it.cursor))
        assert _keys(entries) == expected, f"batch_size={batch_size}"
    assert all(outcome == outcomes[0] for outcome in outcomes)


def test_batch_size_is_at_most_the_list_batch_limit(kv: Kv) -> None:
    """batch_size may be 1000; 1001 is a LimitExceededError (Deno: "Too many entries")."""
    assert MAX_LIST_BATCH == 1000
    _fill_letters(kv)
    assert len(list(kv.list(prefix=("a",), batch_size=MAX_LIST_BATCH))) == 5
    with pytest.raises(LimitExceededError):
        list(kv.list(prefix=("a",), batch_size=MAX_LIST_BATCH + 1))


@pytest.mark.parametrize("option", ["limit", "batch_size"])
@pytest.mark.parametrize("bad", [0, -1, True, False, 1.5, 2.0, "3", None], ids=repr)
def test_limit_and_batch_size_must_be_positive_ints(kv: Kv, option: str, bad: Any) -> None:
    """limit and batch_size reject 0, negatives, bools, floats and strs (None means default)."""
    _fill_letters(kv)
    options: dict[str, Any] = {option: bad}
    if bad is None:
        # None is the documented default of both options, so it must work.
        assert len(list(kv.list(prefix=("a",), **options))) == 5
        return
    with unchanged(kv), pytest.raises(InvalidArgumentError):
        list(kv.list(prefix=("a",), **options))


# ---------------------------------------------------------------------------
# Cursors


def test_cursor_has_denos_format(kv: Kv) -> None:
    """The cursor is base64url of the last key's encoding minus the prefix ("AmIA" here)."""
    _fill_letters(kv)
    it = kv.list(prefix=("a",), limit=2)
    assert _keys(it) == _under_a("ab")
    # ("a","b") encodes to 02 61 00 02 62 00; minus enc(("a",)) = 02 62 00.
    assert it.cursor == "AmIA"


def test_cursor_resumes_strictly_after_the_last_key(kv: Kv) -> None:
    """A forward cursor resumes after the last yielded key."""
    _fill_letters(kv)
    first = kv.list(prefix=("a",), limit=2)
    assert _keys(first) == _under_a("ab")
    second = kv.list(prefix=("a",), limit=2, cursor=first.cursor)
    assert _keys(second) == _under_a("cd")
    third = kv.list(prefix=("a",), cursor=second.cursor)
    assert _keys(third) == _under_a("e")
    assert third.cursor == ""


def test_reverse_cursor_resumes_strictly_before_the_last_key(kv: Kv) -> None:
    """A reverse cursor resumes before the last yielded key."""
    _fill_letters(kv)
    first = kv.list(prefix=("a",), limit=2, reverse=True)
    assert _keys(first) == _under_a("ed")
    assert first.cursor == "AmQA"  # 02 64 00: ("a","d") minus the prefix
    second = kv.list(prefix=("a",), reverse=True, cursor=first.cursor)
    assert _keys(second) == _under_a("cba")
    assert second.cursor == ""


def test_cursor_of_a_start_end_selector_drops_their_common_byte_prefix(kv: Kv) -> None:
    """With start+end the cursor omits the bytes start and end share, and pads with '='."""
    _fill_letters(kv)
    it = kv.list(start=("a", "b"), end=("a", "e"), limit=1)
    assert _keys(it) == _under_a("b")
    # start 02 61 00 02 62 00 and end 02 61 00 02 65 00 share 02 61 00 02.
    assert it.cursor == "YgA="
    resumed = kv.list(start=("a", "b"), end=("a", "e"), cursor=it.cursor)
    assert _keys(resumed) == _under_a("cd")


def test_cursor_with_prefix_and_start_or_end(kv: Kv) -> None:
    """prefix+start and prefix+end cursors are relative to the prefix and resume correctly."""
    _fill_letters(kv)
    it = kv.list(prefix=("a",), start=("a", "b"), limit=2)
    assert _keys(it) == _under_a("bc")
    assert it.cursor == "AmMA"
    assert _keys(kv.list(prefix=("a",), start=("a", "b"), cursor=it.cursor)) == _under_a("de")
    it = kv.list(prefix=("a",), end=("a", "d"), limit=1, reverse=True)
    assert _keys(it) == _under_a("c")
    resumed = kv.list(prefix=("a",), end=("a", "d"), reverse=True, cursor=it.cursor)
    assert _keys(resumed) == _under_a("ba")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("page", [1, 7, 50])
def test_paging_with_cursors_visits_every_key_once(kv: Kv, reverse: bool, page: int) -> None:
    """Following cursors page by page yields every key exactly once, in order."""
    keys = _fill_numbers(kv)
    seen: list[tuple[Any, ...]] = []
    cursor = None
    for _ in range(len(keys) + 2):
        it = kv.list(prefix=("n",), limit=page, reverse=reverse, cursor=cursor)
        got = _keys(it)
        seen.extend(got)
        cursor = it.cursor
        if not got or cursor == "":
            break
    assert seen == (keys[::-1] if reverse else keys)


def test_cursor_is_empty_after_exhaustion(kv: Kv) -> None:
    """After the iterator runs past the last key, the cursor is ""."""
    _fill_letters(kv)
    it = kv.list(prefix=("a",))
    assert len(list(it)) == 5
    assert it.cursor == ""
    it = kv.list(prefix=("a",), limit=6)
    assert len(list(it)) == 5
    assert it.cursor == ""
    it = kv.list(prefix=("zzz",))
    assert list(it) == []
    assert it.cursor == ""


def test_cursor_when_the_limit_ends_exactly_at_the_last_key(kv: Kv) -> None:
    """When limit stops the iterator on the last key, the cursor names that key, as in Deno."""
    # The spec only says "after full exhaustion the cursor is ''". Deno's
    # KvListIterator (ext/kv/01_db.ts) stops on the limit without looking past
    # the last key, so its cursor is that key's; resuming from it yields nothing.
    _fill_letters(kv)
    it = kv.list(prefix=("a",), limit=5)
    assert len(list(it)) == 5
    assert it.cursor == "AmUA"
    assert list(kv.list(prefix=("a",), cursor=it.cursor)) == []


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("batch_size", [1, 2, 5, 1000])
def test_cursor_after_each_entry_is_its_own_until_a_next_finds_nothing(
    kv: Kv, reverse: bool, batch_size: int
) -> None:
    """As in Deno, the last entry's cursor stays after it is yielded; "" only once a next ends."""
    # Deno's KvListIterator (ext/kv/01_db.ts) sets the cursor to each entry as
    # it yields it, and to "" only when a next() pops no entry: a short last
    # batch (batch_size 2) and a full one (5) behave alike.
    _fill_letters(kv)
    it = kv.list(prefix=("a",), reverse=reverse, batch_size=batch_size)
    cursors = []
    for _ in range(5):
        next(it)
        cursors.append(it.cursor)
    expected = ["AmEA", "AmIA", "AmMA", "AmQA", "AmUA"]
    assert cursors == (expected[::-1] if reverse else expected)
    with pytest.raises(StopIteration):
        next(it)
    assert it.cursor == ""
    with pytest.raises(StopIteration):
        next(it)
    assert it.cursor == ""


def test_a_cursor_longer_than_any_key_is_a_limit_error(kv: Kv) -> None:
    """A cursor over MAX_CURSOR_LENGTH characters is a LimitExceededError (and invalid)."""
    _fill_letters(kv)
    for cursor in ("A" * 60_000, "AAAA" * (MAX_CURSOR_LENGTH // 4 + 1)):
        with pytest.raises(LimitExceededError) as info:
            list(kv.list(prefix=("a",), cursor=cursor))
        assert isinstance(info.value, InvalidArgumentError)
        assert (info.value.limit, info.value.actual) == (MAX_CURSOR_LENGTH, len(cursor))


def test_the_longest_cursor_a_listing_gives_is_accepted(kv: Kv) -> None:
    """The cursor of a largest key listed from the root is MAX_CURSOR_LENGTH long and resumes."""
    first, second = key_of_size(MAX_KEY_SIZE, "x"), key_of_size(MAX_KEY_SIZE, "y")
    kv.set(first, 1)
    kv.set(second, 2)
    it = kv.list(prefix=(), limit=1)
    assert [e.key for e in it] == [first]
    assert len(it.cursor) == MAX_CURSOR_LENGTH
    assert [e.key for e in kv.list(prefix=(), cursor=it.cursor)] == [second]


@pytest.mark.parametrize("cursor", ["!!!!", "AmI", "+/8=", "Am IA", "A"])
def test_cursor_that_is_not_base64url_is_invalid(kv: Kv, cursor: str) -> None:
    """A cursor that is not padded base64url is an InvalidArgumentError."""
    # Deno decodes with BASE64_URL_SAFE (canonical '=' padding, url-safe alphabet).
    _fill_letters(kv)
    with unchanged(kv), pytest.raises(InvalidArgumentError):
        list(kv.list(prefix=("a",), cursor=cursor))


def test_forward_cursor_before_an_explicit_start_is_invalid(kv: Kv) -> None:
    """A forward cursor positioned before the selector's start is an InvalidArgumentError."""
    _fill_letters(kv)
    with pytest.raises(InvalidArgumentError):
        # "AmIA" is ("a","b"), before start ("a","c").
        list(kv.list(prefix=("a",), start=("a", "c"), cursor="AmIA"))


def test_reverse_cursor_after_an_explicit_end_is_invalid(kv: Kv) -> None:
    """A reverse cursor positioned after the selector's end is an InvalidArgumentError."""
    _fill_letters(kv)
    with pytest.raises(InvalidArgumentError):
        # Relative to the common prefix 02 61 00 02, "ZAA=" is ("a","d") > end ("a","c").
        list(kv.list(start=("a", "a"), end=("a", "c"), reverse=True, cursor="ZAA="))
    with pytest.raises(InvalidArgumentError):
        # "AmQA" is ("a","d"), after end ("a","c").
        list(kv.list(prefix=("a",), end=("a", "c"), reverse=True, cursor="AmQA"))


def test_cursors_outside_explicit_bounds_are_invalid_in_both_directions(kv: Kv) -> None:
    """A cursor naming a key outside an explicit start/end is an error either way."""
    _fill_letters(kv)
    # "AmQA" is ("a","d"): at or past end ("a","c"), for a forward listing too.
    with unchanged(kv), pytest.raises(InvalidArgumentError):
        list(kv.list(prefix=("a",), end=("a", "c"), cursor="AmQA"))
    # "AmEA" is ("a","a"): before start ("a","b"), for a reverse listing too.
    with unchanged(kv), pytest.raises(InvalidArgumentError):
        list(kv.list(prefix=("a",), start=("a", "b"), reverse=True, cursor="AmEA"))


def test_cursor_beyond_a_plain_prefix_yields_nothing(kv: Kv) -> None:
    """A cursor past the end of a plain prefix's range yields nothing, as in Deno."""
    _fill_letters(kv)
    # "__8=" decodes to FF FF: prefix + FF FF lies after every key of the prefix.
    it = kv.list(prefix=("a",), cursor="__8=")
    assert list(it) == []
    assert it.cursor == ""
