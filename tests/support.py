"""The one way the tests write task records, the one way they wait for something, and a bound
on teardowns that wait on the code under test.

- insert_task_rows: any number of task records in ONE statement (set-based, as any other writer
  could), so the status trigger fires once and writes one notification.
- wait_until: poll a condition with a deadline; no test waits a fixed time for something to
  happen, so the suite holds on a loaded machine.
- bounded: a teardown step that cannot hang the suite; it fails with what it was waiting for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID, uuid4

import asyncpg
import orjson

T = TypeVar("T")


@dataclass(frozen=True)
class TaskRow:
    """One task record. Times left None take the database's now() (updated_at: created_at)."""

    name: str = "demo.pipeline"
    queue: str = "default"
    tags: Sequence[str] = ()
    status: str = "CREATED"
    created_at: datetime | None = None
    updated_at: datetime | None = None
    attempts: int = 0
    cleaned: bool = False
    cleaned_at: datetime | None = None
    id: UUID = field(default_factory=uuid4)


_INSERT = """
INSERT INTO tasks (id, name, queue, tags, status, created_at, updated_at, attempts, cleaned,
                   cleaned_at)
SELECT r.id, r.name, r.queue, r.tags, r.status, coalesce(r.created_at, now()),
       coalesce(r.updated_at, r.created_at, now()), r.attempts, r.cleaned, r.cleaned_at
FROM jsonb_to_recordset($1::jsonb) AS r(
    id uuid, name text, queue text, tags text[], status text, created_at timestamptz,
    updated_at timestamptz, attempts integer, cleaned boolean, cleaned_at timestamptz)
"""


async def insert_task_rows(conn: asyncpg.Connection, rows: Sequence[TaskRow]) -> list[UUID]:
    """Insert `rows` in one statement, in order (their events get increasing ids); their ids."""
    document = [
        {
            "id": row.id, "name": row.name, "queue": row.queue, "tags": list(row.tags),
            "status": str(row.status), "created_at": row.created_at,
            "updated_at": row.updated_at, "attempts": row.attempts, "cleaned": row.cleaned,
            "cleaned_at": row.cleaned_at,
        }
        for row in rows
    ]
    await conn.execute(_INSERT, orjson.dumps(document).decode())
    return [row.id for row in rows]


async def wait_until(
    condition: Callable[[], Any] | Callable[[], Awaitable[Any]],
    within: float = 20,
    describe: Callable[[], str] | None = None,
    interval: float = 0.02,
) -> Any:
    """Poll `condition` (sync or async) every `interval` until it is truthy and return its
    value; fail after `within` seconds, with `describe()` (e.g. a worker's log) if given."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f":\n{describe()}" if describe else ""
            raise AssertionError(f"condition not met within {within:g}s{detail}")
        await asyncio.sleep(interval)


async def bounded(step: Awaitable[T], what: str, within: float = 30) -> T:
    """A teardown step that fails after `within` seconds instead of hanging the suite. Not
    asyncio.wait_for: a step that swallows its own cancellation (EventHub.stop did, see
    tests/test_hub_stop.py) would then return late as if nothing had happened."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=within)
    if not done:
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        raise AssertionError(f"{what} did not finish within {within:g}s")
    return task.result()


async def newest_event_id(conn: asyncpg.Connection) -> int:
    """The id of the newest status event (0 when there is none)."""
    return int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM status_events"))
