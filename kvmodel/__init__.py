"""kvmodel: Deno KV's data model for Python, with an object mapper on top.

>>> import kvmodel as km
>>> kv = km.open_kv()                       # in memory; "app.db" for a SQLite file
>>> kv.set(("users", "ada"), {"name": "Ada"}).ok
True
>>> kv.get(("users", "ada")).value
{'name': 'Ada'}
>>> kv.close()
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

from kvmodel._accel import accelerated
from kvmodel._atomic import AtomicOperation
from kvmodel._kv import Kv, open_kv
from kvmodel._list import ListIterator
from kvmodel._queue import QueueDelivery
from kvmodel._records import VERSIONSTAMP, CommitResult, Entry
from kvmodel._values import KvU64
from kvmodel._watch import WatchIterator
from kvmodel.errors import (
    ConflictError,
    DecodeError,
    EncodeError,
    EngineError,
    IndexNotReadyError,
    IndexRequiredError,
    InvalidArgumentError,
    InvalidKeyError,
    KvClosedError,
    KvError,
    KvTypeError,
    LimitExceededError,
    ModelDefinitionError,
    ReferentialIntegrityError,
    ScanLimitError,
    UniqueViolationError,
    ValidationError,
)
from kvmodel.limits import EngineLimits

if _typing.TYPE_CHECKING:
    from kvmodel.orm import (
        BulkReport,
        Condition,
        DocumentProblem,
        DocumentReport,
        F,
        Index,
        IndexProblem,
        IndexRepairs,
        IndexReport,
        MigrationReport,
        Model,
        Page,
        Query,
        Ref,
        Session,
        Unique,
        and_,
        bulk_delete,
        bulk_save,
        check_documents,
        check_indexes,
        drop_index,
        expires_at,
        field,
        migrate,
        new_id,
        or_,
        rebuild_indexes,
        register_type,
        transaction,
        upgrade,
        utcnow,
    )
    from kvmodel.orm.watch import ModelWatch, ModelWatchMany

# The object mapper is imported on first use of one of its names (PEP 562), so
# `import kvmodel` for the KV API alone does not pay for cattrs and the models'
# machinery (about 40 ms of a 100 ms import).
_LAZY = {
    name: "kvmodel.orm"
    for name in (
        "BulkReport",
        "Condition",
        "DocumentProblem",
        "DocumentReport",
        "F",
        "Index",
        "IndexProblem",
        "IndexRepairs",
        "IndexReport",
        "MigrationReport",
        "Model",
        "Page",
        "Query",
        "Ref",
        "Session",
        "Unique",
        "and_",
        "bulk_delete",
        "bulk_save",
        "check_documents",
        "check_indexes",
        "drop_index",
        "expires_at",
        "field",
        "migrate",
        "new_id",
        "or_",
        "rebuild_indexes",
        "register_type",
        "transaction",
        "upgrade",
        "utcnow",
    )
}
_LAZY.update({"ModelWatch": "kvmodel.orm.watch", "ModelWatchMany": "kvmodel.orm.watch"})


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kvmodel' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    if isinstance(value, type) and name != "Model":  # see the loop at the end
        value.__module__ = "kvmodel"
    globals()[name] = value  # later lookups find it directly
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "AtomicOperation",
    "BulkReport",
    "CommitResult",
    "Condition",
    "ConflictError",
    "DecodeError",
    "DocumentProblem",
    "DocumentReport",
    "EncodeError",
    "EngineError",
    "EngineLimits",
    "Entry",
    "F",
    "Index",
    "IndexNotReadyError",
    "IndexProblem",
    "IndexRepairs",
    "IndexReport",
    "IndexRequiredError",
    "InvalidArgumentError",
    "InvalidKeyError",
    "Kv",
    "KvClosedError",
    "KvError",
    "KvTypeError",
    "KvU64",
    "LimitExceededError",
    "ListIterator",
    "MigrationReport",
    "Model",
    "ModelDefinitionError",
    "ModelWatch",
    "ModelWatchMany",
    "Page",
    "Query",
    "QueueDelivery",
    "Ref",
    "ReferentialIntegrityError",
    "ScanLimitError",
    "Session",
    "Unique",
    "UniqueViolationError",
    "VERSIONSTAMP",
    "ValidationError",
    "WatchIterator",
    "accelerated",
    "and_",
    "bulk_delete",
    "bulk_save",
    "check_documents",
    "check_indexes",
    "drop_index",
    "expires_at",
    "field",
    "migrate",
    "new_id",
    "open_kv",
    "or_",
    "rebuild_indexes",
    "register_type",
    "transaction",
    "upgrade",
    "utcnow",
]

# Reprs and tracebacks read kvmodel.Kv, not kvmodel._kv.Kv. Model keeps its
# module: typing.get_type_hints resolves a model's inherited annotations in the
# namespace of the module each base class names.
# (The object mapper's names get the same when they are first used.)
for _name in __all__:
    if _name not in _LAZY:
        _obj = globals()[_name]
        if isinstance(_obj, type):
            _obj.__module__ = "kvmodel"
del _name, _obj
