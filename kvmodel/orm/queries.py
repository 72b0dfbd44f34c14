"""Queries over a model's declared indexes: :class:`Query`, made by :meth:`kvmodel.Model.query`.

A query is an immutable description (conditions, order, limit, options) bound
to a source, a Session or a Kv. Every call that reads (``page``, iteration,
``first``, ``count``, ``exists``, ``delete``) plans it afresh on the indexes
that are ready, runs the plan (see :mod:`kvmodel.orm._query_plan`) and loads
the documents through the same machinery as :meth:`kvmodel.Index.find`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from kvmodel._options import positive_int
from kvmodel._text import brief_repr
from kvmodel.errors import InvalidArgumentError, KvError, KvTypeError
from kvmodel.orm import _query_plan as qp
from kvmodel.orm import _query_streams as qs
from kvmodel.orm import _query_terms as qt
from kvmodel.orm.conditions import Condition, F, and_
from kvmodel.orm.model import model_info
from kvmodel.orm.query import Page, _query_cursor, resolve_source
from kvmodel.orm.session import Session, load_documents

if TYPE_CHECKING:
    from kvmodel._kv import Kv
    from kvmodel.orm.model import Model

__all__ = ["Query"]

M = TypeVar("M", bound="Model")

_ITER_PAGE = 100


def _encode_position(pos: bytes) -> str:
    return base64.urlsafe_b64encode(pos).decode("ascii")


def _decode_position(cursor: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(cursor.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise InvalidArgumentError(
            f"The cursor {brief_repr(cursor, 60)} is not a query cursor; pass the .cursor of "
            "a Page this query returned."
        ) from exc


class Query(Generic[M]):
    """The documents of one model that match conditions, in an order, read through its indexes.

    Made by :meth:`kvmodel.Model.query`; ``where``, ``order_by`` and ``limit``
    return new queries. Reading calls: :meth:`page`, iteration (every page),
    :meth:`first`, :meth:`count`, :meth:`exists`, :meth:`delete`;
    :meth:`explain` shows the plan.

    >>> import kvmodel as km
    >>> class Order(km.Model, prefix="orders_q"):
    ...     id: int = km.field(primary_key=True)
    ...     status: str
    ...     total_cents: int
    ...     by_status_total = km.Index("status", "total_cents")
    >>> kv = km.open_kv()
    >>> with km.Session(kv) as s:
    ...     s.add_all(Order(id=i, status=("paid", "open")[i % 2], total_cents=i * 500)
    ...               for i in range(10))
    >>> q = Order.query(kv, km.F("total_cents") > 1000, status="paid")
    >>> [o.id for o in q.order_by("-total_cents")]
    [8, 6, 4]
    >>> q.count(), q.exists()
    (3, True)
    """

    __slots__ = (
        "_allow_scan",
        "_bound",
        "_condition",
        "_kv",
        "_last",
        "_limit",
        "_max_scan",
        "_model",
        "_order",
        "_session",
        "_source",
    )

    def __init__(
        self,
        model: type[M],
        source: Session | Kv,
        condition: Condition | None,
        *,
        order: tuple[str, bool] | None = None,
        limit: int | None = None,
        allow_scan: bool = False,
        max_scan: int | None = None,
    ) -> None:
        info = model_info(model)
        self._kv, self._session = resolve_source(source)
        if not isinstance(allow_scan, bool):
            raise InvalidArgumentError(
                f"{info.name}.query: allow_scan takes True or False, not {brief_repr(allow_scan)}."
            )
        if max_scan is not None:
            max_scan = positive_int("max_scan", max_scan)
        if limit is not None:
            limit = positive_int("limit", limit)
        self._model = model
        self._source = source
        self._condition = condition
        self._order = order
        self._limit = limit
        self._allow_scan = allow_scan
        self._max_scan = max_scan
        self._last: qs.Run | None = None
        self._bound = qt.bind(info, condition, order, self._text())

    # -- building ----------------------------------------------------------------

    def _text(self) -> str:
        name = model_info(self._model).name
        text = f"{name}.query({'' if self._condition is None else repr(self._condition)})"
        if self._order is not None:
            text += f".order_by({('-' if self._order[1] else '') + self._order[0]!r})"
        return text

    def _with(self, **changes: Any) -> Query[M]:
        options: dict[str, Any] = {
            "order": self._order,
            "limit": self._limit,
            "allow_scan": self._allow_scan,
            "max_scan": self._max_scan,
        }
        condition = changes.pop("condition", self._condition)
        options.update(changes)
        return Query(self._model, self._source, condition, **options)

    def where(self, *conditions: Condition, **equalities: Any) -> Query[M]:
        """This query with more conditions, AND-ed to its own (keywords are equalities)."""
        parts = [*([] if self._condition is None else [self._condition]), *conditions]
        parts.extend(F(name) == value for name, value in equalities.items())
        return self._with(condition=and_(*parts) if parts else None)

    def order_by(self, field: str) -> Query[M]:
        """This query in the order of ``field`` (``"-field"``: descending).

        An index must serve the order: one whose fields start with the
        query's equalities, then ``field`` (``allow_scan=True`` sorts in memory
        instead). Documents whose ``field`` is None are not returned, as an
        index has no entry for them.

        Raises:
            InvalidArgumentError: not a field name of the model.
        """
        if not isinstance(field, str) or not field.strip("-"):
            raise InvalidArgumentError(
                f"order_by takes a field name, or '-' and a field name, not {brief_repr(field)}."
            )
        desc = field.startswith("-")
        return self._with(order=(field[1:] if desc else field, desc))

    def limit(self, n: int) -> Query[M]:
        """This query returning at most ``n`` documents (iteration, ``page`` and ``count``).

        Raises:
            InvalidArgumentError: ``n`` is not a positive int.
        """
        return self._with(limit=n)

    # -- running -----------------------------------------------------------------

    def _plan(self) -> qp.Plan:
        return qp.plan_query(
            self._kv, self._bound, allow_scan=self._allow_scan, what=self._bound.text
        )

    def _run(self) -> qs.Run:
        run = qs.Run(self._kv, self._max_scan, self._bound.text)
        self._last = run
        return run

    def _page(self, plan: qp.Plan, limit: int | None, cursor: str | None) -> Page[M]:
        codec = _query_cursor(self._bound.text, (plan.signature,), False)
        inner = codec.unwrap(cursor)
        after = _decode_position(inner) if inner else None
        run = self._run()
        want = None if limit is None else limit + 1
        items = list(qs.first_items(plan.node, run, after, want))
        next_cursor = ""
        if limit is not None and len(items) > limit:
            items = items[:limit]
            next_cursor = codec.wrap(_encode_position(items[-1][0]))
        out: list[M] = []
        load_documents(self._bound.info, [doc for _, doc in items], out, self._session)
        run.returned = len(out)
        return Page(out, next_cursor)

    def page(self, *, limit: int | None = None, cursor: str | None = None) -> Page[M]:
        """One page of results, and the cursor of the next (``""`` when none is left).

        Args:
            limit: at most this many documents (default: the query's ``limit``,
                else every match in one page).
            cursor: the ``.cursor`` of the previous page of this same query.

        Raises:
            InvalidArgumentError: a cursor of another query, or a bad limit.
            IndexRequiredError: no ready index serves the query (see ``allow_scan``).
            ScanLimitError: the page read more than ``max_scan`` entries.
        """
        limit = positive_int("limit", limit) if limit is not None else self._limit
        return self._page(self._plan(), limit, cursor)

    def __iter__(self) -> Iterator[M]:
        """Every match, page by page (each page one call; ``max_scan`` applies per page)."""
        plan = self._plan()
        remaining = self._limit
        cursor: str | None = None
        while True:
            size = _ITER_PAGE if remaining is None else min(_ITER_PAGE, remaining)
            page = self._page(plan, size, cursor)
            yield from page
            if remaining is not None:
                remaining -= len(page)
            if not page.has_more or remaining == 0:
                return
            cursor = page.cursor

    def first(self) -> M | None:
        """The first match in the query's order, or None."""
        plan = self._plan()
        run = self._run()
        items = list(qs.first_items(plan.node, run, None, 1))  # no peek past it: no cursor
        out: list[M] = []
        load_documents(self._bound.info, [doc for _, doc in items], out, self._session)
        run.returned = len(out)
        return out[0] if out else None

    def exists(self) -> bool:
        """Whether at least one document matches (loads none)."""
        plan = self._plan()
        run = self._run()
        found = next(qs.first_items(plan.node, run, None, 1), None) is not None
        run.returned = int(found)
        return found

    def count(self) -> int:
        """How many documents match (at most the query's ``limit``), without loading them.

        A query one index serves entirely counts index keys; otherwise every
        candidate document is read and checked (``max_scan`` bounds that).
        """
        plan = self._plan()
        run = self._run()
        if plan.exact_leaf is not None and self._limit is None:
            n = qs.count_entries(run, plan.exact_leaf)
        else:
            n = sum(1 for _ in qs.first_items(plan.node, run, None, self._limit))
        run.returned = n
        return n

    def delete(self) -> int:
        """Deletes every match; returns how many.

        From a :class:`Session`, each match is marked deleted in the session
        (with its index entries), so the deletion commits with the session's
        other changes, atomically. From a Kv, a session of its own deletes
        them in one atomic commit: within the engine's commit limits, else
        :class:`kvmodel.LimitExceededError` and nothing is deleted (use
        ``Index.delete_where`` or ``km.bulk_delete`` for batched, non-atomic
        deletion of more).
        """
        if self._session is None:
            with Session(self._kv) as session:
                n = Query(
                    self._model,
                    session,
                    self._condition,
                    order=self._order,
                    limit=self._limit,
                    allow_scan=self._allow_scan,
                    max_scan=self._max_scan,
                ).delete()
            return n
        matches = list(self)
        for obj in matches:
            self._session.delete(obj)
        return len(matches)

    def explain(self) -> str:
        """The plan in words: what each stream reads, what is checked in Python, and
        (after a run) how many entries the last call scanned and returned."""
        lines = [self._bound.text + (f".limit({self._limit})" if self._limit else "")]
        try:
            plan = self._plan()
        except KvError as exc:
            lines.append(f"  no plan: {exc}")
            return "\n".join(lines)
        lines.append("plan:")
        lines.extend(plan.describe())
        run = self._last
        if run is None:
            lines.append("last run: none yet")
        else:
            lines.append(f"last run: scanned {run.scanned} entries, returned {run.returned}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Query {self._bound.text}>"


def make_query(
    model: type[M],
    source: Session | Kv,
    conditions: tuple[Condition, ...],
    equalities: dict[str, Any],
    *,
    allow_scan: bool,
    max_scan: int | None,
) -> Query[M]:
    """What :meth:`kvmodel.Model.query` builds for a sync source."""
    for c in conditions:
        if not isinstance(c, Condition):
            raise KvTypeError(
                f"{model_info(model).name}.query takes conditions such as "
                f"km.F('status') == 'paid' after the source, not {brief_repr(c, 60)}."
            )
    parts = [*conditions, *(F(name) == value for name, value in equalities.items())]
    return Query(
        model,
        source,
        and_(*parts) if parts else None,
        allow_scan=allow_scan,
        max_scan=max_scan,
    )
