"""Live feed figures: commit-to-client latency with many open subscriptions on ONE server process.

    python -m bench.bench_subscriptions [--database-url postgresql://postgres@127.0.0.1/postgres]
        [--subscriptions 1000,10000] [--changes 20] [--interval 1.0] [--clients 4]
        [--filter all|own-task] [--server-compression] [--no-compression]

For each subscription count it starts one API server process (uvicorn,
`checkmate.cli:serving_app`, as `checkmate serve` runs it) on a loopback port, opens that many
real websockets (graphql-transport-ws, one subscription per socket) from `--clients` client
processes, waits until the server's hub reports them all registered, then commits `--changes`
status changes one at a time, `--interval` seconds apart, from a separate asyncpg connection.
Latency = the client's clock when the event arrived minus the writer's clock when its COMMIT
returned (same machine, same clock); every (subscription, event) delivery is one sample. It also
prints the server process's RSS idle, with the subscriptions open, and at the end, and the
server's CPU time (user + system) per committed change, from the first commit until `--interval`
after the last one.

--filter all: every subscription matches every change (worst case: each commit is sent to all
sockets). --filter own-task: each subscription filters on the id of one task (ids filter), each
change touches one task, so each commit goes to one socket; this measures the hub's matching
with many distinct filters.

The client processes share the machine's cores with the server, so the figures include their
own receive delays. Without --database-url it runs on an embedded PostgreSQL in a temp folder.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from bench.databases import fresh_database
from checkmate.db.engine import asyncpg_dsn, start_embedded
from tests.subscription_support import ServerProcess, subscribe

DATABASE = "checkmate_bench_subscriptions"
CONNECT_CONCURRENCY = 100


# --- client process ------------------------------------------------------------------------


async def _client(
    ws_url: str, task_ids: list[str], changes: int, out: Path, compress: bool
) -> None:
    """Open one subscription per task id (or unfiltered), report READY, record arrivals."""
    arrivals: list[tuple[str, float]] = []
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    ready = 0
    all_ready = asyncio.Event()

    async def one(task_id: str) -> None:
        nonlocal ready
        variables = {"filter": {"ids": [task_id]}} if task_id else {}
        await gate.acquire()
        released = False
        try:
            async with subscribe(ws_url, variables, compress=compress) as subscription:
                gate.release()
                released = True
                ready += 1
                if ready == len(task_ids):
                    all_ready.set()
                for _ in range(changes):
                    event = await subscription.next_event()
                    arrivals.append((event["eventId"], time.time()))
        finally:
            if not released:
                gate.release()

    tasks = [asyncio.create_task(one(task_id)) for task_id in task_ids]
    await all_ready.wait()
    # The measuring side must not pause: its open sockets are frozen out of the collector's
    # full passes (a 1 s pause here would read as server latency).
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    print("READY", flush=True)
    await asyncio.gather(*tasks)
    await asyncio.to_thread(out.write_text, json.dumps(arrivals))


# --- orchestration -------------------------------------------------------------------------


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _subscribers(server: ServerProcess) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{server.url}/metrics")).text
    for line in text.splitlines():
        if line.startswith("checkmate_event_subscribers "):
            return float(line.split()[1])
    return 0.0


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _run(url: str, data_dir: Path, count: int, args: argparse.Namespace) -> dict[str, Any]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    own_task = args.filter == "own-task"
    tasks_needed = count if own_task else 1
    rows = await conn.fetch(
        "INSERT INTO tasks (name) SELECT 'bench' FROM generate_series(1, $1) RETURNING id",
        tasks_needed,
    )
    task_ids = [str(row["id"]) for row in rows]
    server = ServerProcess(url, data_dir, ws_compression=args.server_compression)
    clients: list[subprocess.Popen[str]] = []
    try:
        server.wait_ready()
        idle_rss = server.rss_bytes
        started = time.monotonic()
        per_client = [
            (task_ids if own_task else [""] * count)[i :: args.clients] for i in range(args.clients)
        ]
        # own-task: each subscription sees one change of its own task per round.
        changes_per_sub = args.changes if not own_task else 1
        outs = [data_dir / f"client-{count}-{i}.json" for i in range(args.clients)]
        for share, out in zip(per_client, outs, strict=True):
            ids_file = out.with_suffix(".ids")
            ids_file.write_text(json.dumps(share))
            clients.append(subprocess.Popen(  # noqa: ASYNC220 (started once, before timing)
                [sys.executable, "-m", "bench.bench_subscriptions", "--client",
                 "--ws-url", server.ws_url, "--ids-file", str(ids_file),
                 "--changes", str(changes_per_sub), "--out", str(out),
                 *(["--no-compression"] if args.no_compression else [])],
                stdout=subprocess.PIPE, text=True,
            ))
        for client in clients:
            assert client.stdout is not None
            if client.stdout.readline().strip() != "READY":
                raise RuntimeError("a client failed to open its subscriptions")
        while await _subscribers(server) < count:  # noqa: ASYNC110 (polls another process)
            await asyncio.sleep(0.1)
        setup_seconds = time.monotonic() - started
        open_rss = server.rss_bytes
        committed: dict[str, float] = {}
        server_cpu = server.cpu_seconds
        targets = task_ids if own_task else [task_ids[0]] * args.changes
        if own_task:
            # Spread `changes` commits over the run; each touches a different task.
            step = max(1, len(task_ids) // args.changes)
            targets = task_ids[::step][: args.changes]
        for index, task_id in enumerate(targets):
            status = "QUEUED" if index % 2 == 0 else "CANCELED"
            await conn.execute("UPDATE tasks SET status = $1 WHERE id = $2", status, task_id)
            committed_at = time.time()
            event_id = await conn.fetchval("SELECT max(id) FROM status_events")
            committed[str(event_id)] = committed_at
            await asyncio.sleep(args.interval)
        # Taken before own-task's final release of the untouched subscriptions (not measured).
        server_cpu = server.cpu_seconds - server_cpu
        if own_task:
            # The subscriptions whose task did not change are still waiting: change them now
            # (not measured) so the clients can finish.
            touched = set(targets)
            rest = [task_id for task_id in task_ids if task_id not in touched]
            await conn.execute(
                "UPDATE tasks SET status = 'QUEUED' WHERE id = ANY($1::uuid[])", rest
            )
        for client in clients:
            client.wait(timeout=600)
        end_rss = server.rss_bytes
        latencies = [
            (arrived - committed[event_id]) * 1000
            for out in outs
            for event_id, arrived in json.loads(out.read_text())
            if event_id in committed
        ]
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
        server.stop()
        await conn.close()
    return {
        "subscriptions": count,
        "filter": args.filter,
        "changes": len(committed),
        "deliveries": len(latencies),
        "p50_ms": statistics.median(latencies),
        "p99_ms": _percentile(latencies, 0.99),
        "max_ms": max(latencies),
        "setup_s": setup_seconds,
        "rss_idle_mib": idle_rss / 2**20,
        "rss_open_mib": open_rss / 2**20,
        "rss_end_mib": end_rss / 2**20,
        "server_cpu_ms_per_change": server_cpu * 1000 / len(committed),
    }


async def _main(args: argparse.Namespace) -> None:
    _raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="checkmate-bench-subs-") as tmp:
        data_dir = Path(tmp)
        server_url = args.database_url or start_embedded(data_dir / "pg", database="postgres")
        print(f"database: {make_url(server_url).render_as_string(hide_password=True)}")
        print(f"{'subs':>6} {'filter':>8} {'changes':>7} {'deliveries':>10} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'max ms':>8} {'setup s':>7} {'RSS idle':>9} {'RSS open':>9} "
              f"{'RSS end':>8} {'srv CPU/change':>14}")
        for count in args.subscriptions:
            url = await fresh_database(server_url, DATABASE)
            result = await _run(url, data_dir, count, args)
            print(f"{result['subscriptions']:>6} {result['filter']:>8} {result['changes']:>7} "
                  f"{result['deliveries']:>10} {result['p50_ms']:>8.1f} {result['p99_ms']:>8.1f} "
                  f"{result['max_ms']:>8.1f} {result['setup_s']:>7.1f} "
                  f"{result['rss_idle_mib']:>6.0f}MiB {result['rss_open_mib']:>6.0f}MiB "
                  f"{result['rss_end_mib']:>5.0f}MiB "
                  f"{result['server_cpu_ms_per_change']:>12.0f}ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="PostgreSQL server (its maintenance DB URL)")
    parser.add_argument("--subscriptions", default="1000,10000",
                        type=lambda text: [int(part) for part in text.split(",")])
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--filter", choices=["all", "own-task"], default="all")
    parser.add_argument("--no-compression", action="store_true",
                        help="clients do not offer permessage-deflate")
    parser.add_argument("--server-compression", action="store_true",
                        help="the server accepts permessage-deflate (checkmate serve "
                             "--ws-compression); off by default, as in checkmate serve")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ws-url", help=argparse.SUPPRESS)
    parser.add_argument("--ids-file", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        _raise_fd_limit()
        ids = json.loads(Path(args.ids_file).read_text())
        asyncio.run(
            _client(args.ws_url, ids, args.changes, Path(args.out), not args.no_compression)
        )
        return
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
