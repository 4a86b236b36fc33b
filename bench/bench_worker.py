"""Worker throughput: no-op 1-stage tasks completed per second, CheckMate vs procrastinate.

    python -m bench.bench_worker [--database-url postgresql://postgres@127.0.0.1:5432/postgres]
                                 [--tasks 2000] [--processes 1,3] [--concurrency 1,8]
                                 [--repeat 3] [--store-dir DIR]

Both sides run on the same PostgreSQL server, each in its own fresh database, with the same
number of worker processes and the same per-process concurrency. Workers are started and idle
first; then all tasks are queued at once (CheckMate: one `invoke` of CREATED tasks; procrastinate:
one batch defer) and the clock runs until the last one has completed. CheckMate's tasks are
`demo.pipeline` with stages=1 (an async no-op stage) and a local-folder store; procrastinate's
job is an async no-op. Without --database-url an embedded PostgreSQL is started.

Each setting runs --repeat times per side, the two sides alternating (C P, P C, C P, ...) so that
a machine whose load drifts favours neither; the table shows each side's median and every run.
CheckMate's store is a folder under --store-dir (default: the system's temporary folder); it is
part of what a CheckMate task costs (a lock, two stage metadata writes, a task object read).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench.databases import fresh_database
from checkmate.db.engine import asyncpg_dsn, start_embedded
from checkmate.models import TaskObject
from checkmate.store import TaskStore

REPO = Path(__file__).resolve().parent.parent
CHECKMATE_DB = "bench_worker_checkmate"
PROCRASTINATE_DB = "bench_worker_procrastinate"


async def _wait_for(condition: Callable[[], Awaitable[bool]], within: float) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark did not finish in time")
        await asyncio.sleep(0.01)


def _start(
    command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = REPO
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


def _stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


# --- CheckMate ------------------------------------------------------------------------------


async def _seed_checkmate(url: str, store_url: str, count: int) -> None:
    """`count` CREATED demo.pipeline tasks with stages=1, records and task objects."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await conn.fetch(
            "INSERT INTO tasks (name, created_at) "
            "SELECT 'demo.pipeline', now() + make_interval(secs => i / 1000.0) "
            "FROM generate_series(1, $1) AS i RETURNING id, created_at",
            count,
        )
    finally:
        await conn.close()
    store = TaskStore.from_url(store_url)
    created = {row["id"]: row["created_at"] for row in rows}

    async def write(task_id: Any) -> None:
        await store.put_task(
            TaskObject(
                id=task_id,
                name="demo.pipeline",
                queue="default",
                params={"stages": 1, "sleep": 0.0, "fail_at_stage": None},
                stages=["stage-1"],
                created_at=created[task_id],
            )
        )

    await store.for_each(created, write)


async def bench_checkmate(
    server_url: str,
    work: Path,
    tasks: int,
    processes: int,
    concurrency: int,
    store_root: Path | None = None,
    source: Path = REPO,
) -> float:
    """`source` is the source tree whose worker runs (the seeding and schema are this one's)."""
    url = await fresh_database(server_url, CHECKMATE_DB)
    store = Path(tempfile.mkdtemp(prefix="bench-worker-store-", dir=store_root or work))
    try:
        return await _bench_checkmate(
            url, store.as_uri(), work, tasks, processes, concurrency, source
        )
    finally:
        shutil.rmtree(store, ignore_errors=True)


async def _bench_checkmate(
    url: str,
    store_url: str,
    work: Path,
    tasks: int,
    processes: int,
    concurrency: int,
    source: Path,
) -> float:
    await _seed_checkmate(url, store_url, tasks)
    env = {
        **os.environ,
        "CHECKMATE_DATABASE_URL": url,
        "CHECKMATE_STORE_URL": store_url,
        "CHECKMATE_DATA_DIR": str(work),
        "PYTHONPATH": str(source),
    }
    logs = [work / f"checkmate-{processes}x{concurrency}-{n}.log" for n in range(processes)]
    command = [sys.executable, "-m", "checkmate.cli", "worker", "--concurrency", str(concurrency)]
    workers = [_start(command, log, env, cwd=source) for log in logs]
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        async def ready() -> bool:
            return all("serving queues" in log.read_text() for log in logs)

        await _wait_for(ready, 60)
        started = time.perf_counter()
        await conn.execute(
            "UPDATE tasks SET status = 'QUEUED', attempts = attempts + 1 WHERE status = 'CREATED'"
        )

        async def done() -> bool:
            count = await conn.fetchval("SELECT count(*) FROM tasks WHERE status = 'COMPLETED'")
            return int(count) == tasks

        await _wait_for(done, 600)
        elapsed = time.perf_counter() - started
        left = await conn.fetchval("SELECT count(*) FROM tasks WHERE status <> 'COMPLETED'")
        assert left == 0, f"{left} tasks not COMPLETED"
    finally:
        await conn.close()
        _stop(workers)
    return tasks / elapsed


# --- procrastinate --------------------------------------------------------------------------


def procrastinate_app(url: str) -> Any:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=asyncpg_dsn(url)))

    @app.task(name="noop", queue="default")
    async def noop() -> None:
        return None

    return app


