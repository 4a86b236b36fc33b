"""Mutations over real HTTP: createTask, and each batch action dry (nothing changes, same answer
as the real run) and real, with ids that do not exist and with bad selections."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from checkmate.models import StageStatus
from checkmate.store import TaskStore
from tests.core_helpers import TaskSpec, dump_database, dump_store, make_tasks, record
from tests.graphql_helpers import Api

OUTCOME = """
  action dryRun
  succeeded { taskId status previousStatus error detail task { id status attempts cleaned } }
  failed { taskId status previousStatus error task { id status } }
"""


def batch(mutation: str, extra: str = "") -> str:
    return f"""
mutation Batch($ids: [ID!], $filter: TaskFilter, $dry: Boolean, $max: Int) {{
  {mutation}(taskIds: $ids, filter: $filter, dryRun: $dry, maxResults: $max{extra}) {{
    {OUTCOME}
  }}
}}"""


def _by_id(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {result["taskId"]: result for result in results}


async def _dry_then_real(
    api: Api, raw_conn: asyncpg.Connection, store: TaskStore, query: str, variables: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The dry run leaves database and store byte for byte as they were; returns both outcomes
    (the mutation field's value)."""
    before = (await dump_database(raw_conn), await dump_store(store))
    default_dry = await api.data(query, variables)
    dry = await api.data(query, {**variables, "dry": True})
    assert (await dump_database(raw_conn), await dump_store(store)) == before
    assert default_dry == dry, "dryRun defaults to true"
    real = await api.data(query, {**variables, "dry": False})
    [dry_outcome], [real_outcome] = dry.values(), real.values()
    assert dry_outcome["dryRun"] is True
    assert real_outcome["dryRun"] is False
    return dry_outcome, real_outcome


