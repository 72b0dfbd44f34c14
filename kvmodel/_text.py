"""How error messages show user data: short enough to read, whole enough to recognise."""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = ["brief_repr", "brief_value"]

MAX_REPR = 160
# Containers nested deeper than this are shown by reprlib, whose recursion stops
# at this level; builtin repr() would recurse as deep as the value goes and
# raise RecursionError past about a thousand levels.
_MAX_REPR_LEVEL = 12
# Containers looked at while deciding whether a value is that deep.
_MAX_REPR_SCAN = 10_000
_NESTED = (list, tuple, dict, set, frozenset)


def _shallow_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel = _MAX_REPR_LEVEL
    # Enough of each container to fill a message before brief_repr cuts it.
    r.maxtuple = r.maxlist = r.maxdict = r.maxset = r.maxfrozenset = 40
    r.maxdeque = r.maxarray = 40
    r.maxstring = r.maxother = r.maxlong = MAX_REPR
    return r


_SHALLOW = _shallow_repr()


def _is_deep(value: object) -> bool:
    """True if ``value`` nests containers more than _MAX_REPR_LEVEL deep (or is too big to tell)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    scanned = 0
    while stack:
        obj, depth = stack.pop()
        if depth > _MAX_REPR_LEVEL:
            return True
        scanned += 1
        if scanned > _MAX_REPR_SCAN:
            return True
        items = obj.values() if isinstance(obj, dict) else obj
        for item in items:
            if isinstance(item, _NESTED):
                stack.append((item, depth + 1))
        if isinstance(obj, dict):
            stack.extend((k, depth + 1) for k in obj if isinstance(k, _NESTED))
    return False


def brief_repr(value: object, limit: int = MAX_REPR, *, as_key: bool = True) -> str:
    """``repr(value)``, cut in the middle when longer than ``limit`` characters.

    A 3000-byte key in an error message helps nobody; its start and end do.
    With ``as_key`` (the default), a list is shown as the tuple it stands
    for (keys read back as tuples). Containers nested more than a dozen levels deep are shown to
    that depth only (``[[...]]``), so a message never recurses without bound.
    """
    if as_key and isinstance(value, list):
        value = tuple(value)
    try:
        if isinstance(value, _NESTED) and _is_deep(value):
            text = _SHALLOW.repr(value)
        else:
            text = repr(value)
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        return f"<{type(value).__name__} too large to show>"
    if len(text) <= limit:
        return text
    keep = (limit - 30) // 2
    return f"{text[:keep]} ...<{len(text) - 2 * keep} characters>... {text[-keep:]}"


def brief_value(value: object, limit: int = MAX_REPR) -> str:
    """:func:`brief_repr` of an argument that is not a key: a list stays a list."""
    return brief_repr(value, limit, as_key=False)
