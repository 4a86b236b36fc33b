"""The status-event trigger: one event row per changed task, ONE notification per statement,
for any writer (raw SQL included)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import asyncpg
import pytest

from checkmate.db.engine import asyncpg_dsn
from checkmate.db.tables import EVENTS_CHANNEL, QUEUED_CHANNEL
from checkmate.models import StageStatus
from checkmate.service import CheckMateService
from tests.core_helpers import TaskSpec, insert_records, make_tasks
from tests.support import TaskRow, insert_task_rows, newest_event_id, wait_until

S = StageStatus


class Listener:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.received: dict[str, list[str]] = {EVENTS_CHANNEL: [], QUEUED_CHANNEL: []}

    def __call__(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self.received[channel].append(payload)

    async def settle(self, channel: str, expected: int) -> list[str]:
        """Every notification committed so far on `channel` (at least `expected`). No waiting
        for a quiet period: a marker is notified now, and PostgreSQL delivers notifications in
        commit order, so when the marker arrives everything committed before it has too."""
        marker = f"marker-{uuid4()}"
        await self.conn.execute("SELECT pg_notify($1, $2)", channel, marker)
        await wait_until(lambda: marker in self.received[channel], 15)
        received = self.received[channel]
        del received[received.index(marker)]
        assert len(received) >= expected, received
        return received


@pytest.fixture
async def listener(database_url: str) -> AsyncIterator[Listener]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    listener = Listener(conn)
    await conn.add_listener(EVENTS_CHANNEL, listener)
    await conn.add_listener(QUEUED_CHANNEL, listener)
    yield listener
    await conn.close()


async def test_raw_update_of_500_rows_sends_one_notification(
    raw_conn: asyncpg.Connection, listener: Listener
) -> None:
    specs = [TaskSpec(S.QUEUED)] * 500 + [TaskSpec(S.COMPLETED)] * 5
    ids = await insert_records(raw_conn, specs)
    await listener.settle(EVENTS_CHANNEL, 1)
    listener.received[EVENTS_CHANNEL].clear()
    mark = await newest_event_id(raw_conn)

    await raw_conn.execute(
        "UPDATE tasks SET status = 'RUNNING', stage = 'stage-1' WHERE status = 'QUEUED'"
    )

    payloads = await listener.settle(EVENTS_CHANNEL, 1)
    events = await raw_conn.fetch(
        "SELECT * FROM status_events WHERE id > $1 ORDER BY id", mark
    )
    assert len(events) == 500
    assert payloads == [str(events[-1]["id"])]
    assert {(e["previous_status"], e["status"], e["stage"]) for e in events} == {
        ("QUEUED", "RUNNING", "stage-1")
    }
    assert {e["task_id"] for e in events} == set(ids[:500])
    assert [e["id"] for e in events] == list(range(mark + 1, mark + 501))


async def test_insert_writes_one_event_per_row_and_one_notification(
    raw_conn: asyncpg.Connection, listener: Listener
) -> None:
    await insert_task_rows(
        raw_conn,
        [
            TaskRow(queue=f"q{i % 2}", status="QUEUED" if i % 3 == 0 else "CREATED")
            for i in range(1, 301)
        ],
    )
    payloads = await listener.settle(EVENTS_CHANNEL, 1)
    events = await raw_conn.fetch("SELECT * FROM status_events ORDER BY id")
    assert len(events) == 300
    assert all(event["previous_status"] is None for event in events)
    assert payloads == [str(events[-1]["id"])]
    # Workers of both queues hear about QUEUED inserts, once per queue.
    assert sorted(await listener.settle(QUEUED_CHANNEL, 2)) == ["q0", "q1"]


async def test_updates_that_keep_the_status_write_no_event(
    raw_conn: asyncpg.Connection, listener: Listener
) -> None:
    await insert_records(raw_conn, [TaskSpec(S.CREATED)] * 10)
    await listener.settle(EVENTS_CHANNEL, 1)
    listener.received[EVENTS_CHANNEL].clear()
    mark = await newest_event_id(raw_conn)

    await raw_conn.execute("UPDATE tasks SET tags = ARRAY['x'], status = status")

    assert await listener.settle(EVENTS_CHANNEL, 0) == []
    assert await newest_event_id(raw_conn) == mark


async def test_service_batch_writes_one_event_per_changed_task_one_notice_per_statement(
    service: CheckMateService, raw_conn: asyncpg.Connection, listener: Listener
) -> None:
    service.settings.batch_chunk_size = 100
    await insert_records(raw_conn, [TaskSpec(S.CREATED)] * 500 + [TaskSpec(S.ERROR)] * 20)
    await listener.settle(EVENTS_CHANNEL, 1)
    listener.received[EVENTS_CHANNEL].clear()
    mark = await newest_event_id(raw_conn)

    succeeded, failed = await service.cancel(
        statuses=[S.CREATED, S.ERROR], max_results=520, dry_run=False
    )

    assert (len(succeeded), len(failed)) == (500, 20)
    events = await raw_conn.fetch("SELECT * FROM status_events WHERE id > $1", mark)
    assert len(events) == 500
    assert {e["task_id"] for e in events} == {
        UUID(result.task_id) for result in succeeded
    }
    assert {(e["previous_status"], e["status"]) for e in events} == {("CREATED", "CANCELED")}
    # 500 rows in chunks of 100: five UPDATE statements, five notifications.
    payloads = await listener.settle(EVENTS_CHANNEL, 5)
    assert len(payloads) == 5
    assert max(int(p) for p in payloads) == max(e["id"] for e in events)


async def test_invoke_notifies_the_queues_it_queued(
    service: CheckMateService, raw_conn: asyncpg.Connection, listener: Listener
) -> None:
    # With their task objects: invoke refuses a task a worker could not load.
    await make_tasks(
        raw_conn,
        service.store,
        [TaskSpec(S.CREATED, queue="gpu")] * 3 + [TaskSpec(S.CANCELED, queue="cpu")] * 3,
    )
    await service.invoke(statuses=[S.CREATED, S.CANCELED], dry_run=False)
    assert sorted(await listener.settle(QUEUED_CHANNEL, 2)) == ["cpu", "gpu"]
