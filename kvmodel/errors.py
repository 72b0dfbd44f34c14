"""The exceptions kvmodel raises.

Every error derives from :class:`KvError`. Errors caused by bad input also derive
from the matching built-in, so ``except ValueError`` and ``except TypeError`` keep
working for callers that do not know kvmodel::

    KvError
    ├── InvalidKeyError(KvError, TypeError)       unsupported key part, empty key on write
    ├── EncodeError(KvError, TypeError)           a value msgpack cannot hold
    ├── DecodeError(KvError, ValueError)          stored bytes that are not a valid value or key
    ├── LimitExceededError(KvError, ValueError)   a Deno KV limit (.limit, .actual)
    ├── InvalidArgumentError(KvError, ValueError) selectors, cursors, durations, options
    ├── KvTypeError(KvError, TypeError)           sum/min/max on a value that is not a KvU64
    ├── KvClosedError(KvError)                    the Kv was closed
    ├── EngineError(KvError)                      the storage engine failed (cause chained)
    ├── ConflictError(KvError)                    a checked versionstamp moved (.keys)
    │   └── UniqueViolationError(ConflictError)   a unique index value is taken
    └── ModelDefinitionError(KvError)             a Model class is declared wrongly
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "ConflictError",
    "DecodeError",
    "EncodeError",
    "EngineError",
    "InvalidArgumentError",
    "InvalidKeyError",
    "KvClosedError",
    "KvError",
    "KvTypeError",
    "LimitExceededError",
    "ModelDefinitionError",
    "UniqueViolationError",
]


class KvError(Exception):
    """Base class of every error kvmodel raises."""


class InvalidKeyError(KvError, TypeError):
    """A key is not a non-empty tuple of bytes, str, int, float or bool parts."""


class EncodeError(KvError, TypeError):
    """A value cannot be encoded (unsupported type, or too deeply nested)."""


class DecodeError(KvError, ValueError):
    """Stored bytes are not a valid kvmodel key or value."""


class LimitExceededError(KvError, ValueError):
    """A request exceeds one of the limits in :mod:`kvmodel.limits`.

    Attributes:
        limit: the maximum allowed.
        actual: what the request asked for.
    """

    def __init__(self, message: str, *, limit: int | float, actual: int | float) -> None:
        super().__init__(message)
        self.limit = limit
        self.actual = actual


class InvalidArgumentError(KvError, ValueError):
    """An argument is out of range or inconsistent (selectors, cursors, durations, options)."""


class KvTypeError(KvError, TypeError):
    """sum/min/max met a stored value that is not a KvU64."""


class KvClosedError(KvError):
    """The Kv (or the engine behind it) was closed."""


class EngineError(KvError):
    """The storage engine failed; the driver's exception is chained as ``__cause__``."""


class ConflictError(KvError):
    """A commit failed because a checked versionstamp moved.

    Attributes:
        keys: the keys whose check failed (as tuples), when the engine can tell.
    """

    def __init__(self, message: str, *, keys: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.keys = tuple(keys)


class UniqueViolationError(ConflictError):
    """A commit would give a unique index value to a second document.

    Attributes:
        index: the index's qualified name (``"User.by_email"``).
        value: the value that is taken (a tuple for compound indexes).
        owner_key: the primary key of the document that holds the value, if known.
    """

    def __init__(
        self,
        message: str,
        *,
        index: str,
        value: Any,
        owner_key: Any = None,
        keys: Sequence[Any] = (),
    ) -> None:
        super().__init__(message, keys=keys)
        self.index = index
        self.value = value
        self.owner_key = owner_key


class ModelDefinitionError(KvError):
    """A Model subclass is declared wrongly (no primary key, bad index field, ...)."""
