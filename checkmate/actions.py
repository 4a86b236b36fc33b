"""The rules of the batch actions (DESIGN.md's table), as pure functions of a task's record and
what the store holds for it. Dry runs and real runs decide with the same functions; a real run
decides again on the row-locked record, so a concurrent change can never yield an invalid
transition."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple
from uuid import UUID

from checkmate.models import (
    INVOKABLE_STATUSES,
    STATUS_BY_VALUE,
    CheckMateTaskBatchResult,
    StageStatus,
    TaskLock,
    trusted,
)
from checkmate.tasks import TaskKindError, get_kind

_RESULT_FIELDS = set(CheckMateTaskBatchResult.model_fields)


class BatchAction(StrEnum):
    CANCEL = "CANCEL"
    UNLOCK = "UNLOCK"
    CLEAN = "CLEAN"
    INVOKE = "INVOKE"


class StoreEffect(StrEnum):
    DELETE_LOCK = "delete_lock"
    DELETE_TASK = "delete_task"


class DbEffect(StrEnum):
    CANCEL = "cancel"
    WORKER_LOST = "worker_lost"
    CLEAN = "clean"
    QUEUE = "queue"


class Failure(StrEnum):
    """Why a decision failed: the rules refused, or applying it went wrong."""

    REFUSED = "refused"  # the action does not apply to the task as it is
    NOT_FOUND = "not_found"
    EXCLUDED = "excluded"  # a requested id that the rest of the filter leaves out
    STORE = "store"  # the store side failed while applying: db_transact rolls the batch back
    DATABASE = "database"  # the database side failed while applying
    ROLLED_BACK = "rolled_back"  # applicable, but db_transact undid the batch for another task
    # The connection was lost after the batch wrote: its commit may or may not have landed.
    OUTCOME_UNKNOWN = "outcome_unknown"


class Candidate(NamedTuple):
    """The columns of a task record the rules look at. A named tuple, not a frozen dataclass:
    batches build 100,000 of these, and two are compared field by field in C."""

    id: UUID
    name: str
    status: StageStatus
    cleaned: bool
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> Candidate:
        """From a row whose first columns are queries.BATCH_COLUMNS (id, name, status, cleaned,
        updated_at); unpacked by position because batches build 100,000 of these."""
        return cls(row[0], row[1], STATUS_BY_VALUE[row[2]], row[3], row[4])


@dataclass(frozen=True, slots=True)
class StoreFacts:
    """What the store said about a task; `*_error` when it could not be read."""

    lock: TaskLock | None = None
    lock_error: str | None = None
    task_object_missing: bool = False
    task_object_error: str | None = None

    @property
    def locked(self) -> bool:
        return self.lock is not None or self.lock_error is not None


NO_FACTS = StoreFacts()


class Decision(NamedTuple):
    """What an action does to one task. A named tuple for the same reason as Candidate."""

    task_id: UUID
    previous: StageStatus | None
    status: StageStatus | None
    error: str | None = None
    detail: str | None = None
    store_effect: StoreEffect | None = None
    db_effect: DbEffect | None = None
    failure: Failure | None = None  # set with error

    @property
    def applies(self) -> bool:
        return self.error is None

    def failed(self, error: str, failure: Failure) -> Decision:
        return Decision(self.task_id, self.previous, self.previous, error=error, failure=failure)

    def result(self) -> CheckMateTaskBatchResult:
        """The result model, unvalidated: the values are already of the right types, and a
        100,000-task batch builds 100,000 of these (model_construct cost more than the UPDATE)."""
        values = {
            "task_id": str(self.task_id),
            "status": self.status,
            "previous_status": self.previous,
            "error": self.error,
            "detail": self.detail,
        }
        return trusted(CheckMateTaskBatchResult, values, _RESULT_FIELDS.copy())


def not_found(task_id: UUID) -> Decision:
    return Decision(task_id, None, None, error="task not found", failure=Failure.NOT_FOUND)


def excluded(task_id: UUID, status: StageStatus) -> Decision:
    """A requested id whose task exists but does not match the rest of the filter."""
    return Decision(
        task_id, status, status, error="task does not match the filter", failure=Failure.EXCLUDED
    )


@dataclass(frozen=True, slots=True)
class Rules:
    """Inputs every decision shares."""

    now: datetime
    lock_timeout: float
    force: bool = False


def _refuse(task: Candidate, error: str) -> Decision:
    return Decision(task.id, task.status, task.status, error=error, failure=Failure.REFUSED)


def decide_cancel(task: Candidate, facts: StoreFacts, rules: Rules) -> Decision:
    if task.status.terminal:
        return _refuse(task, f"task is {task.status}; terminal tasks are never canceled")
    return Decision(task.id, task.status, StageStatus.CANCELED, db_effect=DbEffect.CANCEL)


def decide_unlock(task: Candidate, facts: StoreFacts, rules: Rules) -> Decision:
    running = task.status is StageStatus.RUNNING
    if facts.lock_error is not None:
        reason = "worker lost: its lock object was unreadable"
    elif facts.lock is not None:
        stale = facts.lock.is_stale(rules.now, rules.lock_timeout)
        if not stale and not rules.force:
            return _refuse(
                task,
                f"lock held by {facts.lock.owner} is fresh (heartbeat within "
                f"{rules.lock_timeout:g}s); pass force to remove it anyway",
            )
        reason = (
            f"worker lost: lock of {facts.lock.owner} went stale"
            if stale
            else f"lock of {facts.lock.owner} removed by force"
        )
    elif running and (rules.now - task.updated_at).total_seconds() > rules.lock_timeout:
        return Decision(
            task.id,
            task.status,
            StageStatus.ERROR,
            detail="worker lost: RUNNING without a lock for longer than the lock timeout",
            db_effect=DbEffect.WORKER_LOST,
        )
    else:
        return _refuse(task, "task holds no lock")
    if running:
        return Decision(
            task.id,
            task.status,
            StageStatus.ERROR,
            detail=reason,
            store_effect=StoreEffect.DELETE_LOCK,
            db_effect=DbEffect.WORKER_LOST,
        )
    return Decision(task.id, task.status, task.status, store_effect=StoreEffect.DELETE_LOCK)


def decide_clean(task: Candidate, facts: StoreFacts, rules: Rules) -> Decision:
    if task.cleaned:
        return _refuse(task, "task is already cleaned")
    if not task.status.terminal:
        return _refuse(task, f"task is {task.status}; only terminal tasks can be cleaned")
    if facts.locked:
        return _refuse(task, "task is locked; unlock it first")
    detail = None
    if facts.task_object_missing:
        detail = "task object missing from the store; record marked cleaned anyway"
    elif facts.task_object_error is not None:
        detail = f"task object unreadable ({facts.task_object_error}); record marked cleaned anyway"
    return Decision(
        task.id,
        task.status,
        task.status,
        detail=detail,
        store_effect=StoreEffect.DELETE_TASK,
        db_effect=DbEffect.CLEAN,
    )


def decide_invoke(task: Candidate, facts: StoreFacts, rules: Rules) -> Decision:
    if task.status not in INVOKABLE_STATUSES:
        return _refuse(task, f"task is {task.status}; only CREATED, ERROR or CANCELED tasks run")
    if task.cleaned:
        return _refuse(task, "task is cleaned; its objects are gone")
    if facts.locked:
        return _refuse(task, "task is locked; unlock it first")
    # A worker could not run it: e.g. a db_transact clean that deleted its objects and then
    # rolled the record back.
    if facts.task_object_missing:
        return _refuse(task, "task object missing from the store; clean it")
    if facts.task_object_error is not None:
        return _refuse(task, f"task object unreadable ({facts.task_object_error}); clean it")
    try:
        get_kind(task.name)
    except TaskKindError as error:
        return _refuse(task, str(error))
    return Decision(task.id, task.status, StageStatus.QUEUED, db_effect=DbEffect.QUEUE)


DECIDE = {
    BatchAction.CANCEL: decide_cancel,
    BatchAction.UNLOCK: decide_unlock,
    BatchAction.CLEAN: decide_clean,
    BatchAction.INVOKE: decide_invoke,
}


def needs_lock_read(action: BatchAction, task: Candidate) -> bool:
    """Whether deciding `action` for `task` depends on its lock object."""
    if action is BatchAction.UNLOCK:
        return True
    if action is BatchAction.CLEAN:
        return task.status.terminal and not task.cleaned
    if action is BatchAction.INVOKE:
        return task.status in INVOKABLE_STATUSES and not task.cleaned
    return False


def needs_task_object_read(action: BatchAction, task: Candidate) -> bool:
    """Clean reports a missing object; invoke refuses a task a worker could not load."""
    return action in _READS_TASK_OBJECT and needs_lock_read(action, task)


_READS_TASK_OBJECT = frozenset({BatchAction.CLEAN, BatchAction.INVOKE})

# Actions whose decisions depend on the store; a cancel decides on the record alone.
READS_STORE = frozenset({BatchAction.UNLOCK, BatchAction.CLEAN, BatchAction.INVOKE})
