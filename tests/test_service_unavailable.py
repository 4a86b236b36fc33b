"""A dropped or unreachable database: a clear error with a code, and nothing half-written."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import asyncpg
import pytest

from checkmate.models import StageStatus
from checkmate.service import CheckMateService, ServiceError
from checkmate.settings import Settings


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_pooled_connections_killed_by_the_server_are_replaced_transparently(
    service: CheckMateService, raw_conn: asyncpg.Connection
) -> None:
    task = await service.create("demo.pipeline")
    killed = await raw_conn.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    assert killed >= 1
    assert (await service.get(task.id, include_metadata=False)).status is StageStatus.CREATED
    succeeded, failed = await service.cancel(task.id, dry_run=False)
    assert [result.status for result in succeeded] == [StageStatus.CANCELED]
    assert failed == []


async def test_an_unreachable_database_is_unavailable_and_create_leaves_no_object(
    tmp_path: Path,
) -> None:
    settings = Settings(
        database_url=f"postgresql://postgres@127.0.0.1:{_closed_port()}/checkmate",
        store_url=(tmp_path / "store").as_uri(),
        data_dir=tmp_path,
    )
    service = await CheckMateService.open(settings)
    try:
        for call in (
            service.list(),
            service.cancel(status=StageStatus.QUEUED),
            service.create("demo.pipeline"),
        ):
            with pytest.raises(ServiceError) as raised:
                await call
            assert raised.value.code == ServiceError.UNAVAILABLE
        # create wrote its task object first, then removed it when the record could not be written.
        assert not any((tmp_path / "store").rglob("task.json"))
    finally:
        await service.close()


async def test_reads_on_dropped_pooled_connections_retry_once_on_a_fresh_one(
    service: CheckMateService, raw_conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """Checkout does not ping: the first read on a dropped connection fails, and runs again."""
    assert not service.engine.pool._pre_ping  # the point: no round trip at checkout
    task = await service.create("demo.pipeline")
    # Fill the pool with several connections, then have the server drop them all.
    await asyncio.gather(*(service.count() for _ in range(4)))
    for read in (
        lambda: service.page(max_results=5),
        lambda: service.count(),
        lambda: service.count_by_status(),
        lambda: service.find(task.id, include_metadata=False),
    ):
        killed = await raw_conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert killed >= 1
        with caplog.at_level(logging.INFO, logger="checkmate.db.database"):
            assert await read()
    # A connection asyncpg already saw closed is replaced at checkout; one it did not see
    # closed fails its statement, and that read ran again.
    assert "dropped; the read runs again" in caplog.text
