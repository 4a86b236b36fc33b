"""Databases for the benches: each bench works in its own database on the given server."""

from __future__ import annotations

import argparse
import os

import asyncpg
from sqlalchemy.engine import make_url

from checkmate.db.engine import asyncpg_dsn, create_engine
from checkmate.db.migrate import upgrade


def database_url(server_url: str, name: str) -> str:
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


async def admin(server_url: str, *statements: str) -> None:
    """Run statements (CREATE/DROP DATABASE cannot run in a transaction) on the server."""
    conn = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def migrate(url: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


async def fresh_database(server_url: str, name: str, *, migrated: bool = True) -> str:
    """Drop and recreate database `name` (migrated unless told otherwise); return its URL."""
    await admin(
        server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'
    )
    url = database_url(server_url, name)
    if migrated:
        await migrate(url)
    return url


async def existing_database(server_url: str, name: str) -> str:
    """Database `name`, created if missing, migrated; its URL (what it holds is kept)."""
    conn = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    finally:
        await conn.close()
    if not exists:
        await admin(server_url, f'CREATE DATABASE "{name}"')
    url = database_url(server_url, name)
    await migrate(url)
    return url


def add_database_url(parser: argparse.ArgumentParser) -> None:
    """--database-url: a server's maintenance database (CHECKMATE_BENCH_DATABASE_URL, else the
    machine's PostgreSQL on 127.0.0.1); a bench works in its own database on it."""
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "CHECKMATE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a server's maintenance database; the bench uses its own database on it",
    )
