"""Fill a CheckMate database with many task records, set-based, for benchmarks.

    python -m bench.seed --rows 1000000 --database-url postgresql://postgres@127.0.0.1/checkmate \
        [--store-url file:///tmp/store --objects-for 100] [--statuses CREATED,QUEUED]

Rows get mixed statuses, queues, tags and names (independent of each other), and created_at
spread one second apart ending now. The newest `objects_for` tasks also get their store objects
(task object, stage metadata, and a lock when RUNNING), so that reads with metadata have
something to read.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg

from checkmate.db.engine import asyncpg_dsn
from checkmate.models import StageMetadata, StageStatus, TaskLock, TaskObject
from checkmate.store import TaskStore

QUEUES = ("default", "batch", "gpu")
NAMES = ("demo.pipeline", "demo.etl", "demo.report")
STAGES = ("stage-1", "stage-2", "stage-3")
# One INSERT per this many rows keeps the transition table and WAL of a statement bounded.
INSERT_CHUNK = 200_000

_INSERT_SQL = """
INSERT INTO tasks (name, queue, tags, status, stage, created_at, updated_at, started_at,
                   finished_at, attempts, error)
SELECT
    ($3::text[])[1 + (i / 6) % cardinality($3::text[])],
    ($4::text[])[1 + (i / 36) % cardinality($4::text[])],
    ARRAY['team-' || (i % 7), CASE WHEN (i / 6) % 2 = 0 THEN 'prod' ELSE 'staging' END],
    s.status,
    CASE WHEN s.status = 'CREATED' THEN NULL ELSE 'stage-' || (1 + i % 3) END,
    t.created,
    t.created,
    CASE WHEN s.status IN ('CREATED', 'QUEUED') THEN NULL ELSE t.created END,
    CASE WHEN s.status IN ('COMPLETED', 'ERROR', 'CANCELED') THEN t.created END,
    CASE WHEN s.status = 'CREATED' THEN 0 ELSE 1 END,
    CASE WHEN s.status = 'ERROR' THEN 'seeded failure' END
FROM generate_series($1::bigint, $2::bigint) AS i,
     LATERAL (SELECT ($5::text[])[1 + i % cardinality($5::text[])] AS status) s,
     LATERAL (SELECT $6::timestamptz - make_interval(secs => ($7::bigint - i)) AS created) t
"""


async def _insert_rows(
    conn: asyncpg.Connection,
    rows: int,
    statuses: Sequence[str],
    names: Sequence[str],
    queues: Sequence[str],
) -> None:
    now = datetime.now(UTC)
    for start in range(1, rows + 1, INSERT_CHUNK):
        end = min(start + INSERT_CHUNK - 1, rows)
        await conn.execute(
            _INSERT_SQL, start, end, list(names), list(queues), list(statuses), now, rows
        )


async def _write_objects(store: TaskStore, records: Sequence[asyncpg.Record]) -> None:
    async def write(task_id: UUID) -> None:
        record = by_id[task_id]
        status = StageStatus(record["status"])
        created: datetime = record["created_at"]
        await store.put_task(
            TaskObject(
                id=task_id,
                name=record["name"],
                queue=record["queue"],
                params={"stages": len(STAGES)},
                stages=list(STAGES),
                created_at=created,
            )
        )
        if status is StageStatus.CREATED:
            return
        for index, name in enumerate(STAGES):
            await store.put_stage(
                task_id,
                StageMetadata(
                    index=index,
                    name=name,
                    status=status if status is not StageStatus.QUEUED else StageStatus.CREATED,
                    started_at=created,
                    finished_at=created + timedelta(seconds=1) if status.terminal else None,
                ),
            )
        if status is StageStatus.RUNNING:
            now = datetime.now(UTC)
            lock = TaskLock(owner="seed", host="bench", pid=0, acquired_at=now, heartbeat_at=now)
            await store.put_lock(task_id, lock)

    by_id = {record["id"]: record for record in records}
    results = await store.for_each(by_id, write)
    errors = [result for result in results.values() if isinstance(result, BaseException)]
    if errors:
        raise errors[0]


async def seed(
    database_url: str,
    rows: int,
    *,
    store_url: str | None = None,
    objects_for: int = 0,
    statuses: Sequence[StageStatus | str] | None = None,
    names: Sequence[str] = NAMES,
    queues: Sequence[str] = QUEUES,
    events: bool = False,
) -> None:
    """Insert `rows` task records (cycling through `statuses`, all of them by default) and write
    store objects for the newest `objects_for` of them. With events=False the status-event
    trigger is bypassed for the inserts (seeded rows are history, not changes)."""
    if objects_for and store_url is None:
        raise ValueError("objects_for needs a store_url")
    chosen = [StageStatus(status).value for status in (statuses or list(StageStatus))]
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with conn.transaction():
            if not events:
                # Skips triggers for this transaction only; needs a superuser, as in the benches.
                await conn.execute("SET LOCAL session_replication_role = replica")
            await _insert_rows(conn, rows, chosen, names, queues)
        await conn.execute("ANALYZE tasks")
        if objects_for:
            records = await conn.fetch(
                "SELECT id, name, queue, status, created_at FROM tasks "
                "ORDER BY created_at DESC, id DESC LIMIT $1",
                objects_for,
            )
            assert store_url is not None
            await _write_objects(TaskStore.from_url(store_url), records)
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--store-url")
    parser.add_argument("--objects-for", type=int, default=0)
    parser.add_argument("--statuses", help="comma-separated, default: every status")
    parser.add_argument("--events", action="store_true", help="let the trigger write events")
    args = parser.parse_args(argv)
    statuses = args.statuses.split(",") if args.statuses else None
    asyncio.run(
        seed(
            args.database_url,
            args.rows,
            store_url=args.store_url,
            objects_for=args.objects_for,
            statuses=statuses,
            events=args.events,
        )
    )
    print(f"seeded {args.rows} tasks ({args.objects_for} with store objects)")


if __name__ == "__main__":
    main()
