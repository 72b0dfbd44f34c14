"""How error messages show user data: short enough to read, whole enough to recognise."""

from __future__ import annotations

__all__ = ["brief_repr"]

MAX_REPR = 160


def brief_repr(value: object, limit: int = MAX_REPR) -> str:
    """``repr(value)``, cut in the middle when longer than ``limit`` characters.

    A 3000-byte key in an error message helps nobody; its start and end do.
    Lists are shown as the tuples they stand for (keys read back as tuples).
    """
    if isinstance(value, list):
        value = tuple(value)
    try:
        text = repr(value)
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        return f"<{type(value).__name__} too large to show>"
    if len(text) <= limit:
        return text
    keep = (limit - 30) // 2
    return f"{text[:keep]} ...<{len(text) - 2 * keep} characters>... {text[-keep:]}"
