"""Compiled reads: a query whose root fields are all `tasks`, `task` or `taskCounts` over plain
columns is answered by one SQL statement per root field that returns that field's JSON, spliced
into the response bytes (orjson.Fragment) without a Python object per row.

Covered: on CheckMateTask the record's columns (id, name, queue, tags, status, stage, the times,
cleaned, attempts, error, worker); on TaskConnection nodes, pageInfo (hasNextPage, endCursor)
and totalCount; on StatusCount status and count; __typename anywhere; aliases, fragments and
@skip/@include (graphql-core's own field collection decides the shape). Over HTTP only (a
websocket's results are rendered elsewhere).

Not covered, answered the ordinary way (the whole operation, so errors and their paths are
graphql-core's): store-backed fields (params, metadata, lock, lockDetected, stageStatus),
@defer/@stream, mutations, other root fields, middleware. Anything the service rejects
(BAD_USER_INPUT), and any failure of the statement (UNAVAILABLE, STATEMENT_TIMEOUT), is left to
the ordinary path too: it reruns the read and reports the error exactly as it always did.
The parse, validation and query limits have run before this; the HTTP auth gate before that.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

import orjson
from graphql import GraphQLNonNull, GraphQLObjectType
from graphql.execution.values import get_argument_values
from starlette.requests import Request

from checkmate import json_pages
from checkmate.db.json_reads import Plan
from schema.execution import PlainLeavesExecutionContext

log = logging.getLogger(__name__)

# CheckMateTask's GraphQL fields that are the record's columns.
TASK_COLUMNS = {
    "id": "id",
    "name": "name",
    "queue": "queue",
    "tags": "tags",
    "status": "status",
    "stage": "stage",
    "createdAt": "created_at",
    "updatedAt": "updated_at",
    "startedAt": "started_at",
    "finishedAt": "finished_at",
    "cleaned": "cleaned",
    "cleanedAt": "cleaned_at",
    "attempts": "attempts",
    "error": "error",
    "worker": "worker",
}
CONNECTION_FIELDS = {"nodes": "nodes", "pageInfo": "pageInfo", "totalCount": "totalCount"}
PAGE_INFO_FIELDS = {"hasNextPage": "hasNextPage", "endCursor": "endCursor"}
STATUS_COUNT_FIELDS = {"status": "status", "count": "count"}
NESTED = {"nodes": TASK_COLUMNS, "pageInfo": PAGE_INFO_FIELDS}


class CompiledCounts:
    """How many root fields were answered compiled, and how many went the ordinary way after
    trying (tests assert the compiled path still engages)."""

    def __init__(self) -> None:
        self.fields = 0
        self.fallbacks = 0


COMPILED = CompiledCounts()


class _NotCompiled(Exception):
    """The selection is outside what compiles: the ordinary path answers."""


def _object_type(field_type: Any) -> GraphQLObjectType:
    while not isinstance(field_type, GraphQLObjectType):
        field_type = field_type.of_type  # non-null and list wrappers
    return field_type


class CompiledReadsExecutionContext(PlainLeavesExecutionContext):
    def _entries(self, object_type: GraphQLObjectType, field_details_list: Any,
                 fields: dict[str, str]) -> Plan:
        grouped, defer_usages, _ = self.collect_subfields(object_type, field_details_list)
        if defer_usages:
            raise _NotCompiled
        entries: list[tuple[str, str, Any]] = []
        for key, details in grouped.items():
            node = details[0].node
            name = node.name.value
            if name == "__typename":
                entries.append((key, "text", object_type.name))
            elif node.arguments or name not in fields:
                raise _NotCompiled
            elif fields is CONNECTION_FIELDS and name in NESTED:
                child = _object_type(object_type.fields[name].type)
                entries.append((key, name, self._entries(child, details, NESTED[name])))
            elif fields is TASK_COLUMNS:
                entries.append((key, "column", fields[name]))
            else:
                entries.append((key, fields[name], None))
        return tuple(entries)

    def _root_read(self, root_type: GraphQLObjectType, details: Any) -> Awaitable[Any] | str:
        """The coroutine reading one root field's JSON text, or a constant __typename."""
        node = details[0].node
        name = node.name.value
        if name == "__typename":
            return root_type.name
        if name not in ("tasks", "task", "taskCounts"):
            raise _NotCompiled
        field = root_type.fields[name]
        arguments = get_argument_values(field, node, self.variable_values)
        service = self.context_value.service
        object_type = _object_type(field.type)
        if name == "tasks":
            plan = self._entries(object_type, details, CONNECTION_FIELDS)
            sort = arguments.get("sort")
            return json_pages.page_json(
                service,
                arguments.get("filter"),
                plan,
                sort=getattr(sort, "value", sort) or "desc",
                max_results=arguments.get("maxResults"),
                after=arguments.get("after"),
            )
        if name == "task":
            plan = self._entries(object_type, details, TASK_COLUMNS)
            return json_pages.task_json(service, arguments["id"], plan)
        plan = self._entries(object_type, details, STATUS_COUNT_FIELDS)
        if not isinstance(field.type, GraphQLNonNull):
            raise _NotCompiled
        return json_pages.counts_json(service, arguments.get("filter"), plan)

    def execute_root_grouped_field_set(
        self,
        root_type: GraphQLObjectType,
        root_value: Any,
        grouped_field_set: Any,
        serially: bool,
        position_context: Any,
    ) -> Any:
        request = getattr(self.context_value, "request", None)
        reads: dict[str, Awaitable[Any] | str] = {}
        if (
            not serially
            and isinstance(request, Request)
            and root_type is self.schema.query_type
            and not getattr(self.middleware_manager, "middlewares", None)
        ):
            try:
                for key, details in grouped_field_set.items():
                    reads[key] = self._root_read(root_type, details)
            except Exception as error:  # outside the compiler, or an argument to report
                log.debug("not compiled: %r", error)
                _close(reads)
                reads = {}
        ordinary = super().execute_root_grouped_field_set
        if not reads:
            return ordinary(root_type, root_value, grouped_field_set, serially, position_context)
        return self._compiled(reads, ordinary, root_type, root_value, grouped_field_set,
                              position_context)

    async def _compiled(self, reads: dict[str, Any], ordinary: Any, *args: Any) -> Any:
        data: dict[str, Any] = {}
        try:
            for key, read in reads.items():
                if isinstance(read, str):
                    data[key] = read
                    continue
                text = await read
                data[key] = None if text is None else orjson.Fragment(text)
        except Exception as error:
            _close(reads)
            COMPILED.fallbacks += 1
            log.debug("compiled read failed, the ordinary path answers: %r", error)
            root_type, root_value, grouped_field_set, position_context = args
            result = ordinary(root_type, root_value, grouped_field_set, False, position_context)
            return await result if self.is_awaitable(result) else result
        COMPILED.fields += len(data)
        return data


def _close(reads: dict[str, Any]) -> None:
    """Close the reads not awaited (no 'never awaited' warning, no work)."""
    for read in reads.values():
        close = getattr(read, "close", None)
        if close is not None:
            close()
