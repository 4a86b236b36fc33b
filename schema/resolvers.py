"""Query, Mutation and Subscription: each resolver calls CheckMateService once and converts."""

from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import Annotated, Any, cast

import strawberry
from strawberry import UNSET

from checkmate.access import LOCAL_ACTOR, Action
from checkmate.actions import BatchAction
from checkmate.models import StageStatus as Status
from checkmate.models import StatusEvent
from checkmate.models import TaskFilter as ModelFilter
from checkmate.objects import TaskObjects
from checkmate.service import BatchResults, ServiceError
from schema.access import ALLOWED
from schema.audit import AuditQuery
from schema.broadcast import current_sink
from schema.inputs import CreateTaskInput, TaskFilter, filter_model, given
from schema.selection import task_fields
from schema.types import (
    BatchOutcome,
    CheckMateTask,
    CheckMateTaskBatchResult,
    Ctx,
    PageInfo,
    SortOrder,
    StageStatus,
    StatusCount,
    TaskConnection,
    TaskStatusEvent,
)

FilterArg = Annotated[TaskFilter | None, strawberry.argument(name="filter")]
IdsArg = list[strawberry.ID] | None
ReasonArg = Annotated[
    str | None,
    strawberry.argument(description="Why: kept in the audit log with a real run."),
]


@strawberry.type
class Query(AuditQuery):
    @strawberry.field(description="One task; null when no task has that id.")
    async def task(self, info: Ctx, id: strawberry.ID) -> CheckMateTask | None:
        found = await info.context.service.find(id, include_metadata=False)
        return cast(CheckMateTask | None, found)

    @strawberry.field(
        description=(
            "Filtered listing, newest first by default. maxResults is capped by the server."
        )
    )
    async def tasks(
        self,
        info: Ctx,
        task_filter: FilterArg = UNSET,
        sort: SortOrder | None = SortOrder.DESC,
        max_results: int | None = 100,
        after: str | None = UNSET,
    ) -> TaskConnection:
        model = filter_model(task_filter)
        page = await info.context.service.page(
            model,
            sort=(sort or SortOrder.DESC).value,
            max_results=max_results,
            after=given(after),
            fields=task_fields(info, "nodes"),
        )
        return TaskConnection(
            nodes=cast(list[CheckMateTask], page.tasks),
            page_info=PageInfo(has_next_page=page.has_next_page, end_cursor=page.end_cursor),
            task_filter=model or ModelFilter(),
        )

    @strawberry.field(description="Counts per status of the tasks matching the filter.")
    async def task_counts(self, info: Ctx, task_filter: FilterArg = UNSET) -> list[StatusCount]:
        counts = await info.context.service.count_by_status(filter_model(task_filter))
        # Every status, zeros included, in life-cycle order: consoles get a stable shape.
        return [StatusCount(status=status, count=counts.get(status, 0)) for status in Status]


def _actor(info: Ctx) -> str:
    principal = info.context.principal
    return principal.name if principal is not None else LOCAL_ACTOR


