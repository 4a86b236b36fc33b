"""Core figures: batch cancel vs a bare UPDATE, list over a million rows, embedded cold start.

    python -m bench.bench_core [--database-url postgresql://postgres@127.0.0.1/postgres]
                               [--cancel-rows 100000] [--list-rows 1000000] [--repeat 3]

Without --database-url it runs on an embedded PostgreSQL in a temporary folder. The process
sets the GC policy of `checkmate serve` (checkmate.gcpolicy) unless --default-gc. Every cancel
measurement runs on a fresh copy (CREATE DATABASE ... TEMPLATE) of the same seeded rows, with
the same status-event trigger firing for the bare UPDATE as for the service.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from bench.databases import admin, database_url, fresh_database
from bench.seed import seed
from checkmate.db.engine import asyncpg_dsn, start_embedded
from checkmate.gcpolicy import apply_process_policy
from checkmate.models import StageStatus
from checkmate.service import CheckMateService
from checkmate.settings import HARD_MAX_RESULTS, Settings

NON_TERMINAL = [StageStatus.CREATED, StageStatus.QUEUED, StageStatus.RUNNING]
BARE_CANCEL = (
    "UPDATE tasks SET status = 'CANCELED', finished_at = now(), updated_at = now() "
    "WHERE status IN ('CREATED', 'QUEUED', 'RUNNING')"
)
Row = tuple[str, float, str]


async def _template(server_url: str, name: str, rows: int, **seed_args: Any) -> str:
    url = await fresh_database(server_url, name)
    await seed(url, rows, **seed_args)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return name


@asynccontextmanager
async def _copy(server_url: str, template: str) -> AsyncIterator[str]:
    name = f"{template}_run"
    await admin(
        server_url,
        f'DROP DATABASE IF EXISTS "{name}"',
        f'CREATE DATABASE "{name}" TEMPLATE "{template}"',
    )
    try:
        yield database_url(server_url, name)
    finally:
        await admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def _service(url: str, store_url: str, **settings: Any) -> AsyncIterator[CheckMateService]:
    service = await CheckMateService.open(
        Settings(
            database_url=url,
            store_url=store_url,
            max_results_cap=HARD_MAX_RESULTS,
            **settings,
        )
    )
    try:
        await service.count()  # open the pool's connection before timing
        yield service
    finally:
        await service.close()


async def _timed(run: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await run()
    return time.perf_counter() - start


async def bench_cancel(server_url: str, rows: int, repeat: int, chunk: int) -> list[Row]:
    template = await _template(server_url, "bench_core_cancel", rows, statuses=NON_TERMINAL)
    times: dict[str, list[float]] = {}

    async def bare(url: str) -> float:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            return await _timed(lambda: conn.execute(BARE_CANCEL))
        finally:
            await conn.close()

    async def service_cancel(url: str, **kw: Any) -> float:
        async with _service(url, "memory://", batch_chunk_size=chunk) as service:
            return await _timed(
                lambda: service.cancel(statuses=NON_TERMINAL, max_results=rows, **kw)
            )

    runs: dict[str, Callable[[str], Awaitable[float]]] = {
        "bare UPDATE (same rows, same trigger)": bare,
        "service cancel dry_run": lambda url: service_cancel(url, dry_run=True),
        "service cancel db_transact=True": lambda url: service_cancel(url, dry_run=False),
        "service cancel db_transact=False": lambda url: service_cancel(
            url, dry_run=False, db_transact=False
        ),
    }
    for _ in range(repeat):
        for label, run in runs.items():
            async with _copy(server_url, template) as url:
                times.setdefault(label, []).append(await run(url))
    bare_time = statistics.median(times["bare UPDATE (same rows, same trigger)"])
    return [
        (
            f"{label}, {rows:,} tasks",
            statistics.median(values),
            f"{statistics.median(values) / bare_time:.2f}x bare",
        )
        for label, values in times.items()
    ]


def _listing(
    service: CheckMateService, filters: dict[str, Any], include_metadata: bool
) -> Callable[[], Awaitable[Any]]:
    return lambda: service.list(max_results=100, include_metadata=include_metadata, **filters)


async def bench_list(server_url: str, rows: int, repeat: int, store_dir: Path) -> list[Row]:
    store_url = store_dir.as_uri()
    await _template(
        server_url, "bench_core_list", rows, store_url=store_url, objects_for=100
    )
    url = database_url(server_url, "bench_core_list")
    queries: dict[str, dict[str, Any]] = {
        "newest first": {},
        "oldest first": {"sort": "asc"},
        "status=ERROR": {"status": StageStatus.ERROR},
        "queue=gpu, tags=[team-3]": {"queue": "gpu", "tags": ["team-3"]},
    }
    out: list[Row] = []
    async with _service(url, store_url) as service:
        for label, filters in queries.items():
            for include_metadata in (False, True):
                if include_metadata and label != "newest first":
                    continue  # only the newest 100 have objects
                times = [
                    await _timed(_listing(service, filters, include_metadata))
                    for _ in range(repeat * 5)
                ]
                meta = "with" if include_metadata else "without"
                out.append(
                    (
                        f"list 100 of {rows:,}, {label}, {meta} metadata",
                        statistics.median(times),
                        f"min {min(times) * 1000:.1f} ms",
                    )
                )
    return out


_START = """
import sys, time
from pathlib import Path
start = time.perf_counter()
from checkmate.db.engine import start_embedded
start_embedded(Path(sys.argv[1]))
print(time.perf_counter() - start)
"""


def bench_cold_start(data_dir: Path) -> list[Row]:
    out: list[Row] = []
    for label in ("embedded cold start (initdb + start)", "embedded restart (existing data)"):
        wall = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", _START, str(data_dir)],
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - wall
        inside = float(result.stdout.strip().splitlines()[-1])
        out.append((label, inside, f"{wall:.2f} s whole process incl. stop"))
    return out


def _print(rows: list[Row]) -> None:
    width = max(len(label) for label, _, _ in rows)
    print(f"{'measurement':<{width}}  {'median':>10}  note")
    for label, seconds, note in rows:
        shown = f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
        print(f"{label:<{width}}  {shown:>10}  {note}")


async def _main(args: argparse.Namespace, work: Path) -> list[Row]:
    server_url = args.database_url or start_embedded(work / "db", database="postgres")
    rows: list[Row] = []
    if args.cancel_rows:
        rows += await bench_cancel(server_url, args.cancel_rows, args.repeat, args.chunk)
    if args.list_rows:
        rows += await bench_list(server_url, args.list_rows, args.repeat, work / "store")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--database-url", help="a server's maintenance DB (default: embedded)")
    parser.add_argument("--cancel-rows", type=int, default=100_000)
    parser.add_argument("--list-rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=Settings().batch_chunk_size)
    parser.add_argument("--no-cold-start", action="store_true")
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="keep Python's default collector (as a program that imports the service would) "
        "instead of the policy `checkmate serve` and `checkmate worker` set",
    )
    args = parser.parse_args(argv)
    if not args.default_gc:
        apply_process_policy()
    with tempfile.TemporaryDirectory(prefix="checkmate-bench-") as tmp:
        work = Path(tmp)
        rows = asyncio.run(_main(args, work))
        if not args.no_cold_start:
            rows += bench_cold_start(work / "cold")
    _print(rows)


if __name__ == "__main__":
    main()
