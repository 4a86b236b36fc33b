"""Real PostgreSQL for every test: the embedded server (or CHECKMATE_TEST_DATABASE_URL), one
migrated template database per run, cloned into a fresh database for each test."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from checkmate.db.engine import asyncpg_dsn, create_engine, start_embedded, stop_embedded
from checkmate.db.migrate import upgrade
from checkmate.service import CheckMateService
from checkmate.settings import Settings
from checkmate.store import TaskStore
from schema.execution import FAST_PATH
from tests.graphql_helpers import Api, running_api
from tests.subscription_support import ServerProcess, running_server
from tests.worker_support import start_worker  # noqa: F401  (a fixture for the worker tests)

TEMPLATE = f"checkmate_template_{os.getpid()}"


def _with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A URL to the test server's maintenance database."""
    configured = os.environ.get("CHECKMATE_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    with tempfile.TemporaryDirectory(prefix="checkmate-test-") as data_dir:
        yield start_embedded(Path(data_dir), database="postgres")
        stop_embedded(Path(data_dir))


async def _admin(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_url(server_url: str) -> Iterator[str]:
    async def build() -> None:
        await _admin(server_url, f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
        await _admin(server_url, f'CREATE DATABASE "{TEMPLATE}"')
        engine = create_engine(_with_database(server_url, TEMPLATE), pool_size=1)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(build())
    yield _with_database(server_url, TEMPLATE)
    asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)'))


@pytest.fixture
async def database_url(server_url: str, template_url: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    name = f"checkmate_test_{uuid.uuid4().hex[:12]}"
    await _admin(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
    yield _with_database(server_url, name)
    await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def raw_conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection, separate from the service's pool."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    yield conn
    await conn.close()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        store_url=(tmp_path / "store").as_uri(),
        data_dir=tmp_path,
        lock_timeout=60,
        batch_chunk_size=50,
    )


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[CheckMateService]:
    service = await CheckMateService.open(settings)
    yield service
    await service.close()


@pytest.fixture
def store(service: CheckMateService) -> TaskStore:
    return service.store


@pytest.fixture(autouse=True)
def fast_path_faults_fail_the_test() -> Iterator[None]:
    """schema/execution.py's fast path falls back to graphql-core on any fault and only warns
    once per process: in the tests, a fault there fails the test that caused it."""
    before = FAST_PATH.errors
    yield
    assert FAST_PATH.errors == before, "the fast completion path failed (see the warning log)"


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    """The app over real HTTP (httpx's ASGI transport, lifespan included)."""
    async with running_api(settings) as api:
        yield api


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """A real `checkmate serve` process (uvicorn on a loopback port) on the test's database."""
    with running_server(database_url, tmp_path) as server:
        yield server
