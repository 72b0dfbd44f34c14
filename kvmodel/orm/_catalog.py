"""The models a Kv has met: who owns each keyspace, and each model's stored description.

Two things happen the first time a model is used with a Kv (:func:`attach`):

* **Keyspace ownership.** A model owns its prefix and the key prefix of each of
  its indexes. Two models claiming one keyspace would read each other's data,
  so the second claim raises ``ModelDefinitionError`` naming both owners. The
  same class defined again (a module reload) takes its predecessor's place.
* **The stored description.** The database keeps, per model prefix, the
  model's fields, version and indexes with their states, under a reserved
  keyspace: keys starting with the byte 0xFF, which no encoded tuple key starts
  with, so ``kv.list(prefix=())`` and every model listing pass them by. It also
  names the form of each key part (:func:`key_part_kind`: ``"datetime"`` for
  the UTC microseconds an indexed datetime becomes, ``"uuid"`` for 16 bytes, ...),
  so tools such as ``kvmodel ls`` can show keys readably without the model. An
  index the description does not know yet is *ready* when the model's keyspace
  is empty and *building* otherwise: documents written before it was declared
  have no entries, so a query on it would return partial results.
  ``rebuild_indexes`` builds it and marks it ready for every process;
  ``drop_index`` removes an index the model no longer declares.

The description is read once per Kv and model; a query on a building index
reads it again before refusing, since another process may have built it.
"""

from __future__ import annotations

import enum
import threading
from datetime import date, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from kvmodel._values import decode_value
from kvmodel.engines.base import AtomicWrite, Check, Consistency, Mutation, MutationKind, ReadRange
from kvmodel.errors import DecodeError, EngineError, IndexNotReadyError, ModelDefinitionError
from kvmodel.keys import encode_key
from kvmodel.orm._convert import plain_type, resolve_types

if TYPE_CHECKING:
    from kvmodel._kv import Kv
    from kvmodel.orm.index import IndexBase
    from kvmodel.orm.model import ModelInfo

__all__ = [
    "ModelState",
    "attach",
    "description_key",
    "key_part_kind",
    "mark_ready",
    "remove_index",
    "require_ready",
    "stored_description",
]

SYSTEM_KEY_PREFIX = b"\xff"
"""The first byte of kvmodel's own keys: outside every tuple key's encoding."""

READY = "ready"
BUILDING = "building"

# A description write races other processes attaching the same model; each
# retry re-reads it, and this many conflicts in a row means something is wrong.
_ATTEMPTS = 20


def description_key(prefix: str) -> bytes:
    """The reserved key of the stored description of the model with this prefix."""
    return SYSTEM_KEY_PREFIX + encode_key(("kvmodel", "models", prefix))


class ModelState:
    """What one Kv knows of one model: its index states, from the stored description."""

    __slots__ = ("states",)

    def __init__(self, states: dict[str, str]) -> None:
        self.states = states


class _KvModels:
    """The models one Kv has met."""

    __slots__ = ("attached", "lock", "owners")

    def __init__(self) -> None:
        self.owners: dict[str, tuple[str, ModelInfo]] = {}
        self.attached: dict[ModelInfo, ModelState] = {}
        self.lock = threading.Lock()


_registry_lock = threading.Lock()

# The record lives on the Kv object itself, under a name only this module
# uses: every session operation looks it up, and an attribute read is several
# times cheaper than a WeakKeyDictionary lookup. It goes away with the Kv.
_ATTRIBUTE = "_kvmodel_orm_models"


def models_of(kv: Kv) -> _KvModels:
    """The per-Kv record of attached models (created on first use)."""
    found: _KvModels | None = kv.__dict__.get(_ATTRIBUTE)
    if found is None:
        with _registry_lock:
            found = kv.__dict__.setdefault(_ATTRIBUTE, _KvModels())
    return found


def attach(kv: Kv, info: ModelInfo) -> ModelState:
    """Registers ``info``'s keyspaces with ``kv`` and loads its stored description.

    Raises:
        ModelDefinitionError: another model owns one of ``info``'s keyspaces.
    """
    models = models_of(kv)
    state = models.attached.get(info)
    if state is not None:
        return state
    with models.lock:
        state = models.attached.get(info)
        if state is not None:
            return state
        _claim_keyspaces(models, info)
        state = ModelState(_settle_description(kv, info))
        models.attached[info] = state
        return state


