"""The two implementations of TaskFilter agree: the SQL one (queries.filter_clause, which
list, counts and the batch actions use) and the one the event hub applies to each status event
(events.matches). Seeded random tasks and filters, one database.

What each side sees: an event carries the task id, its new status and its queue; the hub joins
the task row for name, tags, created_at and cleaned (events.TaskFacts). So both sides support
every TaskFilter field (ids, status, statuses, queue, tags, since, until, cleaned, name), and
this test generates filters over all of them. The comparison is on each task's latest event,
whose status and queue are the row's (checked below): a change that writes no event (a queue
moved by hand) or a deleted task are outside what the two can agree on.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from sqlalchemy import select

from checkmate.db.queries import filter_clause
from checkmate.db.tables import tasks
from checkmate.events import TaskFacts, matches
from checkmate.models import StageStatus, StatusEvent, TaskFilter
from checkmate.service import CheckMateService
from tests.support import TaskRow, insert_task_rows

SEED = 20260301
TASKS, FILTERS = 300, 60
NAMES = ("alpha", "beta", "gamma")
QUEUES = ("q1", "q2", "q3")
TAGS = ("x", "y", "z", "w")
BASE = datetime(2026, 1, 1, tzinfo=UTC)
FIELDS = tuple(TaskFilter.model_fields)


def _rows(rng: random.Random) -> list[TaskRow]:
    rows = []
    for _ in range(TASKS):
        # Whole minutes over two days: many tasks share a created_at (boundaries of since/until).
        created = BASE + timedelta(minutes=rng.randrange(48 * 60))
        if rng.random() < 0.3:
            created += timedelta(microseconds=rng.randrange(1, 1_000_000))
        rows.append(
            TaskRow(
                name=rng.choice(NAMES),
                queue=rng.choice(QUEUES),
                tags=rng.sample(TAGS, rng.randrange(len(TAGS) + 1)),
                status=rng.choice(list(StageStatus)),
                created_at=created,
                cleaned=rng.random() < 0.3,
            )
        )
    return rows


def _value(field: str, rng: random.Random, rows: list[TaskRow]) -> Any:
    """A random value for one filter field, often one the tasks actually have."""
    if field == "ids":
        return (*(row.id for row in rng.sample(rows, rng.randrange(6))), uuid4())
    if field == "status":
        return rng.choice(list(StageStatus))
    if field == "statuses":
        return tuple(rng.sample(list(StageStatus), rng.randrange(4)))
    if field == "queue":
        return rng.choice((*QUEUES, "nowhere"))
    if field == "tags":
        return tuple(rng.sample(TAGS, rng.randrange(3)))
    if field in ("since", "until"):
        if rng.random() < 0.5:
            return rng.choice(rows).created_at  # exactly a task's time: inclusive/exclusive
        return BASE + timedelta(minutes=rng.randrange(-60, 49 * 60))
    if field == "cleaned":
        return rng.random() < 0.5
    if field == "name":
        return rng.choice((*NAMES, "other"))
    raise AssertionError(f"no generator for TaskFilter.{field}: add one")


def _filters(rng: random.Random, rows: list[TaskRow]) -> list[TaskFilter]:
    filters = [TaskFilter()]
    for index in range(FILTERS):
        # Every field in turn, plus up to two others at random.
        chosen = {FIELDS[index % len(FIELDS)], *rng.sample(FIELDS, rng.randrange(3))}
        filters.append(TaskFilter(**{field: _value(field, rng, rows) for field in chosen}))
    return filters


async def _latest_events(raw_conn: asyncpg.Connection) -> list[tuple[StatusEvent, TaskFacts]]:
    """Each task's newest event, with the task facts the hub reads along with it."""
    rows = await raw_conn.fetch(
        "SELECT DISTINCT ON (e.task_id) e.*, t.name, t.tags, t.created_at, t.cleaned,"
        " t.status AS task_status, t.queue AS task_queue"
        " FROM status_events e JOIN tasks t ON t.id = e.task_id ORDER BY e.task_id, e.id DESC"
    )
    latest = []
    for row in rows:
        assert (row["status"], row["queue"]) == (row["task_status"], row["task_queue"])
        event = StatusEvent(
            event_id=row["id"], task_id=row["task_id"], status=row["status"],
            previous_status=row["previous_status"], stage=row["stage"], queue=row["queue"],
            changed_at=row["changed_at"],
        )
        facts = TaskFacts(row["name"], tuple(row["tags"]), row["created_at"], row["cleaned"])
        latest.append((event, facts))
    return latest


async def test_sql_filter_and_event_filter_select_the_same_tasks(
    service: CheckMateService, raw_conn: asyncpg.Connection
) -> None:
    rng = random.Random(SEED)
    rows = _rows(rng)
    await insert_task_rows(raw_conn, rows)
    # A third of the tasks change status once more, so events have a previous status too.
    moved = rng.sample(rows, TASKS // 3)
    await raw_conn.execute(
        "UPDATE tasks SET status = m.status FROM unnest($1::uuid[], $2::text[]) AS m(id, status)"
        " WHERE tasks.id = m.id",
        [row.id for row in moved], [rng.choice(list(StageStatus)).value for _ in moved],
    )
    latest = await _latest_events(raw_conn)
    assert len(latest) == TASKS

    sizes = []
    async with service.engine.connect() as conn:
        for task_filter in _filters(rng, rows):
            result = await conn.execute(select(tasks.c.id).where(filter_clause(task_filter)))
            by_sql: set[UUID] = set(result.scalars())
            by_event = {
                event.task_id for event, facts in latest if matches(task_filter, event, facts)
            }
            assert by_sql == by_event, (
                f"{task_filter}: only SQL {len(by_sql - by_event)},"
                f" only events {len(by_event - by_sql)}"
            )
            sizes.append(len(by_sql))
    # Not vacuous: most filters select some tasks but not all of them.
    assert sum(1 for size in sizes if 0 < size < TASKS) >= FILTERS // 2
