"""The migrations produce exactly the schema of checkmate.db.tables, triggers included, and
downgrade and upgrade again cleanly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from checkmate.db.engine import create_engine
from checkmate.db.migrate import alembic_config, downgrade, upgrade
from checkmate.db.tables import metadata

TRIGGERS = {
    ("tasks_status_events_insert", "checkmate_status_events_on_insert"),
    ("tasks_status_events_update", "checkmate_status_events_on_update"),
}


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=1)
    yield engine
    await engine.dispose()


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def _diffs(engine: AsyncEngine) -> list[Any]:
    def compare(sync_connection: Any) -> list[Any]:
        opts = {"compare_type": True, "compare_server_default": True}
        context = MigrationContext.configure(sync_connection, opts=opts)
        return list(compare_metadata(context, metadata))

    async with engine.connect() as conn:
        return await conn.run_sync(compare)


async def _triggers(raw_conn: asyncpg.Connection) -> set[tuple[str, str]]:
    rows = await raw_conn.fetch(
        "SELECT t.tgname, p.proname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
        "WHERE t.tgrelid = 'tasks'::regclass AND NOT t.tgisinternal"
    )
    return {(row["tgname"], row["proname"]) for row in rows}


async def _tables(raw_conn: asyncpg.Connection) -> set[str]:
    rows = await raw_conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    )
    return {row["tablename"] for row in rows}


async def test_migrated_schema_is_the_models_schema(
    engine: AsyncEngine, raw_conn: asyncpg.Connection
) -> None:
    assert await _diffs(engine) == []
    assert await _triggers(raw_conn) == TRIGGERS
    # The triggers are statement-level with transition tables (one notification per statement).
    rows = await raw_conn.fetch(
        "SELECT tgtype, tgoldtable, tgnewtable FROM pg_trigger "
        "WHERE tgrelid = 'tasks'::regclass AND NOT tgisinternal"
    )
    row_level_bit = 1
    assert all(row["tgtype"] & row_level_bit == 0 for row in rows)
    assert all(row["tgnewtable"] == "new_rows" for row in rows)


async def test_downgrade_and_upgrade_round_trip(
    engine: AsyncEngine, raw_conn: asyncpg.Connection
) -> None:
    await downgrade(engine, "base")
    assert await _tables(raw_conn) == {"alembic_version"}
    functions = await raw_conn.fetch(
        "SELECT proname FROM pg_proc WHERE proname LIKE 'checkmate_%'"
    )
    assert functions == []

    await upgrade(engine)

    assert await _tables(raw_conn) == {
        "alembic_version", "tasks", "status_events", "api_tokens", "audit_log"
    }
    assert await _diffs(engine) == []
    assert await _triggers(raw_conn) == TRIGGERS
    assert await raw_conn.fetchval("SELECT version_num FROM alembic_version") == _head()
    # Upgrading an up-to-date database is a no-op.
    await upgrade(engine)
    assert await _diffs(engine) == []


async def test_drift_is_detected(engine: AsyncEngine, raw_conn: asyncpg.Connection) -> None:
    """The comparison above can fail: a dropped index or a changed default shows up."""
    await raw_conn.execute("DROP INDEX tasks_tags_idx")
    await raw_conn.execute("ALTER TABLE tasks ALTER COLUMN queue SET DEFAULT 'other'")
    kinds = {diff[0] if isinstance(diff, tuple) else diff[0][0] for diff in await _diffs(engine)}
    assert kinds == {"add_index", "modify_default"}
