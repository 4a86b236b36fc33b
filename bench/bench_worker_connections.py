"""What a worker's database connection costs per statement: its held connections
(checkmate.worker_db.WorkerDatabase) against asyncpg's pool, with and without the pool's reset.

    python -m bench.bench_worker_connections [--database-url URL] [--statements 20000]
                                             [--concurrency 1,8] [--repeat 3]

Each way runs the worker's stage-start UPDATE (one row, prepared) `--statements` times, from
`--concurrency` coroutines at once, and reports statements per second and the client's CPU
microseconds per statement (medians of --repeat; the ways alternate).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from bench.databases import fresh_database
from checkmate.db import queries
from checkmate.db.engine import asyncpg_dsn, start_embedded
from checkmate.worker_db import WorkerDatabase

Way = Callable[[int, Any], Awaitable[None]]


async def _no_reset(_conn: asyncpg.Connection) -> None:
    return None


async def _measure(url: str, statements: int, concurrency: int) -> dict[str, tuple[float, float]]:
    admin = await asyncpg.connect(asyncpg_dsn(url))
    # A row per coroutine: they never wait on each other's row locks.
    ids = [
        row[0]
        for row in await admin.fetch(
            "INSERT INTO tasks (name, status, worker, attempts) SELECT 'demo.pipeline', "
            "'RUNNING', 'bench', 1 FROM generate_series(1, $1) RETURNING id",
            concurrency,
        )
    ]
    await admin.close()
    held = WorkerDatabase(url, "bench", retry_seconds=10)
    pool = await asyncpg.create_pool(asyncpg_dsn(url), min_size=concurrency, max_size=concurrency)
    quiet = await asyncpg.create_pool(
        asyncpg_dsn(url), min_size=concurrency, max_size=concurrency, reset=_no_reset
    )

    async def run_held(count: int, task_id: Any) -> None:
        for _ in range(count):
            async with held.statement() as conn:
                await queries.set_running_stage(conn, task_id, "bench", 1, "stage-1")

    def run_pool(chosen: Any) -> Way:
        async def run(count: int, task_id: Any) -> None:
            for _ in range(count):
                async with chosen.acquire() as conn:
                    await queries.set_running_stage(conn, task_id, "bench", 1, "stage-1")

        return run

    ways: dict[str, Way] = {
        "held connections": run_held,
        "asyncpg pool": run_pool(pool),
        "pool, no reset": run_pool(quiet),
    }
    results = {}
    for name, way in ways.items():
        # Warm: connections open, statements prepared.
        await asyncio.gather(*(way(50, task_id) for task_id in ids))
        cpu, wall = time.process_time(), time.perf_counter()
        share = statements // concurrency
        await asyncio.gather(*(way(share, task_id) for task_id in ids))
        done = share * concurrency
        wall = time.perf_counter() - wall
        results[name] = (done / wall, (time.process_time() - cpu) / done * 1e6)
    await held.close()
    await pool.close()
    await quiet.close()
    return results


async def _main(args: argparse.Namespace, work: Path) -> None:
    server = args.database_url or start_embedded(work / "pg", database="postgres")
    url = await fresh_database(server, "bench_worker_connections")
    for concurrency in args.concurrency:
        runs: dict[str, list[tuple[float, float]]] = {}
        for _ in range(args.repeat):
            measured = await _measure(url, args.statements, concurrency)
            for name, one_run in measured.items():
                runs.setdefault(name, []).append(one_run)
        print(f"\nconcurrency {concurrency}, {args.statements} statements, median of {args.repeat}")
        print(f"{'way':>18}  {'statements/s':>12}  {'client CPU us/stmt':>18}")
        for name, figures in runs.items():
            per_second = statistics.median(figure[0] for figure in figures)
            cpu_us = statistics.median(figure[1] for figure in figures)
            print(f"{name:>18}  {per_second:>12.0f}  {cpu_us:>18.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url")
    parser.add_argument("--statements", type=int, default=20_000)
    parser.add_argument(
        "--concurrency", type=lambda v: [int(p) for p in v.split(",")], default=[1, 8]
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-connections-") as tmp:
        asyncio.run(_main(args, Path(tmp)))


if __name__ == "__main__":
    main()
