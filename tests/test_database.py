"""The Database seam: an unreachable database is UNAVAILABLE on every entry point, a failing
statement is not."""

from __future__ import annotations

import socket

import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from checkmate.db.database import Database
from checkmate.errors import ServiceError


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/checkmate"


async def test_every_entry_point_says_unavailable_when_nothing_listens() -> None:
    database = Database.create(closed_port_url(), pool_size=1)
    try:
        for entry in (database.connect(), database.begin()):
            with pytest.raises(ServiceError) as raised:
                async with entry:
                    pass
            assert raised.value.code == ServiceError.UNAVAILABLE
        with pytest.raises(ServiceError) as raised:
            await database.raw_connect()
        assert raised.value.code == ServiceError.UNAVAILABLE
        assert isinstance(raised.value.__cause__, OSError)
    finally:
        await database.dispose()


async def test_a_missing_database_is_unavailable(database_url: str) -> None:
    gone = database_url.replace("/checkmate_test_", "/checkmate_gone_", 1)
    database = Database.create(gone, pool_size=1)
    try:
        with pytest.raises(ServiceError) as raised:
            async with database.connect():
                pass
        assert raised.value.code == ServiceError.UNAVAILABLE
        with pytest.raises(ServiceError):
            await database.raw_connect()
    finally:
        await database.dispose()


async def test_a_failing_statement_is_not_mistaken_for_an_outage(database_url: str) -> None:
    database = Database.create(database_url, pool_size=1)
    try:
        with pytest.raises(ProgrammingError):
            async with database.connect() as conn:
                await conn.execute(text("SELECT * FROM no_such_table"))
        conn = await database.raw_connect()
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    finally:
        await database.dispose()


async def test_a_connection_terminated_in_use_is_unavailable(database_url: str) -> None:
    database = Database.create(database_url, pool_size=1)
    try:
        with pytest.raises(ServiceError) as raised:
            async with database.connect() as conn:
                await conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        assert raised.value.code == ServiceError.UNAVAILABLE
        # The pool replaces the lost connection.
        async with database.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await database.dispose()