async def _procrastinate_worker(url: str, concurrency: int) -> None:
    app = procrastinate_app(url)
    async with app.open_async():
        print("ready", flush=True)
        await app.run_worker_async(queues=["default"], concurrency=concurrency)


async def bench_procrastinate(
    server_url: str, work: Path, tasks: int, processes: int, concurrency: int
) -> float:
    url = await fresh_database(server_url, PROCRASTINATE_DB, migrated=False)
    app = procrastinate_app(url)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
    logs = [work / f"procrastinate-{processes}x{concurrency}-{n}.log" for n in range(processes)]
    command = [
        *(sys.executable, "-m", "bench.bench_worker", "--procrastinate-worker", url),
        *("--concurrency", str(concurrency)),
    ]
    workers = [_start(command, log) for log in logs]
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        async def ready() -> bool:
            return all("ready" in log.read_text() for log in logs)

        await _wait_for(ready, 60)
        await asyncio.sleep(1.0)  # the workers' LISTEN is set up just after "ready"
        async with app.open_async():
            started = time.perf_counter()
            await app.tasks["noop"].batch_defer_async(*({} for _ in range(tasks)))

            async def done() -> bool:
                count = await conn.fetchval(
                    "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
                )
                return int(count) == tasks

            await _wait_for(done, 600)
            elapsed = time.perf_counter() - started
    finally:
        await conn.close()
        _stop(workers)
    return tasks / elapsed


# --- main -----------------------------------------------------------------------------------


Bench = Callable[[str, Path, int, int, int], Awaitable[float]]
# (processes, concurrency, the rates of each side's runs)
Figures = list[tuple[int, int, dict[str, list[float]]]]


def _sides(args: argparse.Namespace) -> dict[str, Bench]:
    sides: dict[str, Bench] = {
        "checkmate": functools.partial(bench_checkmate, store_root=args.store_dir)
    }
    if args.baseline:
        sides["baseline"] = functools.partial(
            bench_checkmate, store_root=args.store_dir, source=args.baseline
        )
    sides["procrastinate"] = bench_procrastinate
    return sides


async def _run(server_url: str, args: argparse.Namespace, work: Path) -> Figures:
    sides = list(_sides(args).items())
    rows = []
    for concurrency in args.concurrency:
        for processes in args.processes:
            setup = (server_url, work, args.tasks, processes, concurrency)
            rates: dict[str, list[float]] = {name: [] for name, _ in sides}
            for run in range(args.repeat):
                # Each run starts with the next side: load drift favours none of them.
                for name, bench in sides[run % len(sides) :] + sides[: run % len(sides)]:
                    rates[name].append(await bench(*setup))
            rows.append((processes, concurrency, rates))
    return rows


def _print(rows: Figures, args: argparse.Namespace) -> None:
    server = args.database_url or "embedded PostgreSQL"
    print(
        f"\nno-op 1-stage tasks completed per second, median of {args.repeat} "
        f"({args.tasks} tasks per run, {server}, store under {args.store_dir or 'the temp dir'}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC)"
    )
    if args.baseline:
        print(f"baseline: the worker of {args.baseline}")
    names = list(rows[0][2]) if rows else []
    ratios = [name for name in names if name != "procrastinate"]
    print(
        f"{'processes':>9}  {'concurrency':>11}  "
        + "  ".join(f"{name:>13}" for name in names)
        + "".join(f"  {name[:5] + '/pr':>8}" for name in ratios)
        + "   runs"
    )
    for processes, concurrency, rates in rows:
        median = {name: statistics.median(values) for name, values in rates.items()}
        print(
            f"{processes:>9}  {concurrency:>11}  "
            + "  ".join(f"{median[name]:>13.0f}" for name in names)
            + "".join(f"  {median[name] / median['procrastinate']:>8.2f}" for name in ratios)
            + "   "
            + " | ".join(" ".join(f"{rate:.0f}" for rate in rates[name]) for name in names)
        )


def _ints(value: str) -> list[int]:
    return [int(part) for part in value.split(",")]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="server to use (default: embedded PostgreSQL)")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--processes", default=[1, 3], type=_ints)
    parser.add_argument("--concurrency", default=[1, 8], type=_ints, help="per process")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side and setting")
    parser.add_argument(
        "--store-dir", type=Path, help="folder for CheckMate's store (default: the temp dir)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="SOURCE_TREE",
        help="also run the worker of another source tree, e.g. an earlier commit unpacked with "
        "`git archive REV | tar -x -C DIR`, in the same run",
    )
    parser.add_argument("--procrastinate-worker", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # procrastinate warns that the bench defines its app in __main__; that is deliberate here.
    logging.getLogger("procrastinate").setLevel(logging.ERROR)
    if args.procrastinate_worker:
        asyncio.run(_procrastinate_worker(args.procrastinate_worker, args.concurrency[0]))
        return
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        work = Path(tmp)
        server_url = args.database_url or start_embedded(work / "pg", database="postgres")
        rows = asyncio.run(_run(server_url, args, work))
    _print(rows, args)


if __name__ == "__main__":
    main()
