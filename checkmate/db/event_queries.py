"""The status events' SQL: the subscription hub's reads (with the task fields subscription
filters use, and the snapshot that resolves holes) and its pruning. One named function per query,
as in checkmate/db/queries.py."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Select,
    Text,
    any_,
    bindparam,
    cast,
    delete,
    func,
    select,
    true,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from checkmate.db.tables import status_events, tasks


async def select_events_after(
    conn: AsyncConnection, after_id: int, *, limit: int
) -> Sequence[Row[Any]]:
    """Events with id > after_id in id order, with the task fields subscription filters use."""
    query = (
        _events_with_task_facts()
        .where(status_events.c.id > after_id)
        .order_by(status_events.c.id)
        .limit(limit)
    )
    rows: Sequence[Row[Any]] = (await conn.execute(query)).all()
    return rows


async def select_last_event_id(conn: AsyncConnection) -> int:
    query = select(func.coalesce(func.max(status_events.c.id), 0))
    return int((await conn.execute(query)).scalar_one())


# --- events (the subscription hub's reader and pruner, checkmate/events/) ---


def _events_with_task_facts() -> Select[Any]:
    """Event rows joined with the task fields subscription filters match on (name, tags, ...)."""
    return select(
        status_events,
        tasks.c.name,
        tasks.c.tags,
        tasks.c.created_at,
        tasks.c.cleaned,
    ).select_from(status_events.outerjoin(tasks, tasks.c.id == status_events.c.task_id))


def _snapshot_and_xid() -> tuple[Any, Any]:
    # pg_current_snapshot() is the running statement's own snapshot, taken before it executes:
    # the rows and the in-progress list it returns describe the same instant.
    # pg_current_xact_id() gives the reading transaction an xid while the statement executes,
    # so it is newer than every xid assigned before that snapshot (events/reader.py bounds holes
    # by it).
    return (
        cast(func.pg_current_snapshot(), Text).label("snapshot"),
        cast(func.pg_current_xact_id(), Text).label("xid"),
    )


async def select_event_batch(
    conn: AsyncConnection, after_id: int, missing_ids: Sequence[int], *, limit: int
) -> tuple[str, int, Sequence[Row[Any]]]:
    """One statement: the snapshot it ran in, an xid drawn after it, the events above after_id
    (at most `limit`) and those of `missing_ids` (ids below after_id not seen yet) that are now
    visible, in id order."""
    above = (
        _events_with_task_facts()
        .where(status_events.c.id > after_id)
        .order_by(status_events.c.id)
        .limit(limit)
    )
    late = _events_with_task_facts().where(
        status_events.c.id == any_(bindparam(None, list(missing_ids), type_=ARRAY(BigInteger)))
    )
    rows = union_all(late, above).subquery("e")
    snapshot = select(*_snapshot_and_xid()).subquery("s")
    query = (
        select(snapshot.c.snapshot, snapshot.c.xid, rows)
        .select_from(snapshot.outerjoin(rows, true()))
        .order_by(rows.c.id)
    )
    result = (await conn.execute(query)).all()
    head = result[0]
    return head.snapshot, int(head.xid), [row for row in result if row.id is not None]


async def select_event_id_tail(conn: AsyncConnection, limit: int) -> tuple[str, int, list[int]]:
    """The snapshot, an xid drawn after it and the newest `limit` visible event ids (ascending):
    where a reader starts."""
    tail = select(status_events.c.id).order_by(status_events.c.id.desc()).limit(limit).subquery()
    query = select(*_snapshot_and_xid(), select(func.array_agg(tail.c.id)).scalar_subquery())
    snapshot, xid, ids = (await conn.execute(query)).one()
    return snapshot, int(xid), sorted(ids or [])


async def select_event_bounds(conn: AsyncConnection) -> tuple[int | None, int]:
    """The oldest and newest stored event ids (None and 0 when there are none)."""
    query = select(func.min(status_events.c.id), func.coalesce(func.max(status_events.c.id), 0))
    oldest, newest = (await conn.execute(query)).one()
    return oldest, int(newest)


async def select_prune_bound(conn: AsyncConnection, cutoff: datetime) -> int | None:
    """The lowest id pruning keeps: that of the first event at or after cutoff, else the newest
    event's. Pruning deletes every id below it, a prefix, so the table always holds every event
    from its oldest on, and the newest event always (see events/reader.py: where a
    subscription may resume)."""
    first_kept = (
        select(status_events.c.id)
        .where(status_events.c.changed_at >= cutoff)
        .order_by(status_events.c.changed_at, status_events.c.id)
        .limit(1)
        .scalar_subquery()
    )
    newest = select(func.max(status_events.c.id)).scalar_subquery()
    bound: int | None = (await conn.execute(select(func.coalesce(first_kept, newest)))).scalar()
    return bound


async def delete_events_below(conn: AsyncConnection, bound: int, *, limit: int) -> int:
    """Delete up to `limit` of the oldest events with ids below `bound`; short statements keep
    locks and WAL small."""
    oldest = (
        select(status_events.c.id)
        .where(status_events.c.id < bound)
        .order_by(status_events.c.id)
        .limit(limit)
    )
    query = delete(status_events).where(status_events.c.id.in_(oldest.scalar_subquery()))
    return (await conn.execute(query)).rowcount
