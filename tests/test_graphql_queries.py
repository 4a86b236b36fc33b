"""Queries over real HTTP against a real PostgreSQL and store: filters, sorts, keyset pagination,
store-backed fields, error codes, and how many SQL statements a page costs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import asyncpg
import obstore
import pytest
from sqlalchemy import event

from checkmate.models import StageMetadata, StageStatus, TaskLock
from checkmate.store import TaskStore, stage_path
from schema import build_schema, schema
from schema.context import GraphQLContext
from tests.graphql_helpers import Api, insert_tasks

PAGE = """
query Page($filter: TaskFilter, $sort: SortOrder, $max: Int, $after: String) {
  tasks(filter: $filter, sort: $sort, maxResults: $max, after: $after) {
    nodes { id name queue tags status createdAt cleaned }
    pageInfo { hasNextPage endCursor }
  }
}
"""

OBJECTS = """
query Objects($max: Int) {
  tasks(maxResults: $max) {
    nodes {
      id params lockDetected
      lock { owner host pid acquiredAt heartbeatAt stale }
      metadata {
        index name status startedAt finishedAt durationSeconds attempt error data
      }
    }
  }
}
"""

FAST_LEAVES = """
query Q($skip: Boolean!) {
  tasks(maxResults: 5) {
    __typename
    nodes {
      __typename id status tags
      renamed: name name
      error @skip(if: $skip)
      ...More
      metadata { index status data startedAt }
    }
  }
}
fragment More on CheckMateTask { queue createdAt attempts cleaned startedAt }
"""

NARROWED = """
query Q($after: String) {
  tasks(maxResults: 4, after: $after) {
    nodes { id status st: status ...More ... on CheckMateTask { error attempts } }
    pageInfo { hasNextPage endCursor }
  }
}
fragment More on CheckMateTask { queue tags createdAt cleaned cleanedAt }
"""


async def _ids(api: Api, **variables: Any) -> list[str]:
    data = await api.data(PAGE, variables)
    return [node["id"] for node in data["tasks"]["nodes"]]


async def test_each_filter_selects_exactly_the_matching_tasks(
    api: Api, raw_conn: asyncpg.Connection
) -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    statuses = [status.value for status in StageStatus]
    ids = await insert_tasks(
        raw_conn,
        36,
        statuses=statuses,
        queues=("default", "gpu", "batch", "io"),
        names=("demo.pipeline", "demo.etl"),
        tags=(("a",), ("a", "b"), (), ("b", "c"), ("a", "c")),
        cleaned_every=5,
        start=start,
    )
    rows = {
        str(row["id"]): row
        for row in await raw_conn.fetch("SELECT * FROM tasks WHERE id = ANY($1)", ids)
    }
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"ids": [str(ids[3]), str(ids[7]), str(uuid4())]}, lambda r: r["id"] in ids[3:8:4]),
        ({"status": "ERROR"}, lambda r: r["status"] == "ERROR"),
        ({"statuses": ["CREATED", "RUNNING"]}, lambda r: r["status"] in {"CREATED", "RUNNING"}),
        ({"queue": "gpu"}, lambda r: r["queue"] == "gpu"),
        ({"tags": ["a"]}, lambda r: "a" in r["tags"]),
        ({"tags": ["a", "c"]}, lambda r: {"a", "c"} <= set(r["tags"])),
        ({"since": (start + timedelta(seconds=30)).isoformat()},
         lambda r: r["created_at"] >= start + timedelta(seconds=30)),
        ({"until": (start + timedelta(seconds=10)).isoformat()},
         lambda r: r["created_at"] < start + timedelta(seconds=10)),
        ({"cleaned": True}, lambda r: r["cleaned"]),
        ({"cleaned": False}, lambda r: not r["cleaned"]),
        ({"name": "demo.etl"}, lambda r: r["name"] == "demo.etl"),
        ({"queue": "default", "status": "CREATED", "cleaned": True},
         lambda r: r["queue"] == "default" and r["status"] == "CREATED" and r["cleaned"]),
    ]
    for task_filter, matches in cases:
        expected = {task_id for task_id, row in rows.items() if matches(row)}
        got = await _ids(api, filter=task_filter, max=100)
        assert len(got) == len(set(got))
        assert set(got) == expected, task_filter
        assert expected, f"case {task_filter} selects nothing: it tests nothing"


async def test_both_sort_orders_follow_created_at_then_id(
    api: Api, raw_conn: asyncpg.Connection
) -> None:
    await insert_tasks(raw_conn, 30, same_time=4)
    rows = await raw_conn.fetch("SELECT id FROM tasks ORDER BY created_at, id")
    ascending = [str(row["id"]) for row in rows]
    assert await _ids(api, sort="ASC", max=100) == ascending
    assert await _ids(api, sort="DESC", max=100) == ascending[::-1]
    assert await _ids(api, max=100) == ascending[::-1], "DESC is the default"


@pytest.mark.parametrize("sort", ["ASC", "DESC"])
async def test_paging_through_1000_tasks_has_no_duplicate_and_no_gap(
    api: Api, raw_conn: asyncpg.Connection, sort: str
) -> None:
    inserted = {str(task_id) for task_id in await insert_tasks(raw_conn, 1000, same_time=3)}
    seen: list[str] = []
    after = None
    for _ in range(100):
        data = (await api.data(PAGE, {"sort": sort, "max": 37, "after": after}))["tasks"]
        seen += [node["id"] for node in data["nodes"]]
        if not data["pageInfo"]["hasNextPage"]:
            break
        after = data["pageInfo"]["endCursor"]
    order = "ASC" if sort == "ASC" else "DESC"
    rows = await raw_conn.fetch(f"SELECT id FROM tasks ORDER BY created_at {order}, id {order}")
    assert len(seen) == len(set(seen)) == 1000
    assert set(seen) == inserted
    assert seen == [str(row["id"]) for row in rows]


async def test_total_count_and_task_counts(api: Api, raw_conn: asyncpg.Connection) -> None:
    await insert_tasks(raw_conn, 14, statuses=("CREATED", "QUEUED", "ERROR", "CREATED"),
                       queues=("default", "gpu"))
    data = await api.data(
        """{ tasks(filter: {queue: "default"}, maxResults: 2) { totalCount nodes { id } }
             taskCounts(filter: {queue: "default"}) { status count } }"""
    )
    expected = await raw_conn.fetch(
        "SELECT status, count(*) FROM tasks WHERE queue = 'default' GROUP BY status"
    )
    assert data["tasks"]["totalCount"] == sum(row["count"] for row in expected) == 7
    assert len(data["tasks"]["nodes"]) == 2
    counts = {item["status"]: item["count"] for item in data["taskCounts"]}
    assert counts == {status.value: 0 for status in StageStatus} | {
        row["status"]: row["count"] for row in expected
    }


async def test_metadata_and_lock_come_back_exactly_as_in_the_store(
    api: Api, store: TaskStore
) -> None:
    task = await api.service.create("demo.pipeline", tags=["x"], params={"stages": 2})
    at = datetime(2026, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)
    stages = [
        StageMetadata(index=0, name="stage-1", status=StageStatus.COMPLETED, started_at=at,
                      finished_at=at + timedelta(seconds=2), duration_seconds=2.0,
                      data={"rows": 12, "out": ["s3://b/k"], "nested": {"ok": True}}),
        StageMetadata(index=1, name="stage-2", status=StageStatus.ERROR, started_at=at,
                      attempt=3, error="boom"),
    ]
    for stage in stages:
        await store.put_stage(task.id, stage)
    lock = TaskLock(owner="w1", host="h", pid=7, acquired_at=at, heartbeat_at=at)
    await store.put_lock(task.id, lock)

    [node] = (await api.data(OBJECTS, {"max": 10}))["tasks"]["nodes"]

    stored = await store.get_task(task.id)
    assert stored is not None
    assert node["params"] == stored.params
    assert node["params"]["stages"] == 2
    assert node["lockDetected"] is True
    assert _parsed(node["lock"]) == {
        "owner": "w1", "host": "h", "pid": 7, "acquiredAt": at, "heartbeatAt": at,
        "stale": True,  # heartbeat long before now - lock_timeout
    }
    assert [_parsed(item) for item in node["metadata"]] == [
        {
            "index": stage.index, "name": stage.name, "status": stage.status.value,
            "startedAt": stage.started_at, "finishedAt": stage.finished_at,
            "durationSeconds": stage.duration_seconds, "attempt": stage.attempt,
            "error": stage.error, "data": stage.data,
        }
        for stage in stages
    ]

    fresh = TaskLock(owner="w2", acquired_at=datetime.now(UTC))
    await store.put_lock(task.id, fresh)
    [node] = (await api.data(OBJECTS, {"max": 10}))["tasks"]["nodes"]
    assert node["lock"]["stale"] is False
    assert node["lock"]["owner"] == "w2"
    await store.delete_lock(task.id)
    [node] = (await api.data(OBJECTS, {"max": 10}))["tasks"]["nodes"]
    assert (node["lock"], node["lockDetected"]) == (None, False)


def _parsed(values: dict[str, Any]) -> dict[str, Any]:
    """Date-time strings as datetimes, so that equal instants compare equal."""
    return {
        key: datetime.fromisoformat(value) if key.endswith("At") and value else value
        for key, value in values.items()
    }


async def test_an_unreadable_task_nulls_only_its_store_fields(
    api: Api, store: TaskStore
) -> None:
    tasks = [await api.service.create("demo.pipeline", params={"stages": 1}) for _ in range(3)]
    broken = tasks[1].id
    await obstore.put_async(store.store, stage_path(broken, 0, "stage-1"), b"{not json")

    body = await api.post(
        "{ tasks(sort: ASC) { nodes { id status metadata { name } lockDetected } } }"
    )
    nodes = body["data"]["tasks"]["nodes"]
    assert [node["id"] for node in nodes] == [str(task.id) for task in tasks]
    assert all(node["status"] == "CREATED" for node in nodes)
    assert (nodes[1]["metadata"], nodes[1]["lockDetected"]) == (None, None)
    assert nodes[0]["metadata"] == nodes[2]["metadata"] == []
    assert nodes[0]["lockDetected"] is nodes[2]["lockDetected"] is False
    paths = sorted(error["path"] for error in body["errors"])
    assert paths == [["tasks", "nodes", 1, "lockDetected"], ["tasks", "nodes", 1, "metadata"]]
    assert {error["extensions"]["code"] for error in body["errors"]} == {"UNAVAILABLE"}
    assert all(str(broken) in error["message"] for error in body["errors"])
    assert not any("json" in error["message"].lower() for error in body["errors"])


async def test_a_page_costs_one_statement_whatever_its_size_and_selection(
    api: Api, raw_conn: asyncpg.Connection, store: TaskStore
) -> None:
    ids = await insert_tasks(raw_conn, 150)
    for task_id in ids[-100:]:
        await store.put_stage(
            task_id, StageMetadata(index=0, name="s", status=StageStatus.COMPLETED)
        )
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # The app's event hub shares the engine and reads status_events on its own schedule.
        if "status_events" not in statement:
            statements.append(statement)

    await api.data(PAGE, {"max": 1})  # opens the pool's connection: setup statements run here
    engine = api.service.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        measured = {}
        for size in (10, 100):
            statements.clear()
            data = await api.data(OBJECTS, {"max": size})
            assert len(data["tasks"]["nodes"]) == size
            assert all(node["metadata"] for node in data["tasks"]["nodes"])
            measured[size] = len(statements)
        statements.clear()
        await api.data("{ tasks(maxResults: 100) { totalCount nodes { id metadata { name } } } }")
        with_count = len(statements)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert measured == {10: 1, 100: 1}
    assert with_count == 2


async def test_task_by_id(api: Api, raw_conn: asyncpg.Connection) -> None:
    [task_id] = await insert_tasks(raw_conn, 1, queues=("gpu",))
    query = "query One($id: ID!) { task(id: $id) { id queue status } }"
    data = await api.data(query, {"id": str(task_id)})
    assert data["task"] == {"id": str(task_id), "queue": "gpu", "status": "CREATED"}
    assert await api.data(query, {"id": str(uuid4())}) == {"task": None}
    body = await api.post(query, {"id": "not-a-uuid"})
    assert body["data"] == {"task": None}
    [error] = body["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "not-a-uuid" in error["message"]


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ("maxResults: 10001", "between 1 and 10000"),
        ("maxResults: 0", "between 1 and 10000"),
        ('after: "garbage"', "cursor"),
        ('filter: {ids: ["nope"]}', "nope"),
    ],
)
async def test_bad_listing_arguments_are_bad_user_input(
    api: Api, arguments: str, fragment: str
) -> None:
    body = await api.post(f"{{ tasks({arguments}) {{ nodes {{ id }} }} }}")
    [error] = body["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert fragment in error["message"]
    assert body["data"] is None



async def test_fast_leaf_completion_answers_exactly_like_graphql_core(
    api: Api, raw_conn: asyncpg.Connection, store: TaskStore
) -> None:
    ids = await insert_tasks(raw_conn, 12, tags=(("a", "b"), ()), statuses=("CREATED", "ERROR"))
    await store.put_stage(ids[-1], StageMetadata(index=0, name="s", status=StageStatus.ERROR,
                                                 data={"k": [1, None]}))
    query = FAST_LEAVES
    ordinary = build_schema(fast_leaves=False)
    for skip in (True, False):
        context = GraphQLContext(service=api.service, hub=None, request_id="t")
        fast = await schema.execute(query, {"skip": skip}, context_value=context)
        context = GraphQLContext(service=api.service, hub=None, request_id="t")
        slow = await ordinary.execute(query, {"skip": skip}, context_value=context)
        assert fast.errors is None
        assert slow.errors is None
        assert fast.data == slow.data
        assert fast.data is not None
        assert ("error" in fast.data["tasks"]["nodes"][0]) is not skip


async def test_plain_node_lists_and_narrowed_reads_answer_exactly_like_graphql_core(
    api: Api, raw_conn: asyncpg.Connection
) -> None:
    """Nodes whose selection is all plain fields complete in one loop, from rows that carry only
    the selected columns (fragments and aliases included): same answer as graphql-core's own
    completion of full rows, and no selected column is left unread (it would come back null)."""
    await insert_tasks(
        raw_conn, 7, tags=(("a", "b"), ()), statuses=("CREATED", "ERROR", "CANCELED"),
        queues=("default", "gpu"), cleaned_every=3,
    )
    await raw_conn.execute("UPDATE tasks SET error = 'boom', attempts = 2 WHERE status = 'ERROR'")
    query = NARROWED
    ordinary = build_schema(fast_leaves=False)
    after = None
    seen = 0
    for _ in range(2):
        results = []
        for run in (schema, ordinary):
            context = GraphQLContext(service=api.service, hub=None, request_id="t")
            result = await run.execute(query, {"after": after}, context_value=context)
            assert result.errors is None
            results.append(result.data)
        fast, slow = results
        assert fast == slow
        assert fast is not None
        nodes = fast["tasks"]["nodes"]
        assert all(node["queue"] and node["createdAt"] and node["status"] for node in nodes)
        assert {node["error"] for node in nodes if node["status"] == "ERROR"} == {"boom"}
        assert any(node["tags"] == ["a", "b"] for node in nodes)
        seen += len(nodes)
        after = fast["tasks"]["pageInfo"]["endCursor"]
    assert seen == 7
