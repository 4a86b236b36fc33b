"""Input types of the contract and their conversion to the service's models."""

from datetime import datetime
from typing import Any

import strawberry
from strawberry import UNSET

from checkmate import arguments, models
from schema.types import StageStatus


def given(value: Any) -> Any:
    """UNSET (argument left out) and null both mean "not given" to the service."""
    return None if value is UNSET else value


@strawberry.input(
    description=(
        "Which tasks a query, mutation or subscription applies to. All given criteria must hold."
    )
)
class TaskFilter:
    ids: list[strawberry.ID] | None = UNSET
    status: StageStatus | None = strawberry.field(default=UNSET, description="Exactly this status.")
    statuses: list[StageStatus] | None = strawberry.field(
        default=UNSET, description="Any of these statuses."
    )
    queue: str | None = UNSET
    tags: list[str] | None = strawberry.field(
        default=UNSET, description="Tasks that carry every one of these tags."
    )
    since: datetime | None = strawberry.field(default=UNSET, description="Created at or after.")
    until: datetime | None = strawberry.field(default=UNSET, description="Created before.")
    cleaned: bool | None = UNSET
    name: str | None = strawberry.field(
        default=UNSET, description="Task name (the registered task kind), exact match."
    )

    def to_model(self) -> models.TaskFilter:
        """The service's filter; ServiceError (BAD_USER_INPUT) names a wrong value."""
        return arguments.task_filter(
            given(self.ids),
            status=given(self.status),
            statuses=given(self.statuses),
            queue=given(self.queue),
            tags=given(self.tags),
            since=given(self.since),
            until=given(self.until),
            cleaned=given(self.cleaned),
            name=given(self.name),
        )


def filter_model(task_filter: TaskFilter | None) -> models.TaskFilter | None:
    task_filter = given(task_filter)
    return None if task_filter is None else task_filter.to_model()


@strawberry.input
class CreateTaskInput:
    name: str = strawberry.field(description="Registered task kind.")
    queue: str | None = "default"
    tags: list[str] | None = strawberry.field(default_factory=list)
    params: strawberry.scalars.JSON | None = UNSET
    invoke: bool | None = strawberry.field(
        default=False,
        description="Queue it for a worker at once (status QUEUED) instead of CREATED.",
    )