def _decisions(outcome: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {
        result["taskId"]: (bucket, result["status"], result["previousStatus"])
        for bucket in ("succeeded", "failed")
        for result in outcome[bucket]
    }


async def test_cancel_dry_and_real_with_an_unknown_id(
    api: Api, raw_conn: asyncpg.Connection, store: TaskStore
) -> None:
    created, queued, done = await make_tasks(
        raw_conn, store,
        [TaskSpec(StageStatus.CREATED), TaskSpec(StageStatus.QUEUED),
         TaskSpec(StageStatus.COMPLETED)],
    )
    missing = uuid4()
    ids = [str(task_id) for task_id in (created, queued, done, missing)]
    dry, real = await _dry_then_real(api, raw_conn, store, batch("cancelTasks"), {"ids": ids})
    assert dry["action"] == real["action"] == "CANCEL"
    expected = {
        str(created): ("succeeded", "CANCELED", "CREATED"),
        str(queued): ("succeeded", "CANCELED", "QUEUED"),
        str(done): ("failed", "COMPLETED", "COMPLETED"),
        str(missing): ("failed", None, None),
    }
    assert _decisions(dry) == _decisions(real) == expected
    failed = _by_id(real["failed"])
    assert failed[str(missing)]["task"] is None
    assert failed[str(missing)]["error"]
    assert failed[str(done)]["error"]
    succeeded = _by_id(real["succeeded"])
    assert {succeeded[i]["task"]["status"] for i in ids[:2]} == {"CANCELED"}
    assert all(result["error"] is None for result in real["succeeded"])
    assert (await record(raw_conn, created))["status"] == "CANCELED"
    assert (await record(raw_conn, done))["status"] == "COMPLETED"


async def test_cancel_selects_by_filter(
    api: Api, raw_conn: asyncpg.Connection, store: TaskStore
) -> None:
    gpu, _other = await make_tasks(
        raw_conn, store, [TaskSpec(StageStatus.CREATED, queue="gpu"), TaskSpec(StageStatus.CREATED)]
    )
    _, real = await _dry_then_real(
        api, raw_conn, store, batch("cancelTasks"), {"filter": {"queue": "gpu"}}
    )
    assert _decisions(real) == {str(gpu): ("succeeded", "CANCELED", "CREATED")}
    assert [row["status"] for row in await raw_conn.fetch(
        "SELECT status FROM tasks ORDER BY queue = 'gpu'")] == ["CREATED", "CANCELED"]


async def test_unlock_dry_and_real_and_force(
    api: Api, raw_conn: asyncpg.Connection, store: TaskStore
) -> None:
    stale, fresh, unlocked = await make_tasks(
        raw_conn, store,
        [TaskSpec(StageStatus.RUNNING, lock="stale"), TaskSpec(StageStatus.RUNNING, lock="fresh"),
         TaskSpec(StageStatus.CREATED)],
    )
    ids = [str(stale), str(fresh), str(unlocked)]
    dry, real = await _dry_then_real(api, raw_conn, store, batch("unlockTasks"), {"ids": ids})
    assert dry["action"] == "UNLOCK"
    assert _decisions(dry) == _decisions(real)
    assert _decisions(real)[str(stale)] == ("succeeded", "ERROR", "RUNNING")
    assert _decisions(real)[str(fresh)][0] == "failed"
    assert "force" in _by_id(real["failed"])[str(fresh)]["error"]
    assert _decisions(real)[str(unlocked)][0] == "failed"
    assert await store.get_lock(stale) is None
    assert await store.get_lock(fresh) is not None
    assert (await record(raw_conn, stale))["status"] == "ERROR"

    forced = await api.data(batch("unlockTasks", ", force: true"), {"ids": [str(fresh)],
                                                                   "dry": False})
    assert [result["taskId"] for result in forced["unlockTasks"]["succeeded"]] == [str(fresh)]
    assert await store.get_lock(fresh) is None


async def test_clean_dry_and_real(
    api: Api, raw_conn: asyncpg.Connection, store: TaskStore
) -> None:
    done, running = await make_tasks(
        raw_conn, store,
        [TaskSpec(StageStatus.COMPLETED), TaskSpec(StageStatus.RUNNING, lock="fresh")],
    )
    ids = [str(done), str(running), str(uuid4())]
    dry, real = await _dry_then_real(api, raw_conn, store, batch("cleanTasks"), {"ids": ids})
    assert dry["action"] == "CLEAN"
    assert _decisions(dry) == _decisions(real)
    assert _decisions(real)[str(done)] == ("succeeded", "COMPLETED", "COMPLETED")
    assert _decisions(real)[str(running)][0] == "failed"
    assert _decisions(real)[ids[2]] == ("failed", None, None)
    assert _by_id(real["succeeded"])[str(done)]["task"]["cleaned"] is True
    assert await store.get_task(done) is None
    assert await store.get_stages(done) == []
    assert await store.get_task(running) is not None
    assert (await record(raw_conn, done))["cleaned"] is True


async def test_invoke_dry_and_real(
    api: Api, raw_conn: asyncpg.Connection, store: TaskStore
) -> None:
    created, failed, done = await make_tasks(
        raw_conn, store,
        [TaskSpec(StageStatus.CREATED), TaskSpec(StageStatus.ERROR, attempts=1),
         TaskSpec(StageStatus.COMPLETED)],
    )
    ids = [str(created), str(failed), str(done)]
    dry, real = await _dry_then_real(api, raw_conn, store, batch("invokeTasks"), {"ids": ids})
    assert dry["action"] == "INVOKE"
    assert _decisions(dry) == _decisions(real) == {
        str(created): ("succeeded", "QUEUED", "CREATED"),
        str(failed): ("succeeded", "QUEUED", "ERROR"),
        str(done): ("failed", "COMPLETED", "COMPLETED"),
    }
    attempts = {r["taskId"]: r["task"]["attempts"] for r in real["succeeded"]}
    assert attempts == {str(created): 1, str(failed): 2}


@pytest.mark.parametrize("mutation", ["cancelTasks", "unlockTasks", "cleanTasks", "invokeTasks"])
async def test_bad_selections_are_bad_user_input(
    api: Api, raw_conn: asyncpg.Connection, store: TaskStore, mutation: str
) -> None:
    [task_id] = await make_tasks(raw_conn, store, [TaskSpec(StageStatus.CREATED)])
    before = await dump_database(raw_conn)
    cases = [
        ({}, "taskIds or a filter"),
        ({"filter": {}}, "taskIds or a filter"),
        ({"ids": ["not-a-uuid"]}, "not-a-uuid"),
        ({"ids": [str(task_id)], "max": 10001}, "between 1 and 10000"),
        ({"ids": [str(task_id), str(uuid4())], "max": 1}, "max"),
    ]
    for variables, fragment in cases:
        body = await api.post(batch(mutation), {**variables, "dry": False})
        [error] = body["errors"]
        assert error["extensions"]["code"] == "BAD_USER_INPUT", (variables, error)
        assert fragment.lower() in error["message"].lower().replace("task ids", "taskids"), error
        assert body["data"] is None
    assert await dump_database(raw_conn) == before


async def test_create_task(api: Api, raw_conn: asyncpg.Connection, store: TaskStore) -> None:
    query = """
    mutation Create($input: CreateTaskInput!) {
      createTask(input: $input) { id name queue tags status attempts params metadata { name }
                                  lockDetected }
    }"""
    created = (await api.data(query, {"input": {"name": "demo.pipeline"}}))["createTask"]
    assert (created["queue"], created["tags"], created["status"]) == ("default", [], "CREATED")
    assert (created["metadata"], created["lockDetected"]) == ([], False)
    stored = await store.get_task(UUID(created["id"]))
    assert stored is not None
    assert created["params"] == stored.params

    queued = (await api.data(query, {"input": {
        "name": "demo.pipeline", "queue": "gpu", "tags": ["t"], "params": {"stages": 2},
        "invoke": True,
    }}))["createTask"]
    row = await record(raw_conn, UUID(queued["id"]))
    assert (row["status"], row["queue"], row["tags"], row["attempts"]) == ("QUEUED", "gpu",
                                                                           ["t"], 1)
    assert queued["params"]["stages"] == 2

    body = await api.post(query, {"input": {"name": "no.such.kind"}})
    assert [error["extensions"]["code"] for error in body["errors"]] == ["BAD_USER_INPUT"]
    assert "no.such.kind" in body["errors"][0]["message"]
    assert await raw_conn.fetchval("SELECT count(*) FROM tasks") == 2
