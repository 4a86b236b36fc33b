"""What `checkmate tasks` costs from a terminal: wall time of the whole command (process start,
imports, connection, the work, output) for a dry run and real runs of `cancel` over N tasks, and
for `list`/`counts`; in-process service (the server's settings), as a subprocess each time."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from bench.databases import fresh_database
from checkmate.db.engine import asyncpg_dsn, start_embedded, stop_embedded

ROOT = Path(__file__).resolve().parent.parent

SEED = """
INSERT INTO tasks (name, queue, status)
SELECT 'demo.pipeline', 'bench', 'QUEUED' FROM generate_series(1, $1)
"""


async def reset(url: str, rows: int) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("TRUNCATE tasks, status_events, audit_log")
        await conn.execute(SEED, rows)
    finally:
        await conn.close()


def timed(env: dict[str, str], *args: str) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "checkmate.cli", "tasks", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, check=False,
    )
    elapsed = time.perf_counter() - start
    if result.returncode not in (0, 1):
        raise RuntimeError(result.stderr)
    return elapsed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a server's maintenance DB (default: embedded)")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="checkmate-bench-cli-") as data_dir:
        server = args.database_url or start_embedded(Path(data_dir), database="postgres")
        try:
            url = asyncio.run(fresh_database(server, "checkmate_bench_cli"))
            env = {
                **os.environ, "CHECKMATE_DATABASE_URL": url, "CHECKMATE_DATA_DIR": data_dir,
                "CHECKMATE_STORE_URL": Path(data_dir, "store").as_uri(),
            }
            n = str(args.rows)
            cases = [
                ("counts", ["counts"]),
                ("list --max 100", ["list", "--max", "100"]),
                (f"cancel, dry run, {args.rows:,} tasks", ["cancel", "--queue", "bench",
                 "--max", n, "--json"]),
                (f"cancel --execute --yes (one transaction), {args.rows:,} tasks",
                 ["cancel", "--queue", "bench", "--max", n, "--execute", "--yes", "--json"]),
                (f"cancel --execute --yes --no-transact (chunks of 500), {args.rows:,} tasks",
                 ["cancel", "--queue", "bench", "--max", n, "--execute", "--yes", "--json",
                  "--no-transact"]),
            ]
            print(f"{'command':<70} {'median':>8}")
            for label, command in cases:
                times = []
                for _ in range(args.repeat):
                    asyncio.run(reset(url, args.rows))
                    times.append(timed(env, *command))
                print(f"{label:<70} {statistics.median(times):>6.2f} s")
        finally:
            if not args.database_url:
                stop_embedded(Path(data_dir))


if __name__ == "__main__":
    main()
