"""taskStatusChanged over a real websocket to a real uvicorn server on loopback, with changes
committed by a separate raw asyncpg connection; both websocket protocols."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from sqlalchemy import event as sa_event
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from checkmate.settings import Settings
from tests.graphql_helpers import insert_tasks
from tests.subscription_support import TIMEOUT, Served, serving
from tests.support import newest_event_id, wait_until

SUBSCRIPTION = """
subscription Feed($filter: TaskFilter, $after: ID) {
  taskStatusChanged(filter: $filter, afterEventId: $after) {
    eventId taskId status previousStatus queue changedAt task { id status }
  }
}"""


class TransportWs:
    """A graphql-transport-ws client."""

    protocol = "graphql-transport-ws"

    def __init__(self, ws: ClientConnection, app: Starlette) -> None:
        self.ws = ws
        self.app = app

    async def receive(self) -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT):
            while True:
                message: dict[str, Any] = json.loads(await self.ws.recv())
                if message["type"] not in {"ping", "pong", "ka"}:
                    return message

    async def init(self) -> None:
        await self.ws.send(json.dumps({"type": "connection_init"}))
        assert (await self.receive())["type"] == "connection_ack"

    async def subscribe(
        self, variables: dict[str, Any], op_id: str = "1", query: str = SUBSCRIPTION
    ) -> None:
        payload = {"query": query, "variables": variables}
        await self.ws.send(json.dumps({"id": op_id, "type": "subscribe", "payload": payload}))

    async def event(self) -> dict[str, Any]:
        message = await self.receive()
        assert message["type"] == "next", message
        assert "errors" not in message["payload"], message
        event: dict[str, Any] = message["payload"]["data"]["taskStatusChanged"]
        return event


class LegacyWs(TransportWs):
    """A client of the legacy subscriptions-transport-ws protocol (graphql-ws)."""

    protocol = "graphql-ws"

    async def subscribe(
        self, variables: dict[str, Any], op_id: str = "1", query: str = SUBSCRIPTION
    ) -> None:
        payload = {"query": query, "variables": variables}
        await self.ws.send(json.dumps({"id": op_id, "type": "start", "payload": payload}))

    async def event(self) -> dict[str, Any]:
        message = await self.receive()
        assert message["type"] == "data", message
        event: dict[str, Any] = message["payload"]["data"]["taskStatusChanged"]
        return event


@asynccontextmanager
async def client(
    served: Served, kind: type[TransportWs] = TransportWs
) -> AsyncIterator[TransportWs]:
    async with connect(served.url, subprotocols=[Subprotocol(kind.protocol)]) as ws:
        assert ws.subprotocol == kind.protocol
        feed = kind(ws, served.app)
        await feed.init()
        yield feed


async def set_status(raw_conn: asyncpg.Connection, task_id: UUID, status: str) -> None:
    await raw_conn.execute("UPDATE tasks SET status = $2 WHERE id = $1", task_id, status)


async def subscribed(
    feed: TransportWs, variables: dict[str, Any], query: str = SUBSCRIPTION
) -> None:
    """Subscribe and wait until the server has registered the subscriber with the hub."""
    # The protocol acknowledges nothing before the first event: ask the server's hub.
    hub = feed.app.state.hub
    before = hub.subscriber_count
    await feed.subscribe(variables, query=query)
    await wait_until(lambda: hub.subscriber_count > before, TIMEOUT)


@pytest.mark.parametrize("kind", [TransportWs, LegacyWs], ids=["transport-ws", "legacy-ws"])
async def test_a_change_committed_elsewhere_reaches_the_subscriber(
    settings: Settings, raw_conn: asyncpg.Connection, kind: type[TransportWs]
) -> None:
    watched, other = await insert_tasks(raw_conn, 2, queues=("gpu", "default"))
    async with serving(settings) as served, client(served, kind) as feed:
        await subscribed(feed, {"filter": {"queue": "gpu"}})
        await set_status(raw_conn, other, "QUEUED")  # filtered out
        await set_status(raw_conn, watched, "QUEUED")
        event = await feed.event()
    assert (event["taskId"], event["status"], event["previousStatus"], event["queue"]) == (
        str(watched), "QUEUED", "CREATED", "gpu"
    )
    assert event["task"] == {"id": str(watched), "status": "QUEUED"}
    assert int(event["eventId"]) > 0


async def test_resuming_with_after_event_id_loses_nothing(
    settings: Settings, raw_conn: asyncpg.Connection
) -> None:
    [task_id] = await insert_tasks(raw_conn, 1)
    async with serving(settings) as served:
        async with client(served) as feed:
            await subscribed(feed, {"filter": {"ids": [str(task_id)]}})
            await set_status(raw_conn, task_id, "QUEUED")
            first = await feed.event()
        # Disconnected: these happen while nobody listens.
        for status in ("RUNNING", "ERROR", "QUEUED"):
            await set_status(raw_conn, task_id, status)
        async with client(served) as feed:
            await feed.subscribe({"filter": {"ids": [str(task_id)]}, "after": first["eventId"]})
            missed = [await feed.event() for _ in range(3)]
            await set_status(raw_conn, task_id, "RUNNING")
            live = await feed.event()
    assert [event["status"] for event in missed] == ["RUNNING", "ERROR", "QUEUED"]
    ids = [int(event["eventId"]) for event in [first, *missed, live]]
    assert ids == sorted(set(ids))
    assert live["status"] == "RUNNING"


async def test_bad_subscription_arguments_are_bad_user_input(settings: Settings) -> None:
    async with serving(settings) as served, client(served) as feed:
        await feed.subscribe({"after": "not-a-number"})
        message = await feed.receive()
    assert message["type"] in {"next", "error"}
    payload = message["payload"]
    errors = payload["errors"] if message["type"] == "next" else payload
    assert [error["extensions"]["code"] for error in errors] == ["BAD_USER_INPUT"]
    assert "afterEventId" in errors[0]["message"]


@asynccontextmanager
async def task_reads(served: Served) -> AsyncIterator[list[str]]:
    """SQL statements the server runs meanwhile, except the hub's own status_events reads."""
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "status_events" not in statement:
            statements.append(statement)

    engine = served.app.state.service.engine.sync_engine
    sa_event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        sa_event.remove(engine, "before_cursor_execute", count)