async def _batch(
    info: Ctx,
    action: BatchAction,
    task_ids: IdsArg,
    task_filter: TaskFilter | None,
    **options: Any,
) -> BatchOutcome:
    service = info.context.service
    run: dict[BatchAction, Callable[..., Awaitable[BatchResults]]] = {
        BatchAction.CANCEL: service.cancel,
        BatchAction.UNLOCK: service.unlock,
        BatchAction.CLEAN: service.clean,
        BatchAction.INVOKE: service.invoke,
    }
    options["sort"] = (options["sort"] or SortOrder.DESC).value
    dry_run = options["dry_run"] = options["dry_run"] is not False  # null means the default
    options["actor"] = _actor(info)
    options["db_transact"] = options["db_transact"] is not False
    succeeded, failed = await run[action](
        given(task_ids), task_filter=filter_model(task_filter), **options
    )
    return BatchOutcome(
        action=action,
        dry_run=dry_run,
        succeeded=cast(list[CheckMateTaskBatchResult], succeeded),
        failed=cast(list[CheckMateTaskBatchResult], failed),
    )


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=[ALLOWED[Action.CREATE]])
    async def create_task(
        self, info: Ctx, input: CreateTaskInput, reason: ReasonArg = None
    ) -> CheckMateTask:
        task = await info.context.service.create(
            input.name,
            queue=input.queue if input.queue is not None else "default",
            tags=input.tags or [],
            params=given(input.params),
            invoke=bool(input.invoke),
            actor=_actor(info),
            reason=reason,
        )
        # The service wrote these objects a moment ago: no need to read them back.
        info.context.loaders.prime_objects(
            task.id, TaskObjects(task.params, task.metadata or [], task.lock)
        )
        return cast(CheckMateTask, task)

    @strawberry.mutation(
        permission_classes=[ALLOWED[Action.CANCEL]],
        description=(
            "Set matching non-terminal tasks to CANCELED. Terminal tasks are left as they are "
            "and reported in failed."
        )
    )
    async def cancel_tasks(
        self,
        info: Ctx,
        task_ids: IdsArg = UNSET,
        task_filter: FilterArg = UNSET,
        sort: SortOrder | None = SortOrder.DESC,
        max_results: int | None = 100,
        dry_run: bool | None = True,
        db_transact: bool | None = True,
        reason: ReasonArg = None,
    ) -> BatchOutcome:
        return await _batch(
            info, BatchAction.CANCEL, task_ids, task_filter, sort=sort,
            max_results=max_results, dry_run=dry_run, db_transact=db_transact,
            reason=reason,
        )

    @strawberry.mutation(
        permission_classes=[ALLOWED[Action.UNLOCK]],
        description="Remove lock files of matching tasks.",
    )
    async def unlock_tasks(
        self,
        info: Ctx,
        task_ids: IdsArg = UNSET,
        task_filter: FilterArg = UNSET,
        sort: SortOrder | None = SortOrder.DESC,
        max_results: int | None = 100,
        dry_run: bool | None = True,
        db_transact: bool | None = True,
        force: bool | None = False,
        reason: ReasonArg = None,
    ) -> BatchOutcome:
        return await _batch(
            info, BatchAction.UNLOCK, task_ids, task_filter, sort=sort,
            max_results=max_results, dry_run=dry_run, db_transact=db_transact,
            force=bool(force), reason=reason,
        )

    @strawberry.mutation(
        permission_classes=[ALLOWED[Action.CLEAN]],
        description=(
            "Remove persisted task objects and metadata of cleanable tasks and mark their "
            "records cleaned."
        )
    )
    async def clean_tasks(
        self,
        info: Ctx,
        task_ids: IdsArg = UNSET,
        task_filter: FilterArg = UNSET,
        sort: SortOrder | None = SortOrder.DESC,
        max_results: int | None = 100,
        dry_run: bool | None = True,
        db_transact: bool | None = True,
        reason: ReasonArg = None,
    ) -> BatchOutcome:
        return await _batch(
            info, BatchAction.CLEAN, task_ids, task_filter, sort=sort,
            max_results=max_results, dry_run=dry_run, db_transact=db_transact,
            reason=reason,
        )

    @strawberry.mutation(
        permission_classes=[ALLOWED[Action.INVOKE]],
        description=(
            "Queue matching tasks for execution; a task resumes after its last completed stage."
        )
    )
    async def invoke_tasks(
        self,
        info: Ctx,
        task_ids: IdsArg = UNSET,
        task_filter: FilterArg = UNSET,
        sort: SortOrder | None = SortOrder.DESC,
        max_results: int | None = 100,
        dry_run: bool | None = True,
        db_transact: bool | None = True,
        reason: ReasonArg = None,
    ) -> BatchOutcome:
        return await _batch(
            info, BatchAction.INVOKE, task_ids, task_filter, sort=sort,
            max_results=max_results, dry_run=dry_run, db_transact=db_transact,
            reason=reason,
        )


def _event_id(value: strawberry.ID | None) -> int | None:
    if value is None or value is UNSET:
        return None
    try:
        event_id = int(value)
    except ValueError:
        message = f"afterEventId must be an event id (an integer), not {value!r}"
        raise ServiceError(message) from None
    if event_id < 0:
        raise ServiceError(f"afterEventId must not be negative (got {event_id})")
    return event_id


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description=(
            "Every status change of a matching task, committed by any process. "
            "With afterEventId, missed events are replayed first."
        )
    )
    async def task_status_changed(
        self,
        info: Ctx,
        task_filter: FilterArg = UNSET,
        after_event_id: strawberry.ID | None = UNSET,
    ) -> AsyncGenerator[TaskStatusEvent, None]:
        model, after = filter_model(task_filter), _event_id(after_event_id)
        hub = info.context.hub
        if hub is None:
            raise ServiceError("the live feed is not running", code=ServiceError.UNAVAILABLE)
        # aclosing: a client that goes away unregisters from the hub at once, not at GC time.
        events = cast(AsyncGenerator[StatusEvent, None], hub.subscribe(model, after))
        async with aclosing(events):
            sink = current_sink()
            if sink is not None:
                # Over our websockets: rendered once per event for all subscribers, sent here.
                await sink.broadcast.deliver(info, events, sink)
                return
            async for event in events:
                yield cast(TaskStatusEvent, event)


__all__ = ["Mutation", "Query", "StageStatus", "Subscription"]
