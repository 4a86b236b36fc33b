"""Throughput and latency of the GraphQL API: a real uvicorn server process on loopback, an async
httpx load loop, a PostgreSQL database seeded set-based (bench.seed).

    python -m bench.bench_api --rows 1000000 \
        --database-url postgresql://postgres@127.0.0.1:5432/postgres

Creates (or reuses, when it already holds --rows tasks) the database `checkmate_bench_api` on
that server, and prints, for `tasks(maxResults: 100)` with six scalar fields and then with stage
metadata from the store: requests/s and client p50/p99 at --connections concurrent connections;
then the server time (Server-Timing header) of a 10,000-task query. Each load run stops after
--requests requests or --duration seconds, whichever comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.databases import add_database_url, existing_database
from bench.seed import seed
from checkmate.access import AccessControl
from checkmate.db.engine import asyncpg_dsn, create_engine

DATABASE = "checkmate_bench_api"
SCALARS = "id name queue status createdAt attempts"
PAGE = f"{{ tasks(maxResults: 100) {{ nodes {{ {SCALARS} }} }} }}"
PAGE_WITH_METADATA = (
    f"{{ tasks(maxResults: 100) {{ nodes {{ {SCALARS} "
    "metadata { index name status startedAt finishedAt } } } }"
)
BIG = f"{{ tasks(maxResults: 10000) {{ nodes {{ {SCALARS} }} }} }}"


async def prepare(server_url: str, rows: int, store_url: str, objects_for: int) -> str:
    """The bench database with `rows` tasks (seeded once, reused while the count matches)."""
    url = await existing_database(server_url, DATABASE)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        count = await conn.fetchval("SELECT count(*) FROM tasks")
        if count != rows:
            print(f"seeding {rows} tasks (found {count}) ...", flush=True)
            await conn.execute("TRUNCATE tasks, status_events")
            started = time.perf_counter()
            await seed(url, rows, store_url=store_url, objects_for=objects_for)
            print(f"seeded in {time.perf_counter() - started:.1f} s", flush=True)
    finally:
        await conn.close()
    return url


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(
    database_url: str, store_url: str, port: int, workers: int
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CHECKMATE_DATABASE_URL": database_url,
        "CHECKMATE_STORE_URL": store_url,
        "CHECKMATE_MAX_RESULTS_CAP": "10000",
        "CHECKMATE_DB_POOL_SIZE": "20",
    }
    command = [
        sys.executable, "-m", "uvicorn", "checkmate.cli:serving_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        "--workers", str(workers), "--no-access-log",
    ]
    return subprocess.Popen(command, env=env, cwd=Path(__file__).resolve().parents[1])


async def wait_ready(base: str, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                if (await client.get(f"{base}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("server not ready after 30 s")


async def set_access(url: str, with_token: bool) -> dict[str, str]:
    """Open access (no token ever created) or one operator token: the request headers to use."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("DELETE FROM api_tokens")
    finally:
        await conn.close()
    if not with_token:
        return {}
    engine = create_engine(url, pool_size=1)
    try:
        secret = await AccessControl(engine).create("bench", "operator")
    finally:
        await engine.dispose()
    return {"authorization": f"Bearer {secret}"}


async def load(
    base: str,
    query: str,
    connections: int,
    requests: int,
    duration: float,
    headers: dict[str, str] | None = None,
) -> dict[str, float]:
    """`connections` clients posting `query` back to back; bounded by count and by time."""
    latencies: list[float] = []
    server_ms: list[float] = []
    errors = 0
    issued = 0
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)

    async with httpx.AsyncClient(
        base_url=base, limits=limits, timeout=60, headers=headers
    ) as client:

        async def one_client() -> None:
            nonlocal issued, errors
            while issued < requests and time.perf_counter() < deadline:
                issued += 1
                started = time.perf_counter()
                response = await client.post("/graphql", json={"query": query})
                latencies.append(time.perf_counter() - started)
                body = response.json()
                if response.status_code != 200 or "errors" in body:
                    errors += 1
                server_ms.append(float(response.headers["server-timing"].split("dur=")[1]))

        # Warm up: connections, the server's parser/validation caches, PostgreSQL's buffers.
        for _ in range(3):
            await client.post("/graphql", json={"query": query})
        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": _percentile(latencies, 50) * 1000,
        "p99_ms": _percentile(latencies, 99) * 1000,
        "server_p50_ms": _percentile(server_ms, 50),
    }


def _percentile(values: Sequence[float], percent: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


async def big_query(base: str, repeats: int) -> dict[str, float]:
    """One 10,000-task query at a time: server time from Server-Timing, and the client's."""
    server_ms: list[float] = []
    client_ms: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for attempt in range(repeats + 2):
            started = time.perf_counter()
            response = await client.post("/graphql", json={"query": BIG})
            took = (time.perf_counter() - started) * 1000
            nodes = response.json()["data"]["tasks"]["nodes"]
            assert len(nodes) == 10_000, len(nodes)
            if attempt >= 2:  # the first two warm caches up
                client_ms.append(took)
                server_ms.append(float(response.headers["server-timing"].split("dur=")[1]))
    return {
        "server_p50_ms": statistics.median(server_ms),
        "server_min_ms": min(server_ms),
        "server_max_ms": max(server_ms),
        "client_p50_ms": statistics.median(client_ms),
        "bytes": float(len(response.content)),
    }


def _show(name: str, figures: dict[str, Any]) -> None:
    shown = ", ".join(
        f"{key}={value:.1f}" if isinstance(value, float) else f"{key}={value}"
        for key, value in figures.items()
    )
    print(f"{name}: {shown}", flush=True)


async def run(args: argparse.Namespace, store_url: str) -> None:
    url = await prepare(args.database_url, args.rows, store_url, objects_for=args.objects_for)
    headers = await set_access(url, args.token)
    port = _free_port()
    process = start_server(url, store_url, port, args.workers)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(base, process)
        print(
            f"rows={args.rows} connections={args.connections} server workers={args.workers} "
            f"cpus={os.cpu_count()} access={'token' if args.token else 'open'} "
            "(load generator on the same machine)",
            flush=True,
        )
        for name, query in (("tasks(100) six scalars", PAGE),
                            ("tasks(100) + metadata", PAGE_WITH_METADATA)):
            figures = await load(
                base, query, args.connections, args.requests, args.duration, headers
            )
            _show(name, figures)
        if not args.token:
            _show("tasks(10000) six scalars", await big_query(base, args.big_repeats))
    finally:
        process.terminate()
        process.wait(timeout=30)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    add_database_url(parser)
    parser.add_argument("--store-dir", default="/tmp/checkmate-bench-api-store")
    parser.add_argument("--objects-for", type=int, default=200,
                        help="newest tasks that get store objects (metadata)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--big-repeats", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument(
        "--token", action="store_true",
        help="requests carry an operator token (default: open access, no token exists)",
    )
    args = parser.parse_args(argv)
    store_dir = Path(args.store_dir).resolve()
    store_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(run(args, store_dir.as_uri()))


if __name__ == "__main__":
    main()
