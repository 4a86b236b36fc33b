"""Compiled reads (schema/compiled.py) answer every query byte for byte like the ordinary path:
one corpus of queries (those of tests/test_graphql_queries.py and more: aliases, fragments,
@skip/@include, __typename, cursors, errors), each sent over HTTP to an app with compiled reads
and to one without, on the same database and store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from checkmate.models import StageMetadata, StageStatus
from checkmate.settings import Settings
from checkmate.store import TaskStore
from schema.compiled import COMPILED
from tests import test_graphql_queries
from tests.graphql_helpers import Api, insert_tasks, running_api

NODE = "id name queue tags status stage createdAt updatedAt startedAt finishedAt cleaned " \
    "cleanedAt attempts error worker"


@dataclass(frozen=True)
class Case:
    name: str
    query: str
    variables: dict[str, Any] | None = None
    compiled: bool = True  # whether the compiled path must answer it


CASES = [
    Case("page query of the query tests", test_graphql_queries.PAGE, {"max": 5}),
    Case("page query, ASC", test_graphql_queries.PAGE, {"max": 7, "sort": "ASC"}),
    Case("page query, filter", test_graphql_queries.PAGE,
         {"filter": {"statuses": ["ERROR", "CANCELED"], "queue": "gpu"}}),
    Case("page query, tags and times", test_graphql_queries.PAGE,
         {"filter": {"tags": ["a"], "since": "2026-01-01T00:00:03+00:00",
                     "until": "2026-01-01T00:00:20+00:00"}}),
    Case("store objects (ordinary)", test_graphql_queries.OBJECTS, {"max": 3}, compiled=False),
    Case("every column", f"{{ tasks(maxResults: 50) {{ nodes {{ {NODE} }} }} }}"),
    Case("the bench's page",
         '{ tasks(filter: {queue: "default", status: CREATED}, maxResults: 100) '
         "{ nodes { id name queue status tags createdAt } } }"),
    Case("total count and task counts",
         '{ tasks(filter: {queue: "default"}, maxResults: 2) { totalCount nodes { id } } '
         'taskCounts(filter: {queue: "default"}) { status count } }'),
    Case("aliases, fragments, typename, skip and include", """
        query Q($skip: Boolean!, $yes: Boolean!) {
          __typename
          first: tasks(maxResults: 4, sort: ASC) {
            __typename
            nodes { __typename id st: status status error @skip(if: $skip) ...More
                    ... on CheckMateTask { attempts worker @include(if: $yes) } }
            pageInfo { __typename endCursor hasNextPage more: hasNextPage }
            totalCount
          }
          again: tasks(maxResults: 2) { n: nodes { i: id } pageInfo { endCursor } }
        }
        fragment More on CheckMateTask { queue tags createdAt cleaned cleanedAt }
        """, {"skip": True, "yes": False}),
    Case("skip and include the other way", """
        query Q($skip: Boolean!) {
          tasks(maxResults: 3) { nodes { id error @skip(if: $skip) name @include(if: $skip) } }
        }""", {"skip": False}),
    Case("empty page", '{ tasks(filter: {queue: "none"}) { totalCount nodes { id } '
                       "pageInfo { hasNextPage endCursor } } }"),
    Case("task by id", "query One($id: ID!) { task(id: $id) { __typename " + NODE + " } }",
         {"id": "FIRST"}),
    Case("task not found", "query One($id: ID!) { task(id: $id) { id } }", {"id": str(uuid4())}),
    Case("task counts, typename", "{ taskCounts { __typename status n: count } }"),
    Case("task counts, filter", '{ taskCounts(filter: {tags: ["a"], cleaned: false}) '
                                "{ count status } }"),
    Case("fast leaves query of the query tests (metadata: ordinary)",
         test_graphql_queries.FAST_LEAVES, {"skip": False}, compiled=False),
    Case("narrowed reads query of the query tests", test_graphql_queries.NARROWED,
         {"after": None}),
    Case("malformed id", '{ task(id: "not-a-uuid") { id } }', compiled=False),
    Case("maxResults over the cap", "{ tasks(maxResults: 10001) { nodes { id } } }",
         compiled=False),
    Case("maxResults 0", "{ tasks(maxResults: 0) { nodes { id } } }", compiled=False),
    Case("bad cursor", '{ tasks(after: "garbage") { nodes { id } } }', compiled=False),
    Case("bad id in a filter", '{ tasks(filter: {ids: ["nope"]}) { nodes { id } } }',
         compiled=False),
    Case("a date without offset", '{ tasks(filter: {since: "2026-01-01T00:00:00"}) '
                                  "{ nodes { id } } }", compiled=False),
    Case("invalid document", "{ tasks { nodes { nope } } }", compiled=False),
    Case("a store field among columns", "{ tasks(maxResults: 3) { nodes { id lockDetected } } }",
         compiled=False),
]


@pytest.fixture
async def apis(settings: Settings) -> AsyncIterator[tuple[Api, Api]]:
    async with running_api(settings) as compiled, running_api(
        settings.model_copy(update={"compiled_reads": False})
    ) as ordinary:
        yield compiled, ordinary


async def _varied_tasks(raw_conn: asyncpg.Connection, store: TaskStore) -> list[UUID]:
    ids = await insert_tasks(
        raw_conn, 40, tags=(("a", "b"), (), ("a", 'q"uote\\')), queues=("default", "gpu"),
        statuses=("CREATED", "ERROR", "CANCELED", "COMPLETED", "QUEUED"), same_time=3,
        cleaned_every=4,
    )
    # Times with and without a fraction, nulls, texts that need escaping, non-ASCII.
    await raw_conn.execute(
        """UPDATE tasks SET started_at = created_at + interval '1.5 seconds',
                            finished_at = created_at + interval '2 seconds',
                            error = E'line\\n"two"\\ttab \\u00e9\\u2603 \\\\ \\x01\\x1f/',
                            stage = 'stage-1', worker = 'w-1', attempts = 3,
                            cleaned_at = CASE WHEN cleaned THEN created_at END
           WHERE status IN ('ERROR', 'COMPLETED')"""
    )
    await raw_conn.execute(
        "UPDATE tasks SET created_at = created_at + interval '123 microseconds' "
        "WHERE id = $1", ids[5]
    )
    await store.put_stage(ids[-1], StageMetadata(index=0, name="s", status=StageStatus.ERROR))
    return ids


def _variables(case: Case, first: UUID) -> dict[str, Any] | None:
    if case.variables is None:
        return None
    return {key: str(first) if value == "FIRST" else value for key, value in case.variables.items()}


async def test_every_query_answers_byte_for_byte_like_the_ordinary_path(
    apis: tuple[Api, Api], raw_conn: asyncpg.Connection, store: TaskStore
) -> None:
    compiled, ordinary = apis
    ids = await _varied_tasks(raw_conn, store)
    for case in CASES:
        payload = {"query": case.query, "variables": _variables(case, ids[1])}
        before = COMPILED.fields
        ours = await compiled.client.post("/graphql", json=payload)
        answered_compiled = COMPILED.fields > before
        theirs = await ordinary.client.post("/graphql", json=payload)
        assert ours.status_code == theirs.status_code, case.name
        assert ours.headers["content-type"] == theirs.headers["content-type"], case.name
        assert ours.content == theirs.content, case.name
        assert answered_compiled is case.compiled, case.name


async def test_pages_through_cursors_like_the_ordinary_path(
    apis: tuple[Api, Api], raw_conn: asyncpg.Connection
) -> None:
    await insert_tasks(raw_conn, 25, same_time=4, start=datetime(2026, 3, 1, 0, 0, 0, 500, UTC))
    compiled, ordinary = apis
    for sort in ("ASC", "DESC"):
        after = None
        for _ in range(10):
            variables = {"max": 7, "sort": sort, "after": after}
            ours = await compiled.post(test_graphql_queries.PAGE, variables)
            assert ours == await ordinary.post(test_graphql_queries.PAGE, variables)
            info = ours["data"]["tasks"]["pageInfo"]
            if not info["hasNextPage"]:
                break
            after = info["endCursor"]
        else:
            pytest.fail("paging did not end")
    assert timedelta(0) < datetime.now(UTC) - datetime(2026, 1, 1, tzinfo=UTC)
