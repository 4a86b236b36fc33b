"""Alembic, driven from code: `checkmate db upgrade` and the embedded default call this."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine

HERE = Path(__file__).resolve().parent


def alembic_config(url: str | None = None) -> Config:
    config = Config(str(HERE / "alembic.ini"))
    config.set_main_option("script_location", str(HERE / "migrations"))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


async def _run(engine: AsyncEngine, step: Callable[[Config, str], None], revision: str) -> None:
    def run_step(sync_connection: object) -> None:
        config = alembic_config()
        config.attributes["connection"] = sync_connection
        step(config, revision)

    async with engine.begin() as connection:
        # Two processes starting at once must not both run the DDL.
        # Waiting for another migrating process, or DDL on a big table, may outlast the
        # engine's statement_timeout, which is meant for requests.
        await connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
        await connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7426818361)")
        await connection.run_sync(run_step)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the database to `revision` over one of the engine's connections."""
    await _run(engine, command.upgrade, revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Take the database back to `revision` ("base" drops everything CheckMate created)."""
    await _run(engine, command.downgrade, revision)


async def current(engine: AsyncEngine) -> tuple[str | None, str | None]:
    """(the database's revision, or None before any migration; the newest this code knows)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    def read(sync_connection: Any) -> str | None:
        revision: str | None = MigrationContext.configure(sync_connection).get_current_revision()
        return revision

    async with engine.connect() as connection:
        revision = await connection.run_sync(read)
    return revision, ScriptDirectory.from_config(alembic_config()).get_current_head()
