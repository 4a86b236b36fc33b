"""The fast completion path of schema/execution.py engages, and a fault inside it is not
swallowed silently. It overrides graphql-core internals and reads strawberry's, so a library
upgrade can turn it off without any error: the answers stay right (test_graphql_queries.py
compares them with graphql-core's own), only slower. These tests fail instead."""

from __future__ import annotations

import logging
from operator import attrgetter
from typing import Any

import asyncpg
import pytest

from checkmate.service import CheckMateService
from schema import execution, schema
from schema.context import GraphQLContext
from schema.execution import FAST_PATH, FastPathCounts
from tests.graphql_helpers import insert_tasks

PAGE = "{ tasks(maxResults: 50) { nodes { id name queue tags status createdAt cleaned } } }"
ONE = "query($id: ID!) { task(id: $id) { id name status attempts } }"


async def _run(service: CheckMateService, query: str, **variables: Any) -> dict[str, Any]:
    context = GraphQLContext(service=service, hub=None, request_id="t")
    result = await schema.execute(query, variables, context_value=context)
    assert result.errors is None, result.errors
    assert result.data is not None
    return result.data


async def test_a_page_of_tasks_and_a_single_task_take_the_fast_path(
    service: CheckMateService, raw_conn: asyncpg.Connection
) -> None:
    ids = await insert_tasks(raw_conn, 20, tags=(("a",), ()))
    lists, objects, errors = FAST_PATH.lists, FAST_PATH.objects, FAST_PATH.errors
    nodes = (await _run(service, PAGE))["tasks"]["nodes"]
    assert len(nodes) == 20
    assert FAST_PATH.lists == lists + 1, "the page's node list was not completed in one loop"
    task = (await _run(service, ONE, id=str(ids[0])))["task"]
    assert task["id"] == str(ids[0])
    assert FAST_PATH.objects > objects, "a plain object was not completed in one pass"
    assert FAST_PATH.errors == errors


def test_plain_fields_are_read_with_attrgetter() -> None:
    """strawberry's field definition is found on the graphql-core field (its backref), so a
    plain field skips the default resolver's calls."""
    task_type = schema._schema.type_map["CheckMateTask"]
    for name in ("id", "name", "status", "tags", "createdAt"):
        field = task_type.fields[name]
        assert isinstance(execution._reader(field, field.resolve), attrgetter), name


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> FastPathCounts:
    """Counts of this test alone (the suite-wide check in conftest.py sees none of these)."""
    fresh = FastPathCounts()
    monkeypatch.setattr(execution, "FAST_PATH", fresh)
    return fresh


@pytest.mark.parametrize(
    ("raised", "is_fault"),
    [(RuntimeError("an upgrade broke the fast path"), True), (execution._Fallback(), False)],
    ids=["fault", "value-the-ordinary-path-reports"],
)
async def test_a_fault_in_the_fast_path_is_counted_and_logged_once(
    service: CheckMateService,
    raw_conn: asyncpg.Connection,
    counts: FastPathCounts,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    raised: Exception,
    is_fault: bool,
) -> None:
    """A fault (anything but a value the ordinary path must report, such as null in a non-null
    field) is counted and logged once with its traceback; in both cases the ordinary path
    answers, the same."""
    await insert_tasks(raw_conn, 5)
    expected = await _run(service, PAGE)
    assert (counts.lists, counts.errors) == (1, 0)

    def failing(plan: Any, source: Any) -> dict[str, Any]:
        raise raised

    monkeypatch.setattr(execution, "_complete", failing)
    with caplog.at_level(logging.WARNING, logger="schema.execution"):
        assert await _run(service, PAGE) == expected
        assert await _run(service, PAGE) == expected
    assert counts.lists == 1  # only the first run's
    warnings = [record for record in caplog.records if record.name == "schema.execution"]
    if not is_fault:
        assert (counts.errors, warnings) == (0, [])
        return
    assert counts.errors >= 2
    [warning] = warnings
    assert warning.levelno == logging.WARNING
    assert warning.exc_info is not None
    assert warning.exc_info[1] is raised
