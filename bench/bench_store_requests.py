"""Store requests per task on an S3 API (moto's server on loopback): what carries over to S3.

    python -m bench.bench_store_requests [--tasks 300] \
        [--database-url postgresql://postgres@127.0.0.1:5432/postgres]

Counts the HTTP requests moto's server receives (a counting WSGI wrapper around its app), by
method, for: a real cleanTasks of --tasks COMPLETED tasks (three stage objects each); a
100-task page with stage metadata over GraphQL; one worker run of a three-stage task.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from uuid import uuid4

import asyncpg
import boto3
import httpx
from moto.server import ThreadedMotoServer

from bench.bench_api import _free_port
from bench.databases import add_database_url, fresh_database
from bench.seed import seed
from checkmate.db.engine import asyncpg_dsn
from checkmate.models import StageStatus
from checkmate.service import CheckMateService
from checkmate.settings import Settings
from checkmate.worker import Worker
from server import create_app

BUCKET = "checkmate-bench"
METADATA_PAGE = (
    "{ tasks(maxResults: 100) { nodes { id status metadata { index name status } } } }"
)


class CountingApp:
    """A WSGI wrapper counting the requests that reach moto's app, by method."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.counts: Counter[str] = Counter()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        query = environ.get("QUERY_STRING", "")
        kind = environ["REQUEST_METHOD"] + (" list" if "list-type" in query else "")
        kind += " bulk-delete" if "delete" in query else ""
        self.counts[kind] += 1
        return self.app(environ, start_response)


def start_moto() -> tuple[ThreadedMotoServer, CountingApp]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update({
        "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true",
    })
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    wsgi: Any = server._server  # werkzeug's server: it reads .app for every request
    counting = CountingApp(wsgi.app)
    wsgi.app = counting
    return server, counting


def _per_task(counts: Counter[str], tasks: int) -> str:
    total = sum(counts.values())
    shown = ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items()))
    return f"{total} requests ({shown}): {total / tasks:.3f} a task"


async def run(args: argparse.Namespace) -> list[str]:
    server, counting = start_moto()
    lines = []
    try:
        url = await fresh_database(args.database_url, "checkmate_bench_store")
        store_url = f"s3://{BUCKET}/{uuid4().hex}"
        await seed(url, args.tasks, store_url=store_url, objects_for=args.tasks,
                   statuses=[StageStatus.COMPLETED])
        settings = Settings(database_url=url, store_url=store_url, max_results_cap=100_000)

        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                counting.counts.clear()
                body = (await client.post("/graphql", json={"query": METADATA_PAGE})).json()
                assert "errors" not in body, body
                page = Counter(counting.counts)
                counting.counts.clear()
                body = (await client.post("/graphql", json={"query": METADATA_PAGE})).json()
                assert "errors" not in body, body
                again = Counter(counting.counts)
        lines.append(f"100-task metadata page (COMPLETED tasks): {_per_task(page, 100)}")
        lines.append(f"the same page again (stage cache): {_per_task(again, 100)}")

        service = await CheckMateService.open(settings)
        try:
            counting.counts.clear()
            started = time.perf_counter()
            succeeded, failed = await service.clean(
                status=StageStatus.COMPLETED, max_results=args.tasks, dry_run=False
            )
            took = time.perf_counter() - started
            if failed or len(succeeded) != args.tasks:
                raise RuntimeError(f"clean failed: {failed[:3]}")
            counted = _per_task(counting.counts, args.tasks)
            lines.append(f"clean of {args.tasks} tasks ({took:.2f} s): {counted}")

            worker = Worker(service, ["default"], poll_interval=0.05)
            counting.counts.clear()
            running = asyncio.create_task(worker.run())
            task = await service.create("demo.pipeline", params={"stages": 3}, invoke=True)
            conn = await asyncpg.connect(asyncpg_dsn(url))
            try:
                deadline = time.monotonic() + 60
                while await conn.fetchval(
                    "SELECT status FROM tasks WHERE id = $1", task.id
                ) != StageStatus.COMPLETED.value:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the worker did not complete the task in 60 s")
                    await asyncio.sleep(0.02)
            finally:
                await conn.close()
            worker.stop()
            await running
            lines.append(f"one worker run (3 stages, create included): "
                         f"{_per_task(counting.counts, 1)}")
        finally:
            await service.close()
    finally:
        server.stop()
    for line in lines:
        print(line, flush=True)
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=300)
    add_database_url(parser)
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
