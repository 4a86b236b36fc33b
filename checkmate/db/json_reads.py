"""Reads that return the response's JSON text from PostgreSQL itself (compiled selections).

A selection is described by plain tuples (no GraphQL types here): each entry is
(response key, kind, argument). The statement shapes every object with json_build_object in the
given key order, so PostgreSQL renders the bytes the API would have rendered from Python objects:
uuids and texts as strings, tags as lists, statuses as their enum names and times as Python's
`datetime.isoformat()` of a UTC time (`2026-01-02T03:04:05.123456+00:00`, no fraction when it is
zero). Statements are built with SQLAlchemy Core (its compiled cache is keyed by the shape, not
the values) and run as asyncpg prepared statements (the dialect caches them per connection).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    Text,
    case,
    cast,
    func,
    literal,
    literal_column,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncConnection

from checkmate.db.queries import _ordered, filter_clause
from checkmate.db.tables import tasks
from checkmate.models import SortOrder, StageStatus, TaskFilter

# (response key, kind, argument). Kinds of a node: "column" (argument: the column's name) and
# "text" (a constant string: __typename). Of a page: "nodes" (argument: the node's entries),
# "pageInfo" (argument: its entries, kinds "hasNextPage", "endCursor", "text"), "totalCount"
# and "text". Of a status count: "status", "count", "text".
Entry = tuple[str, str, Any]
Plan = tuple[Entry, ...]

TIME_COLUMNS = frozenset({"created_at", "updated_at", "started_at", "finished_at", "cleaned_at"})
NODE_COLUMNS = frozenset(column.name for column in tasks.c)


def _name(name: str) -> str:
    # Response keys and type names are GraphQL names ([_A-Za-z][_0-9A-Za-z]*): safe inline (no
    # quote to escape), and inline they are part of the statement's text, so each selection
    # shape is its own cached statement.
    if not name.replace("_", "a").isalnum() or not name.isascii():
        raise ValueError(f"not a GraphQL name: {name!r}")
    return name


def _text(value: str) -> Any:
    """A constant piece of the JSON text (no single quote in it: checked by _name)."""
    return literal_column(f"'{value}'", Text)


def _json(value: Any) -> Any:
    """The JSON text of a SQL value; `null` for NULL. PostgreSQL escapes strings as orjson does
    (\\b \\f \\n \\r \\t \\" \\\\ and \\u00XX; non-ASCII as is)."""
    return func.coalesce(cast(func.to_json(value), Text), _text("null"))


def _concat(*parts: Any) -> Any:
    joined = parts[0]
    for part in parts[1:]:
        joined = joined.op("||")(part)
    return joined


def iso_time(column: Any) -> Any:
    """Python's isoformat() of the UTC time, null for null."""
    utc = column.op("AT TIME ZONE")(literal_column("'UTC'"))
    fraction = case(
        (func.date_trunc("second", column) == column, literal_column("''")),
        else_=func.to_char(utc, literal_column("'.US'")),
    )
    seconds = func.to_char(utc, literal_column("'YYYY-MM-DD\"T\"HH24:MI:SS'"))
    return _concat(seconds, fraction, literal_column("'+00:00'"))


def _value(source: Any, name: str) -> Any:
    column = source.c[name]
    return _json(iso_time(column) if name in TIME_COLUMNS else column)


def _object(entries: Sequence[tuple[str, Any]]) -> Any:
    """A JSON object's text with its keys in this order (orjson's compact form)."""
    if not entries:
        return _text("{}")
    parts: list[Any] = []
    for position, (key, value) in enumerate(entries):
        parts.append(_text(("{" if position == 0 else ",") + f'"{_name(key)}":'))
        parts.append(value)
    parts.append(_text("}"))
    return _concat(*parts)


def _constant(name: str) -> Any:
    return _text(f'"{_name(name)}"')


def node_object(source: Any, plan: Plan) -> Any:
    entries = []
    for key, kind, argument in plan:
        if kind == "column":
            if argument not in NODE_COLUMNS:
                raise ValueError(f"not a task column: {argument!r}")
            entries.append((key, _value(source, argument)))
        else:
            entries.append((key, _constant(argument)))
    return _object(entries)


def _array(element: Any, *order: Any) -> Any:
    """Aggregate's JSON array text: `[a,b]`, `[]` for no rows."""
    joined = func.coalesce(
        func.string_agg(element, aggregate_order_by(literal_column("','"), *order)),
        _text(""),
    )
    return _concat(_text("["), joined, _text("]"))


def _columns(plan: Plan) -> list[str]:
    """The columns a page reads: those selected on its nodes, and the keyset's."""
    wanted = {"created_at", "id"}
    for _key_name, kind, argument in plan:
        if kind == "nodes":
            wanted.update(entry[2] for entry in argument if entry[1] == "column")
    return sorted(wanted)


def _cursor(source: Any) -> Any:
    """records.encode_cursor in SQL: urlsafe base64 of `<isoformat>|<id>`."""
    raw = _concat(iso_time(source.c.created_at), _text("|"), cast(source.c.id, Text))
    utf8 = func.convert_to(raw, literal_column("'UTF8'"))
    encoded = func.encode(utf8, literal_column("'base64'"))
    return func.translate(encoded, literal_column("E'+/\\n'"), literal_column("'-_'"))


async def page_json(
    conn: AsyncConnection,
    task_filter: TaskFilter,
    plan: Plan,
    *,
    sort: SortOrder,
    limit: int,
    after: tuple[datetime, UUID] | None,
) -> str:
    """One `tasks` connection as JSON text."""
    selected = [tasks.c[name] for name in _columns(plan)]
    fetched = (
        _ordered(select(*selected).where(filter_clause(task_filter)), sort, after)
        .limit(limit + 1)
        .cte("fetched")
    )

    def order(source: Any, descending: bool) -> tuple[Any, Any]:
        if descending:
            return source.c.created_at.desc(), source.c.id.desc()
        return source.c.created_at.asc(), source.c.id.asc()

    page = select(fetched).order_by(*order(fetched, sort == "desc")).limit(limit).cte("page")
    entries: list[tuple[str, Any]] = []
    for key, kind, argument in plan:
        if kind == "nodes":
            nodes = _array(node_object(page, argument), *order(page, sort == "desc"))
            entries.append((key, select(nodes).scalar_subquery()))
        elif kind == "pageInfo":
            info: list[tuple[str, Any]] = []
            for info_key, info_kind, info_argument in argument:
                if info_kind == "hasNextPage":
                    more = select(func.count()).select_from(fetched).scalar_subquery() > limit
                    info.append((info_key, _json(more)))
                elif info_kind == "endCursor":
                    last = select(_cursor(page)).order_by(*order(page, sort != "desc")).limit(1)
                    info.append((info_key, _json(last.scalar_subquery())))
                else:
                    info.append((info_key, _constant(info_argument)))
            entries.append((key, _object(info)))
        elif kind == "totalCount":
            total = select(func.count()).select_from(tasks).where(filter_clause(task_filter))
            entries.append((key, cast(total.scalar_subquery(), Text)))
        else:
            entries.append((key, _constant(argument)))
    return str((await conn.execute(select(_object(entries)))).scalar_one())


async def task_json(conn: AsyncConnection, task_id: UUID, plan: Plan) -> str | None:
    """One task as JSON text, None when no task has that id."""
    statement = select(node_object(tasks, plan)).where(tasks.c.id == task_id)
    found = (await conn.execute(statement)).scalar_one_or_none()
    return None if found is None else str(found)


async def counts_json(conn: AsyncConnection, task_filter: TaskFilter, plan: Plan) -> str:
    """Counts per status, every status in life-cycle order, zeros included, as a JSON list."""
    counted = (
        select(tasks.c.status, func.count().label("n"))
        .where(filter_clause(task_filter))
        .group_by(tasks.c.status)
        .subquery("counted")
    )
    statuses = (
        func.unnest(literal([status.value for status in StageStatus], ARRAY(Text)))
        .table_valued("name", with_ordinality="position")
        .render_derived("s")
    )
    entries: list[tuple[str, Any]] = []
    for key, kind, argument in plan:
        if kind == "status":
            entries.append((key, _json(statuses.c.name)))
        elif kind == "count":
            entries.append((key, cast(func.coalesce(counted.c.n, 0), Text)))
        else:
            entries.append((key, _constant(argument)))
    statement = select(_array(_object(entries), statuses.c.position)).select_from(
        statuses.outerjoin(counted, counted.c.status == statuses.c.name)
    )
    return str((await conn.execute(statement)).scalar_one())
