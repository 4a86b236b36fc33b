"""The API under test over real HTTP (httpx's ASGI transport, lifespan included), and ways to
write tasks exactly as the service and a worker leave them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import httpx
from starlette.applications import Starlette

from checkmate.service import CheckMateService
from checkmate.settings import Settings
from server import create_app
from tests.support import TaskRow, bounded, insert_task_rows


@dataclass
class Api:
    app: Starlette
    client: httpx.AsyncClient

    @property
    def service(self) -> CheckMateService:
        service: CheckMateService = self.app.state.service
        return service

    async def post(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The response body of a POST; asserts HTTP 200 and a JSON body."""
        response = await self.client.post("/graphql", json={"query": query, "variables": variables})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def data(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The data of a request that must succeed without any error."""
        body = await self.post(query, variables)
        assert "errors" not in body, body["errors"]
        data: dict[str, Any] = body["data"]
        return data

    async def error_codes(self, query: str, variables: dict[str, Any] | None = None) -> list[str]:
        body = await self.post(query, variables)
        return [error["extensions"]["code"] for error in body.get("errors", [])]


@asynccontextmanager
async def running_api(settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings)
    async with AsyncExitStack() as lifespan:
        await lifespan.enter_async_context(app.router.lifespan_context(app))
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                yield Api(app, client)
        finally:
            await bounded(lifespan.aclose(), "the app's shutdown (EventHub.stop, service.close)")


async def insert_tasks(
    raw_conn: asyncpg.Connection,
    count: int,
    *,
    statuses: Sequence[str] = ("CREATED",),
    queues: Sequence[str] = ("default",),
    names: Sequence[str] = ("demo.pipeline",),
    tags: Sequence[Sequence[str]] = ((),),
    same_time: int = 1,
    cleaned_every: int = 0,
    start: datetime | None = None,
) -> list[UUID]:
    """`count` records, attributes cycling through the given values; `same_time` consecutive
    tasks share one created_at (keyset pagination must break those ties by id)."""
    start = start or datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        TaskRow(
            name=names[i % len(names)],
            queue=queues[i % len(queues)],
            tags=tags[i % len(tags)],
            status=statuses[i % len(statuses)],
            created_at=start + timedelta(seconds=i // same_time),
            cleaned=bool(cleaned_every) and i % cleaned_every == 0,
        )
        for i in range(count)
    ]
    return await insert_task_rows(raw_conn, rows)
