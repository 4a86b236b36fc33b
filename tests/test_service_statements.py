"""Batch actions are set-based: the number of SQL statements depends on the number of chunks,
never on the number of tasks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from sqlalchemy import event

from checkmate.models import StageStatus
from checkmate.service import CheckMateService
from checkmate.store import TaskStore
from tests.core_helpers import TaskSpec, write_objects
from tests.support import TaskRow, insert_task_rows

S = StageStatus


class StatementCounter:
    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)


@pytest.fixture
def statements(service: CheckMateService) -> Iterator[StatementCounter]:
    counter = StatementCounter()
    sync_engine = service.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", counter)
    yield counter
    event.remove(sync_engine, "before_cursor_execute", counter)


async def _seed(
    raw_conn: asyncpg.Connection, count: int, status: str, store: TaskStore | None = None
) -> None:
    """`count` records; with `store`, each with its task object (invoke checks for it)."""
    ids = await insert_task_rows(raw_conn, [TaskRow(status=status) for _ in range(count)])
    if store is not None:
        spec = TaskSpec(S(status), stages=0)

        async def write(task_id: UUID) -> None:
            await write_objects(store, task_id, spec)

        results = await store.for_each(ids, write)
        assert not [error for error in results.values() if isinstance(error, BaseException)]


async def _count(
    service: CheckMateService, statements: StatementCounter, action: str, size: int, **kw: Any
) -> int:
    statements.statements.clear()
    succeeded, failed = await getattr(service, action)(max_results=size, **kw)
    assert (len(succeeded), len(failed)) == (size, 0)
    return len(statements.statements)


@pytest.mark.parametrize(
    ("action", "status", "after"),
    [("cancel", "CREATED", "CANCELED"), ("invoke", "ERROR", "QUEUED")],
)
async def test_statements_do_not_grow_with_the_batch(
    action: str,
    status: str,
    after: str,
    service: CheckMateService,
    raw_conn: asyncpg.Connection,
    statements: StatementCounter,
) -> None:
    await _seed(raw_conn, 2_200, status, service.store if action == "invoke" else None)
    service.settings.batch_chunk_size = 2_000
    kw = {"status": S(status), "dry_run": False, "db_transact": True}

    small = await _count(service, statements, action, 200, **kw)
    large = await _count(service, statements, action, 2_000, **kw)

    # select + (lock + update) for the one chunk + the audit row, each
    assert small == large == 4
    assert await raw_conn.fetchval("SELECT count(*) FROM tasks WHERE status = $1", after) == 2_200


async def test_statements_grow_with_chunks_only(
    service: CheckMateService, raw_conn: asyncpg.Connection, statements: StatementCounter
) -> None:
    await _seed(raw_conn, 2_000, "CREATED")
    service.settings.batch_chunk_size = 500
    real = await _count(
        service, statements, "cancel", 2_000, status=S.CREATED, dry_run=False, db_transact=False
    )
    # select + the audit row + (lock + update + the chunk's ids onto the audit row) per chunk
    assert real == 2 + 3 * 4
    assert all("FOR UPDATE" in s for s in statements.statements[2::3])
    assert all("audit_log" in s for s in statements.statements[4::3])


async def test_dry_run_is_one_read(
    service: CheckMateService, raw_conn: asyncpg.Connection, statements: StatementCounter
) -> None:
    await _seed(raw_conn, 2_000, "CREATED")
    dry = await _count(service, statements, "cancel", 2_000, status=S.CREATED, dry_run=True)
    assert dry == 1
    assert statements.statements[0].lstrip().upper().startswith("SELECT")
    assert "FOR UPDATE" not in statements.statements[0]
