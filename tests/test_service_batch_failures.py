"""db_transact both ways with a failure half way through a batch (store and database), and
clean's crash window (objects deleted, record not yet marked) healed by the next clean."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import asyncpg
import obstore
import pytest

from checkmate.models import StageStatus
from checkmate.service import CheckMateService
from checkmate.store import StoreError, TaskStore, stage_path, task_path
from tests.core_helpers import (
    TaskSpec,
    dump_database,
    insert_records,
    make_task,
    make_tasks,
    record,
    task_paths,
)

S = StageStatus
CHUNK = 2
BATCH = 6


class FailingDeleteStore(TaskStore):
    """A real store whose delete of one chosen task fails after deleting part of it, the way a
    store outage half way through a delete would leave it."""

    def __init__(self, inner: TaskStore, fail_for: UUID) -> None:
        super().__init__(inner.store)
        self.fail_for = fail_for

    async def delete_tasks(self, task_ids: Sequence[UUID]) -> dict[UUID, BaseException]:
        failed = await super().delete_tasks([i for i in task_ids if i != self.fail_for])
        if self.fail_for in task_ids:
            await obstore.delete_async(self.store, stage_path(self.fail_for, 0, "stage-1"))
            failed[self.fail_for] = StoreError("injected: store unavailable")
        return failed


@pytest.fixture
async def completed(
    service: CheckMateService, raw_conn: asyncpg.Connection, store: TaskStore
) -> list[UUID]:
    """BATCH terminal tasks with their objects, processed CHUNK rows per statement."""
    service.settings.batch_chunk_size = CHUNK
    ids = await make_tasks(raw_conn, store, [TaskSpec(S.COMPLETED)] * BATCH)
    return sorted(ids)


@pytest.fixture
def faulty(completed: list[UUID]) -> UUID:
    # In the middle chunk: chunks before it are done when it fails, chunks after it are not.
    return completed[BATCH // 2]


async def test_store_failure_with_db_transact_changes_nothing_in_the_db(
    service: CheckMateService,
    raw_conn: asyncpg.Connection,
    store: TaskStore,
    completed: list[UUID],
    faulty: UUID,
) -> None:
    service.store = FailingDeleteStore(store, faulty)
    before = await dump_database(raw_conn, sequences=False)

    succeeded, failed = await service.clean(completed, dry_run=False, db_transact=True)

    assert succeeded == []
    assert {result.task_id for result in failed} == {str(task_id) for task_id in completed}
    reasons = {result.task_id: result.error or "" for result in failed}
    assert "injected" in reasons[str(faulty)]
    assert all("rolled the batch back" in reasons[str(i)] for i in completed if i != faulty)
    assert all(result.status is S.COMPLETED for result in failed)
    assert await dump_database(raw_conn, sequences=False) == before
    # The store side is not transactional: the others' objects are gone (clean's crash window)
    # while their records say not cleaned. The faulty task's object is still there.
    assert [await task_paths(store, i) for i in completed if i != faulty] == [[]] * (BATCH - 1)
    assert task_path(faulty) in await task_paths(store, faulty)

    # The next clean heals it: the records of deleted objects are marked with a detail.
    service.store = store
    succeeded, failed = await service.clean(completed, dry_run=False)
    assert failed == []
    details = {result.task_id: result.detail for result in succeeded}
    assert details[str(faulty)] is None
    assert all("task object missing" in (details[str(i)] or "") for i in completed if i != faulty)
    cleaned = await raw_conn.fetch("SELECT cleaned FROM tasks")
    assert [row["cleaned"] for row in cleaned] == [True] * BATCH
    assert [await task_paths(store, i) for i in completed] == [[]] * BATCH


async def test_store_failure_without_db_transact_keeps_the_others(
    service: CheckMateService,
    raw_conn: asyncpg.Connection,
    store: TaskStore,
    completed: list[UUID],
    faulty: UUID,
) -> None:
    service.store = FailingDeleteStore(store, faulty)

    succeeded, failed = await service.clean(completed, dry_run=False, db_transact=False)

    assert [result.task_id for result in failed] == [str(faulty)]
    assert "injected" in (failed[0].error or "")
    assert {result.task_id for result in succeeded} == {str(i) for i in completed if i != faulty}
    for task_id in completed:
        row = await record(raw_conn, task_id)
        assert row["cleaned"] is (task_id != faulty)
    # Never cleaned while its task object is still there.
    assert task_path(faulty) in await task_paths(store, faulty)


@pytest.fixture
async def failing_trigger(raw_conn: asyncpg.Connection, faulty: UUID) -> UUID:
    """A test-only trigger: any UPDATE of the faulty task's row raises, as a constraint or a
    lost connection would half way through a batch."""
    await raw_conn.execute(
        """
        CREATE FUNCTION test_fail_update() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'injected failure for %', OLD.id; END $$;
        """
    )
    await raw_conn.execute(
        f"CREATE TRIGGER test_fail_update BEFORE UPDATE ON tasks FOR EACH ROW "
        f"WHEN (OLD.id = '{faulty}') EXECUTE FUNCTION test_fail_update()"
    )
    return faulty


@pytest.fixture
async def created(
    service: CheckMateService, raw_conn: asyncpg.Connection, completed: list[UUID]
) -> list[UUID]:
    """The `completed` rows turned back into CREATED so that cancel and invoke apply to them."""
    await raw_conn.execute("UPDATE tasks SET status = 'CREATED'")
    return completed


@pytest.mark.parametrize("action", ["cancel", "invoke"])
async def test_db_failure_with_db_transact_rolls_everything_back(
    action: str,
    service: CheckMateService,
    raw_conn: asyncpg.Connection,
    created: list[UUID],
    failing_trigger: UUID,
) -> None:
    before = await dump_database(raw_conn, sequences=False)

    succeeded, failed = await getattr(service, action)(created, dry_run=False, db_transact=True)

    assert succeeded == []
    assert len(failed) == BATCH
    assert all("database error" in (result.error or "") for result in failed)
    assert all(result.status is S.CREATED for result in failed)
    assert await dump_database(raw_conn, sequences=False) == before


@pytest.mark.parametrize(("action", "status"), [("cancel", S.CANCELED), ("invoke", S.QUEUED)])
async def test_db_failure_without_db_transact_fails_only_the_faulty_task(
    action: str,
    status: StageStatus,
    service: CheckMateService,
    raw_conn: asyncpg.Connection,
    created: list[UUID],
    failing_trigger: UUID,
) -> None:
    succeeded, failed = await getattr(service, action)(created, dry_run=False, db_transact=False)

    assert [(result.task_id, result.status) for result in failed] == [
        (str(failing_trigger), S.CREATED)
    ]
    assert "database error" in (failed[0].error or "")
    assert {result.task_id for result in succeeded} == {
        str(i) for i in created if i != failing_trigger
    }
    rows = {row["id"]: row["status"] for row in await raw_conn.fetch("SELECT * FROM tasks")}
    assert rows == {i: (S.CREATED if i == failing_trigger else status).value for i in created}


async def test_clean_heals_objects_deleted_before_a_crash(
    service: CheckMateService, raw_conn: asyncpg.Connection, store: TaskStore
) -> None:
    task_id = await make_task(raw_conn, store, TaskSpec(S.ERROR))
    # The crash: clean deleted the objects and died before marking the record.
    await store.delete_task(task_id)
    assert (await record(raw_conn, task_id))["cleaned"] is False

    succeeded, failed = await service.clean([task_id], dry_run=False)

    assert failed == []
    assert "task object missing" in (succeeded[0].detail or "")
    assert (await record(raw_conn, task_id))["cleaned"] is True
    # Idempotent: a second clean finds nothing more to do.
    _, failed = await service.clean([task_id], dry_run=False)
    assert "already cleaned" in (failed[0].error or "")


async def test_clean_after_a_partial_delete_removes_the_rest(
    service: CheckMateService, raw_conn: asyncpg.Connection, store: TaskStore
) -> None:
    """A delete interrupted after the stage objects: the task object is still there (it goes
    last), so the next clean deletes it and marks the record without a 'missing' detail."""
    task_id = await make_task(raw_conn, store, TaskSpec(S.CANCELED, stages=3))
    for index in range(3):
        await obstore.delete_async(store.store, stage_path(task_id, index, f"stage-{index + 1}"))
    assert await task_paths(store, task_id) == [task_path(task_id)]

    succeeded, _ = await service.clean([task_id], dry_run=False)

    assert succeeded[0].detail is None
    assert await task_paths(store, task_id) == []
    assert (await record(raw_conn, task_id))["cleaned"] is True


async def test_clean_without_objects_never_needed_a_store_write(
    service: CheckMateService, raw_conn: asyncpg.Connection
) -> None:
    """A record whose task never had objects (written by hand): marked cleaned with a detail."""
    (task_id,) = await insert_records(raw_conn, [TaskSpec(S.COMPLETED)])
    succeeded, _ = await service.clean([task_id], dry_run=False)
    assert "task object missing" in (succeeded[0].detail or "")
