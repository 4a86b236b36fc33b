"""Worker processes against real PostgreSQL and a real (local folder) store."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import asyncpg
import pytest

import tests.worker_tasks  # noqa: F401  (registers the test kinds in this process too)
from checkmate.events import EventHub
from checkmate.models import StageStatus, TaskFilter, TaskLock
from checkmate.service import CheckMateService
from checkmate.settings import Settings
from tests.support import bounded
from tests.worker_support import StartWorker, WorkerProcess, wait_status, wait_until


async def statuses_of(raw_conn: asyncpg.Connection, task_id: UUID) -> list[str]:
    rows = await raw_conn.fetch(
        "SELECT status FROM status_events WHERE task_id = $1 ORDER BY id", task_id
    )
    return [row["status"] for row in rows]


async def test_demo_pipeline_completes_with_one_metadata_object_per_stage(
    service: CheckMateService, start_worker: StartWorker, raw_conn: asyncpg.Connection
) -> None:
    task = await service.create("demo.pipeline", params={"stages": 3}, invoke=True)
    worker = start_worker("--name", "w-demo")

    done = await wait_status(service, task.id, "COMPLETED")

    assert [(m.index, m.name, m.status, m.attempt) for m in done.metadata] == [
        (0, "stage-1", StageStatus.COMPLETED, 1),
        (1, "stage-2", StageStatus.COMPLETED, 1),
        (2, "stage-3", StageStatus.COMPLETED, 1),
    ]
    assert [m.data for m in done.metadata] == [{"stage": n, "attempt": 1} for n in (1, 2, 3)]
    assert all(m.finished_at >= m.started_at and m.duration_seconds >= 0 for m in done.metadata)
    assert (done.stage, done.worker, done.error) == ("stage-3", "w-demo", None)
    assert done.started_at is not None
    assert done.finished_at >= done.started_at
    await wait_until(lambda: _no_lock(service, task.id))
    assert await statuses_of(raw_conn, task.id) == ["QUEUED", "RUNNING", "COMPLETED"]
    worker.signal(signal.SIGTERM)
    assert await worker.exit_code() == 0


async def _no_lock(service: CheckMateService, task_id: UUID) -> bool:
    return await service.store.get_lock(task_id) is None


async def test_failed_stage_gives_error_and_invoke_resumes_at_that_stage(
    service: CheckMateService, start_worker: StartWorker
) -> None:
    task = await service.create(
        "demo.pipeline", params={"stages": 3, "fail_at_stage": 2}, invoke=True
    )
    start_worker()

    failed = await wait_status(service, task.id, "ERROR")
    assert failed.error is not None
    assert "demo failure at stage 2" in failed.error
    first, second = failed.metadata
    assert (first.name, first.status, first.attempt) == ("stage-1", StageStatus.COMPLETED, 1)
    assert (second.name, second.status, second.attempt) == ("stage-2", StageStatus.ERROR, 1)
    assert second.error == "RuntimeError: demo failure at stage 2"
    assert "RuntimeError" in (second.traceback or "")
    assert second.finished_at is not None
    await wait_until(lambda: _no_lock(service, task.id))

    succeeded, failed_results = await service.invoke([task.id], dry_run=False)
    assert [r.task_id for r in succeeded] == [str(task.id)]
    assert not failed_results
    done = await wait_status(service, task.id, "COMPLETED")

    assert [(m.name, m.status, m.attempt) for m in done.metadata] == [
        ("stage-1", StageStatus.COMPLETED, 1),
        ("stage-2", StageStatus.COMPLETED, 2),
        ("stage-3", StageStatus.COMPLETED, 1),
    ]
    # stage-1 was not run again: its object is the one the first run wrote.
    assert done.metadata[0].finished_at == first.finished_at
    assert done.error is None
    assert done.attempts == 2


async def test_cancel_during_stage_2_of_4_stops_before_stage_3(
    service: CheckMateService, start_worker: StartWorker, raw_conn: asyncpg.Connection
) -> None:
    task = await service.create("demo.pipeline", params={"stages": 4, "sleep": 0.6}, invoke=True)
    worker = start_worker()

    await wait_until(lambda: _record_stage_is(service, task.id, "stage-2"), 20, worker.log)
    succeeded, _ = await service.cancel([task.id], dry_run=False)
    assert [r.status for r in succeeded] == [StageStatus.CANCELED]
    await wait_until(lambda: _no_lock(service, task.id), 20, worker.log)

    canceled = await service.get(task.id)
    assert canceled.status is StageStatus.CANCELED
    # The running stage finished; nothing after it started.
    assert [(m.name, m.status) for m in canceled.metadata] == [
        ("stage-1", StageStatus.COMPLETED),
        ("stage-2", StageStatus.COMPLETED),
    ]
    assert await statuses_of(raw_conn, task.id) == ["QUEUED", "RUNNING", "CANCELED"]
    assert "stopped: canceled or unlocked" in worker.log()


async def _record_stage_is(service: CheckMateService, task_id: UUID, stage: str) -> bool:
    return (await service.get(task_id, include_metadata=False)).stage == stage


async def test_sigkill_leaves_a_lock_that_goes_stale_then_unlock_and_invoke_resume(
    settings: Settings, start_worker: StartWorker
) -> None:
    short = settings.model_copy(update={"lock_timeout": 1.5})
    service = await CheckMateService.open(short)
    try:
        task = await service.create(
            "demo.pipeline", params={"stages": 3, "sleep": 0.5}, invoke=True
        )
        worker = start_worker(settings_=short)
        await wait_until(lambda: _record_stage_is(service, task.id, "stage-2"), 20, worker.log)
        worker.kill()

        lock = await service.store.get_lock(task.id)
        assert lock is not None
        assert lock.pid == worker.pid
        assert not lock.is_stale(datetime.now(UTC), short.lock_timeout)
        _, refused = await service.unlock([task.id], dry_run=False)
        assert refused
        assert "fresh" in (refused[0].error or "")

        await wait_until(lambda: _lock_is_stale(service, task.id), 10)
        unlocked, _ = await service.unlock([task.id], dry_run=False)
        assert [r.status for r in unlocked] == [StageStatus.ERROR]
        lost = await service.get(task.id)
        assert lost.lock is None
        assert "worker lost" in (lost.error or "")
        assert [(m.name, m.status) for m in lost.metadata] == [
            ("stage-1", StageStatus.COMPLETED),
            ("stage-2", StageStatus.RUNNING),
        ]

        await service.invoke([task.id], dry_run=False)
        start_worker(settings_=short)
        done = await wait_status(service, task.id, "COMPLETED")
        assert [(m.name, m.attempt) for m in done.metadata] == [
            ("stage-1", 1),
            ("stage-2", 2),
            ("stage-3", 1),
        ]
    finally:
        await service.close()


async def _lock_is_stale(service: CheckMateService, task_id: UUID) -> bool:
    lock = await service.get(task_id)
    return lock.lock is not None and lock.lock.stale


async def test_sigterm_finishes_the_current_stage_and_requeues(
    service: CheckMateService, start_worker: StartWorker, raw_conn: asyncpg.Connection
) -> None:
    ids = [
        (await service.create("demo.pipeline", params={"stages": 3, "sleep": 0.5}, invoke=True)).id
        for _ in range(2)
    ]
    worker = start_worker("--concurrency", "2")
    for task_id in ids:
        await wait_until(lambda t=task_id: _record_stage_is(service, t, "stage-1"), 20, worker.log)
    worker.signal(signal.SIGTERM)
    assert await worker.exit_code() == 0

    for task_id in ids:
        task = await service.get(task_id)
        assert task.status is StageStatus.QUEUED
        assert task.worker is None
        assert task.lock is None
        assert task.attempts == 1
        assert [(m.name, m.status) for m in task.metadata] == [("stage-1", StageStatus.COMPLETED)]
        assert await statuses_of(raw_conn, task_id) == ["QUEUED", "RUNNING", "QUEUED"]

    start_worker()
    for task_id in ids:
        done = await wait_status(service, task_id, "COMPLETED")
        assert [m.attempt for m in done.metadata] == [1, 1, 1]


async def test_a_queued_task_whose_lock_exists_is_never_claimed(
    service: CheckMateService, start_worker: StartWorker
) -> None:
    locked = await service.create("demo.pipeline", params={"stages": 1}, invoke=True)
    foreign = TaskLock(owner="someone-else", acquired_at=datetime.now(UTC))
    assert await service.store.create_lock(locked.id, foreign)
    free = await service.create("demo.pipeline", params={"stages": 1}, invoke=True)
    worker = start_worker()

    await wait_status(service, free.id, "COMPLETED")
    await wait_until(lambda: "a lock object exists" in worker.log(), 10, worker.log)
    still = await service.get(locked.id)
    assert still.status is StageStatus.QUEUED
    assert still.metadata == []
    assert still.lock is not None
    assert still.lock.owner == "someone-else"


async def test_user_task_module_with_sync_and_async_stages_and_recorded_data(
    settings: Settings, start_worker: StartWorker
) -> None:
    short = settings.model_copy(update={"lock_timeout": 0.9})
    service = await CheckMateService.open(short)
    try:
        task = await service.create(
            "tests.mixed", params={"rows": 21, "sync_sleep": 1.5}, invoke=True
        )
        worker = start_worker(settings_=short)
        await wait_until(lambda: _record_stage_is(service, task.id, "prepare"), 20, worker.log)
        acquired = (await service.store.get_lock(task.id)).acquired_at
        # The sync stage blocks its thread for longer than the lock timeout; the heartbeat
        # goes on in the event loop, so the lock never looks stale.
        beats = set()

        async def prepare_ended() -> bool:
            current = await service.get(task.id)
            if current.stage != "prepare":
                return True
            if current.lock is not None:
                assert not current.lock.stale
                beats.add(current.lock.heartbeat_at)
            return False

        # Every 50 ms, not as fast as it can: on a loaded machine, a tight loop of reads would
        # starve the worker whose heartbeats it watches.
        await wait_until(prepare_ended, 20, worker.log, interval=0.05)
        assert len(beats - {acquired}) >= 2

        done = await wait_status(service, task.id, "COMPLETED")
        prepare, sum_up = done.metadata
        assert prepare.name == "prepare"
        assert prepare.data is not None
        assert prepare.data["rows"] == 21
        assert prepare.data["thread"].startswith("checkmate-stage")
        assert sum_up.name == "sum-up"
        assert sum_up.data == {
            "seen": ["prepare"],
            "params": {"rows": 21, "sync_sleep": 1.5},
            "total": 42,
        }
    finally:
        await service.close()


async def test_a_stage_returning_unserialisable_data_fails_the_task_not_the_worker(
    service: CheckMateService, start_worker: StartWorker
) -> None:
    bad = await service.create("tests.bad_data", invoke=True)
    after = await service.create("demo.pipeline", params={"stages": 1}, invoke=True)
    start_worker()
    failed = await wait_status(service, bad.id, "ERROR")
    assert "TypeError" in (failed.error or "")
    assert failed.metadata[0].status is StageStatus.ERROR
    await wait_status(service, after.id, "COMPLETED")


async def _all_completed(service: CheckMateService, count: int) -> bool:
    return await service.count(TaskFilter(status=StageStatus.COMPLETED)) == count


async def _queue_record_runs(
    service: CheckMateService, count: int, runs: Path, start_worker: StartWorker
) -> tuple[set[UUID], list[WorkerProcess]]:
    """`count` CREATED tasks and three ready workers; the caller invokes when it is ready."""
    ids = {
        (await service.create("tests.record_run", params={"log": str(runs)})).id
        for _ in range(count)
    }
    workers = [start_worker("--name", f"w{n}") for n in range(3)]
    for worker in workers:
        await worker.ready()
    return ids, workers


async def _invoke_all_and_wait(service: CheckMateService, count: int) -> None:
    queued, _ = await service.invoke(name="tests.record_run", max_results=count, dry_run=False)
    assert len(queued) == count
    await wait_until(lambda: _all_completed(service, count), 60)


@pytest.mark.slow
async def test_three_workers_run_300_tasks_each_exactly_once(
    service: CheckMateService,
    start_worker: StartWorker,
    raw_conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    runs = tmp_path / "runs.log"
    ids, workers = await _queue_record_runs(service, 300, runs, start_worker)
    await _invoke_all_and_wait(service, 300)

    # Each run appended one line: every task exactly once, all of them first attempts.
    lines = [line.split() for line in runs.read_text().splitlines()]
    assert sorted(UUID(task_id) for task_id, _, _ in lines) == sorted(ids)
    assert {attempt for _, attempt, _ in lines} == {"1"}
    assert len({pid for _, _, pid in lines}) == 3
    tasks = await service.list(name="tests.record_run", max_results=300)
    assert {task.worker for task in tasks} == {"w0", "w1", "w2"}
    for task in tasks:
        assert [(m.status, m.attempt) for m in task.metadata] == [(StageStatus.COMPLETED, 1)]
        assert task.lock is None
    events = await raw_conn.fetch(
        "SELECT task_id, array_agg(status ORDER BY id) AS statuses FROM status_events "
        "GROUP BY task_id"
    )
    assert {row["task_id"] for row in events} == ids
    assert {tuple(row["statuses"]) for row in events} == {
        ("CREATED", "QUEUED", "RUNNING", "COMPLETED")
    }
    for worker in workers:
        worker.signal(signal.SIGTERM)
    assert [await worker.exit_code() for worker in workers] == [0, 0, 0]


@pytest.mark.slow
async def test_subscribers_see_queued_running_completed_for_each_task(
    service: CheckMateService, start_worker: StartWorker, tmp_path: Path
) -> None:
    # Three workers commit short claim and finish transactions concurrently, so event ids
    # commit out of order with interleaved xids: the hub must hold and deliver every one.
    ids, _ = await _queue_record_runs(service, 300, tmp_path / "runs.log", start_worker)
    hub = EventHub(service.database, service.settings)
    await hub.start()
    seen: dict[UUID, list[StageStatus]] = {}

    async def collect() -> None:
        async for event in hub.subscribe(TaskFilter(name="tests.record_run")):
            seen.setdefault(event.task_id, []).append(event.status)

    collector = asyncio.create_task(collect())
    try:
        await wait_until(lambda: hub.subscriber_count == 1)
        await _invoke_all_and_wait(service, 300)
        await wait_until(lambda: sum(map(len, seen.values())) >= 3 * len(ids), 10)
        assert seen == {
            task_id: [StageStatus.QUEUED, StageStatus.RUNNING, StageStatus.COMPLETED]
            for task_id in ids
        }
    finally:
        await bounded(hub.stop(), "EventHub.stop")
        collector.cancel()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_an_idle_worker_sleeps_and_wakes_on_notification(
    service: CheckMateService, start_worker: StartWorker
) -> None:
    worker = start_worker("--poll-interval", "60")
    await worker.ready()
    await asyncio.sleep(0.5)
    before = _cpu_seconds(worker.pid)
    await asyncio.sleep(1.5)
    assert _cpu_seconds(worker.pid) - before < 0.1  # no busy loop while nothing is queued

    task = await service.create("demo.pipeline", params={"stages": 1}, invoke=True)
    # Far sooner than the 60 s poll: the NOTIFY of the QUEUED trigger woke the worker.
    await wait_status(service, task.id, "COMPLETED", within=10)
