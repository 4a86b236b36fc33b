"""Python's gql client against a real server: subscriptions over both websocket subprotocols,
and over HTTP a query and a mutation validated against the schema gql fetches from the server."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from gql import Client, GraphQLRequest, gql
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport
from graphql import GraphQLError

from checkmate.settings import Settings
from tests.graphql_helpers import insert_tasks
from tests.subscription_support import TIMEOUT, serving
from tests.support import wait_until

FEED = gql(
    """subscription($filter: TaskFilter) {
      taskStatusChanged(filter: $filter) { eventId taskId status previousStatus }
    }"""
)


@pytest.mark.parametrize(
    "subprotocol",
    [WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL, WebsocketsTransport.APOLLO_SUBPROTOCOL],
)
async def test_gql_subscribes_and_receives_over_both_subprotocols(
    settings: Settings, raw_conn: asyncpg.Connection, subprotocol: str
) -> None:
    [task_id] = await insert_tasks(raw_conn, 1)
    # Only the changes made below, not the insert's own event (which may still be on its way).
    only_changes = {"ids": [str(task_id)], "statuses": ["QUEUED", "RUNNING"]}
    request = GraphQLRequest(FEED, variable_values={"filter": only_changes})
    async with serving(settings) as served:
        hub = served.app.state.hub
        transport = WebsocketsTransport(url=served.url, subprotocols=[subprotocol])
        async with Client(transport=transport) as session:
            assert transport.subprotocol == subprotocol

            async def two_events() -> list[dict[str, Any]]:
                received = []
                async for result in session.subscribe(request):
                    received.append(result["taskStatusChanged"])
                    if len(received) == 2:
                        break
                return received

            receiving = asyncio.create_task(two_events())
            await wait_until(lambda: hub.subscriber_count == 1)
            for status in ("QUEUED", "RUNNING"):
                await raw_conn.execute(
                    "UPDATE tasks SET status = $2 WHERE id = $1", task_id, status
                )
            async with asyncio.timeout(TIMEOUT):
                events = await receiving
            await wait_until(lambda: hub.subscriber_count == 0)  # gql stopped the operation
    assert [(e["taskId"], e["previousStatus"], e["status"]) for e in events] == [
        (str(task_id), "CREATED", "QUEUED"), (str(task_id), "QUEUED", "RUNNING")
    ]


async def test_gql_over_http_with_the_fetched_schema(
    settings: Settings, raw_conn: asyncpg.Connection
) -> None:
    async with serving(settings) as served:
        transport = HTTPXAsyncTransport(url=served.http_url)
        async with Client(transport=transport, fetch_schema_from_transport=True) as session:
            created = await session.execute(
                gql(
                    'mutation { createTask(input: {name: "demo.pipeline", queue: "gql",'
                    " params: {stages: 2}}) { id status queue } }"
                )
            )
            task_id = created["createTask"]["id"]
            read = await session.execute(
                GraphQLRequest(
                    gql("query($id: ID!) { task(id: $id) { id name status queue } }"),
                    variable_values={"id": task_id},
                )
            )
            assert session.client.schema is not None
            assert session.client.schema.get_type("CheckMateTask") is not None
            # Validated against the fetched schema before anything is sent.
            with pytest.raises(GraphQLError, match="nope"):
                await session.execute(gql("{ taskCounts { nope } }"))
    assert created["createTask"]["status"] == "CREATED"
    assert read["task"] == {"id": task_id, "name": "demo.pipeline", "status": "CREATED",
                            "queue": "gql"}
    row = await raw_conn.fetchrow("SELECT queue, status FROM tasks WHERE id = $1", UUID(task_id))
    assert row is not None
    assert (row["queue"], row["status"]) == ("gql", "CREATED")
