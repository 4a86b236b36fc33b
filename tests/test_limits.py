"""Each abuse limit rejects just above its bound and accepts at it, before any database work,
with a stable code or HTTP status."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from sqlalchemy.exc import DBAPIError
from starlette.testclient import TestClient

from checkmate.service import CheckMateService
from checkmate.settings import Settings
from schema import build_schema
from schema.context import GraphQLContext
from schema.limits import Limits
from server import create_app
from tests.access_support import (
    LEGACY_WS,
    TRANSPORT_WS,
    AccessServer,
    access_server,
    receive,
    send,
    ws_connection,
)
from tests.graphql_helpers import running_api

SCHEMA = build_schema(limits=Limits(max_depth=3, max_aliases=2, max_tokens=100))
TOO_COMPLEX = "QUERY_TOO_COMPLEX"


class Probe:
    """The context's service: records whether anything got as far as the service."""

    def __init__(self) -> None:
        self.reached = False

    def __getattr__(self, name: str) -> Any:
        self.reached = True
        raise RuntimeError("probe: the operation reached the service")


async def outcome(query: str, variables: dict[str, Any] | None = None) -> tuple[list[str], bool]:
    """(error codes, whether the service was reached) of one operation."""
    probe = Probe()
    context = GraphQLContext(service=probe, hub=None, request_id="t")  # type: ignore[arg-type]
    logging.disable(logging.ERROR)  # the probe's RuntimeError is logged as unexpected
    try:
        result = await SCHEMA.execute(query, variable_values=variables, context_value=context)
    finally:
        logging.disable(logging.NOTSET)
    codes = [(error.extensions or {}).get("code", "") for error in result.errors or []]
    return codes, probe.reached


DEPTH_3 = "{ tasks { nodes { metadata { index } } } }"
DEPTH_4 = "mutation { cancelTasks(taskIds: []) { succeeded { task { metadata { index } } } } }"


def aliases(count: int) -> str:
    return "{ " + " ".join(f"a{i}: taskCounts {{ count }}" for i in range(count)) + " }"


def tokens(count: int) -> str:
    """A document of exactly `count` lexical tokens: { taskCounts { count } ... }."""
    fields = (count - 2) // 4
    padding = (count - 2) % 4
    return "{ " + "taskCounts { count } " * fields + "__typename " * padding + "}"


@pytest.mark.parametrize(
    ("at_bound", "above"),
    [
        (DEPTH_3, DEPTH_4),
        (aliases(2), aliases(3)),
        (tokens(100), tokens(101)),
    ],
    ids=["depth", "aliases", "tokens"],
)
async def test_complexity_limits(at_bound: str, above: str) -> None:
    codes, reached = await outcome(at_bound)
    assert TOO_COMPLEX not in codes
    assert reached
    codes, reached = await outcome(above)
    assert codes == [TOO_COMPLEX]
    assert not reached


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1, 2**63, 2**64 + 1, 1e300])
async def test_max_results_beyond_int_is_bad_user_input(value: Any) -> None:
    for codes, reached in (
        await outcome("query($n: Int) { tasks(maxResults: $n) { totalCount } }", {"n": value}),
        await outcome(f"{{ tasks(maxResults: {value!r}) {{ totalCount }} }}"),
    ):
        assert codes == ["BAD_USER_INPUT"]
        assert not reached
    codes, reached = await outcome("{ tasks(maxResults: 2147483647) { totalCount } }")
    assert reached  # the largest Int passes GraphQL; the service's cap decides (BAD_USER_INPUT)


@pytest.fixture(scope="module")
def api(
    server_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AccessServer]:
    env = {
        "CHECKMATE_MAX_BODY_BYTES": "2048",
        "CHECKMATE_MAX_SUBSCRIPTIONS_PER_CONNECTION": "2",
    }
    with access_server(
        server_url, template_url, tmp_path_factory.mktemp("limits"), env
    ) as server:
        yield server


def padded(size: int) -> bytes:
    """A valid JSON request body of exactly `size` bytes."""
    body = b'{"query": "{ taskCounts { count } }"}'
    return body[:-1] + b" " * (size - len(body)) + b"}"


async def test_body_size(api: AccessServer) -> None:
    headers = {
        "authorization": f"Bearer {api.tokens['viewer']}", "content-type": "application/json"
    }
    async with httpx.AsyncClient(base_url=api.url) as client:
        ok = await client.post("/graphql", content=padded(2048), headers=headers)
        assert ok.status_code == 200, ok.text
        too_large = await client.post("/graphql", content=padded(2049), headers=headers)
        assert too_large.status_code == 413
        assert too_large.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
        # Authentication comes first, from the headers alone.
        anonymous = await client.post("/graphql", content=padded(4096))
        assert anonymous.status_code == 401


