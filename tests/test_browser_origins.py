"""Browser origins (CHECKMATE_CORS_ORIGINS): one rule for HTTP requests and websocket
handshakes, against a real server. Pages on an allowed origin get CORS headers (preflight
included) and a working websocket; pages on other origins are refused on both; same-origin
pages and non-browser clients (no Origin) are always allowed."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from pydantic import ValidationError
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from checkmate.settings import Settings
from tests.graphql_helpers import insert_tasks
from tests.subscription_support import TIMEOUT, Served, Subscription, serving
from tests.support import wait_until

CONSOLE = "http://console.test:3000"
OTHER = "http://evil.test"
BODY = {"query": "{ taskCounts { count } }"}


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[Served]:
    async with serving(settings.model_copy(update={"cors_origins": [CONSOLE]})) as served:
        yield served


async def test_allowed_origin_gets_cors_headers_and_preflight(served: Served) -> None:
    async with httpx.AsyncClient() as client:
        preflight = await client.options(served.http_url, headers={
            "origin": CONSOLE,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, authorization",
        })
        response = await client.post(served.http_url, json=BODY, headers={"origin": CONSOLE})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == CONSOLE
    assert "POST" in preflight.headers["access-control-allow-methods"]
    allowed_headers = preflight.headers["access-control-allow-headers"].lower()
    assert {"content-type", "authorization"} <= set(allowed_headers.replace(" ", "").split(","))
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == CONSOLE
    assert "x-request-id" in response.headers["access-control-expose-headers"]
    assert "errors" not in response.json()


async def test_other_origin_is_refused_over_http(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    async with httpx.AsyncClient() as client:
        preflight = await client.options(served.http_url, headers={
            "origin": OTHER, "access-control-request-method": "POST",
        })
        response = await client.post(served.http_url, json=BODY, headers={"origin": OTHER})
    for refused in (preflight, response):
        assert refused.status_code == 403
        assert "access-control-allow-origin" not in refused.headers
        [error] = refused.json()["errors"]
        assert error["extensions"]["code"] == "FORBIDDEN"
        assert OTHER in error["message"]
        assert "CHECKMATE_CORS_ORIGINS" in error["message"]
    assert any(OTHER in record.getMessage() for record in caplog.records)


async def test_same_origin_and_non_browser_requests_are_allowed(served: Served) -> None:
    same_origin = served.http_url.removesuffix("/graphql")
    async with httpx.AsyncClient() as client:
        for headers in ({"origin": same_origin}, {}):
            response = await client.post(served.http_url, json=BODY, headers=headers)
            assert response.status_code == 200, headers
            assert "errors" not in response.json()


async def test_allowed_origin_gets_a_working_websocket(
    served: Served, raw_conn: asyncpg.Connection
) -> None:
    [task_id] = await insert_tasks(raw_conn, 1)
    hub = served.app.state.hub
    async with connect(
        served.url, origin=CONSOLE, subprotocols=[Subprotocol("graphql-transport-ws")]
    ) as ws:
        await ws.send(json.dumps({"type": "connection_init"}))
        feed = Subscription(ws, "graphql-transport-ws", "1")
        async with asyncio.timeout(TIMEOUT):
            assert (await feed.next_message())["type"] == "connection_ack"
        query = "subscription($ids: [ID!]) { taskStatusChanged(filter: {ids: $ids}) { status } }"
        payload = {"query": query, "variables": {"ids": [str(task_id)]}}
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
        await wait_until(lambda: hub.subscriber_count == 1)
        await raw_conn.execute("UPDATE tasks SET status = 'QUEUED' WHERE id = $1", task_id)
        async with asyncio.timeout(TIMEOUT):
            status = (await feed.next_event())["status"]
            if status == "CREATED":  # the insert's own event may come first
                status = (await feed.next_event())["status"]
    assert status == "QUEUED"


@pytest.mark.parametrize("allowed", [[CONSOLE], []], ids=["configured", "default"])
async def test_other_origin_websocket_is_refused_before_accepting(
    settings: Settings, allowed: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="checkmate.api")
    async with serving(settings.model_copy(update={"cors_origins": allowed})) as served:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(
                served.url, origin=OTHER, subprotocols=[Subprotocol("graphql-transport-ws")]
            ):
                pass
        same_origin = served.http_url.removesuffix("/graphql")
        for origin in (same_origin, None):  # the API's own pages; scripts without Origin
            async with connect(
                served.url, origin=origin, subprotocols=[Subprotocol("graphql-ws")]
            ) as ws:
                await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
                async with asyncio.timeout(TIMEOUT):
                    assert json.loads(await ws.recv())["type"] == "connection_ack"
    assert refused.value.response.status_code == 403
    assert any(
        OTHER in record.getMessage() and "CHECKMATE_CORS_ORIGINS" in record.getMessage()
        for record in caplog.records
    )


def test_origins_setting_is_a_json_list_normalized_like_browsers_send_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "CHECKMATE_CORS_ORIGINS", '["HTTPS://Console.Example.com:443/", "http://localhost:5173"]'
    )
    assert Settings().cors_origins == ["https://console.example.com", "http://localhost:5173"]
    monkeypatch.delenv("CHECKMATE_CORS_ORIGINS")
    assert Settings().cors_origins == []
    for wrong in ("console.example.com", "https://console.example.com/app", "ftp://x"):
        with pytest.raises(ValidationError, match="is not an origin"):
            Settings(cors_origins=[wrong])
