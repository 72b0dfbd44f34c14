"""The object mapper: declarative models, indexes, the unit of work and index queries.

Everything here is re-exported at the top level (``km.Model``, ``km.Session``,
...); see ``docs/explanation/models-and-keys.md`` for the key layout.
"""

from __future__ import annotations

from kvmodel.orm._transaction import transaction
from kvmodel.orm._validate import register_type
from kvmodel.orm.bulk import BulkReport, bulk_delete, bulk_save
from kvmodel.orm.check import (
    IndexProblem,
    IndexRepairs,
    IndexReport,
    check_indexes,
    rebuild_indexes,
)
from kvmodel.orm.conditions import Condition, F, and_, or_
from kvmodel.orm.evolve import (
    DocumentProblem,
    DocumentReport,
    MigrationReport,
    check_documents,
    drop_index,
    migrate,
)
from kvmodel.orm.index import Index, Unique
from kvmodel.orm.model import Model, field, new_id, upgrade, utcnow
from kvmodel.orm.queries import Query
from kvmodel.orm.query import Page
from kvmodel.orm.refs import Ref
from kvmodel.orm.session import Session, expires_at

__all__ = [
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
]
