"""`checkmate demo`: a realistic picture of a pipeline in every status, made through the service,
the store and the worker's own statements, so the operator tools have something to show at once.

Roles (one task each at least, more cycle through the common ones): CREATED, QUEUED, RUNNING
with a fresh lock, RUNNING whose worker died (stale lock), an orphaned RUNNING task (no lock,
no sign of life), COMPLETED, a failed stage (ERROR with its error and traceback), CANCELED and
cleaned; over several queues and tags.
"""

from __future__ import annotations

import itertools
import os
import socket
import traceback
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from uuid import UUID

from checkmate.db import queries
from checkmate.db.demo import backdate_activity
from checkmate.models import StageMetadata, StageStatus, TaskLock
from checkmate.service import CheckMateService

ROLES = (
    "stale-lock", "orphan", "failed", "cleaned", "created", "queued", "running", "completed",
    "canceled",
)
# Extra tasks beyond one of each: mostly the common states.
_MORE = ("completed", "queued", "created", "failed", "completed", "canceled", "running", "cleaned")
QUEUES = ("default", "nightly", "gpu")
TAGS = (("demo", "etl", "eu"), ("demo", "ml", "us"), ("demo", "reports", "eu"))
STAGES = 3
DEAD_WORKER = "demo-worker-dead"
# Every demo task that runs was invoked once.
ATTEMPTS = 1


def plan(count: int) -> list[str]:
    """The role of each of `count` tasks (count >= len(ROLES))."""
    return list(ROLES) + list(itertools.islice(itertools.cycle(_MORE), count - len(ROLES)))


def _failure() -> tuple[str, str]:
    try:
        rows = {"eu-west": 10}
        _ = rows["us-east"]
    except KeyError as error:
        return f"KeyError: {error}", traceback.format_exc()
    raise AssertionError("unreachable")


async def create_demo(service: CheckMateService, count: int) -> dict[str, list[UUID]]:
    """Tasks of `plan(count)`; their ids by role."""
    by_role: dict[str, list[UUID]] = defaultdict(list)
    for number, role in enumerate(plan(count)):
        task = await service.create(
            "demo.pipeline", queue=QUEUES[number % len(QUEUES)], tags=list(TAGS[number % 3]),
            params={"stages": STAGES}, reason="checkmate demo",
        )
        by_role[role].append(task.id)
    started = [task_id for role, ids in by_role.items() if role != "created" for task_id in ids]
    await service.invoke(started, max_results=len(started), dry_run=False, reason="demo")
    await service.cancel(
        by_role["canceled"], max_results=len(by_role["canceled"]), dry_run=False, reason="demo"
    )
    ran = {role: by_role[role] for role in
           ("stale-lock", "orphan", "failed", "cleaned", "running", "completed")}
    await _run_like_a_worker(service, ran)
    await service.clean(
        by_role["cleaned"], max_results=len(by_role["cleaned"]), dry_run=False, reason="demo"
    )
    return dict(by_role)


async def _run_like_a_worker(service: CheckMateService, by_role: dict[str, list[UUID]]) -> None:
    """What workers would have left: records through the worker's statements, stage metadata
    and locks in the store."""
    now = datetime.now(UTC)
    live = f"{socket.gethostname()}:{os.getpid()}"
    store = service.store
    conn = await service.database.raw_connect()
    try:
        for role, ids in by_role.items():
            worker = DEAD_WORKER if role in ("stale-lock", "orphan") else live
            await queries.mark_running(conn, dict.fromkeys(ids, "stage-1"), worker)
            for task_id in ids:
                done = STAGES if role in ("completed", "cleaned") else 1
                for index in range(done):
                    begun = now - timedelta(minutes=20 - 3 * index)
                    await store.put_stage(task_id, StageMetadata(
                        index=index, name=f"stage-{index + 1}", status=StageStatus.COMPLETED,
                        started_at=begun, finished_at=begun + timedelta(seconds=42 + index),
                        duration_seconds=42.0 + index, data={"rows": 1_000 * (index + 1)},
                    ))
                if role in ("completed", "cleaned"):
                    await queries.finish_tasks(
                        conn, worker, [(task_id, ATTEMPTS, StageStatus.COMPLETED, None)]
                    )
                    continue
                await queries.set_running_stage(conn, task_id, worker, ATTEMPTS, "stage-2")
                if role == "failed":
                    error, trace = _failure()
                    await store.put_stage(task_id, StageMetadata(
                        index=1, name="stage-2", status=StageStatus.ERROR,
                        started_at=now - timedelta(minutes=2), finished_at=now,
                        duration_seconds=120.0, error=error, traceback=trace,
                    ))
                    await queries.finish_tasks(
                        conn, worker, [(task_id, ATTEMPTS, StageStatus.ERROR, error)]
                    )
                    continue
                await store.put_stage(task_id, StageMetadata(
                    index=1, name="stage-2", status=StageStatus.RUNNING,
                    started_at=now - timedelta(minutes=5),
                ))
                if role == "orphan":
                    continue
                beat = now - timedelta(minutes=15) if role == "stale-lock" else now
                host, _, pid = worker.partition(":")
                await store.put_lock(task_id, TaskLock(
                    owner=worker, host=host, pid=int(pid) if pid.isdigit() else None,
                    acquired_at=now - timedelta(minutes=20), heartbeat_at=beat,
                ))
        dead = [*by_role["orphan"], *by_role["stale-lock"]]
        await backdate_activity(conn, dead, timedelta(minutes=15))
    finally:
        await conn.close()
