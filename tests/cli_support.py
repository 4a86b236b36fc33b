"""Helpers of the `checkmate tasks` tests: the CHECKMATE_* environment of a test database, the
command through typer's runner, and plain SQL for seeding and checking state."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from typer.testing import CliRunner, Result

from checkmate.cli import app
from checkmate.db.engine import asyncpg_dsn
from checkmate.service import CheckMateService
from checkmate.settings import Settings, get_settings
from tests.support import TaskRow, insert_task_rows


@pytest.fixture
def cli_env(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """The CHECKMATE_* environment the commands read, as the server would."""
    monkeypatch.setenv("CHECKMATE_DATABASE_URL", database_url)
    monkeypatch.setenv("CHECKMATE_STORE_URL", (tmp_path / "store").as_uri())
    monkeypatch.setenv("CHECKMATE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CHECKMATE_URL", raising=False)
    monkeypatch.delenv("CHECKMATE_TOKEN", raising=False)
    # Commands that read get_settings() (demo, db) must see this test's environment.
    get_settings.cache_clear()
    yield tmp_path / "store"
    get_settings.cache_clear()


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(app, ["tasks", *args], input=input)


def lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def sql(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def seed(database_url: str, rows: list[TaskRow]) -> list[str]:
    async def go() -> list[UUID]:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            return await insert_task_rows(conn, rows)
        finally:
            await conn.close()

    return [str(task_id) for task_id in asyncio.run(go())]


def completed_with_objects(database_url: str, store: Path, count: int) -> list[str]:
    """Tasks made by the service (task objects in the store), then COMPLETED."""

    async def go() -> list[str]:
        settings = Settings(database_url=database_url, store_url=store.as_uri())
        service = await CheckMateService.open(settings)
        try:
            tasks = [await service.create("demo.pipeline", tags=["done"]) for _ in range(count)]
        finally:
            await service.close()
        return [str(task.id) for task in tasks]

    ids = asyncio.run(go())
    sql(database_url, "UPDATE tasks SET status = 'COMPLETED' WHERE id = ANY($1::uuid[])", ids)
    return ids


def objects_of(store: Path, task_id: str) -> bool:
    return (store / "tasks" / task_id / "task.json").exists()
