"""The audit trail: one row per real (non-dry-run) mutation, written in the transaction of its
effect, and the newest-first reading of it.

A batch with db_transact=True writes its row inside its one transaction (or, when that
transaction rolls back, in its own, listing every task as failed). With db_transact=False the
row is inserted first (the selection, and the tasks already known to fail) and each chunk's
transaction appends the ids it succeeded and failed: whatever committed is in the row, even if
the process dies half-way through the batch.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from checkmate import arguments
from checkmate.access import LOCAL_ACTOR
from checkmate.actions import Decision
from checkmate.db import access as access_queries
from checkmate.errors import bad_argument

MAX_REASON = 1_000


def check_reason(reason: Any) -> str | None:
    """The `reason` every mutation accepts; ServiceError (BAD_USER_INPUT) if unfit."""
    checked = arguments.optional_text("reason", reason)
    if checked is not None and len(checked) > MAX_REASON:
        raise bad_argument("reason", f"must be at most {MAX_REASON} characters")
    return checked


@dataclass
class AuditRecord:
    """The audit row of one real mutation, filled in as its effect commits."""

    action: str
    selection: dict[str, Any]
    actor: str = LOCAL_ACTOR
    reason: str | None = None
    entry_id: int | None = field(default=None, init=False)

    async def open(
        self,
        conn: AsyncConnection,
        succeeded: Sequence[UUID] = (),
        failed: Sequence[UUID] = (),
    ) -> None:
        self.entry_id = await access_queries.insert_audit(
            conn,
            {
                "actor": self.actor,
                "action": self.action,
                "selection": self.selection,
                "reason": self.reason,
                "succeeded": list(succeeded),
                "failed": list(failed),
            },
        )

    async def record(self, conn: AsyncConnection, decisions: Iterable[Decision]) -> None:
        """Append these tasks' outcomes to the row (opened earlier, maybe in this transaction)."""
        assert self.entry_id is not None, "open() the record first"
        succeeded, failed = split_ids(decisions)
        if succeeded or failed:
            await access_queries.append_audit_ids(conn, self.entry_id, succeeded, failed)


def split_ids(decisions: Iterable[Decision]) -> tuple[list[UUID], list[UUID]]:
    succeeded: list[UUID] = []
    failed: list[UUID] = []
    for decision in decisions:
        (succeeded if decision.error is None else failed).append(decision.task_id)
    return succeeded, failed


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    selection: dict[str, Any]
    reason: str | None
    succeeded: list[UUID]
    failed: list[UUID]


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    has_next_page: bool
    end_cursor: str | None


def encode_audit_cursor(entry: AuditEntry) -> str:
    return base64.urlsafe_b64encode(f"{entry.at.isoformat()}|{entry.id}".encode()).decode()


def decode_audit_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        at, entry_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(at), int(entry_id)
    except (ValueError, UnicodeDecodeError):
        raise bad_argument("after", "is not an audit cursor returned by this API") from None


async def read_audit_page(
    engine: AsyncEngine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    action: str | None = None,
    actor: str | None = None,
    max_results: int = 100,
    after: str | None = None,
) -> AuditPage:
    """Newest first, keyset-paged like the tasks listing."""
    position = decode_audit_cursor(after) if after else None
    async with engine.connect() as conn:
        rows = await access_queries.select_audit_page(
            conn, since=since, until=until, action=action, actor=actor, after=position,
            limit=max_results + 1,
        )
    entries = [AuditEntry.model_validate(row._mapping) for row in rows[:max_results]]
    has_next = len(rows) > max_results
    return AuditPage(
        entries=entries,
        has_next_page=has_next,
        end_cursor=encode_audit_cursor(entries[-1]) if entries else None,
    )
