"""A dropped or unreachable database: a clear error with a code, and nothing half-written."""

from __future__ import annotations

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
