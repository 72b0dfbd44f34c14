# Types of the compiled accelerator (kvmodel/_speedups.pyx); the pure-Python
# references in kvmodel.keys, kvmodel._list and kvmodel.engines._sqlite_rows
# document what each function does.
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from kvmodel._records import Entry
from kvmodel.engines.base import RawEntry
from kvmodel.keys import Key

def install_key_codec(
    *, encode_key: Callable[[Sequence[Any]], bytes], decode_key: Callable[[Any], Key]
) -> None: ...
def install_row_checks(
    *,
    checked_entry: Callable[..., RawEntry],
    raw_entry: type[RawEntry],
    value_encodings: Iterable[int],
    max_value_size: int,
    max_read_key_size: int,
) -> None: ...
def install_entries(
    *,
    entry: type[Entry[Any]],
    decode_value: Callable[[bytes, int, object], object],
    unpackb: Callable[..., object],
    unpack_options: dict[str, Any],
    msgpack_encoding: int,
    max_value_size: int,
) -> None: ...
def encode_key(key: Sequence[Any]) -> bytes: ...
def decode_key(data: bytes | bytearray | memoryview) -> Key: ...
def checked_entries(rows: list[tuple[bytes, object, object, object, object]]) -> list[RawEntry]: ...
def decode_entries(raw: list[RawEntry]) -> list[Entry[Any]]: ...
def install_documents(*, version_field: str, state_attr: str, tracked: type) -> None: ...
def load_detached(info: Any, docs: Iterable[RawEntry | None], out: list[Any]) -> None: ...
def load_tracked(
    info: Any, docs: Iterable[RawEntry | None], out: list[Any], session: Any
) -> None: ...
