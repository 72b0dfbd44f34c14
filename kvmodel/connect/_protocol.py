"""What the KV Connect server and client share: versions, headers, value tags and limits.

The protocol is denokv's ``proto/kv-connect.md``: a JSON metadata exchange
(``POST`` to the database URL with ``Authorization: Bearer <access token>``)
answers with the protocol version, the database id, the data path endpoints,
a data path token and its expiry; the data path is protobuf over HTTP
(``<endpoint>/snapshot_read``, ``/atomic_write``, and from version 3
``/watch``, a stream of length-prefixed ``WatchOutput`` messages).
"""

from __future__ import annotations

import importlib
import struct
from typing import Any

from kvmodel.connect import _datapath_pb2

pb: Any = _datapath_pb2
"""The generated message classes (typed loosely: protobuf ships no type hints)."""

ProtobufDecodeError: type[Exception] = importlib.import_module(
    "google.protobuf.message"
).DecodeError
"""What parsing a malformed message raises (imported by name: protobuf has no type hints)."""

SUPPORTED_VERSIONS = (2, 3)
"""Protocol versions kvmodel speaks. Version 1 (no version header) is what Deno
before 1.38 spoke; denokv's own server refuses it too."""

DATA_PATH = "/v2"
"""The endpoint path the server announces, as denokv's server does."""

PROTOBUF = "application/x-protobuf"
VERSION_HEADER = "x-denokv-version"
DATABASE_ID_HEADER = "x-denokv-database-id"
SERVER_HEADER = "x-kvmodel-server"
"""kvmodel's addition: set on the metadata exchange's answer by ``kvmodel serve``, which
also offers ``<endpoint>/kvmodel_read_linked`` (a linked read at one point)."""
LINKED_READ = "kvmodel_read_linked"
ERROR_HEADER = "x-kvmodel-error"
"""kvmodel's addition: names the kvmodel error behind a 4xx (``KvTypeError``) so a
kvmodel client raises the same class a local engine would."""

MAX_READ_RANGES = 10
"""Ranges in one snapshot read (denokv ``proto/limits.rs``)."""
MAX_READ_ENTRIES = 1000
"""Sum of the ranges' limits in one snapshot read (denokv ``proto/limits.rs``)."""

MAX_REQUEST_SIZE = 2 * 1024 * 1024
"""Bytes of a request body the server reads. The largest valid atomic write
(819,200 bytes of mutations plus 100 checked keys and protobuf framing) is
well under it."""

ENGINE_V8 = 4
"""kvmodel's engine tag for V8 values (``VALUE_ENCODING_V8``, a Kv opened with
``values="v8"``); on the wire V8 is tag 1, which kvmodel's engines use for msgpack."""

V8_VERSION_TAG = 0xFF
"""The first byte of every value V8's serializer writes (``kVersionTag``)."""

_FRAME = struct.Struct("<I")


def frame(message: bytes) -> bytes:
    """One watch stream message: a 4-byte little-endian length, then the bytes."""
    return _FRAME.pack(len(message)) + message


def engine_encoding(wire_encoding: int, value: bytes) -> int:
    """The engine tag of a value that arrived with a wire tag: wire tag 1 is V8 or msgpack."""
    if wire_encoding == 1 and looks_like_v8(value):
        return ENGINE_V8
    return wire_encoding


def wire_encoding(engine_encoding: int) -> int:
    """The wire tag of a stored value: V8 and kvmodel's msgpack both travel as tag 1."""
    return 1 if engine_encoding == ENGINE_V8 else engine_encoding


def looks_like_v8(value: bytes) -> bool:
    """True when object-format value bytes are V8's serialization, not msgpack.

    V8 starts every value with the version tag 0xFF and a version number;
    in msgpack 0xFF is the whole value -1, so a longer value starting with it
    is not msgpack.
    """
    return len(value) >= 2 and value[0] == V8_VERSION_TAG
