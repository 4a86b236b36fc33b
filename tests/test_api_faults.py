"""The API process rides out a lost database connection. A real batch action whose connection
is lost: retried once on a fresh connection
when nothing was written yet; reported "outcome unknown" when the loss came after a write (the
commit may have landed), never a success it cannot prove. Faults injected by a loopback proxy
that lets PostgreSQL answer, then loses the answer and cuts the connection. Readiness tells the
truth while the database is away and soon after it is back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg
import pytest

from checkmate.batch import OUTCOME_UNKNOWN
from checkmate.service import CheckMateService
from checkmate.settings import Settings
from tests.fault_support import PgProxy
from tests.graphql_helpers import running_api
from tests.support import TaskRow, insert_task_rows, wait_until


@asynccontextmanager
async def _service_through(proxy: PgProxy, settings: Settings) -> AsyncIterator[CheckMateService]:
    async with proxy.running() as url:
        service = await CheckMateService.open(settings.model_copy(update={"database_url": url}))
        try:
            yield service
        finally:
            await service.close()


async def _queued(raw_conn: asyncpg.Connection, count: int) -> list[UUID]:
    return await insert_task_rows(raw_conn, [TaskRow(status="QUEUED") for _ in range(count)])


async def _cancel_events(raw_conn: asyncpg.Connection, ids: list[UUID]) -> dict[UUID, int]:
    rows = await raw_conn.fetch(
        "SELECT task_id, count(*) AS n FROM status_events "
        "WHERE task_id = any($1) AND status = 'CANCELED' GROUP BY task_id",
        ids,
    )
    return {row["task_id"]: row["n"] for row in rows}


# db_transact=False commits its audit row first, so the chunk's COMMIT is the second one.
@pytest.mark.parametrize(("db_transact", "commits_before"), [(True, 0), (False, 1)])
async def test_a_commit_whose_reply_was_lost_is_outcome_unknown_never_success(
    settings: Settings,
    database_url: str,
    raw_conn: asyncpg.Connection,
    db_transact: bool,
    commits_before: int,
) -> None:
    ids = await _queued(raw_conn, 5)
    proxy = PgProxy(database_url)
    async with _service_through(proxy, settings) as service:
        proxy.drop_reply_to(b"COMMIT", skip=commits_before)
        succeeded, failed = await service.cancel(ids, dry_run=False, db_transact=db_transact)

    assert proxy.dropped.is_set()
    assert succeeded == []
    assert sorted(result.task_id for result in failed) == sorted(str(i) for i in ids)
    assert {result.error for result in failed} == {OUTCOME_UNKNOWN}
    assert {result.status for result in failed} == {"QUEUED"}  # as last known, not guessed
    # The commit did land: reporting "not applied" would have been as wrong as a success.
    assert await _cancel_events(raw_conn, ids) == dict.fromkeys(ids, 1)


@pytest.mark.parametrize("db_transact", [True, False])
async def test_a_connection_lost_before_any_write_is_retried_once_and_applied_once(
    settings: Settings, database_url: str, raw_conn: asyncpg.Connection, db_transact: bool
) -> None:
    ids = await _queued(raw_conn, 5)
    proxy = PgProxy(database_url)
    async with _service_through(proxy, settings) as service:
        # The row-locking SELECT runs, its answer is lost: the server rolls the transaction back.
        proxy.drop_reply_to(b"FOR UPDATE")
        succeeded, failed = await service.cancel(ids, dry_run=False, db_transact=db_transact)

    assert proxy.dropped.is_set()
    assert failed == []
    assert sorted(result.task_id for result in succeeded) == sorted(str(i) for i in ids)
    assert await _cancel_events(raw_conn, ids) == dict.fromkeys(ids, 1)


async def test_readyz_is_503_while_the_database_is_away_and_200_within_2s_of_its_return(
    settings: Settings, database_url: str
) -> None:
    proxy = PgProxy(database_url)
    async with (
        proxy.running() as url,
        running_api(settings.model_copy(update={"database_url": url})) as api,
    ):

        async def database_ready() -> bool:
            ready = await api.client.get("/readyz")
            return ready.status_code == 200 and ready.json()["database"] == "ok"

        assert await database_ready()
        proxy.cut()
        away = await api.client.get("/readyz")
        assert away.status_code == 503
        assert away.json() == {"database": "unreachable", "store": "ok"}
        await proxy.restore()
        assert await wait_until(database_ready, within=2.0, interval=0.1)