async def test_subscribers_with_different_filters_share_one_rendering_of_an_event(
    settings: Settings, raw_conn: asyncpg.Connection
) -> None:
    [task_id] = await insert_tasks(raw_conn, 1, queues=("gpu",))
    filters: list[dict[str, Any]] = [
        {}, {"filter": {"queue": "gpu"}}, {"filter": {"ids": [str(task_id)]}},
    ]
    async with AsyncExitStack() as stack:
        served = await stack.enter_async_context(serving(settings))
        feeds = []
        for index in range(12):
            kind = (TransportWs, LegacyWs)[index % 2]
            feed = await stack.enter_async_context(client(served, kind))
            await subscribed(feed, filters[index % len(filters)])
            feeds.append(feed)
        async with task_reads(served) as statements:
            await set_status(raw_conn, task_id, "QUEUED")
            events = [await feed.event() for feed in feeds]
    assert {json.dumps(event, sort_keys=True) for event in events} == {
        json.dumps(events[0], sort_keys=True)
    }
    assert events[0]["task"] == {"id": str(task_id), "status": "QUEUED"}
    # Twelve subscribers, one execution of the selection: one read of the task.
    assert len(statements) == 1, statements


async def test_a_variable_used_in_the_selection_keeps_renderings_apart(
    settings: Settings, raw_conn: asyncpg.Connection
) -> None:
    [task_id] = await insert_tasks(raw_conn, 1)
    query = """
    subscription Feed($withTask: Boolean!) {
      taskStatusChanged { eventId task @include(if: $withTask) { id } }
    }"""
    async with serving(settings) as served, client(served) as plain, client(served) as full:
        await subscribed(plain, {"withTask": False}, query)
        await subscribed(full, {"withTask": True}, query)
        await set_status(raw_conn, task_id, "QUEUED")
        without, with_task = await plain.event(), await full.event()
    assert without["eventId"] == with_task["eventId"]
    assert "task" not in without
    assert with_task["task"] == {"id": str(task_id)}


@pytest.mark.parametrize("kind", [TransportWs, LegacyWs], ids=["transport-ws", "legacy-ws"])
async def test_a_lagging_subscriber_gets_its_resume_point_and_others_carry_on(
    settings: Settings, raw_conn: asyncpg.Connection, kind: type[TransportWs]
) -> None:
    ids = await insert_tasks(raw_conn, 20)
    start = await newest_event_id(raw_conn)
    async with serving(settings) as served, client(served, kind) as slow:
        hub = served.app.state.hub
        hub.max_queue = 3  # taken by each subscriber when it subscribes
        await subscribed(slow, {})
        hub.max_queue = 1_000
        async with client(served, kind) as steady:
            await subscribed(steady, {})
            # One statement: the hub reads its 20 events at once and the slow queue overflows.
            await raw_conn.execute(
                "UPDATE tasks SET status = 'QUEUED' WHERE id = ANY($1)", ids
            )
            received = [await steady.event() for _ in ids]
            message = await slow.receive()
        async with client(served, kind) as resumed:
            errors = message["payload"]["errors"]
            [error] = errors
            after = error["extensions"]["lastEventId"]
            await resumed.subscribe({"after": after})
            replayed = [await resumed.event() for _ in ids]
    assert error["extensions"] == {"code": "SUBSCRIBER_LAGGING", "lastEventId": str(start)}
    assert f"afterEventId={start}" in error["message"]
    expected = [str(event_id) for event_id in range(start + 1, start + 21)]
    assert [event["eventId"] for event in received] == expected
    assert [event["eventId"] for event in replayed] == expected
