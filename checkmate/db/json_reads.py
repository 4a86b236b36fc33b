"""Reads that return the response's JSON text from PostgreSQL itself (compiled selections).

A selection is described by plain tuples (no GraphQL types here): each entry is
(response key, kind, argument). The statement renders every object as text in the given key
order, in orjson's compact form, so PostgreSQL produces the bytes the API would have rendered
from Python objects: uuids and texts as JSON strings (PostgreSQL escapes like orjson: \\b \\f \\n
\\r \\t \\" \\\\ and \\u00XX, non-ASCII as is), tags as lists, statuses as their enum names, times
as Python's `datetime.isoformat()` of a UTC time (`2026-01-02T03:04:05.123456+00:00`, without
the fraction when it is zero). tests/test_compiled_reads.py holds the bytes to the ordinary path.

The statement's text depends only on the selection's shape and on which filter terms are given
(values travel as parameters), so it is built once per shape (an LRU) and runs on the
connection's asyncpg prepared statement cache: no SQL is composed per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection

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
_NULLABLE = frozenset(column.name for column in tasks.c if column.nullable)
# Distinct shapes a deployment sends are few (consoles, scripts): as many as parsed documents.
SHAPES = 512


def _name(name: str) -> str:
    # Response keys and type names are GraphQL names ([_A-Za-z][_0-9A-Za-z]*): safe inside a
    # SQL string literal and a JSON string, with nothing to escape in either.
    if not (name.replace("_", "a").isalnum() and name.isascii()):
        raise ValueError(f"not a GraphQL name: {name!r}")
    return name


def _iso(column: str) -> str:
    """Python's isoformat() of the UTC time, as SQL text (NULL for NULL)."""
    utc = f"({column} AT TIME ZONE 'UTC')"
    return (
        f"to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN date_trunc('second', "
        f"{column}) = {column} THEN '' ELSE to_char({utc}, '.US') END || '+00:00'"
    )


def _value(alias: str, column: str) -> str:
    if column not in NODE_COLUMNS:
        raise ValueError(f"not a task column: {column!r}")
    qualified = f"{alias}.{column}"
    if column in TIME_COLUMNS:
        text = f"'\"' || {_iso(qualified)} || '\"'"
    else:
        text = f"to_json({qualified})::text"
    return f"coalesce({text}, 'null')" if column in _NULLABLE else text


def _object(entries: Sequence[tuple[str, str]]) -> str:
    """A JSON object's text, keys in this order (orjson's compact form)."""
    if not entries:
        return "'{}'"
    parts = []
    for position, (key, value) in enumerate(entries):
        parts.append("'" + ("{" if position == 0 else ",") + f'"{_name(key)}":' + "'")
        parts.append(f"({value})")
    parts.append("'}'")
    return " || ".join(parts)


def _constant(name: str) -> str:
    return f"'\"{_name(name)}\"'"


def _node(alias: str, plan: Plan) -> str:
    return _object([
        (key, _value(alias, argument) if kind == "column" else _constant(argument))
        for key, kind, argument in plan
    ])


def _array(element: str, order: str, source: str) -> str:
    return f"SELECT '[' || coalesce(string_agg({element}, ',' ORDER BY {order}), '') || ']' " \
        f"FROM {source}"


# The filter's terms, in a fixed order; each given one adds a term with one parameter.
_TERMS = (
    ("ids", "t.id = ANY(${}::uuid[])"),
    ("status", "t.status = ${}::text"),
    ("statuses", "t.status = ANY(${}::text[])"),
    ("queue", "t.queue = ${}::text"),
    ("tags", "t.tags @> ${}::text[]"),
    ("since", "t.created_at >= ${}::timestamptz"),
    ("until", "t.created_at < ${}::timestamptz"),
    ("cleaned", "t.cleaned = ${}::boolean"),
    ("name", "t.name = ${}::text"),
)


def _given(task_filter: TaskFilter) -> tuple[tuple[str, ...], list[Any]]:
    """Which terms the filter gives (the statement's shape) and their values, in _TERMS order.
    An empty tags list selects everything, as in queries.filter_clause."""
    names: list[str] = []
    values: list[Any] = []
    for name, _term in _TERMS:
        value = getattr(task_filter, name)
        if value is None or (name == "tags" and not value):
            continue
        if name == "status":
            value = value.value
        elif name == "statuses":
            value = [status.value for status in value]
        elif name in ("ids", "tags"):
            value = list(value)
        names.append(name)
        values.append(value)
    return tuple(names), values


def _where(given: tuple[str, ...], first: int) -> tuple[str, int]:
    """The WHERE terms of `given` with parameters from $first on; the next free number."""
    templates = dict(_TERMS)
    terms = []
    for offset, name in enumerate(given):
        terms.append(templates[name].format(first + offset))
    return (" AND ".join(terms) or "true"), first + len(given)