def _claim_keyspaces(models: _KvModels, info: ModelInfo) -> None:
    claims = [(info.prefix, f"the documents of {info.qualified_name}")]
    claims += [
        (ix.key_prefix, f"the index {ix.qualname} of {info.qualified_name}") for ix in info.indexes
    ]
    for space, what in claims:
        owner = models.owners.get(space)
        if owner is None or owner[1] is info:
            continue
        other_what, other = owner
        if other.qualified_name == info.qualified_name:
            continue  # the same class defined again: it replaces the old one below
        raise ModelDefinitionError(
            f"The keyspace {space!r} is claimed by {what} and by {other_what}; they would "
            "read and overwrite each other's keys. Give one model another prefix= or the "
            "index another name."
        )
    for space, what in claims:
        owner = models.owners.get(space)
        if owner is not None and owner[1] is not info:
            models.attached.pop(owner[1], None)
        models.owners[space] = (what, info)


def stored_description(kv: Kv, prefix: str) -> tuple[dict[str, Any] | None, bytes | None]:
    """The stored description of a model prefix and its versionstamp (None, None if none)."""
    key = description_key(prefix)
    found = kv.read_range(ReadRange(key, key + b"\x00", 1), Consistency.STRONG)
    if not found:
        return None, None
    try:
        value = decode_value(found[0].value, found[0].encoding)
    except DecodeError:
        value = None
    if not isinstance(value, dict) or not isinstance(value.get("indexes"), dict):
        return None, found[0].versionstamp  # damaged: rewritten from the model
    return value, found[0].versionstamp


def _write_description(
    kv: Kv, prefix: str, description: dict[str, Any], versionstamp: bytes | None
) -> bool:
    key = description_key(prefix)
    data, encoding = kv.encode_value(description)
    write = AtomicWrite(
        (Check(key, versionstamp),), (Mutation(key, MutationKind.SET, data, encoding),), ()
    )
    return kv.commit_write(write, [("kvmodel description", prefix)]).ok


def _has_keys(kv: Kv, prefix: str) -> bool:
    base = encode_key((prefix,))
    return bool(kv.read_range(ReadRange(base + b"\x00", base + b"\xff", 1), Consistency.STRONG))


def key_part_kind(tp: Any) -> str:
    """The name of the key-part form that values of the declared type ``tp`` take.

    ``"datetime"`` (an int of UTC microseconds), ``"date"`` (an int, its
    ordinal), ``"uuid"`` (its 16 bytes), ``"enum"`` (the member's value),
    ``"str"``, ``"int"``, ``"float"``, ``"bool"`` or ``"bytes"`` (as they are),
    or ``"any"`` (a Literal, ``Any``: whatever the value is). The stored
    description lists one per key part, so a reader without the model class
    can turn the parts back into the values they came from.
    """
    tp = plain_type(tp)
    if tp is datetime:
        return "datetime"
    if tp is date:
        return "date"
    if tp is UUID:
        return "uuid"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "enum"
    if tp in (str, int, float, bool, bytes):
        return str(tp.__name__)
    return "any"


def _field_types(info: ModelInfo) -> dict[str, Any]:
    info.prepare()  # resolves the annotations, or raises ModelDefinitionError naming them
    return resolve_types(info.cls)


def _index_parts(index: IndexBase[Any], types: dict[str, Any], pk: list[str]) -> list[str]:
    """The kinds of an index entry's key parts after its prefix: the indexed values,
    then (non-unique indexes) the primary key."""
    from kvmodel.orm.index import _element_type

    kinds = []
    for n, name in enumerate(index.fields):
        tp = types[name]
        if n == 0 and index.each:
            tp = _element_type(tp, index.qualname)
        kinds.append(key_part_kind(tp))
    if not index.unique:
        kinds += pk
    return kinds


def _index_description(index: IndexBase[Any], state: str, parts: list[str]) -> dict[str, Any]:
    described = {"fields": list(index.fields), "unique": index.unique, "state": state}
    if index.each:
        described["each"] = True
    described["parts"] = parts
    return described


