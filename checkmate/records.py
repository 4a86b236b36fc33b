"""Task records from database rows, and the keyset cursors of pages."""

from __future__ import annotations

import base64
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from checkmate import arguments
from checkmate.db import queries
from checkmate.errors import bad_argument
from checkmate.models import STATUS_BY_VALUE, CheckMateTask, trusted


def encode_cursor(task: CheckMateTask) -> str:
    raw = f"{task.created_at.isoformat()}|{task.id}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str, name: str = "after") -> tuple[datetime, UUID]:
    arguments.text(name, cursor)
    try:
        created_at, task_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(created_at), UUID(task_id)
    except (ValueError, UnicodeDecodeError):
        raise bad_argument(
            name, f"must be a cursor returned by this API (got {cursor!r})"
        ) from None


# Every field of the model, None where a row has no such column (a narrowed read).
_TASK_DEFAULTS: dict[str, Any] = {
    name: None if field.is_required() else field.default
    for name, field in CheckMateTask.model_fields.items()
}
# Always read: the cursor is made of them.
_KEY_COLUMNS = ("id", "created_at")


# What stage metadata is cached under (checkmate.stage_cache.version_of).
_VERSION_COLUMNS = ("status", "updated_at", "attempts", "cleaned")


def columns_for(fields: Collection[str]) -> list[str]:
    wanted = set(fields) | set(_KEY_COLUMNS)
    if "metadata" in wanted or "stage_status" in wanted:
        wanted.update(_VERSION_COLUMNS)
    return [name for name in queries.TASK_COLUMN_NAMES if name in wanted]


def tasks_from_rows(rows: Sequence[Any]) -> list[CheckMateTask]:
    """Models of tasks rows, unvalidated: the columns already have the fields' types (the
    table's constraints hold them) except status, text in the row. Validation cost more than
    the SQL and the GraphQL execution of a 10,000-task page together."""
    if not rows:
        return []
    fields = rows[0]._fields  # a property that builds a tuple: once, not per row
    fields_set = set(fields)
    with_status = "status" in fields_set
    tasks = []
    for row in rows:
        values = _TASK_DEFAULTS.copy()
        values.update(zip(fields, row, strict=True))
        if with_status:
            values["status"] = STATUS_BY_VALUE[values["status"]]
        tasks.append(trusted(CheckMateTask, values, fields_set.copy()))
    return tasks
