"""get, list (every filter, both sorts, keyset pagination) and create."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import obstore
import pytest

from checkmate.models import StageStatus
from checkmate.service import CheckMateService, ServiceError
from checkmate.settings import Settings
from checkmate.store import TaskStore, stage_path
from tests.core_helpers import TaskSpec, make_task, make_tasks

S = StageStatus


async def test_get_unknown_id_is_not_found(service: CheckMateService) -> None:
    ghost = uuid4()
    with pytest.raises(ServiceError) as raised:
        await service.get(ghost)
    assert raised.value.code == ServiceError.NOT_FOUND
    assert str(ghost) in raised.value.message


@pytest.mark.parametrize("bad", ["nope", "", "1234", "00000000-0000-0000-0000-00000000000g"])
async def test_get_malformed_id_is_bad_input(bad: str, service: CheckMateService) -> None:
    with pytest.raises(ServiceError) as raised:
        await service.get(bad)
    assert raised.value.code == ServiceError.BAD_USER_INPUT
    assert "UUID" in raised.value.message


async def test_get_with_metadata_and_lock(
    service: CheckMateService, raw_conn: asyncpg.Connection, store: TaskStore
) -> None:
    task_id = await make_task(raw_conn, store, TaskSpec(S.RUNNING, lock="stale", stages=3))
    task = await service.get(str(task_id))
    assert task.id == task_id
    assert task.status is S.RUNNING
    assert task.params == {"stages": 3}
    assert [stage.name for stage in task.metadata or []] == ["stage-1", "stage-2", "stage-3"]
    assert task.stage_status is S.COMPLETED
    assert task.lock_detected is True
    assert task.lock is not None
    assert task.lock.owner == "worker-1"
    assert task.lock.stale is True

    bare = await service.get(task_id, include_metadata=False)
    assert (bare.metadata, bare.lock, bare.lock_detected, bare.params) == (None, None, None, None)


async def test_create_writes_record_and_task_object(
    service: CheckMateService, raw_conn: asyncpg.Connection, store: TaskStore
) -> None:
    task = await service.create("demo.pipeline", queue="q", tags=["t"], params={"stages": 2})
    queued = await service.create("demo.pipeline", invoke=True)
    row = await raw_conn.fetchrow("SELECT * FROM tasks WHERE id = $1", task.id)
    assert (row["status"], row["queue"], row["tags"], row["attempts"]) == ("CREATED", "q", ["t"], 0)
    task_object = await store.get_task(task.id)
    assert task_object is not None
    assert task_object.stages == ["stage-1", "stage-2"]
    assert task_object.params["stages"] == 2
    assert (queued.status, queued.attempts) == (S.QUEUED, 1)
    with pytest.raises(ServiceError, match="unknown task kind"):
        await service.create("no.such.kind")
    with pytest.raises(ServiceError, match="invalid params"):
        await service.create("demo.pipeline", params={"stages": "many"})
    assert await raw_conn.fetchval("SELECT count(*) FROM tasks") == 2


@pytest.fixture
async def listed(
    service: CheckMateService, raw_conn: asyncpg.Connection, store: TaskStore
) -> list[UUID]:
    """Seven tasks; task i was created i minutes ago (so index order = newest first)."""
    specs = [
        TaskSpec(S.CREATED, queue="gpu", tags=("a", "b"), created_ago=0),
        TaskSpec(S.QUEUED, queue="cpu", tags=("a",), created_ago=60),
        TaskSpec(S.RUNNING, queue="gpu", tags=("b",), created_ago=120, lock="fresh"),
        TaskSpec(S.COMPLETED, queue="cpu", name="demo.other", created_ago=180),
        TaskSpec(S.ERROR, queue="gpu", tags=("a", "b", "c"), created_ago=240),
        TaskSpec(S.CANCELED, queue="cpu", created_ago=300),
        TaskSpec(S.COMPLETED, queue="gpu", cleaned=True, task_object="missing", created_ago=7200),
    ]
    return await make_tasks(raw_conn, store, specs)


async def _indexes(service: CheckMateService, ids: list[UUID], **kw: object) -> list[int]:
    tasks = await service.list(include_metadata=False, **kw)  # type: ignore[arg-type]
    return [ids.index(task.id) for task in tasks]


async def test_list_filters(service: CheckMateService, listed: list[UUID]) -> None:
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    assert await _indexes(service, listed) == [0, 1, 2, 3, 4, 5, 6]
    assert await _indexes(service, listed, status=S.COMPLETED) == [3, 6]
    assert await _indexes(service, listed, statuses=[S.ERROR, S.QUEUED]) == [1, 4]
    assert await _indexes(service, listed, queue="cpu") == [1, 3, 5]
    assert await _indexes(service, listed, tags=["a"]) == [0, 1, 4]
    assert await _indexes(service, listed, tags=["b", "a"]) == [0, 4]
    assert await _indexes(service, listed, since=hour_ago) == [0, 1, 2, 3, 4, 5]
    assert await _indexes(service, listed, until=hour_ago) == [6]
    assert await _indexes(service, listed, cleaned=True) == [6]
    assert await _indexes(service, listed, cleaned=False, queue="gpu") == [0, 2, 4]
    assert await _indexes(service, listed, name="demo.other") == [3]
    assert await _indexes(service, listed, queue="nowhere") == []


async def test_list_sorts_and_pages(service: CheckMateService, listed: list[UUID]) -> None:
    assert await _indexes(service, listed, sort="asc") == [6, 5, 4, 3, 2, 1, 0]
    for sort, expected in [("desc", [0, 1, 2, 3, 4, 5, 6]), ("asc", [6, 5, 4, 3, 2, 1, 0])]:
        seen: list[int] = []
        after = None
        while True:
            page = await service.page(sort=sort, max_results=3, after=after)  # type: ignore[arg-type]
            seen += [listed.index(task.id) for task in page.tasks]
            if not page.has_next_page:
                break
            after = page.end_cursor
        assert seen == expected
    # Pagination through `list` too, with a filter.
    first = await service.list(queue="gpu", max_results=2, include_metadata=False)
    page = await service.page(max_results=2)
    rest = await service.list(
        queue="gpu", max_results=2, after=page.end_cursor, include_metadata=False
    )
    assert [listed.index(t.id) for t in first] == [0, 2]
    assert [listed.index(t.id) for t in rest] == [2, 4]
    with pytest.raises(ServiceError):
        await service.list(after="not-a-cursor")


async def test_list_with_metadata_survives_one_broken_task(
    service: CheckMateService, store: TaskStore, listed: list[UUID]
) -> None:
    broken = listed[4]
    await obstore.put_async(store.store, stage_path(broken, 0, "stage-1"), b"{broken")
    tasks = {task.id: task for task in await service.list()}
    assert tasks[broken].metadata is None
    assert tasks[broken].status is S.ERROR
    assert tasks[listed[2]].lock_detected is True
    assert tasks[listed[0]].params == {"stages": 2}
    assert tasks[listed[6]].params is None  # cleaned: its objects are gone


@pytest.mark.slow
async def test_embedded_database_starts_and_migrates(tmp_path: Path) -> None:
    """No database URL: the service starts an embedded PostgreSQL under the data dir."""
    service = await CheckMateService.open(Settings(data_dir=tmp_path, database_url=None))
    try:
        assert (tmp_path / "pg").is_dir()
        assert (tmp_path / "store").is_dir()
        task = await service.create("demo.pipeline")
        assert (await service.get(task.id)).status is S.CREATED
        assert await service.count() == 1
    finally:
        await service.close()
    # Closing the last user stops the server (uvicorn's SIGTERM exit skips atexit).
    assert not (tmp_path / "pg" / "postmaster.pid").exists()


async def test_page_reads_only_the_fields_asked_for(
    service: CheckMateService, raw_conn: asyncpg.Connection, store: TaskStore
) -> None:
    """fields= narrows the read: asked fields equal the full read's, others are None, and the
    cursor (made of id and created_at, always read) continues the same order."""
    await make_tasks(
        raw_conn, store, [TaskSpec(S.ERROR, tags=("x",), created_ago=i) for i in range(5)]
    )
    full = await service.page(max_results=3)
    narrow = await service.page(max_results=3, fields={"status", "tags"})
    assert [(t.id, t.status, t.tags) for t in narrow.tasks] == [
        (t.id, t.status, t.tags) for t in full.tasks
    ]
    assert all(t.status is S.ERROR and t.queue is None and t.updated_at is None
               for t in narrow.tasks)
    assert narrow.end_cursor == full.end_cursor
    rest = await service.page(max_results=3, after=narrow.end_cursor, fields=set())
    assert [t.id for t in rest.tasks] == [
        t.id for t in (await service.page(max_results=3, after=full.end_cursor)).tasks
    ]
    assert len(rest.tasks) == 2
