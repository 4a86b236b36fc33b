"""What one GraphQL request costs in each layer of the HTTP path, in process (no sockets).

    python -m bench.bench_http_path [--requests 3000] \
        [--database-url postgresql://postgres@127.0.0.1:5432/postgres]

Times, per request, `{ __typename }` (no database work) and the compiled 100-task page: through
the whole ASGI app (middleware: metrics and Server-Timing, the auth gate, the body limit; then
Starlette's router and strawberry's view), through strawberry's view alone, and through
schema.execute alone. The differences are what the middleware and the view cost.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.requests import Request

from bench.bench_reads import DATABASE, QUEUES
from bench.databases import add_database_url, database_url, fresh_database
from bench.seed import seed
from checkmate.settings import Settings
from schema.context import GraphQLContext
from server import create_app

PAGE = (
    '{ tasks(filter: {queue: "q1", status: QUEUED}, maxResults: 100) '
    "{ nodes { id name queue status tags createdAt } } }"
)


def _scope(body: bytes) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/graphql", "raw_path": b"/graphql", "query_string": b"",
        "root_path": "", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 9999),
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }


async def _asgi(app: Any, body: bytes, requests: int, extra: dict[str, Any]) -> float:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"status {message['status']}")

    started = time.perf_counter()
    for _ in range(requests):
        await app({**_scope(body), **extra}, receive, send)
    return (time.perf_counter() - started) / requests * 1e6


async def run(args: argparse.Namespace) -> list[str]:
    url = database_url(args.database_url, DATABASE)
    if args.seed:
        url = await fresh_database(args.database_url, "checkmate_bench_http")
        await seed(url, 2000, queues=QUEUES)
    app = create_app(Settings(database_url=url, store_url="memory://"))
    lines = []
    async with app.router.lifespan_context(app):
        state = {"state": {"principal": None}, "app": app}
        graphql = next(route.app for route in app.routes if getattr(route, "path", "") == "/graphql"
                       and hasattr(route, "methods"))
        schema = graphql.schema
        for name, query in (("{ __typename }", "{ __typename }"), ("100-task page", PAGE)):
            body = orjson.dumps({"query": query})
            for _ in range(2):  # warm: caches, connections
                await _asgi(app, body, 20, {})
            whole = await _asgi(app, body, args.requests, {})
            view = await _asgi(graphql, body, args.requests, state)
            started = time.perf_counter()
            for _ in range(args.requests):
                context = GraphQLContext(
                    service=app.state.service, hub=None, request_id="b",
                    request=Request(_scope(body)),
                )
                result = await schema.execute(query, context_value=context)
                assert result.errors is None, result.errors
            execute = (time.perf_counter() - started) / args.requests * 1e6
            lines.append(
                f"{name}: whole app {whole:.0f} us, strawberry's view {view:.0f} us, "
                f"schema.execute {execute:.0f} us: middleware + routing {whole - view:.0f} us, "
                f"view {view - execute:.0f} us a request"
            )
    for line in lines:
        print(line, flush=True)
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    add_database_url(parser)
    parser.add_argument("--seed", action="store_true",
                        help="its own small database (default: bench_reads' database)")
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
