"""The exceptions kvmodel raises.

Every error derives from :class:`KvError`. Errors caused by bad input also derive
from the matching built-in, so ``except ValueError`` and ``except TypeError`` keep
working for callers that do not know kvmodel::

    KvError
    ├── InvalidKeyError(KvError, TypeError)       unsupported key part, empty key on write
    ├── EncodeError(KvError, TypeError)           a value msgpack cannot hold
    ├── DecodeError(KvError, ValueError)          stored bytes that are not a valid value or key
    ├── LimitExceededError(KvError, ValueError)   a Deno KV limit (.limit, .actual)
    │   └── ScanLimitError(LimitExceededError)    a query read more than its max_scan
    ├── InvalidArgumentError(KvError, ValueError) selectors, cursors, durations, options
    ├── KvTypeError(KvError, TypeError)           sum/min/max on a value that is not a KvU64
    ├── KvClosedError(KvError)                    the Kv was closed
    ├── EngineError(KvError)                      the storage engine failed (cause chained)
    ├── ConflictError(KvError)                    a checked versionstamp moved (.keys)
    │   └── UniqueViolationError(ConflictError)   a unique index value is taken
    ├── ValidationError(KvError, ValueError)      a field value does not fit its declared type
    ├── ReferentialIntegrityError(KvError)        a reference's on_delete or target refuses a commit
    ├── IndexNotReadyError(KvError)               a query on an index that is still being built
    ├── IndexRequiredError(KvError)               no declared index serves a query
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
    "IndexNotReadyError",
    "IndexRequiredError",
    "InvalidArgumentError",
    "InvalidKeyError",
    "KvClosedError",
    "KvError",
    "KvTypeError",
    "LimitExceededError",
    "ModelDefinitionError",
    "ReferentialIntegrityError",
    "ScanLimitError",
    "UniqueViolationError",
    "ValidationError",
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


class ScanLimitError(LimitExceededError):
    """A query read more entries than its ``max_scan`` allows before it finished.

    Raised by the call (a page, ``first``, ``count``, ...) that went over; what
    that call read is not returned. ``limit`` is the ``max_scan``, ``actual``
    how many entries it had read.
    """


class InvalidArgumentError(KvError, ValueError):
    """An argument is out of range or inconsistent (selectors, cursors, durations, options)."""


class KvTypeError(KvError, TypeError):
    """A value has the wrong type for the call: sum/min/max on a stored value that is
    not a KvU64, or an object that is not a model instance given to a session."""


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


class ValidationError(KvError, ValueError):
    """A model field holds a value that does not fit its declared type, or an attrs
    validator the model declares rejected it; nothing was written.

    Attributes:
        model: the model's name (``"User"``).
        key: the document's primary key tuple, ``(prefix, *pk)``.
        field: the field at fault, with a path into nested values (``"items[0].quantity"``).
        expected: the declared type, as text.
        value: the value that does not fit.
    """

    def __init__(
        self,
        message: str,
        *,
        model: str,
        key: Any,
        field: str,
        expected: str,
        value: Any,
    ) -> None:
        super().__init__(message)
        self.model = model
        self.key = key
        self.field = field
        self.expected = expected
        self.value = value


class IndexNotReadyError(KvError):
    """A query used an index that is still being built for documents stored before it
    was declared; ``kvmodel.rebuild_indexes`` builds it.

    Attributes:
        index: the index's qualified name (``"Order.by_status"``).
    """

    def __init__(self, message: str, *, index: str) -> None:
        super().__init__(message)
        self.index = index


class ReferentialIntegrityError(KvError):
    """A commit would break a reference declared with ``on_delete``: it deletes a target
    that an ``on_delete="restrict"`` reference still points at, or it saves a
    reference to a target that does not exist. Nothing was written.

    Attributes:
        model: the referring model's name (``"Post"``).
        key: the referring object's key, ``(prefix, *pk)``.
        field: the reference field (``"author"``).
        target: the key of the target document.
    """

    def __init__(self, message: str, *, model: str, key: Any, field: str, target: Any) -> None:
        super().__init__(message)
        self.model = model
        self.key = key
        self.field = field
        self.target = target


class IndexRequiredError(KvError):
    """No ready index serves a query's conditions or order (``Model.query``).

    Attributes:
        model: the model's name (``"Order"``).
        fields: the fields the query compares or orders by.
        suggestion: an index declaration that would serve it
            (``'by_status_total_cents = km.Index("status", "total_cents")'``).
    """

    def __init__(
        self, message: str, *, model: str, fields: tuple[str, ...], suggestion: str
    ) -> None:
        super().__init__(message)
        self.model = model
        self.fields = fields
        self.suggestion = suggestion
