"""Stage metadata of COMPLETED tasks is read from the store once per record version
(checkmate.stage_cache), and never served stale: not after clean, invoke, a re-run's writes, or
for a task whose status lets a worker still write."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import pytest

from checkmate.models import StageMetadata, StageStatus
from checkmate.store import TaskStore
from tests.core_helpers import TaskSpec, make_tasks
from tests.graphql_helpers import Api

S = StageStatus
QUERY = """query($id: ID!) { task(id: $id) { status metadata { index name status } } }"""
PAGE = "{ tasks(maxResults: 10) { nodes { id stageStatus metadata { name status } } } }"


async def _metadata(api: Api, task_id: UUID) -> Any:
    return (await api.data(QUERY, {"id": str(task_id)}))["task"]["metadata"]


async def test_completed_metadata_is_read_once_per_record_version(
    api: Api, raw_conn: asyncpg.Connection, store: TaskStore
) -> None:
    [task_id] = await make_tasks(raw_conn, store, [TaskSpec(S.COMPLETED, stages=2)])
    cache = api.service.stage_cache
    first = await _metadata(api, task_id)
    assert [stage["name"] for stage in first] == ["stage-1", "stage-2"]
    hits = cache.hits
    assert await _metadata(api, task_id) == first
    assert cache.hits == hits + 1
    # A new record version (here: hand-written SQL re-running it) is read from the store again.
    await store.put_stage(task_id, StageMetadata(index=2, name="stage-3", status=S.COMPLETED))
    await raw_conn.execute("UPDATE tasks SET updated_at = now() WHERE id = $1", task_id)
    assert [stage["name"] for stage in await _metadata(api, task_id)] == [
        "stage-1", "stage-2", "stage-3"
    ]


async def test_clean_is_never_answered_from_the_cache(
    api: Api, raw_conn: asyncpg.Connection, store: TaskStore
) -> None:
    ids = await make_tasks(raw_conn, store, [TaskSpec(S.COMPLETED)] * 3)
    before = (await api.data(PAGE))["tasks"]["nodes"]
    assert all(node["metadata"] for node in before)
    await api.data(PAGE)  # served from the cache now
    succeeded, failed = await api.service.clean(ids, dry_run=False)
    assert len(succeeded) == 3
    assert failed == []
    after = (await api.data(PAGE))["tasks"]["nodes"]
    assert [node["metadata"] for node in after] == [[]] * 3
    assert [node["stageStatus"] for node in after] == [None] * 3


@pytest.mark.parametrize("status", [S.ERROR, S.CANCELED, S.RUNNING])
async def test_tasks_a_worker_may_still_write_are_read_every_time(
    api: Api, raw_conn: asyncpg.Connection, store: TaskStore, status: StageStatus
) -> None:
    [task_id] = await make_tasks(raw_conn, store, [TaskSpec(status, stages=1)])
    assert len(await _metadata(api, task_id)) == 1
    # A worker finishing its stage after a cancel, or one an unlock declared lost: no record
    # change, a new object.
    await store.put_stage(task_id, StageMetadata(index=1, name="late", status=S.COMPLETED))
    assert [stage["name"] for stage in await _metadata(api, task_id)] == ["stage-1", "late"]


async def test_invoke_then_a_re_run_reads_the_new_metadata(
    api: Api, raw_conn: asyncpg.Connection, store: TaskStore
) -> None:
    [task_id] = await make_tasks(raw_conn, store, [TaskSpec(S.ERROR, stages=1)])
    await _metadata(api, task_id)
    succeeded, failed = await api.service.invoke(task_id, dry_run=False)
    assert failed == []
    assert succeeded
    await store.put_stage(task_id, StageMetadata(index=0, name="stage-1", status=S.RUNNING))
    [stage] = await _metadata(api, task_id)
    assert stage["status"] == "RUNNING"
    # The re-run completes: its final write comes before COMPLETED, and is what is read.
    await store.put_stage(task_id, StageMetadata(index=0, name="stage-1", status=S.COMPLETED))
    await raw_conn.execute(
        "UPDATE tasks SET status = 'COMPLETED', updated_at = now() WHERE id = $1", task_id
    )
    for _ in range(2):  # read from the store, then from the cache: the same
        [stage] = await _metadata(api, task_id)
        assert stage["status"] == "COMPLETED"
