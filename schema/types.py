"""Output types of the contract. Hot types keep plain fields (no resolver): the service's
pydantic models are returned as the field sources as they are, so a page of 10,000 tasks is
never copied into a second set of objects. Only store-backed fields have resolvers."""

from datetime import datetime
from enum import Enum
from typing import Any, cast
from uuid import UUID

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from checkmate import actions, models
from checkmate.objects import ObjectPart, TaskObjects
from checkmate.service import ServiceError
from schema.context import GraphQLContext

# The service's own enums become the GraphQL enums (registered on the classes themselves), so
# values from the service serialize with no mapping.
StageStatus = models.StageStatus
BatchAction = actions.BatchAction
strawberry.enum(
    StageStatus, description="Life-cycle status of a task (and of each of its stages)."
)
strawberry.enum(BatchAction)


@strawberry.enum
class SortOrder(Enum):
    ASC = "asc"
    DESC = "desc"


Ctx = Info[GraphQLContext, None]


def as_uuid(value: Any) -> UUID:
    """Sources carry UUIDs (pydantic models); a string id only comes from hand-made sources."""
    return value if isinstance(value, UUID) else UUID(str(value))


def as_json(value: Any) -> JSON:
    return cast(JSON, value)


async def _objects(info: Ctx, task_id: Any, part: ObjectPart) -> TaskObjects:
    return await info.context.loaders.objects.load((as_uuid(task_id), part))


@strawberry.type(description="The lock a running task holds in the persistence store.")
class TaskLock:
    owner: str
    host: str | None
    pid: int | None
    acquired_at: datetime
    heartbeat_at: datetime | None
    stale: bool = strawberry.field(
        description="True when the heartbeat is older than the configured lock timeout."
    )


@strawberry.type(description="Metadata that a stage of a task left in the persistence store.")
class StageMetadata:
    index: int
    name: str
    status: StageStatus
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    attempt: int
    error: str | None
    traceback: str | None = strawberry.field(
        description="Traceback of the stage's error, when it failed."
    )
    data: JSON | None = strawberry.field(
        description="Free-form values the stage recorded (row counts, output locations, ...)."
    )


@strawberry.type(
    description="A task: its database record, and on demand its persisted metadata and lock."
)
class CheckMateTask:
    id: strawberry.ID
    name: str
    queue: str
    tags: list[str]
    status: StageStatus
    stage: str | None = strawberry.field(
        description="Stage currently running, or the last one that ran."
    )
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cleaned: bool
    cleaned_at: datetime | None = strawberry.field(description="When clean marked the task.")
    attempts: int
    error: str | None
    worker: str | None = strawberry.field(description="Worker that ran (or runs) the task.")

    @strawberry.field(description="Parameters of the persisted task object; null once cleaned.")
    async def params(self, info: Ctx) -> JSON | None:
        return as_json((await _objects(info, self.id, "params")).params)

    @strawberry.field(
        description=(
            "Per-stage metadata from the persistence store, in stage order; empty once cleaned.\n"
            "Loaded only when selected. Null (with an entry in the response's errors) when the "
            "store\ncould not be read for this task, so one unreadable task never blanks a "
            "whole page."
        )
    )
    async def metadata(self, info: Ctx) -> list[StageMetadata] | None:
        objects = await info.context.loaders.load_metadata(cast(models.CheckMateTask, self))
        return cast(list[StageMetadata], objects.metadata)

    @strawberry.field(
        description=(
            "Whether a lock object exists for the task. Loaded only when selected. "
            "Null when the store could not be read."
        )
    )
    async def lock_detected(self, info: Ctx) -> bool | None:
        return (await _objects(info, self.id, "lock")).lock_detected

    @strawberry.field
    async def lock(self, info: Ctx) -> TaskLock | None:
        return cast(TaskLock | None, (await _objects(info, self.id, "lock")).lock)

    @strawberry.field(description="Status of the latest stage that left metadata.")
    async def stage_status(self, info: Ctx) -> StageStatus | None:
        metadata = (
            await info.context.loaders.load_metadata(cast(models.CheckMateTask, self))
        ).metadata
        return metadata[-1].status if metadata else None


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class TaskConnection:
    nodes: list[CheckMateTask]
    page_info: PageInfo
    task_filter: strawberry.Private[models.TaskFilter]

    @strawberry.field(description="Number of tasks matching the filter, ignoring pagination.")
    async def total_count(self, info: Ctx) -> int:
        return await info.context.service.count(self.task_filter)


@strawberry.type
class StatusCount:
    status: StageStatus
    count: int


@strawberry.type(description="Outcome of a batch action for one task.")
class CheckMateTaskBatchResult:
    task_id: strawberry.ID
    status: StageStatus | None = strawberry.field(
        description=(
            "Status after the action (for a dry run: the status it would have). "
            "Null when the task does not exist."
        )
    )
    previous_status: StageStatus | None
    error: str | None = strawberry.field(
        description="Why the action failed or did not apply to this task; null on success."
    )
    detail: str | None = strawberry.field(
        description="A note on a success, e.g. that the task's objects were already gone."
    )

    @strawberry.field(description="The task as it is now (after a real run).")
    async def task(self, info: Ctx) -> CheckMateTask | None:
        return await _task(info, self.task_id)


@strawberry.type
class BatchOutcome:
    action: BatchAction
    dry_run: bool
    succeeded: list[CheckMateTaskBatchResult]
    failed: list[CheckMateTaskBatchResult]


@strawberry.type
class TaskStatusEvent:
    event_id: strawberry.ID = strawberry.field(
        description="Monotonic event id; pass it back as afterEventId to resume."
    )
    task_id: strawberry.ID
    status: StageStatus
    previous_status: StageStatus | None
    stage: str | None
    queue: str
    changed_at: datetime

    @strawberry.field(description="The task as it is when the event is delivered.")
    async def task(self, info: Ctx) -> CheckMateTask | None:
        return await _task(info, self.task_id)


async def _task(info: Ctx, task_id: Any) -> CheckMateTask | None:
    try:
        key = as_uuid(task_id)
    except ValueError:
        raise ServiceError(f"{task_id!r} is not a task id") from None
    return cast(CheckMateTask | None, await info.context.loaders.tasks.load(key))