async def test_a_body_without_length_is_counted_as_it_comes(settings: Settings) -> None:
    """(In process: over a socket, a client still sending when the 413 comes may see a reset.)"""
    settings.max_body_bytes = 2048
    sent: list[int] = []

    async def chunked(size: int) -> AsyncIterator[bytes]:
        body = padded(size)
        for start in range(0, len(body), 512):
            sent.append(start)
            yield body[start : start + 512]

    headers = {"content-type": "application/json"}
    async with running_api(settings) as api:
        ok = await api.client.post("/graphql", content=chunked(2048), headers=headers)
        assert ok.status_code == 200, ok.text
        sent.clear()
        refused = await api.client.post("/graphql", content=chunked(100_000), headers=headers)
        assert refused.status_code == 413
        assert refused.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
        assert len(sent) <= 6, "the body was read on past the limit"


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_subscriptions_per_connection(api: AccessServer, protocol: str) -> None:
    start = "subscribe" if protocol == TRANSPORT_WS else "start"
    query = "subscription { taskStatusChanged { eventId } }"
    async with ws_connection(api.ws_url, protocol) as ws:
        token = {"Authorization": f"Bearer {api.tokens['viewer']}"}
        await send(ws, {"type": "connection_init", "payload": token})
        ack = await receive(ws)
        assert ack is not None
        assert ack["type"] == "connection_ack"
        for op_id in ("1", "2", "3"):
            await send(ws, {"id": op_id, "type": start, "payload": {"query": query}})
        refusal = await receive(ws)
        assert refusal is not None
        assert (refusal["type"], refusal["id"]) == ("error", "3")
        errors = refusal["payload"] if protocol == TRANSPORT_WS else [refusal["payload"]]
        assert [e["extensions"]["code"] for e in errors] == ["TOO_MANY_SUBSCRIPTIONS"]
        # Ending one frees its place.
        stop = "complete" if protocol == TRANSPORT_WS else "stop"
        await send(ws, {"id": "1", "type": stop})
        await send(ws, {"id": "4", "type": start, "payload": {"query": query}})
        await send(ws, {"id": "5", "type": start, "payload": {"query": query}})
        refusal = await receive(ws)
        while refusal is not None and refusal["type"] == "complete":  # graphql-ws confirms stop
            refusal = await receive(ws)
        assert refusal is not None
        assert (refusal["type"], refusal["id"]) == ("error", "5")


async def test_introspection_can_be_turned_off(settings: Settings) -> None:
    query = "{ __schema { queryType { name } } }"
    async with running_api(settings) as api:
        assert (await api.data(query))["__schema"]["queryType"]["name"] == "Query"
    settings.introspection = False
    async with running_api(settings) as closed:
        assert set(await closed.error_codes(query)) == {"GRAPHQL_VALIDATION_FAILED"}
        assert await closed.data("{ taskCounts { count } }")


async def test_every_database_session_has_a_statement_timeout(settings: Settings) -> None:
    settings.statement_timeout = 0.2
    service = await CheckMateService.open(settings)
    try:
        async with service.engine.connect() as conn:
            assert (await conn.exec_driver_sql("SHOW statement_timeout")).scalar() == "200ms"
            with pytest.raises(DBAPIError, match="statement timeout"):
                await conn.exec_driver_sql("SELECT pg_sleep(1)")
    finally:
        await service.close()


async def test_a_timed_out_statement_is_reported_with_its_code(
    settings: Settings, raw_conn: asyncpg.Connection
) -> None:
    settings.statement_timeout = 0.2
    async with running_api(settings) as api, raw_conn.transaction():
        # Held until the API's count has waited past its statement timeout.
        await raw_conn.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        codes = await api.error_codes("{ taskCounts { count } }")
    assert codes == ["STATEMENT_TIMEOUT"]


async def test_what_the_fuzz_found(settings: Settings) -> None:
    """A JSON body that is not an object was a 500; a subscription over HTTP ran as a plain
    field and failed inside (INTERNAL_SERVER_ERROR, logged)."""
    async with running_api(settings) as api:
        for body in (b"null", b"3", b'"x"', b"true"):
            response = await api.client.post(
                "/graphql", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 400, response.text
        subscription = "subscription { taskStatusChanged { eventId } }"
        assert await api.error_codes(subscription) == ["BAD_USER_INPUT"]


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
def test_closed_websockets_leave_the_revocation_watch(settings: Settings, protocol: str) -> None:
    app = create_app(settings)
    with TestClient(app) as client:
        watch = app.state.connection_watch
        for _ in range(3):
            with client.websocket_connect("/graphql", subprotocols=[protocol]) as ws:
                ws.send_text(orjson.dumps({"type": "connection_init"}).decode())
                frame = ws.receive()  # text or (before text frames land) binary
                ack = orjson.loads(frame.get("text") or frame["bytes"])
                assert ack["type"] == "connection_ack"
                assert len(watch) == 1
        deadline = time.monotonic() + 5
        while len(watch) and time.monotonic() < deadline:
            time.sleep(0.01)  # the server side of the last socket is still closing
        assert len(watch) == 0
