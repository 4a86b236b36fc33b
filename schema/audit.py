"""The audit log in the contract: auditLog(filter, maxResults, after), operators only."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, cast

import strawberry
from strawberry import UNSET
from strawberry.scalars import JSON

from checkmate.access import Action
from schema.access import ALLOWED
from schema.inputs import given
from schema.types import Ctx, PageInfo


@strawberry.enum(description="What a real mutation did.")
class AuditAction(Enum):
    CREATE = "CREATE"
    CANCEL = "CANCEL"
    UNLOCK = "UNLOCK"
    CLEAN = "CLEAN"
    INVOKE = "INVOKE"


@strawberry.input(description="Which audit entries to list. All given criteria must hold.")
class AuditFilter:
    since: datetime | None = strawberry.field(default=UNSET, description="At or after.")
    until: datetime | None = strawberry.field(default=UNSET, description="Before.")
    action: AuditAction | None = UNSET
    actor: str | None = strawberry.field(
        default=UNSET, description="A token's name, or `local` while access was open."
    )


@strawberry.type(description="One real (non-dry-run) mutation: who did what, why, to which tasks.")
class AuditEntry:
    id: strawberry.ID
    at: datetime
    actor: str
    action: AuditAction
    selection: JSON = strawberry.field(
        description="What was asked: the filter (ids included) and options, or createTask's input."
    )
    reason: str | None
    succeeded: list[strawberry.ID]
    failed: list[strawberry.ID]


@strawberry.type
class AuditConnection:
    nodes: list[AuditEntry]
    page_info: PageInfo


FilterArg = Annotated[AuditFilter | None, strawberry.argument(name="filter")]


@strawberry.type
class AuditQuery:
    @strawberry.field(
        permission_classes=[ALLOWED[Action.READ_AUDIT]],
        description="Real mutations, newest first (operators only).",
    )
    async def audit_log(
        self,
        info: Ctx,
        audit_filter: FilterArg = UNSET,
        max_results: int | None = 100,
        after: str | None = UNSET,
    ) -> AuditConnection:
        criteria = given(audit_filter) or AuditFilter()
        action = given(criteria.action)
        page = await info.context.service.audit_log(
            since=given(criteria.since),
            until=given(criteria.until),
            action=action.value if action is not None else None,
            actor=given(criteria.actor),
            max_results=max_results,
            after=given(after),
        )
        nodes = [
            AuditEntry(
                id=strawberry.ID(str(entry.id)),
                at=entry.at,
                actor=entry.actor,
                action=AuditAction(entry.action),
                selection=cast(JSON, entry.selection),
                reason=entry.reason,
                succeeded=[strawberry.ID(str(task_id)) for task_id in entry.succeeded],
                failed=[strawberry.ID(str(task_id)) for task_id in entry.failed],
            )
            for entry in page.entries
        ]
        return AuditConnection(
            nodes=nodes,
            page_info=PageInfo(has_next_page=page.has_next_page, end_cursor=page.end_cursor),
        )