@lru_cache(maxsize=SHAPES)
def page_statement(plan: Plan, given: tuple[str, ...], sort: SortOrder, keyset: bool) -> str:
    """$1: the page size; then the filter's values; then the keyset (created_at, id)."""
    where, after = _where(given, 2)
    direction = "DESC" if sort == "desc" else "ASC"
    back = "ASC" if sort == "desc" else "DESC"
    if keyset:
        where += f" AND (t.created_at, t.id) {'<' if sort == 'desc' else '>'} " \
            f"(${after}::timestamptz, ${after + 1}::uuid)"
    columns = {"created_at", "id"}
    for _key, kind, argument in plan:
        if kind == "nodes":
            columns.update(entry[2] for entry in argument if entry[1] == "column")
    columns &= NODE_COLUMNS
    order = f"created_at {direction}, id {direction}"
    entries: list[tuple[str, str]] = []
    for key, kind, argument in plan:
        if kind == "nodes":
            entries.append((key, _array(_node("p", argument), f"p.{order}", "page p")))
        elif kind == "pageInfo":
            info = []
            for info_key, info_kind, info_argument in argument:
                if info_kind == "hasNextPage":
                    more = "SELECT CASE WHEN count(*) > $1::bigint THEN 'true' ELSE 'false' END"
                    info.append((info_key, f"{more} FROM fetched"))
                elif info_kind == "endCursor":
                    cursor = (
                        f"translate(encode(convert_to({_iso('p.created_at')} || '|' || "
                        "p.id::text, 'UTF8'), 'base64'), E'+/\\n', '-_')"
                    )
                    last = f"SELECT to_json({cursor})::text FROM page p " \
                        f"ORDER BY p.created_at {back}, p.id {back} LIMIT 1"
                    info.append((info_key, f"coalesce(({last}), 'null')"))
                else:
                    info.append((info_key, _constant(info_argument)))
            entries.append((key, _object(info)))
        elif kind == "totalCount":
            count_where, _next = _where(given, 2)
            entries.append((key, f"SELECT count(*)::text FROM tasks t WHERE {count_where}"))
        else:
            entries.append((key, _constant(argument)))
    return (
        f"WITH fetched AS (SELECT {', '.join(f't.{c}' for c in sorted(columns))} FROM tasks t "
        f"WHERE {where} ORDER BY t.{order.replace(', id', ', t.id')} LIMIT $1::bigint + 1), "
        f"page AS (SELECT * FROM fetched ORDER BY {order} LIMIT $1::bigint) "
        f"SELECT {_object(entries)}"
    )


@lru_cache(maxsize=SHAPES)
def task_statement(plan: Plan) -> str:
    return f"SELECT {_node('t', plan)} FROM tasks t WHERE t.id = $1::uuid"


@lru_cache(maxsize=SHAPES)
def counts_statement(plan: Plan, given: tuple[str, ...]) -> str:
    where, _next = _where(given, 1)
    statuses = ", ".join(f"'{status.value}'" for status in StageStatus)
    entries = []
    for key, kind, argument in plan:
        if kind == "status":
            entries.append((key, "to_json(s.name)::text"))
        elif kind == "count":
            entries.append((key, "coalesce(c.n, 0)::text"))
        else:
            entries.append((key, _constant(argument)))
    source = (
        f"unnest(ARRAY[{statuses}]) WITH ORDINALITY AS s(name, position) LEFT JOIN "
        f"(SELECT t.status, count(*) AS n FROM tasks t WHERE {where} GROUP BY t.status) c "
        "ON c.status = s.name"
    )
    return _array(_object(entries), "s.position", source)


async def _fetchval(conn: AsyncConnection, statement: str, *values: Any) -> Any:
    """On the connection's own asyncpg connection: its prepared statement cache keeps one
    statement per shape; SQLAlchemy's statement handling is skipped."""
    raw = await conn.get_raw_connection()
    return await raw.driver_connection.fetchval(statement, *values)  # type: ignore[union-attr]


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
    given, values = _given(task_filter)
    statement = page_statement(plan, given, sort, after is not None)
    return str(await _fetchval(conn, statement, limit, *values, *(after or ())))


async def task_json(conn: AsyncConnection, task_id: UUID, plan: Plan) -> str | None:
    """One task as JSON text, None when no task has that id."""
    found = await _fetchval(conn, task_statement(plan), task_id)
    return None if found is None else str(found)


async def counts_json(conn: AsyncConnection, task_filter: TaskFilter, plan: Plan) -> str:
    """Counts per status, every status in life-cycle order, zeros included, as a JSON list."""
    given, values = _given(task_filter)
    return str(await _fetchval(conn, counts_statement(plan, given), *values))
