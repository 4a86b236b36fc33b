"""Pydantic models of the service layer, mirroring the original CheckMate API."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

# Re-exported: the service and the action rules build their models with it.
from checkmate.pydantic_compat import trusted as trusted


class StageStatus(StrEnum):
    CREATED = "CREATED"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"
    CANCELED = "CANCELED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({StageStatus.COMPLETED, StageStatus.ERROR, StageStatus.CANCELED})
INVOKABLE_STATUSES = frozenset({StageStatus.CREATED, StageStatus.ERROR, StageStatus.CANCELED})
# Text from the database to the enum member, a dict lookup instead of the enum's call.
STATUS_BY_VALUE = {status.value: status for status in StageStatus}

SortOrder = Literal["asc", "desc"]


class TaskLock(BaseModel):
    """The lock object a worker keeps in the store while it runs a task."""

    owner: str
    host: str | None = None
    pid: int | None = None
    acquired_at: datetime
    heartbeat_at: datetime | None = None
    stale: bool = Field(False, description="Heartbeat older than the lock timeout; set on read.")

    def is_stale(self, now: datetime, lock_timeout: float) -> bool:
        last_sign_of_life = self.heartbeat_at or self.acquired_at
        return (now - last_sign_of_life).total_seconds() > lock_timeout


class StageMetadata(BaseModel):
    """What a stage left in the store: one object per stage, rewritten when it starts and ends."""

    index: int
    name: str
    status: StageStatus
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    attempt: int = 1
    error: str | None = None
    traceback: str | None = None
    data: dict[str, Any] | None = None


class TaskObject(BaseModel):
    """The task object in the store: what a worker needs to run the task."""

    id: UUID
    name: str
    queue: str
    params: dict[str, Any] = Field(default_factory=dict)
    stages: list[str]
    created_at: datetime


class TaskFilter(BaseModel):
    """Selection criteria shared by list, the batch actions and subscriptions. All must hold."""

    model_config = ConfigDict(frozen=True)

    ids: tuple[UUID, ...] | None = None
    status: StageStatus | None = None
    statuses: tuple[StageStatus, ...] | None = None
    queue: str | None = None
    tags: tuple[str, ...] | None = None
    since: datetime | None = None
    until: datetime | None = None
    cleaned: bool | None = None
    name: str | None = None

    def is_empty(self) -> bool:
        return all(value is None for value in self.model_dump().values())


class CheckMateTask(BaseModel):
    """A task record from PostgreSQL, with its persisted metadata and lock when loaded."""

    id: UUID
    name: str
    queue: str
    tags: list[str]
    status: StageStatus
    stage: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    error: str | None = None
    cleaned: bool = False
    cleaned_at: datetime | None = None
    worker: str | None = None
    params: dict[str, Any] | None = None
    metadata: list[StageMetadata] | None = None
    lock: TaskLock | None = None
    lock_detected: bool | None = None
    stage_status: StageStatus | None = Field(
        None, description="Status of the latest stage that left metadata."
    )


class CheckMateTaskBatchResult(BaseModel):
    """Outcome of a batch action for one task."""

    task_id: str
    status: StageStatus | None = Field(
        ..., description="Status after the action (dry run: would have); None if no such task."
    )
    previous_status: StageStatus | None = None
    error: str | None = Field(None, description="Why the action did not apply; None on success.")
    detail: str | None = Field(None, description="A note on a success, e.g. objects already gone.")


class TaskPage(BaseModel):
    tasks: list[CheckMateTask]
    end_cursor: str | None
    has_next_page: bool


class StatusEvent(BaseModel):
    """One committed status change of a task, from the status_events table."""

    event_id: int
    task_id: UUID
    status: StageStatus
    previous_status: StageStatus | None
    stage: str | None
    queue: str
    changed_at: datetime
