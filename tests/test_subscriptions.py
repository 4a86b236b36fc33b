"""taskStatusChanged end to end: uvicorn server processes on loopback ports, real websocket
clients in both protocols, changes committed by a separate raw asyncpg connection."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest

from checkmate.events import LISTEN_APPLICATION_NAME
from checkmate.models import StageStatus
from tests.subscription_support import (
    EVENT_FIELDS,
    ServerProcess,
    running_server,
    subscribe,
)
from tests.support import newest_event_id, wait_until
from tests.test_events import _write_changes, new_tasks, set_status, stored_events

pytestmark = pytest.mark.slow


def expected(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "eventId": str(row["id"]),
        "taskId": str(row["task_id"]),
        "status": row["status"],
        "previousStatus": row["previous_status"],
        "stage": row["stage"],
        "queue": row["queue"],
    }


def without_time(event: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in event.items() if key not in ("changedAt", "task")}


async def wait_for_subscribers(server: ServerProcess, count: int) -> None:
    """Poll /metrics until the server's hub has `count` subscribers registered."""
    async with httpx.AsyncClient() as client:

        async def registered() -> bool:
            text = (await client.get(f"{server.url}/metrics")).text
            line = next(
                (line for line in text.splitlines()
                 if line.startswith("checkmate_event_subscribers ")), "x 0",
            )
            return float(line.split()[1]) >= count

        await wait_until(registered, 15, lambda: f"the server never had {count} subscribers")


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
async def test_a_change_committed_by_another_connection_reaches_the_websocket_client(
    server: ServerProcess, raw_conn: asyncpg.Connection, protocol: str
) -> None:
    (task_id,) = await new_tasks(raw_conn, 1, name="demo.kind", queue="q1", tags=("t",))
    query = (
        "subscription { taskStatusChanged(filter: {queue: \"q1\", status: QUEUED}) {"
        f" {EVENT_FIELDS} task {{ id name tags }} }} }}"
    )
    async with subscribe(server.ws_url, protocol=protocol, query=query) as subscription:
        await wait_for_subscribers(server, 1)
        start = await newest_event_id(raw_conn)
        await set_status(raw_conn, [task_id], StageStatus.QUEUED)
        (event,) = await subscription.events(1)
    (row,) = await stored_events(raw_conn, start)
    assert without_time(event) == expected(row)
    assert event["previousStatus"] == "CREATED"
    assert event["task"] == {"id": str(task_id), "name": "demo.kind", "tags": ["t"]}


async def test_after_event_id_resumes_after_a_disconnect_without_loss(
    server: ServerProcess, raw_conn: asyncpg.Connection
) -> None:
    ids = await new_tasks(raw_conn, 4)
    start = await newest_event_id(raw_conn)
    async with subscribe(server.ws_url, {"after": str(start)}) as subscription:
        await set_status(raw_conn, ids[:2], StageStatus.QUEUED)
        seen = await subscription.events(2)
    # Disconnected: these are committed while no one listens.
    await set_status(raw_conn, ids, StageStatus.CANCELED)
    async with subscribe(server.ws_url, {"after": seen[-1]["eventId"]}) as subscription:
        missed = await subscription.events(4)
        await set_status(raw_conn, ids[:1], StageStatus.QUEUED)
        live = await subscription.events(1)
    stored = await stored_events(raw_conn, start)
    assert [without_time(e) for e in [*seen, *missed, *live]] == [expected(r) for r in stored]


async def test_a_filter_selects_the_events_of_one_task(
    server: ServerProcess, raw_conn: asyncpg.Connection
) -> None:
    mine, other = await new_tasks(raw_conn, 2)
    start = await newest_event_id(raw_conn)
    variables = {"filter": {"ids": [str(mine)]}, "after": str(start)}
    async with subscribe(server.ws_url, variables) as subscription:
        await set_status(raw_conn, [other], StageStatus.QUEUED)
        await set_status(raw_conn, [mine, other], StageStatus.CANCELED)
        (event,) = await subscription.events(1)
    assert event["taskId"] == str(mine)
    assert event["status"] == "CANCELED"


async def _listener_pids(conn: asyncpg.Connection) -> list[int]:
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity"
        " WHERE application_name = $1 AND datname = current_database()",
        LISTEN_APPLICATION_NAME,
    )
    return [row["pid"] for row in rows]


async def test_two_server_processes_both_deliver_every_event_through_listener_loss(
    database_url: str, tmp_path: Path, raw_conn: asyncpg.Connection
) -> None:
    groups: list[list[UUID]] = [await new_tasks(raw_conn, 25) for _ in range(4)]
    start = await newest_event_id(raw_conn)
    with (
        running_server(database_url, tmp_path / "a") as first,
        running_server(database_url, tmp_path / "b") as second,
    ):
        listeners = await _listener_pids(raw_conn)
        assert len(listeners) == 2
        async with (
            subscribe(first.ws_url, {"after": str(start)}) as on_first,
            subscribe(second.ws_url, {"after": str(start)}) as on_second,
        ):

            async def kill_listeners() -> None:
                async def under_way() -> bool:  # a fifth of the 500 changes committed
                    newest = await raw_conn.fetchval("SELECT max(id) FROM status_events")
                    return bool(newest >= start + 100)

                await wait_until(under_way, interval=0.01)
                for pid in listeners:
                    assert await raw_conn.fetchval("SELECT pg_terminate_backend($1)", pid)

            writes = [_write_changes(database_url, ids, 5) for ids in groups]
            await asyncio.gather(*writes, kill_listeners())
            stored = await stored_events(raw_conn, start)
            assert len(stored) == 500
            received = await asyncio.gather(
                on_first.events(len(stored), 60), on_second.events(len(stored), 60)
            )
            reconnected = await _listener_pids(raw_conn)
            assert len(reconnected) == 2
            assert not set(reconnected) & set(listeners)
    for events in received:
        assert [without_time(e) for e in events] == [expected(row) for row in stored]


@pytest.mark.parametrize(
    ("env", "offered"),
    [({}, None), ({"CHECKMATE_WS_COMPRESSION": "true"}, "permessage-deflate")],
    ids=["default", "CHECKMATE_WS_COMPRESSION"],
)
async def test_checkmate_serve_compresses_websockets_only_when_configured(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    offered: str | None,
) -> None:
    monkeypatch.delenv("CHECKMATE_WS_COMPRESSION", raising=False)
    server = ServerProcess(database_url, tmp_path, env=env, cli=True)
    try:
        server.wait_ready()
        # The client offers permessage-deflate, as browsers do.
        async with subscribe(server.ws_url) as subscription:
            response = subscription.ws.response
            assert response is not None
            header = response.headers.get("Sec-WebSocket-Extensions")
    finally:
        server.stop()
    assert (header.split(";")[0] if header else None) == offered
