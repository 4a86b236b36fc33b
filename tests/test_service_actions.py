"""Every row of DESIGN.md's action table, dry and real: a dry run leaves every database row and
every store object byte-for-byte as it was and returns exactly what the real run then returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
import pytest

from checkmate.models import StageStatus
from checkmate.service import CheckMateService
from checkmate.store import TaskStore, lock_path
from tests.core_helpers import (
    TaskSpec,
    dump_database,
    dump_store,
    make_task,
    make_tasks,
    record,
    task_paths,
)

S = StageStatus
StoreAfter = Literal["same", "no_lock", "empty"]


@dataclass(frozen=True)
class Case:
    id: str
    action: str
    spec: TaskSpec
    applies: bool
    status: StageStatus
    text: str | None = None  # in the error when refused, in the detail when applied
    store_after: StoreAfter = "same"
    kwargs: dict[str, Any] = field(default_factory=dict)


ORPHAN_AGE = 600.0  # well past the fixture's 60 s lock timeout

CASES = [
    # cancel: non-terminal -> CANCELED; terminal -> failed.
    Case("cancel-created", "cancel", TaskSpec(S.CREATED), True, S.CANCELED),
    Case("cancel-queued", "cancel", TaskSpec(S.QUEUED, attempts=1), True, S.CANCELED),
    # The worker's lock stays: the worker sees CANCELED before its next stage and cleans up.
    Case("cancel-running", "cancel", TaskSpec(S.RUNNING, lock="fresh"), True, S.CANCELED),
    Case("cancel-completed", "cancel", TaskSpec(S.COMPLETED), False, S.COMPLETED, "terminal"),
    Case("cancel-error", "cancel", TaskSpec(S.ERROR), False, S.ERROR, "terminal"),
    Case("cancel-canceled", "cancel", TaskSpec(S.CANCELED), False, S.CANCELED, "terminal"),
    # unlock
    Case(
        "unlock-running-stale", "unlock", TaskSpec(S.RUNNING, lock="stale"), True, S.ERROR,
        "went stale", "no_lock",
    ),
    Case(
        "unlock-running-fresh", "unlock", TaskSpec(S.RUNNING, lock="fresh"), False, S.RUNNING,
        "fresh",
    ),
    Case(
        "unlock-running-fresh-force", "unlock", TaskSpec(S.RUNNING, lock="fresh"), True, S.ERROR,
        "by force", "no_lock", {"force": True},
    ),
    Case(
        "unlock-running-corrupt-lock", "unlock", TaskSpec(S.RUNNING, lock="corrupt"), True,
        S.ERROR, "unreadable", "no_lock",
    ),
    Case(
        "unlock-orphaned-running", "unlock", TaskSpec(S.RUNNING, updated_ago=ORPHAN_AGE), True,
        S.ERROR, "without a lock",
    ),
    Case(
        "unlock-running-no-lock-recent", "unlock", TaskSpec(S.RUNNING, updated_ago=5), False,
        S.RUNNING, "no lock",
    ),
    Case("unlock-created-no-lock", "unlock", TaskSpec(S.CREATED), False, S.CREATED, "no lock"),
    Case(
        "unlock-old-completed-no-lock", "unlock", TaskSpec(S.COMPLETED, updated_ago=ORPHAN_AGE),
        False, S.COMPLETED, "no lock",
    ),
    # A lock left behind on a finished task: removed, the status stays.
    Case(
        "unlock-completed-stale", "unlock", TaskSpec(S.COMPLETED, lock="stale"), True,
        S.COMPLETED, None, "no_lock",
    ),
    Case(
        "unlock-error-fresh", "unlock", TaskSpec(S.ERROR, lock="fresh"), False, S.ERROR, "fresh"
    ),
    # clean
    Case("clean-completed", "clean", TaskSpec(S.COMPLETED), True, S.COMPLETED, None, "empty"),
    Case(
        "clean-error-object-missing", "clean", TaskSpec(S.ERROR, task_object="missing"), True,
        S.ERROR, "task object missing", "empty",
    ),
    Case(
        "clean-canceled-object-corrupt", "clean", TaskSpec(S.CANCELED, task_object="corrupt"),
        True, S.CANCELED, "unreadable", "empty",
    ),
    Case("clean-running", "clean", TaskSpec(S.RUNNING, lock="fresh"), False, S.RUNNING, "terminal"),
    Case("clean-queued", "clean", TaskSpec(S.QUEUED), False, S.QUEUED, "terminal"),
    Case("clean-created", "clean", TaskSpec(S.CREATED), False, S.CREATED, "terminal"),
    Case(
        "clean-completed-locked", "clean", TaskSpec(S.COMPLETED, lock="stale"), False,
        S.COMPLETED, "locked",
    ),
    Case(
        "clean-error-corrupt-lock", "clean", TaskSpec(S.ERROR, lock="corrupt"), False, S.ERROR,
        "locked",
    ),
    Case(
        "clean-already-cleaned", "clean",
        TaskSpec(S.COMPLETED, cleaned=True, task_object="missing", stages=0), False,
        S.COMPLETED, "already cleaned",
    ),
    # invoke
    Case("invoke-created", "invoke", TaskSpec(S.CREATED), True, S.QUEUED),
    Case("invoke-error", "invoke", TaskSpec(S.ERROR, attempts=1), True, S.QUEUED),
    Case("invoke-canceled", "invoke", TaskSpec(S.CANCELED, attempts=2), True, S.QUEUED),
    Case(
        "invoke-cleaned", "invoke",
        TaskSpec(S.CANCELED, cleaned=True, task_object="missing", stages=0), False, S.CANCELED,
        "cleaned",
    ),
    Case("invoke-locked", "invoke", TaskSpec(S.ERROR, lock="stale"), False, S.ERROR, "locked"),
    Case(
        "invoke-unknown-kind", "invoke", TaskSpec(S.CREATED, name="no.such.kind"), False,
        S.CREATED, "unknown task kind",
    ),
    Case("invoke-queued", "invoke", TaskSpec(S.QUEUED, attempts=1), False, S.QUEUED, "QUEUED"),
    Case(
        "invoke-running", "invoke", TaskSpec(S.RUNNING, lock="fresh"), False, S.RUNNING, "RUNNING"
    ),
    Case("invoke-completed", "invoke", TaskSpec(S.COMPLETED), False, S.COMPLETED, "COMPLETED"),
    # A record whose objects are gone (e.g. a db_transact clean deleted them, then rolled back):
    # a worker could not load it, so invoke refuses and says what to do.
    Case(
        "invoke-error-object-missing", "invoke", TaskSpec(S.ERROR, task_object="missing"),
        False, S.ERROR, "task object missing from the store; clean it",
    ),
    Case(
        "invoke-canceled-object-corrupt", "invoke",
        TaskSpec(S.CANCELED, task_object="corrupt"), False, S.CANCELED, "unreadable",
    ),
]


def _check_result(case: Case, result: Any, task_id: Any) -> None:
    assert result.task_id == str(task_id)
    assert result.previous_status == case.spec.status
    assert result.status == case.status
    if case.applies:
        assert result.error is None
        if case.text is None:
            assert result.detail is None
        else:
            assert case.text in (result.detail or "")
    else:
        assert case.text is not None
        assert case.text in (result.error or "")


async def _check_record(
    case: Case, raw_conn: asyncpg.Connection, task_id: Any, before: asyncpg.Record
) -> None:
    after = await record(raw_conn, task_id)
    assert after["status"] == case.status.value
    events = await raw_conn.fetch(
        "SELECT status, previous_status FROM status_events WHERE task_id = $1 "
        "AND previous_status IS NOT NULL",
        task_id,
    )
    if case.status != case.spec.status:
        assert [tuple(event) for event in events] == [(case.status.value, case.spec.status.value)]
        assert after["updated_at"] > before["updated_at"]
    else:
        assert events == []
    if case.action == "cancel":
        assert after["finished_at"] is not None
    if case.action == "invoke":
        assert after["attempts"] == case.spec.attempts + 1
        assert after["error"] is None
    if case.action == "clean":
        assert after["cleaned"] is True
        assert after["cleaned_at"] is not None
    else:
        assert after["cleaned"] is before["cleaned"]
    if case.action == "unlock" and case.status is S.ERROR:
        assert "worker lost" in after["error"]


async def _check_store(
    case: Case, store: TaskStore, task_id: Any, before: dict[str, bytes]
) -> None:
    after = await dump_store(store)
    if case.store_after == "same":
        assert after == before
    elif case.store_after == "no_lock":
        expected = {path: raw for path, raw in before.items() if path != lock_path(task_id)}
        assert lock_path(task_id) in before
        assert after == expected
    else:
        assert await task_paths(store, task_id) == []
        assert after == {p: raw for p, raw in before.items() if f"/{task_id}/" not in p}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_action_table(
    case: Case, service: CheckMateService, raw_conn: asyncpg.Connection, store: TaskStore
) -> None:
    lock_timeout = service.settings.lock_timeout
    task_id = await make_task(raw_conn, store, case.spec, lock_timeout)
    # A bystander in the same state that is not selected: nothing touches it, dry or real.
    await make_task(raw_conn, store, case.spec, lock_timeout)
    action = getattr(service, case.action)
    db_before, store_before = await dump_database(raw_conn), await dump_store(store)
    record_before = await record(raw_conn, task_id)

    dry = await action([task_id], dry_run=True, **case.kwargs)

    assert await dump_database(raw_conn) == db_before
    assert await dump_store(store) == store_before
    real = await action([task_id], dry_run=False, **case.kwargs)
    assert real == dry
    succeeded, failed = real
    assert (len(succeeded), len(failed)) == ((1, 0) if case.applies else (0, 1))
    _check_result(case, (succeeded or failed)[0], task_id)
    if case.applies:
        await _check_record(case, raw_conn, task_id, record_before)
        await _check_store(case, store, task_id, store_before)
    else:
        assert await dump_database(raw_conn) == db_before
        assert await dump_store(store) == store_before


@pytest.mark.parametrize("action", ["cancel", "unlock", "clean", "invoke"])
async def test_whole_table_in_one_batch_by_filter(
    action: str, service: CheckMateService, raw_conn: asyncpg.Connection, store: TaskStore
) -> None:
    """All of an action's rows at once, selected by a filter, in chunks smaller than the batch:
    each task gets the same outcome as alone, and the dry run predicts the real one exactly."""
    cases = [case for case in CASES if case.action == action and not case.kwargs]
    specs = [TaskSpec(**{**case.spec.__dict__, "tags": ("table",)}) for case in cases]
    ids = await make_tasks(raw_conn, store, specs, service.settings.lock_timeout)
    service.settings.batch_chunk_size = 3
    db_before, store_before = await dump_database(raw_conn), await dump_store(store)

    dry = await getattr(service, action)(tags=["table"], dry_run=True)

    assert await dump_database(raw_conn) == db_before
    assert await dump_store(store) == store_before
    real = await getattr(service, action)(tags=["table"], dry_run=False)
    assert real == dry
    by_id = {result.task_id: result for result in [*real[0], *real[1]]}
    assert len(by_id) == len(cases)
    for case, task_id in zip(cases, ids, strict=True):
        _check_result(case, by_id[str(task_id)], task_id)
        assert (by_id[str(task_id)] in real[0]) is case.applies
