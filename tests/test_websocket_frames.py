"""Every frame the server sends on a websocket is a text frame, in both protocols and for every
kind of message: the protocols' messages are JSON text, and the reference clients (npm
graphql-ws, Python gql) reject binary frames outright."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from checkmate.settings import Settings
from tests.graphql_helpers import insert_tasks
from tests.subscription_support import TIMEOUT, Served, serving
from tests.support import wait_until

FEED = "subscription($ids: [ID!]) { taskStatusChanged(filter: {ids: $ids}) { taskId status } }"
QUERY = "{ taskCounts { count } }"
INVALID = "subscription { taskStatusChanged { nope } }"


class Frames:
    """A websocket whose every received frame must be text; records the message types seen."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[str] = []

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))

    async def expect(self, kind: str, op_id: str | None = None) -> dict[str, Any]:
        """Read frames until one of this type (and operation); each must be a text frame."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                frame = await self.ws.recv()
                assert isinstance(frame, str), f"binary frame after {self.seen}: {frame!r}"
                message: dict[str, Any] = json.loads(frame)
                self.seen.append(message["type"])
                if message["type"] == kind and op_id in (None, message.get("id")):
                    return message


async def _feed_event(
    served: Served, frames: Frames, raw_conn: asyncpg.Connection, start: dict[str, Any]
) -> dict[str, Any]:
    """Subscribe to one task, change it by SQL, and return the event's message."""
    [task_id] = await insert_tasks(raw_conn, 1)
    hub = served.app.state.hub
    before = hub.subscriber_count
    await frames.send(**start, payload={"query": FEED, "variables": {"ids": [str(task_id)]}})
    await wait_until(lambda: hub.subscriber_count > before)
    await raw_conn.execute("UPDATE tasks SET status = 'QUEUED' WHERE id = $1", task_id)
    while True:  # the insert's own event may arrive first
        kind = "next" if start["type"] == "subscribe" else "data"
        event = await frames.expect(kind, start["id"])
        if event["payload"]["data"]["taskStatusChanged"]["status"] == "QUEUED":
            return event


async def test_graphql_transport_ws_sends_only_text_frames(
    settings: Settings, raw_conn: asyncpg.Connection
) -> None:
    async with serving(settings) as served, connect(
        served.url, subprotocols=[Subprotocol("graphql-transport-ws")]
    ) as ws:
        frames = Frames(ws)
        await frames.send(type="connection_init")
        await frames.expect("connection_ack")
        await frames.send(type="ping")
        await frames.expect("pong")
        await frames.send(type="subscribe", id="query", payload={"query": QUERY})
        await frames.expect("next", "query")
        await frames.expect("complete", "query")
        await frames.send(type="subscribe", id="invalid", payload={"query": INVALID})
        error = await frames.expect("error", "invalid")
        event = await _feed_event(served, frames, raw_conn, {"type": "subscribe", "id": "feed"})
        await frames.send(type="complete", id="feed")
        await frames.send(type="subscribe", id="query2", payload={"query": QUERY})
        await frames.expect("complete", "query2")
    assert error["payload"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert event["payload"]["data"]["taskStatusChanged"]["status"] == "QUEUED"
    assert {"connection_ack", "pong", "next", "complete", "error"} <= set(frames.seen)


async def test_legacy_graphql_ws_sends_only_text_frames(
    settings: Settings, raw_conn: asyncpg.Connection
) -> None:
    async with serving(settings) as served:
        served.graphql.keep_alive_interval = 0.05  # "ka" within the test, not every 15 s
        async with connect(served.url, subprotocols=[Subprotocol("graphql-ws")]) as ws:
            frames = Frames(ws)
            await frames.send(type="connection_init", payload={})
            await frames.expect("connection_ack")
            await frames.expect("ka")
            # The legacy protocol runs subscriptions only here: a query is refused, clearly.
            await frames.send(type="start", id="query", payload={"query": QUERY})
            refused_query = await frames.expect("error", "query")
            await frames.send(type="start", id="invalid", payload={"query": INVALID})
            error = await frames.expect("error", "invalid")
            event = await _feed_event(served, frames, raw_conn, {"type": "start", "id": "feed"})
            await frames.send(type="stop", id="feed")
            await frames.expect("complete", "feed")
        async with connect(served.url, subprotocols=[Subprotocol("graphql-ws")]) as ws:
            refused = Frames(ws)
            await refused.send(type="connection_init", payload="not an object")
            await refused.expect("connection_error")
    assert refused_query["payload"]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "graphql-transport-ws" in refused_query["payload"]["message"]
    assert error["payload"]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert event["payload"]["data"]["taskStatusChanged"]["status"] == "QUEUED"
    assert {"connection_ack", "ka", "data", "complete", "error"} <= set(frames.seen)
