"""Building tasks in any state, and byte-exact snapshots of the database and the store, for the
core tests. Tasks are written the way the service and a worker write them: a record in
PostgreSQL, a task object, stage metadata and (optionally) a lock object in the store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID, uuid4

import asyncpg
import obstore

from checkmate.models import StageMetadata, StageStatus, TaskLock, TaskObject
from checkmate.store import TaskStore, lock_path, task_path
from tests.support import TaskRow, insert_task_rows

LockState = Literal["fresh", "stale", "corrupt"] | None
ObjectState = Literal["ok", "missing", "corrupt"]

# Legal (previous -> new) status changes of DESIGN.md's status machine; None = inserted.
LEGAL_TRANSITIONS = {
    (None, StageStatus.CREATED),
    (None, StageStatus.QUEUED),
    (StageStatus.CREATED, StageStatus.QUEUED),
    (StageStatus.CREATED, StageStatus.CANCELED),
    (StageStatus.QUEUED, StageStatus.RUNNING),
    (StageStatus.QUEUED, StageStatus.CANCELED),
    (StageStatus.RUNNING, StageStatus.COMPLETED),
    (StageStatus.RUNNING, StageStatus.ERROR),
    (StageStatus.RUNNING, StageStatus.CANCELED),
    (StageStatus.ERROR, StageStatus.QUEUED),
    (StageStatus.CANCELED, StageStatus.QUEUED),
}


@dataclass(frozen=True)
class TaskSpec:
    status: StageStatus
    name: str = "demo.pipeline"
    queue: str = "default"
    tags: tuple[str, ...] = ()
    cleaned: bool = False
    lock: LockState = None
    task_object: ObjectState = "ok"
    stages: int = 2
    updated_ago: float = 0.0
    created_ago: float = 0.0
    attempts: int = 0


async def insert_records(
    raw_conn: asyncpg.Connection, specs: Sequence[TaskSpec], ids: Sequence[UUID] | None = None
) -> list[UUID]:
    """Insert task records in one statement (as any writer could), returning their ids."""
    ids = list(ids) if ids is not None else [uuid4() for _ in specs]
    now = datetime.now(UTC)
    rows = [
        TaskRow(
            id=task_id,
            name=spec.name,
            queue=spec.queue,
            tags=spec.tags,
            status=spec.status,
            created_at=now - timedelta(seconds=spec.created_ago),
            updated_at=now - timedelta(seconds=spec.updated_ago),
            attempts=spec.attempts,
            cleaned=spec.cleaned,
            cleaned_at=now if spec.cleaned else None,
        )
        for task_id, spec in zip(ids, specs, strict=True)
    ]
    return await insert_task_rows(raw_conn, rows)


def _lock(state: LockState, lock_timeout: float) -> TaskLock:
    age = timedelta(seconds=lock_timeout * 10 if state == "stale" else 0)
    at = datetime.now(UTC) - age
    return TaskLock(owner="worker-1", host="host-a", pid=4242, acquired_at=at, heartbeat_at=at)


async def write_objects(
    store: TaskStore, task_id: UUID, spec: TaskSpec, lock_timeout: float = 60.0
) -> None:
    """The store side of a task as a worker would have left it."""
    if spec.task_object == "ok":
        names = [f"stage-{index + 1}" for index in range(spec.stages)]
        await store.put_task(
            TaskObject(
                id=task_id,
                name=spec.name,
                queue=spec.queue,
                params={"stages": spec.stages},
                stages=names,
                created_at=datetime.now(UTC),
            )
        )
    elif spec.task_object == "corrupt":
        await obstore.put_async(store.store, task_path(task_id), b"{not json")
    if spec.status is not StageStatus.CREATED:
        for index in range(spec.stages):
            await store.put_stage(
                task_id,
                StageMetadata(index=index, name=f"stage-{index + 1}", status=StageStatus.COMPLETED),
            )
    if spec.lock == "corrupt":
        await obstore.put_async(store.store, lock_path(task_id), b"\x00garbage")
    elif spec.lock is not None:
        await store.put_lock(task_id, _lock(spec.lock, lock_timeout))


async def make_tasks(
    raw_conn: asyncpg.Connection,
    store: TaskStore,
    specs: Sequence[TaskSpec],
    lock_timeout: float = 60.0,
) -> list[UUID]:
    ids = await insert_records(raw_conn, specs)

    async def write(task_id: UUID) -> None:
        await write_objects(store, task_id, by_id[task_id], lock_timeout)

    by_id = dict(zip(ids, specs, strict=True))
    results = await store.for_each(ids, write)
    errors = [result for result in results.values() if isinstance(result, BaseException)]
    assert not errors, errors
    return ids


async def make_task(
    raw_conn: asyncpg.Connection, store: TaskStore, spec: TaskSpec, lock_timeout: float = 60.0
) -> UUID:
    return (await make_tasks(raw_conn, store, [spec], lock_timeout))[0]


async def dump_database(raw_conn: asyncpg.Connection, sequences: bool = True) -> dict[str, Any]:
    """Every row of every table of the schema, in a stable order, and the sequences' positions
    (which a rolled-back transaction moves too: pass sequences=False after a rollback).
    Not the audit log: every real run writes its row, even one that changes nothing
    (tests/test_audit.py checks those rows)."""
    tables = await raw_conn.fetch(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' "
        "AND table_name <> 'audit_log' ORDER BY table_name"
    )
    dump: dict[str, Any] = {}
    for (table,) in tables:
        rows = await raw_conn.fetch(f'SELECT * FROM "{table}" ORDER BY 1')
        dump[table] = [tuple(row.items()) for row in rows]
    if sequences:
        positions = await raw_conn.fetch(
            "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public' "
            "AND sequencename NOT LIKE 'audit_log%'"
        )
        dump["sequences"] = sorted(tuple(row) for row in positions)
    return dump


async def dump_store(store: TaskStore) -> dict[str, bytes]:
    """Every object of the store with its exact bytes."""
    paths = [meta["path"] async for batch in obstore.list(store.store) for meta in batch]
    dump: dict[str, bytes] = {}
    for path in paths:
        result = await obstore.get_async(store.store, path)
        dump[path] = bytes(await result.bytes_async())
    return dump


async def task_paths(store: TaskStore, task_id: UUID) -> list[str]:
    prefix = f"tasks/{task_id}/"
    paths = [meta["path"] async for batch in obstore.list(store.store, prefix) for meta in batch]
    return sorted(paths)


async def record(raw_conn: asyncpg.Connection, task_id: UUID) -> asyncpg.Record:
    return await raw_conn.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
