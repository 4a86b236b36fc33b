"""Every SQL statement CheckMate runs, one named function per query (the status events' in
event_queries.py).

Functions take an open AsyncConnection (the worker's: an asyncpg connection, see there); the
caller owns the transaction. Lists of ids travel
as one uuid[] parameter, never as one bind parameter per id.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    any_,
    bindparam,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from checkmate.db.tables import tasks
from checkmate.models import (
    INVOKABLE_STATUSES,
    TERMINAL_STATUSES,
    SortOrder,
    StageStatus,
    TaskFilter,
)

# What the batch actions decide on; the listing's wider rows are not needed there.
BATCH_COLUMNS = (
    tasks.c.id,
    tasks.c.name,
    tasks.c.status,
    tasks.c.cleaned,
    tasks.c.updated_at,
)
TASK_COLUMN_NAMES = tuple(column.name for column in tasks.c)
_TERMINAL = sorted(status.value for status in TERMINAL_STATUSES)
_NON_TERMINAL = sorted(status.value for status in StageStatus if status not in TERMINAL_STATUSES)
_INVOKABLE = sorted(status.value for status in INVOKABLE_STATUSES)


def uuid_array(ids: Sequence[UUID]) -> Any:
    return bindparam(None, list(ids), type_=ARRAY(PG_UUID(as_uuid=True)))


def _id_in(ids: Sequence[UUID]) -> ColumnElement[bool]:
    return tasks.c.id == any_(uuid_array(ids))


def filter_clause(task_filter: TaskFilter) -> ColumnElement[bool]:
    """The WHERE clause for a filter; every index on tasks serves one of these terms."""
    terms: list[ColumnElement[bool]] = []
    if task_filter.ids is not None:
        terms.append(_id_in(task_filter.ids))
    if task_filter.status is not None:
        terms.append(tasks.c.status == task_filter.status.value)
    if task_filter.statuses is not None:
        terms.append(tasks.c.status.in_([status.value for status in task_filter.statuses]))
    if task_filter.queue is not None:
        terms.append(tasks.c.queue == task_filter.queue)
    if task_filter.tags:
        terms.append(tasks.c.tags.contains(list(task_filter.tags)))
    if task_filter.since is not None:
        terms.append(tasks.c.created_at >= task_filter.since)
    if task_filter.until is not None:
        terms.append(tasks.c.created_at < task_filter.until)
    if task_filter.cleaned is not None:
        terms.append(tasks.c.cleaned.is_(task_filter.cleaned))
    if task_filter.name is not None:
        terms.append(tasks.c.name == task_filter.name)
    return and_(true(), *terms)


def _ordered(
    query: Select[Any], sort: SortOrder, after: tuple[datetime, UUID] | None
) -> Select[Any]:
    """Keyset order on (created_at, id): stable under inserts, served by every index."""
    if after is not None:
        created_at, task_id = after
        if sort == "desc":
            query = query.where(
                or_(
                    tasks.c.created_at < created_at,
                    and_(tasks.c.created_at == created_at, tasks.c.id < task_id),
                )
            )
        else:
            query = query.where(
                or_(
                    tasks.c.created_at > created_at,
                    and_(tasks.c.created_at == created_at, tasks.c.id > task_id),
                )
            )
    if sort == "desc":
        return query.order_by(tasks.c.created_at.desc(), tasks.c.id.desc())
    return query.order_by(tasks.c.created_at.asc(), tasks.c.id.asc())


async def insert_task(conn: AsyncConnection, values: dict[str, Any]) -> Row[Any]:
    result = await conn.execute(insert(tasks).values(**values).returning(*tasks.c))
    return result.one()


async def select_task(conn: AsyncConnection, task_id: UUID) -> Row[Any] | None:
    result = await conn.execute(select(*tasks.c).where(tasks.c.id == task_id))
    return result.one_or_none()


async def select_tasks(
    conn: AsyncConnection,
    task_filter: TaskFilter,
    *,
    sort: SortOrder,
    limit: int,
    after: tuple[datetime, UUID] | None = None,
    columns: Sequence[str] | None = None,
) -> Sequence[Row[Any]]:
    """A page of task rows; `columns` (names of tasks' columns) narrows what is read: decoding
    the 15 columns is most of the time of a 10,000-row page."""
    selected = tasks.c if columns is None else [tasks.c[name] for name in columns]
    query = _ordered(select(*selected).where(filter_clause(task_filter)), sort, after)
    rows: Sequence[Row[Any]] = (await conn.execute(query.limit(limit))).all()
    return rows


async def count_tasks(conn: AsyncConnection, task_filter: TaskFilter) -> int:
    query = select(func.count()).select_from(tasks).where(filter_clause(task_filter))
    return int((await conn.execute(query)).scalar_one())


async def count_tasks_by_status(
    conn: AsyncConnection, task_filter: TaskFilter
) -> list[tuple[str, int]]:
    query = (
        select(tasks.c.status, func.count())
        .where(filter_clause(task_filter))
        .group_by(tasks.c.status)
        .order_by(tasks.c.status)
    )
    return [(status, int(count)) for status, count in (await conn.execute(query)).all()]


async def select_batch_candidates(
    conn: AsyncConnection, task_filter: TaskFilter, *, sort: SortOrder, limit: int
) -> Sequence[Row[Any]]:
    """The tasks a batch action selects, without locking them (dry runs stop here)."""
    query = _ordered(select(*BATCH_COLUMNS).where(filter_clause(task_filter)), sort, None)
    rows: Sequence[Row[Any]] = (await conn.execute(query.limit(limit))).all()
    return rows


async def lock_tasks(conn: AsyncConnection, ids: Sequence[UUID]) -> Sequence[Row[Any]]:
    """Row-lock tasks in id order: concurrent batches lock in the same order, so none deadlock."""
    query: Select[Any] = (
        select(*BATCH_COLUMNS).where(_id_in(ids)).order_by(tasks.c.id).with_for_update()
    )
    rows: Sequence[Row[Any]] = (await conn.execute(query)).all()
    return rows


async def cancel_tasks(conn: AsyncConnection, ids: Sequence[UUID]) -> int:
    query = (
        update(tasks)
        .where(_id_in(ids), tasks.c.status.in_(_NON_TERMINAL))
        .values(status=StageStatus.CANCELED.value, finished_at=func.now(), updated_at=func.now())
    )
    return (await conn.execute(query)).rowcount


async def mark_worker_lost(conn: AsyncConnection, ids: Sequence[UUID], reason: str) -> int:
    query = (
        update(tasks)
        .where(_id_in(ids), tasks.c.status == StageStatus.RUNNING.value)
        .values(
            status=StageStatus.ERROR.value,
            error=reason,
            finished_at=func.now(),
            updated_at=func.now(),
        )
    )
    return (await conn.execute(query)).rowcount


async def mark_cleaned(conn: AsyncConnection, ids: Sequence[UUID]) -> int:
    query = (
        update(tasks)
        .where(_id_in(ids), tasks.c.status.in_(_TERMINAL), tasks.c.cleaned.is_(False))
        .values(cleaned=True, cleaned_at=func.now(), updated_at=func.now())
    )
    return (await conn.execute(query)).rowcount


async def queue_tasks(conn: AsyncConnection, ids: Sequence[UUID]) -> int:
    query = (
        update(tasks)
        .where(_id_in(ids), tasks.c.status.in_(_INVOKABLE), tasks.c.cleaned.is_(False))
        .values(
            status=StageStatus.QUEUED.value,
            attempts=tasks.c.attempts + 1,
            error=None,
            finished_at=None,
            worker=None,
            updated_at=func.now(),
        )
    )
    return (await conn.execute(query)).rowcount


# --- worker ---
# The worker's per-task statements are fixed SQL text run on a bare asyncpg connection, which
# prepares each once per connection. Through SQLAlchemy each cost ~200 us of CPU in statement
# building, cache keys and the greenlet hop, more than the statement itself; a no-op task makes
# four of them. Lists travel as arrays, as everywhere else.

_QUEUED, _RUNNING = StageStatus.QUEUED.value, StageStatus.RUNNING.value

# Oldest first, skipping rows other workers hold: claimers never wait on each other nor take
# the same task. $3 are tasks found with a lock object, left alone until an operator unlocks.
# attempts keys every later statement of the run: see _HELD_BY.
_SELECT_CLAIMABLE = f"""
SELECT id, stage, attempts FROM tasks
WHERE status = '{_QUEUED}' AND queue = ANY($1::text[]) AND id <> ALL($3::uuid[])
ORDER BY created_at LIMIT $2
FOR UPDATE SKIP LOCKED
"""

# Each claimed task with the stage it starts at ($2, NULL keeps the record's stage).
_MARK_RUNNING = f"""
UPDATE tasks SET status = '{_RUNNING}', stage = coalesce(claimed.stage, tasks.stage),
    started_at = now(), finished_at = NULL, error = NULL, worker = $3, updated_at = now()
FROM unnest($1::uuid[], $2::text[]) AS claimed (id, stage)
WHERE tasks.id = claimed.id AND tasks.status = '{_QUEUED}'
"""

# The task still runs this run ($1 id, $2 worker, $3 attempts): not canceled, unlocked, or
# claimed since (by another worker, or by this one after an unlock and an invoke). A statement
# keyed so can be repeated after a lost reply: the repeat changes nothing (or, for the stage,
# writes the same value again).
_HELD_BY = f"id = $1 AND status = '{_RUNNING}' AND worker = $2 AND attempts = $3"
_SET_RUNNING_STAGE = f"UPDATE tasks SET stage = $4, updated_at = now() WHERE {_HELD_BY}"
# Many runs' outcomes in one statement ($1 worker; then per task: id, attempts, status, error).
_FINISH_TASKS = f"""
UPDATE tasks SET status = done.status, error = done.error, finished_at = now(),
    updated_at = now()
FROM unnest($2::uuid[], $3::int[], $4::text[], $5::text[]) AS done (id, attempts, status, error)
WHERE tasks.id = done.id AND tasks.status = '{_RUNNING}' AND tasks.worker = $1
    AND tasks.attempts = done.attempts
RETURNING tasks.id
"""
_REQUEUE_TASK = (
    f"UPDATE tasks SET status = '{_QUEUED}', worker = NULL, updated_at = now() WHERE {_HELD_BY}"
)
# Where runs stand now, to tell "a lost reply's statement was applied" from "not ours any
# more". FOR UPDATE waits for a transaction still in flight (its connection cut off by the
# network, not yet by the server) to end, so the answer is its outcome, not the state before.
_SELECT_RUN_STATES = """
SELECT id, status, worker, attempts FROM tasks WHERE id = ANY($1::uuid[]) FOR UPDATE
"""


def _row_count(status: str) -> int:
    """Rows an UPDATE changed, from asyncpg's command tag ("UPDATE 3")."""
    return int(status.rpartition(" ")[2])


async def select_claimable(
    conn: asyncpg.Connection, queues: Sequence[str], limit: int, exclude: Sequence[UUID] = ()
) -> list[tuple[UUID, str | None, int]]:
    """Row-lock up to `limit` claimable tasks: (id, stage, attempts) each; call inside a
    transaction."""
    rows = await conn.fetch(_SELECT_CLAIMABLE, list(queues), limit, list(exclude))
    return [(row[0], row[1], row[2]) for row in rows]


async def mark_running(
    conn: asyncpg.Connection, stages: dict[UUID, str | None], worker: str
) -> int:
    """Claimed tasks -> RUNNING, each with the stage it starts at (None keeps the stage)."""
    status = await conn.execute(_MARK_RUNNING, list(stages), list(stages.values()), worker)
    return _row_count(status)


async def set_running_stage(
    conn: asyncpg.Connection, task_id: UUID, worker: str, attempts: int, stage: str
) -> bool:
    """Record the stage about to run; False when the task is no longer this run's, which makes
    this the worker's re-read of the status between stages."""
    status = await conn.execute(_SET_RUNNING_STAGE, task_id, worker, attempts, stage)
    return _row_count(status) == 1


async def finish_tasks(
    conn: asyncpg.Connection,
    worker: str,
    outcomes: Sequence[tuple[UUID, int, StageStatus, str | None]],
) -> set[UUID]:
    """Runs (id, attempts, status, error) -> their terminal status, in one statement; returns
    the ids it changed (the others are no longer these runs', or already finished)."""
    rows = await conn.fetch(
        _FINISH_TASKS,
        worker,
        [task_id for task_id, _, _, _ in outcomes],
        [attempts for _, attempts, _, _ in outcomes],
        [status.value for _, _, status, _ in outcomes],
        [error for _, _, _, error in outcomes],
    )
    return {row[0] for row in rows}


async def requeue_task(
    conn: asyncpg.Connection, task_id: UUID, worker: str, attempts: int
) -> bool:
    """Back to QUEUED for another worker (shutdown); attempts count invokes, so it stays."""
    return _row_count(await conn.execute(_REQUEUE_TASK, task_id, worker, attempts)) == 1


async def select_run_states(
    conn: asyncpg.Connection, ids: Sequence[UUID]
) -> dict[UUID, tuple[str, str | None, int]]:
    """(status, worker, attempts) of each task that exists; call inside a transaction (the rows
    stay locked until it ends)."""
    rows = await conn.fetch(_SELECT_RUN_STATES, list(ids))
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


# --- GraphQL API (server readiness) -----------------------------------------------------------


async def ping(conn: AsyncConnection) -> None:
    await conn.execute(select(true()))
