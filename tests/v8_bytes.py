"""Hand-written V8 serialisations for the hostile-value tests.

v8serialize's own encoder recurses once per level and keeps shared objects
shared only as deep as Python's stack allows, so the values a hostile writer
would store (a DAG 150 levels deep in a kilobyte) are written here byte by byte.
"""

from __future__ import annotations

HEADER = b"\xff\x0f"


def varint(n: int) -> bytes:
    """V8's base-128 varint (little-endian groups, high bit set on all but the last)."""
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def shared_dag(levels: int, width: int) -> bytes:
    """An array of ``width`` references to one array of ``width`` references ... to ``{}``.

    Stored, it is ``levels * (width * 2 + 4)`` bytes or so; expanded, it is
    ``width ** levels`` empty objects. V8 numbers each object in the order it
    starts, and ``^id`` names an object written before.
    """
    out = bytearray(HEADER)
    next_id = 0

    def write(level: int) -> int:
        nonlocal next_id
        my_id, next_id = next_id, next_id + 1
        if level == 0:
            out.extend(b"o{\x00")  # an object with no properties
            return my_id
        out.extend(b"A" + varint(width))  # a dense array of `width` elements
        child = write(level - 1)
        for _ in range(width - 1):
            out.extend(b"^" + varint(child))
        out.extend(b"$\x00" + varint(width))  # no named properties; the length again
        return my_id

    write(levels)
    return bytes(out)


HOSTILE_DAGS = {
    "binary DAG 22 deep": shared_dag(22, 2),
    "binary DAG 60 deep": shared_dag(60, 2),
    "binary DAG 150 deep": shared_dag(150, 2),
    "3 levels x 1000 wide": shared_dag(3, 1000),
    "2 levels x 1000 wide": shared_dag(2, 1000),
}
"""The values the issue measured: 159 to 6,020 bytes that expand to millions of objects."""
