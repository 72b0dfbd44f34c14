"""Secondary indexes: :class:`Index` (non-unique, compound) and :class:`Unique`.

Declared as class attributes of a model; the attribute name is the index name.
The key layout: an index ``by_x`` of a model with prefix
``p`` lives under ``f"{p}_by_x"``, one entry per document:

* non-unique: ``(index_prefix, *values, *pk)``;
* unique: ``(index_prefix, *values)``.

Every entry holds its document's primary key, encoded (``kvmodel.keys.encode_key``
of ``(prefix, *pk)``, stored as bytes), so an engine reads an index page and its
documents in one snapshot (``Engine.snapshot_read_linked``). A document with a
None in any indexed field has no entry in that index.
"""

from __future__ import annotations

import collections.abc
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, overload

from kvmodel.errors import DecodeError, InvalidArgumentError, ModelDefinitionError
from kvmodel.keys import decode_key
from kvmodel.orm._convert import (
    Key,
    KeyPart,
    form_part_converter,
    plain_type,
    query_part_converter,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from kvmodel._kv import Kv
    from kvmodel.aio._kv import AsyncKv
    from kvmodel.aio._session import AsyncSession
    from kvmodel.orm.bulk import BulkReport
    from kvmodel.orm.model import Model, ModelInfo
    from kvmodel.orm.query import Page
    from kvmodel.orm.session import Session

__all__ = ["Index", "IndexBase", "Unique", "pointed_key"]

M = TypeVar("M", bound="Model")
M2 = TypeVar("M2", bound="Model")


_COLLECTIONS = (list, set, frozenset, tuple)


def _element_type(tp: Any, what: str, *, strict: bool = True) -> Any:
    """The element type of a list, set, frozenset or ``tuple[X, ...]`` field type.

    With ``strict`` a type that is no such collection raises; without, None.
    """
    tp = plain_type(tp)
    origin = typing.get_origin(tp) or tp
    args = typing.get_args(tp)
    if origin in (list, set, frozenset, collections.abc.Sequence, collections.abc.Set) or (
        origin is tuple and len(args) == 2 and args[1] is Ellipsis
    ):
        return args[0] if args else Any
    if strict:
        raise ModelDefinitionError(
            f"{what} has each=True, so its first field must be a list, set, frozenset or "
            f"tuple[X, ...] of indexable values, not {tp!r}."
        )
    return None


def pointed_key(value: object) -> Key | None:
    """The document key an index entry's value names, or None if it names none.

    Every entry holds its document's encoded key; a value of any other shape
    (only a write that bypassed the sessions leaves one) names no document.
    """
    if not isinstance(value, bytes):
        return None
    try:
        return decode_key(value)
    except DecodeError:
        return None


class IndexBase(Generic[M]):
    """What :class:`Index` and :class:`Unique` share: fields, naming, key building."""

    unique: ClassVar[bool] = False

    __slots__ = (
        "_converters",
        "_info",
        "_query_converters",
        "each",
        "fields",
        "key_prefix",
        "model",
        "name",
    )

    def __init__(self, *fields: str, each: bool = False) -> None:
        if not isinstance(each, bool):
            raise ModelDefinitionError(f"each= takes True or False, not {each!r}.")
        if not fields:
            raise ModelDefinitionError(f"{type(self).__name__}() needs at least one field name.")
        for f in fields:
            if not isinstance(f, str):
                raise ModelDefinitionError(
                    f"{type(self).__name__} fields are given by name (str), not {f!r}."
                )
        if len(set(fields)) != len(fields):
            raise ModelDefinitionError(f"{type(self).__name__}{fields!r} repeats a field.")
        self.fields: tuple[str, ...] = fields
        # each=True: the first field holds a list, set or tuple, and the
        # document has one entry per element (a multi-value index).
        self.each = each
        self.name = ""
        self.model: type[M] | None = None
        self.key_prefix = ""
        self._info: ModelInfo | None = None
        self._converters: tuple[tuple[str, Callable[[Any], KeyPart]], ...] | None = None
        self._query_converters: tuple[Callable[[Any], KeyPart], ...] = ()

    # -- declaration -------------------------------------------------------------

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def _copy(self) -> IndexBase[M]:
        """An unbound copy, for a subclass that inherits this index."""
        return type(self)(*self.fields, each=self.each)

    def _bind(self, model: type[Any], info: ModelInfo) -> None:
        self.model = model
        self._info = info
        self.key_prefix = f"{info.prefix}_{self.name}"

    def _prepare(self, types: dict[str, Any]) -> None:
        """Picks the form-to-key-part conversion of each field from its declared type."""
        if self._converters is not None:
            return
        field_types = [types[f] for f in self.fields]
        if self.each:
            field_types[0] = _element_type(types[self.fields[0]], f"{self.qualname}")
        elif _element_type(types[self.fields[0]], "", strict=False) is not None:
            raise ModelDefinitionError(
                f"{self.qualname} indexes the collection field {self.fields[0]!r}; declare it "
                f"with each=True (km.{type(self).__name__}({self.fields[0]!r}, each=True)) "
                "to index every element."
            )
        self._converters = tuple(
            (f, form_part_converter(t, f"{self.qualname}.{f}"))
            for f, t in zip(self.fields, field_types, strict=True)
        )
        self._query_converters = tuple(
            query_part_converter(t, f"{self.qualname}.{f}")
            for f, t in zip(self.fields, field_types, strict=True)
        )

    @property
    def qualname(self) -> str:
        """``Model.index_name``, as error messages and reports name the index."""
        owner = self.model.__qualname__ if self.model is not None else "<unbound>"
        return f"{owner}.{self.name}"

    @property
    def info(self) -> ModelInfo:
        """The prepared :class:`ModelInfo` of the model this index belongs to."""
        info = self._info
        if info is None:
            raise ModelDefinitionError(
                f"{type(self).__name__}{self.fields!r} is not declared on a km.Model class."
            )
        if self._converters is None:
            info.prepare()
        return info

    def __repr__(self) -> str:
        fields = ", ".join(repr(f) for f in self.fields) + (", each=True" if self.each else "")
        where = f" {self.qualname}" if self.model is not None else ""
        return f"<{type(self).__name__}({fields}){where}>"

    # -- keys --------------------------------------------------------------------

    def values_of(self, form: dict[str, Any]) -> tuple[KeyPart, ...] | None:
        """The key parts of a document's indexed values, or None if one is None
        (for an ``each=True`` index, of its first element)."""
        found = self._values(form)
        return found[0] if found else None

    def _values(self, form: dict[str, Any]) -> list[tuple[KeyPart, ...]]:
        """Every tuple of key parts a document has in this index (one per element
        for ``each=True``, without repeats); empty when a value is None."""
        converters = self._converters or ()
        if not self.each:
            single = self._single(form)
            return [] if single is None else [single]
        rest = []
        for name, convert in converters[1:]:
            value = form.get(name)
            if value is None:
                return []
            rest.append(convert(value))
        if not converters:
            return []
        name, convert = converters[0]
        first = form.get(name)
        if first is None:
            return []
        if not self.each:
            return [(convert(first), *rest)]
        if not isinstance(first, list | tuple | set | frozenset):
            return []  # a stored value of another shape: no entries
        parts = dict.fromkeys(convert(v) for v in first if v is not None)
        return [(p, *rest) for p in parts]

    def _single(self, form: dict[str, Any]) -> tuple[KeyPart, ...] | None:
        """The key parts of a document's one entry in an index without ``each``."""
        parts = []
        for name, convert in self._converters or ():
            value = form.get(name)
            if value is None:
                return None
            parts.append(convert(value))
        return tuple(parts)

    def _entries(
        self, form: dict[str, Any], pk: tuple[KeyPart, ...], target: bytes
    ) -> list[tuple[Key, bytes]]:
        """The ``(key, value)`` of each of a document's entries in this index.

        ``target`` is the document's encoded primary key: every entry's value.
        """
        if not self.each:
            # The common case, on every commit: one entry, no list of candidates.
            parts = self._single(form)
            if parts is None:
                return []
            if self.unique:
                return [((self.key_prefix, *parts), target)]
            return [((self.key_prefix, *parts, *pk), target)]
        if self.unique:
            return [((self.key_prefix, *parts), target) for parts in self._values(form)]
        return [((self.key_prefix, *parts, *pk), target) for parts in self._values(form)]

    def key_parts(self, values: tuple[Any, ...], *, room: int = 0) -> tuple[KeyPart, ...]:
        """Key parts for query values given for the first fields of the index.

        ``room`` is how many more fields the query still needs (1 for a range).

        Raises:
            InvalidArgumentError: too many values, or a None among them.
        """
        if len(values) + room > len(self.fields):
            raise InvalidArgumentError(
                f"{self.qualname} indexes {self.fields!r}; {len(values)} value(s) "
                f"{values!r}{' and a range' if room else ''} is more than it has fields."
            )
        self.info  # noqa: B018 -- prepares the converters
        converters = self._query_converters
        parts = []
        for value, name, convert in zip(values, self.fields, converters, strict=False):
            if value is None:
                raise InvalidArgumentError(
                    f"None is not a value of {self.qualname} (field {name!r}): documents "
                    "with None in an indexed field have no entry in the index."
                )
            parts.append(convert(value))
        return tuple(parts)

    def _bound_part(self, position: int, value: Any) -> KeyPart:
        """The key part of a range bound on the field at ``position``."""
        self.info  # noqa: B018 -- prepares the converters
        return self._query_converters[position](value)

    def _values_by_name(self, values: tuple[Any, ...], named: dict[str, Any]) -> tuple[Any, ...]:
        """Query values given positionally or by field name, as one positional tuple.

        Keywords name the index's fields (``find(kv, author_id=x)``) and must
        cover a prefix of them, as positional values do.

        Raises:
            InvalidArgumentError: both kinds at once, an unknown field name, or
                names that are not a prefix of the index's fields.
        """
        if not named:
            return values
        if values:
            raise InvalidArgumentError(
                f"{self.qualname} was given values both by position {values!r} and by name "
                f"{sorted(named)!r}; give them one way (its fields are {self.fields!r})."
            )
        unknown = [n for n in named if n not in self.fields]
        if unknown:
            raise InvalidArgumentError(
                f"{self.qualname} has no field {unknown[0]!r}; its fields are "
                f"{self.fields!r}, and keywords name them."
            )
        prefix = self.fields[: len(named)]
        if set(prefix) != set(named):
            missing = next(f for f in prefix if f not in named)
            raise InvalidArgumentError(
                f"{self.qualname} indexes {self.fields!r} in that order; values for "
                f"{sorted(named)!r} leave out {missing!r}, so they are not a prefix of its "
                "fields. Give the earlier fields too, or use Model.query for other "
                "combinations."
            )
        return tuple(named[f] for f in prefix)

    # -- queries -----------------------------------------------------------------

    @overload
    def find(
        self,
        source: Session | Kv,
        *values: Any,
        start: Any = None,
        end: Any = None,
        limit: int | None = None,
        reverse: bool = False,
        cursor: str | None = None,
        **named: Any,
    ) -> Page[M]: ...
    @overload
    def find(
        self,
        source: AsyncSession | AsyncKv,
        *values: Any,
        start: Any = None,
        end: Any = None,
        limit: int | None = None,
        reverse: bool = False,
        cursor: str | None = None,
        **named: Any,
    ) -> Awaitable[Page[M]]: ...
    def find(
        self,
        source: Session | Kv | AsyncSession | AsyncKv,
        *values: Any,
        start: Any = None,
        end: Any = None,
        limit: int | None = None,
        reverse: bool = False,
        cursor: str | None = None,
        **named: Any,
    ) -> Page[M] | Awaitable[Page[M]]:
        """The documents whose first indexed fields equal ``values``, in index order.

        ``start``/``end`` bound the next field to ``[start, end)``. Each page of
        index entries and the documents they point at are read at one snapshot,
        so a document is never returned at a position it no longer has.

        Args:
            source: a :class:`Session` (results join its identity map) or a Kv
                (detached objects: changing them writes nothing); or their
                ``kvmodel.aio`` twins, an ``AsyncSession`` or an ``AsyncKv``,
                and then the result is awaited.
            values: equality on a prefix of the index fields.
            start: inclusive lower bound of the next field.
            end: exclusive upper bound of the next field.
            limit: at most this many documents.
            named: the same values by field name instead
                (``Post.by_author.find(kv, author_id=x)``), for a prefix of
                the fields.
            reverse: highest index values first.
            cursor: resume after the page that returned this ``.cursor``.

        Returns:
            A :class:`Page`: iterable, with ``len`` and ``.cursor`` ("" when done).
        """
        from kvmodel.orm import query

        return query.find(
            self,
            source,
            self._values_by_name(values, named),
            start=start,
            end=end,
            limit=limit,
            reverse=reverse,
            cursor=cursor,
        )

    @overload
    def count(
        self,
        source: Session | Kv,
        *values: Any,
        start: Any = None,
        end: Any = None,
        **named: Any,
    ) -> int: ...
    @overload
    def count(
        self,
        source: AsyncSession | AsyncKv,
        *values: Any,
        start: Any = None,
        end: Any = None,
        **named: Any,
    ) -> Awaitable[int]: ...
    def count(
        self,
        source: Session | Kv | AsyncSession | AsyncKv,
        *values: Any,
        start: Any = None,
        end: Any = None,
        **named: Any,
    ) -> int | Awaitable[int]:
        """How many index entries match, as :meth:`find` would select them.

        Awaitable when ``source`` is an ``AsyncSession`` or an ``AsyncKv``.
        """
        from kvmodel.orm import query

        return query.count(self, source, self._values_by_name(values, named), start=start, end=end)

    @overload
    def first(
        self,
        source: Session | Kv,
        *values: Any,
        start: Any = None,
        end: Any = None,
        reverse: bool = False,
        **named: Any,
    ) -> M | None: ...
    @overload
    def first(
        self,
        source: AsyncSession | AsyncKv,
        *values: Any,
        start: Any = None,
        end: Any = None,
        reverse: bool = False,
        **named: Any,
    ) -> Awaitable[M | None]: ...
    def first(
        self,
        source: Session | Kv | AsyncSession | AsyncKv,
        *values: Any,
        start: Any = None,
        end: Any = None,
        reverse: bool = False,
        **named: Any,
    ) -> M | Awaitable[M | None] | None:
        """The first document :meth:`find` would return (the last with ``reverse``), or None.

        >>> import kvmodel as km
        >>> class Run(km.Model, prefix="runs"):
        ...     id: str = km.field(primary_key=True)
        ...     job: str
        ...     n: int
        ...     by_job = km.Index("job", "n")
        >>> kv = km.open_kv()
        >>> with km.Session(kv) as s:
        ...     s.add_all([Run(id=f"r{n}", job="build", n=n) for n in range(3)])
        >>> Run.by_job.first(kv, "build", reverse=True).n
        2
        >>> Run.by_job.exists(kv, "deploy")
        False
        """
        from kvmodel.orm import query

        return query.first(
            self,
            source,
            self._values_by_name(values, named),
            start=start,
            end=end,
            reverse=reverse,
        )

    @overload
    def exists(
        self,
        source: Session | Kv,
        *values: Any,
        start: Any = None,
        end: Any = None,
        **named: Any,
    ) -> bool: ...
    @overload
    def exists(
        self,
        source: AsyncSession | AsyncKv,
        *values: Any,
        start: Any = None,
        end: Any = None,
        **named: Any,
    ) -> Awaitable[bool]: ...
    def exists(
        self,
        source: Session | Kv | AsyncSession | AsyncKv,
        *values: Any,
        start: Any = None,
        end: Any = None,
        **named: Any,
    ) -> bool | Awaitable[bool]:
        """Whether :meth:`find` would return at least one document."""
        from kvmodel.orm import query

        return query.exists(self, source, self._values_by_name(values, named), start=start, end=end)

    def delete_where(
        self,
        kv: Kv,
        *values: Any,
        start: Any = None,
        end: Any = None,
        progress: Callable[[BulkReport], object] | None = None,
        **named: Any,
    ) -> BulkReport:
        """Deletes every document that :meth:`find` selects, with all its index entries.

        The index is read a page at a time with its documents, and the
        documents are deleted in as few commits as the engine's limits allow,
        each checked against the versionstamp read. A document changed in
        between is read again and deleted only if it still matches; one that
        no longer matches is counted as ``skipped``. Each commit is atomic;
        the deletion as a whole is NOT: what a failure interrupts stays half
        done, and running the call again finishes it.

        Args:
            kv: the Kv to delete from (not a Session: the commits are its own).
            values: equality on a prefix of the index fields, as in :meth:`find`.
            start: inclusive lower bound of the next field.
            end: exclusive upper bound of the next field.
            progress: called with the running report after each commit.

        Returns:
            A :class:`kvmodel.BulkReport` (``.deleted``, ``.skipped``, ``.conflicts``).

        Raises:
            IndexNotReadyError: the index is still building (see ``rebuild_indexes``).
            KvTypeError: ``kv`` is a Session or not a Kv.
        """
        from kvmodel.orm import bulk

        return bulk.delete_where(
            self,
            kv,
            self._values_by_name(values, named),
            start=start,
            end=end,
            progress=progress,
        )


class Index(IndexBase[M]):
    """A non-unique, possibly compound secondary index.

    >>> import kvmodel as km
    >>> class Note(km.Model, prefix="notes"):
    ...     id: str = km.field(primary_key=True)
    ...     author: str
    ...     by_author = km.Index("author")
    >>> kv = km.open_kv()
    >>> with km.Session(kv) as s:
    ...     s.add(Note(id="n1", author="ada"))
    >>> [n.id for n in Note.by_author.find(kv, "ada")]
    ['n1']
    """

    unique: ClassVar[bool] = False
    __slots__ = ()

    # Typed as Index[Any] so that a bare ``by_x = km.Index("x")`` in a class body
    # needs no annotation; ``__get__`` then binds the owner model's type.
    def __new__(cls, *fields: str, each: bool = False) -> Index[Any]:
        return super().__new__(cls)

    def __get__(self, instance: object, owner: type[M2]) -> Index[M2]:
        return self  # type: ignore[return-value]


class Unique(IndexBase[M]):
    """A unique, possibly compound secondary index: one document per value.

    The session checks, in the same commit, that a value it gives a document is
    not taken; a violation raises :class:`kvmodel.UniqueViolationError`.
    """

    unique: ClassVar[bool] = True
    __slots__ = ()

    def __new__(cls, *fields: str, each: bool = False) -> Unique[Any]:
        return super().__new__(cls)

    def __get__(self, instance: object, owner: type[M2]) -> Unique[M2]:
        return self  # type: ignore[return-value]

    @overload
    def get(self, source: Session | Kv, *values: Any, **named: Any) -> M | None: ...
    @overload
    def get(
        self, source: AsyncSession | AsyncKv, *values: Any, **named: Any
    ) -> Awaitable[M | None]: ...
    def get(
        self, source: Session | Kv | AsyncSession | AsyncKv, *values: Any, **named: Any
    ) -> M | Awaitable[M | None] | None:
        """The document holding these values (one per field), or None.

        Awaitable when ``source`` is an ``AsyncSession`` or an ``AsyncKv``.

        Raises:
            InvalidArgumentError: not one value per field, or a None value.
        """
        from kvmodel.orm import query

        return query.unique_get(self, source, self._values_by_name(values, named))