def _settle_description(kv: Kv, info: ModelInfo) -> dict[str, str]:
    """Reads (and completes) the stored description; returns the declared indexes' states."""
    for _ in range(_ATTEMPTS):
        stored, versionstamp = stored_description(kv, info.prefix)
        indexes: dict[str, Any] = dict(stored["indexes"]) if stored is not None else {}
        has_documents: bool | None = None
        changed = stored is None
        # Only the forms of the key parts to add (a description an earlier
        # release wrote): a convenience for readers, never worth failing for.
        completes = False
        # A newer release's description keeps its own forms, as it keeps its fields.
        newer = (
            stored is not None
            and isinstance(stored.get("version"), int)
            and stored["version"] > info.version
        )
        types = _field_types(info)
        pk_parts = [key_part_kind(types[name]) for name in info.pk_fields]
        if stored is not None and not newer and stored.get("primary_key_parts") != pk_parts:
            completes = True
        for index in info.indexes:
            known = indexes.get(index.name)
            parts = _index_parts(index, types, pk_parts)
            if (
                isinstance(known, dict)
                and known.get("fields") == list(index.fields)
                and known.get("unique") == index.unique
                and known.get("each", False) == index.each
                and known.get("state") in (READY, BUILDING)
            ):
                if known.get("parts") != parts and not newer:
                    indexes[index.name] = {**known, "parts": parts}
                    completes = True
                continue
            if has_documents is None:
                has_documents = _has_keys(kv, info.prefix)
            # Documents stored before this index was declared have no entries in
            # it. A database that predates descriptions gets the benefit of the
            # doubt for an index that already has entries.
            ready = not has_documents or (stored is None and _has_keys(kv, index.key_prefix))
            indexes[index.name] = _index_description(index, READY if ready else BUILDING, parts)
            changed = True
        version = info.version
        fields = list(info.field_names)
        if stored is not None and isinstance(stored.get("version"), int):
            if stored["version"] > version:
                # A newer release described the model: keep its version and fields.
                version = stored["version"]
                fields = stored.get("fields", fields)
            elif stored["version"] < version or stored.get("fields") != fields:
                changed = True
        if changed or completes:
            description = {
                "model": info.qualified_name,
                "version": version,
                "fields": fields,
                "primary_key": list(info.pk_fields),
                "primary_key_parts": stored.get("primary_key_parts", pk_parts)
                if newer and stored is not None
                else pk_parts,
                "indexes": indexes,
            }
            try:
                written = _write_description(kv, info.prefix, description, versionstamp)
            except EngineError:
                if changed:
                    raise
                written = True  # a client that may not write reads on without the forms
            if not written:
                continue  # another process wrote it meanwhile: read it again
        return {ix.name: indexes[ix.name]["state"] for ix in info.indexes}
    raise ModelDefinitionError(
        f"The stored description of {info.name} kept changing while kvmodel read it; try again."
    )


def _update(kv: Kv, info: ModelInfo, change: Any) -> None:
    """Applies ``change(indexes)`` to the stored description, checked and retried."""
    attach(kv, info)
    for _ in range(_ATTEMPTS):
        stored, versionstamp = stored_description(kv, info.prefix)
        if stored is None:
            return
        indexes = dict(stored["indexes"])
        change(indexes)
        if _write_description(kv, info.prefix, {**stored, "indexes": indexes}, versionstamp):
            models_of(kv).attached.pop(info, None)  # read it again on next use
            return
    raise ModelDefinitionError(
        f"The stored description of {info.name} kept changing; run the operation again."
    )


def mark_ready(kv: Kv, info: ModelInfo, names: list[str]) -> None:
    """Marks indexes of ``info`` ready in the stored description (after a full backfill)."""

    def change(indexes: dict[str, Any]) -> None:
        for name in names:
            if isinstance(indexes.get(name), dict):
                indexes[name] = {**indexes[name], "state": READY}

    _update(kv, info, change)


def remove_index(kv: Kv, info: ModelInfo, name: str) -> None:
    """Removes an index from the stored description of ``info``."""
    _update(kv, info, lambda indexes: indexes.pop(name, None))


def require_ready(kv: Kv, index: IndexBase[Any]) -> None:
    """Raises IndexNotReadyError unless ``index`` is ready on ``kv``."""
    info = index.info
    state = attach(kv, info)
    if state.states.get(index.name) == READY:
        return
    # Another process may have built it since: read the description again.
    models_of(kv).attached.pop(info, None)
    state = attach(kv, info)
    if state.states.get(index.name) == READY:
        return
    raise IndexNotReadyError(
        f"The index {index.qualname} is still being built: documents stored before it was "
        "declared have no entries in it yet, so a query would miss them. Build it with "
        f"km.rebuild_indexes(kv, {info.name}); every process uses it once that finishes.",
        index=index.qualname,
    )
