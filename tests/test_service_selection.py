"""How batch actions select tasks, and the selections they refuse as a whole."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import asyncpg
import pytest

from checkmate.models import StageStatus
from checkmate.service import CheckMateService, ServiceError
from checkmate.store import TaskStore
from tests.core_helpers import TaskSpec, dump_database, insert_records, make_tasks

S = StageStatus
ACTIONS = ["cancel", "unlock", "clean", "invoke"]


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize("action", ACTIONS)
async def test_unknown_ids_fail_with_status_none(
    action: str, dry_run: bool, service: CheckMateService, raw_conn: asyncpg.Connection
) -> None:
    (existing,) = await insert_records(raw_conn, [TaskSpec(S.CREATED)])
    ghost = uuid4()

    succeeded, failed = await getattr(service, action)(
        [str(ghost), existing], dry_run=dry_run
    )

    by_id = {result.task_id: result for result in [*succeeded, *failed]}
    assert set(by_id) == {str(ghost), str(existing)}
    assert by_id[str(ghost)] in failed
    assert by_id[str(ghost)].status is None
    assert by_id[str(ghost)].previous_status is None
    assert "not found" in (by_id[str(ghost)].error or "")
    assert by_id[str(existing)].previous_status is S.CREATED


@pytest.mark.parametrize("action", ACTIONS)
async def test_malformed_id_is_bad_input(action: str, service: CheckMateService) -> None:
    with pytest.raises(ServiceError) as raised:
        await getattr(service, action)(["not-a-uuid"], dry_run=False)
    assert raised.value.code == ServiceError.BAD_USER_INPUT
    assert "not-a-uuid" in raised.value.message


@pytest.mark.parametrize("action", ACTIONS)
async def test_no_ids_and_no_filter_is_refused(
    action: str, service: CheckMateService, raw_conn: asyncpg.Connection
) -> None:
    await insert_records(raw_conn, [TaskSpec(S.CREATED)])
    before = await dump_database(raw_conn)
    with pytest.raises(ServiceError) as raised:
        await getattr(service, action)(dry_run=False)
    assert raised.value.code == ServiceError.BAD_USER_INPUT
    assert await dump_database(raw_conn) == before


@pytest.mark.parametrize("max_results", [0, -1, 10_001])
async def test_max_results_outside_the_cap_is_an_error_not_truncation(
    max_results: int, service: CheckMateService, raw_conn: asyncpg.Connection
) -> None:
    assert service.settings.max_results_cap == 10_000
    await insert_records(raw_conn, [TaskSpec(S.CREATED)] * 3)
    before = await dump_database(raw_conn)
    with pytest.raises(ServiceError) as raised:
        await service.cancel(status=S.CREATED, max_results=max_results, dry_run=False)
    assert raised.value.code == ServiceError.BAD_USER_INPUT
    assert "10000" in raised.value.message
    with pytest.raises(ServiceError):
        await service.list(max_results=max_results)
    assert await dump_database(raw_conn) == before


async def test_cap_follows_settings(
    service: CheckMateService, raw_conn: asyncpg.Connection
) -> None:
    await insert_records(raw_conn, [TaskSpec(S.CREATED)] * 3)
    service.settings.max_results_cap = 2
    with pytest.raises(ServiceError):
        await service.cancel(status=S.CREATED, max_results=3)
    succeeded, _ = await service.cancel(status=S.CREATED, max_results=2)
    assert len(succeeded) == 2


async def test_more_ids_than_max_results_is_an_error(
    service: CheckMateService, raw_conn: asyncpg.Connection
) -> None:
    ids = await insert_records(raw_conn, [TaskSpec(S.CREATED)] * 3)
    with pytest.raises(ServiceError) as raised:
        await service.cancel(ids, max_results=2, dry_run=False)
    assert raised.value.code == ServiceError.BAD_USER_INPUT
    assert "3 task ids" in raised.value.message
    rows = await raw_conn.fetch("SELECT status FROM tasks")
    assert {row["status"] for row in rows} == {"CREATED"}


async def test_repeated_ids_are_one_selection(
    service: CheckMateService, raw_conn: asyncpg.Connection
) -> None:
    (task_id,) = await insert_records(raw_conn, [TaskSpec(S.CREATED)])
    succeeded, failed = await service.cancel([task_id, str(task_id), task_id], max_results=1)
    assert [result.task_id for result in succeeded] == [str(task_id)]
    assert failed == []


@pytest.mark.parametrize(("sort", "expected"), [("desc", [0, 1]), ("asc", [4, 3])])
async def test_filter_selects_newest_first_unless_asc(
    sort: str,
    expected: list[int],
    service: CheckMateService,
    raw_conn: asyncpg.Connection,
) -> None:
    # Task i was created i minutes ago.
    ids = await insert_records(
        raw_conn, [TaskSpec(S.CREATED, created_ago=60.0 * i) for i in range(5)]
    )
    succeeded, _ = await service.cancel(
        status=S.CREATED, sort=sort, max_results=2, dry_run=False
    )
    assert {result.task_id for result in succeeded} == {str(ids[i]) for i in expected}
    rows = await raw_conn.fetch("SELECT id FROM tasks WHERE status = 'CANCELED'")
    assert {row["id"] for row in rows} == {ids[i] for i in expected}


async def test_every_filter_narrows_the_selection(
    service: CheckMateService, raw_conn: asyncpg.Connection, store: TaskStore
) -> None:
    specs = [
        TaskSpec(S.CREATED, queue="gpu", tags=("a", "b")),
        TaskSpec(S.CREATED, queue="cpu", tags=("a",)),
        TaskSpec(S.QUEUED, queue="gpu", tags=("b",), name="demo.other"),
        TaskSpec(S.CREATED, queue="gpu", tags=("a", "b"), created_ago=7200),
    ]
    ids = await make_tasks(raw_conn, store, specs)

    async def selected(**filters: object) -> set[int]:
        succeeded, failed = await service.cancel(**filters)
        chosen = {result.task_id for result in [*succeeded, *failed]}
        return {index for index, task_id in enumerate(ids) if str(task_id) in chosen}

    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    assert await selected(queue="gpu") == {0, 2, 3}
    assert await selected(tags=["a", "b"]) == {0, 3}
    assert await selected(status=S.QUEUED) == {2}
    assert await selected(statuses=[S.QUEUED, S.CREATED], queue="cpu") == {1}
    assert await selected(name="demo.other") == {2}
    assert await selected(since=hour_ago, tags=["a"]) == {0, 1}
    assert await selected(until=hour_ago) == {3}
    assert await selected(cleaned=False, queue="cpu") == {1}
    assert await selected(task_ids=[ids[0], ids[1]], queue="gpu") == {0, 1}
    _, failed = await service.cancel([ids[0], ids[1]], queue="gpu")
    assert [(r.task_id, r.status, r.error) for r in failed] == [
        (str(ids[1]), S.CREATED, "task does not match the filter")
    ]
