"""Over GraphQL, bad arguments are BAD_USER_INPUT errors that name the GraphQL argument
(`maxResults`, `filter.queue`, `input.params`), and hostile strings (NUL, lone surrogates) are
refused before any SQL statement runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from sqlalchemy import event

from checkmate.models import StageStatus
from checkmate.store import TaskStore
from tests.core_helpers import TaskSpec, dump_database, dump_store, make_tasks
from tests.graphql_helpers import Api, insert_tasks

NUL = "a\x00b"
TASKS = "query($v: String!) { tasks(filter: {%s}) { nodes { id } } }"
CREATE = "mutation($input: CreateTaskInput!) { createTask(input: $input) { id } }"
BATCH = "mutation($v: %s) { %s(%s, dryRun: false) { succeeded { taskId } } }"


@pytest.fixture
def statements(api: Api) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # The app's event hub shares the engine and reads status_events on its own schedule.
        if "status_events" not in statement:
            seen.append(statement)

    engine = api.service.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    yield seen
    event.remove(engine, "before_cursor_execute", count)


async def _post(api: Api, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    """POST with the JSON escaped to ASCII, as clients send a lone surrogate ("\\ud800")."""
    content = json.dumps({"query": query, "variables": variables})
    response = await api.client.post(
        "/graphql", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _create(**fields: Any) -> tuple[str, dict[str, Any]]:
    return CREATE, {"input": {"name": "demo.pipeline", **fields}}


# (query, variables, the GraphQL argument the error must name)
HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    (TASKS % "queue: $v", {"v": NUL}, "filter.queue"),
    (TASKS % "name: $v", {"v": NUL}, "filter.name"),
    (TASKS % "tags: [$v]", {"v": NUL}, "filter.tags"),
    ("query($v: ID!) { tasks(filter: {ids: [$v]}) { nodes { id } } }", {"v": NUL}, "filter.ids"),
    ("query($v: String) { tasks(after: $v) { nodes { id } } }", {"v": NUL}, "after"),
    ("query($v: ID!) { task(id: $v) { id } }", {"v": NUL}, "id"),
    ("query($v: String) { taskCounts(filter: {queue: $v}) { count } }", {"v": NUL},
     "filter.queue"),
    (BATCH % ("ID!", "cancelTasks", "taskIds: [$v]"), {"v": NUL}, "taskIds"),
    (BATCH % ("String", "unlockTasks", "filter: {queue: $v}"), {"v": NUL}, "filter.queue"),
    (BATCH % ("String!", "cleanTasks", "filter: {tags: [$v]}"), {"v": NUL}, "filter.tags"),
    (BATCH % ("String", "invokeTasks", "filter: {name: $v}"), {"v": NUL}, "filter.name"),
    (CREATE, {"input": {"name": NUL}}, "input.name"),
    (*_create(queue=NUL), "input.queue"),
    (*_create(tags=["ok", NUL]), "input.tags"),
    (*_create(params={"note": {"deep": ["ok", NUL]}}), "input.params"),
    (*_create(params={NUL: 1}), "input.params"),
    # In the document itself rather than in variables.
    ('{ tasks(filter: {queue: "a\\u0000b"}) { nodes { id } } }', {}, "filter.queue"),
    ('mutation { createTask(input: {name: "demo.pipeline", params: {x: "\\u0000"}}) { id } }',
     {}, "input.params"),
]


async def test_hostile_strings_are_refused_before_any_statement(
    api: Api, raw_conn: asyncpg.Connection, store: TaskStore, statements: list[str]
) -> None:
    await make_tasks(raw_conn, store, [TaskSpec(StageStatus.CREATED, queue="a")])
    database, objects = await dump_database(raw_conn), await dump_store(store)
    for query, variables, argument in HOSTILE:
        statements.clear()
        body = await _post(api, query, variables)
        [error] = body["errors"]
        assert error["extensions"]["code"] == "BAD_USER_INPUT", (query, error)
        assert error["extensions"]["argument"] == argument, (query, error)
        assert error["message"].startswith(argument), (query, error)
        assert statements == [], (query, statements)
    assert await dump_database(raw_conn) == database
    assert await dump_store(store) == objects


async def test_lone_surrogates_never_reach_the_service(api: Api, statements: list[str]) -> None:
    """Valid in a JSON escape, not in UTF-8 text: the request's JSON parser and GraphQL's lexer
    refuse them (the service refuses them too, for Python callers: test_service_arguments)."""
    content = json.dumps({"query": TASKS % "queue: $v", "variables": {"v": "\ud800"}})
    response = await api.client.post(
        "/graphql", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    body = await api.post('{ tasks(filter: {queue: "a\\ud800b"}) { nodes { id } } }')
    assert [e["extensions"]["code"] for e in body["errors"]] == ["GRAPHQL_PARSE_FAILED"]
    assert statements == []


ID = str(uuid4())
NAMED: list[tuple[str, str]] = [
    ("{ tasks(maxResults: 0) { nodes { id } } }", "maxResults must be between 1 and 10000"),
    ('{ tasks(after: "garbage") { nodes { id } } }', "after must be a cursor"),
    ('{ tasks(filter: {since: "2026-01-01T00:00:00"}) { nodes { id } } }',
     "filter.since must have a UTC offset"),
    ('{ task(id: "nope") { id } }', "id must be a task id"),
    ('mutation { cancelTasks(taskIds: ["nope"]) { dryRun } }', "taskIds must be a task id"),
    (f'mutation {{ cleanTasks(taskIds: ["{ID}"], maxResults: 0) {{ dryRun }} }}',
     "maxResults must be between 1 and 10000"),
    (f'mutation {{ invokeTasks(taskIds: ["{ID}", "{uuid4()}"], maxResults: 1) {{ dryRun }} }}',
     "2 task ids given but maxResults is 1"),
    ("mutation { unlockTasks { dryRun } }", "select tasks with taskIds or a filter"),
    ('mutation { createTask(input: {name: "demo.pipeline", params: {stagez: 2}}) { id } }',
     "input.params: unknown key 'stagez' for task kind 'demo.pipeline' "
     "(allowed: fail_at_stage, sleep, stages)"),
    ('mutation { createTask(input: {name: "demo.pipeline", params: {stages: "x"}}) { id } }',
     "input.params.stages: invalid params for task kind 'demo.pipeline'"),
    ('mutation { createTask(input: {name: "no.such.kind"}) { id } }',
     "input.name: unknown task kind 'no.such.kind'"),
    ('mutation { createTask(input: {name: "demo.pipeline", queue: ""}) { id } }',
     "input.queue must not be empty"),
    ("mutation { createTask(input: {name: \"demo.pipeline\", "
     "params: {stages: 99999999999999999999999}}) { id } }",
     "input.params.stages must hold integers within a signed 64-bit range"),
]


async def test_messages_name_the_graphql_argument(
    api: Api, raw_conn: asyncpg.Connection, statements: list[str]
) -> None:
    database = await dump_database(raw_conn)
    for query, expected in NAMED:
        statements.clear()
        body = await api.post(query)
        [error] = body["errors"]
        assert error["extensions"]["code"] == "BAD_USER_INPUT", (query, error)
        assert error["message"].startswith(expected), (query, error["message"])
        assert "_" not in error["message"].split(" ")[0], error["message"]
        for python_name in ("max_results", "task_ids", "task_id", "db_transact", "dry_run"):
            assert python_name not in error["message"], error["message"]
        assert statements == [], (query, statements)
    assert await dump_database(raw_conn) == database


async def test_numbers_beyond_int_are_client_errors(api: Api, statements: list[str]) -> None:
    """GraphQL's Int is 32-bit: graphql-core refuses a bigger maxResults, in the document or in
    variables, as the client's input to fix (BAD_USER_INPUT), before the service runs."""
    literal = await api.post("{ tasks(maxResults: 3000000000) { nodes { id } } }")
    query = "query($n: Int) { tasks(maxResults: $n) { nodes { id } } }"
    variable = await api.post(query, {"n": 2**40})
    for body in (literal, variable):
        [error] = body["errors"]
        assert error["extensions"]["code"] == "BAD_USER_INPUT", error
        assert "32-bit" in error["message"]
        assert body.get("data") is None
    assert statements == []


@pytest.mark.parametrize("mutation", ["cleanTasks", "invokeTasks"])
async def test_clean_and_invoke_take_sort(
    api: Api, raw_conn: asyncpg.Connection, mutation: str
) -> None:
    """As the contract says, like cancelTasks and unlockTasks: which end of the filter a
    limited batch takes."""
    oldest, _, newest = await insert_tasks(raw_conn, 3, statuses=("COMPLETED",))
    query = (
        "mutation($sort: SortOrder) { " + mutation + '(filter: {queue: "default"}, sort: $sort, '
        "maxResults: 1) { succeeded { taskId } failed { taskId } } }"
    )
    for sort, expected in (("ASC", oldest), ("DESC", newest), (None, newest)):
        outcome = (await api.data(query, {"sort": sort}))[mutation]
        chosen = [r["taskId"] for r in [*outcome["succeeded"], *outcome["failed"]]]
        assert chosen == [str(expected)], sort
