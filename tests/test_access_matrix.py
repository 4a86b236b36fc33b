"""Every operation x every credential, over HTTP and both websocket protocols, against one real
server with tokens: who gets in (UNAUTHENTICATED otherwise) and what each role may run
(FORBIDDEN otherwise). Also the paths strawberry's advisories on graphql-ws are about."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
import orjson
import pytest

from checkmate.db.engine import asyncpg_dsn
from tests.access_support import (
    LEGACY_WS,
    TRANSPORT_WS,
    AccessServer,
    access_server,
    receive,
    send,
    ws_connection,
    ws_operation,
)

pytestmark = pytest.mark.slow

OK, UNAUTHENTICATED, FORBIDDEN = "ok", "UNAUTHENTICATED", "FORBIDDEN"
UNSUPPORTED = "GRAPHQL_VALIDATION_FAILED"
MISSING = str(uuid4())  # real runs act on a task that does not exist: no effect, still audited

# name -> (document, variables, kind: read | subscribe | dry | real)
OPERATIONS: dict[str, tuple[str, dict[str, Any], str]] = {
    "tasks": ("{ tasks(maxResults: 5) { nodes { id } } }", {}, "read"),
    "task": ("query($id: ID!) { task(id: $id) { id } }", {"id": MISSING}, "read"),
    "taskCounts": ("{ taskCounts { status count } }", {}, "read"),
    "auditLog": ("{ auditLog(maxResults: 5) { nodes { id } } }", {}, "audit"),
    "taskStatusChanged": (
        'subscription { taskStatusChanged(afterEventId: "0") { eventId } }', {}, "subscribe"
    ),
    "createTask": (
        'mutation { createTask(input: {name: "demo.pipeline"}) { id } }', {}, "real"
    ),
    **{
        f"{mutation}:{mode}": (
            f"mutation($ids: [ID!], $dry: Boolean) {{ {mutation}(taskIds: $ids, dryRun: $dry)"
            " { dryRun failed { taskId } } }",
            {"ids": [MISSING], "dry": mode == "dry"},
            mode,
        )
        for mutation in ("cancelTasks", "unlockTasks", "cleanTasks", "invokeTasks")
        for mode in ("dry", "real")
    },
}
CREDENTIALS = ["none", "malformed", "unknown", "revoked", "viewer", "operator"]
TRANSPORTS = ["http", TRANSPORT_WS, LEGACY_WS]


def expected(credential: str, kind: str, transport: str) -> str:
    if credential in ("none", "malformed", "unknown", "revoked"):
        return UNAUTHENTICATED
    if transport == LEGACY_WS and kind != "subscribe":
        return UNSUPPORTED  # strawberry's graphql-ws carries subscriptions only
    if credential == "viewer" and kind in ("real", "audit"):
        return FORBIDDEN
    return OK


@pytest.fixture(scope="module")
def api(
    server_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AccessServer]:
    data_dir = tmp_path_factory.mktemp("access-matrix")
    env = {"CHECKMATE_TOKEN_CACHE_TTL": "1"}
    with access_server(server_url, template_url, data_dir, env) as server:
        yield server


def authorization(api: AccessServer, credential: str) -> str | None:
    return {
        "none": None,
        "malformed": "Basic dXNlcjpwYXNz",
        "unknown": "Bearer cm_" + "x" * 43,
        "revoked": f"Bearer {api.tokens['revoked']}",
        "viewer": f"Bearer {api.tokens['viewer']}",
        "operator": f"Bearer {api.tokens['operator']}",
    }[credential]


async def over_http(api: AccessServer, header: str | None, query: str, variables: Any) -> str:
    headers = {"authorization": header} if header is not None else {}
    async with httpx.AsyncClient(base_url=api.url) as client:
        response = await client.post(
            "/graphql", json={"query": query, "variables": variables}, headers=headers
        )
    body = response.json()
    codes = [error["extensions"]["code"] for error in body.get("errors", [])]
    if response.status_code == 401:
        assert codes == [UNAUTHENTICATED]
        assert response.headers["www-authenticate"] == "Bearer"
        return UNAUTHENTICATED
    assert response.status_code == 200, response.text
    if codes:
        assert codes == [FORBIDDEN], body
        assert body["data"] is None
        return FORBIDDEN
    return OK


async def over_ws(
    api: AccessServer, protocol: str, header: str | None, query: str, variables: Any
) -> str:
    outcome = await ws_operation(
        api.ws_url, protocol, header, query, variables, first_only=True
    )
    if outcome.rejected is not None:
        if protocol == TRANSPORT_WS:
            assert outcome.rejected == 4403  # the protocol's code for a refused connection_init
        else:
            assert outcome.rejected["type"] == "connection_error"
            assert outcome.rejected["payload"]["extensions"]["code"] == UNAUTHENTICATED
        return UNAUTHENTICATED
    assert outcome.close_code is None, outcome
    if outcome.codes:
        assert len(outcome.codes) == 1, outcome
        assert outcome.codes[0] in (FORBIDDEN, UNSUPPORTED), outcome
        return outcome.codes[0]
    assert outcome.messages, outcome
    assert outcome.messages[0]["type"] in ("next", "data"), outcome
    return OK


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("credential", CREDENTIALS)
@pytest.mark.parametrize("operation", list(OPERATIONS))
async def test_access_matrix(
    api: AccessServer, operation: str, credential: str, transport: str
) -> None:
    query, variables, kind = OPERATIONS[operation]
    if transport == "http" and kind == "subscribe":
        pytest.skip("subscriptions run over websockets")
    header = authorization(api, credential)
    if transport == "http":
        outcome = await over_http(api, header, query, variables)
    else:
        outcome = await over_ws(api, transport, header, query, variables)
    assert outcome == expected(credential, kind, transport)


async def test_a_viewers_real_mutation_over_websockets_changes_nothing(
    api: AccessServer,
) -> None:
    query = (
        "mutation($ids: [ID!]) { cancelTasks(taskIds: $ids, dryRun: false) { dryRun } }"
    )
    header = f"Bearer {api.tokens['viewer']}"
    outcome = await ws_operation(api.ws_url, LEGACY_WS, header, query, {"ids": [api.task_id]})
    # strawberry's graphql-ws runs no mutation at all; over graphql-transport-ws it is FORBIDDEN.
    assert outcome.codes == [UNSUPPORTED]
    outcome = await ws_operation(
        api.ws_url, TRANSPORT_WS, header, query, {"ids": [api.task_id]}
    )
    assert outcome.codes == [FORBIDDEN]
    conn = await asyncpg.connect(asyncpg_dsn(api.database_url))
    try:
        status = await conn.fetchval("SELECT status FROM tasks WHERE id = $1", api.task_id)
    finally:
        await conn.close()
    assert status == "CREATED"


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_operations_before_connection_init_are_refused(
    api: AccessServer, protocol: str
) -> None:
    """An operation sent before connection_init never runs: the socket closes with 4401."""
    start = "subscribe" if protocol == TRANSPORT_WS else "start"
    query = "mutation { createTask(input: {name: \"demo.pipeline\"}) { id } }"
    async with ws_connection(api.ws_url, protocol) as ws:
        message = {"id": "1", "type": start, "payload": {"query": query}}
        await ws.send(orjson.dumps(message).decode())
        assert await receive(ws) is None
        assert ws.close_code == 4401
    # The socket is gone: neither the operation nor a later connection_init was served.


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_a_refused_connection_runs_nothing_after(api: AccessServer, protocol: str) -> None:
    start = "subscribe" if protocol == TRANSPORT_WS else "start"
    async with ws_connection(api.ws_url, protocol) as ws:
        await ws.send(orjson.dumps({"type": "connection_init", "payload": {}}).decode())
        query = "{ taskCounts { count } }"
        await send(ws, {"id": "1", "type": start, "payload": {"query": query}})
        first = await receive(ws)
        if protocol == LEGACY_WS:
            assert first is not None
            assert first["type"] == "connection_error"
            assert await receive(ws) is None  # then closed, the query never answered
        else:
            assert first is None
        assert ws.close_code in (4403, 1011)


async def test_graphiql_page_needs_no_token_but_its_queries_do(api: AccessServer) -> None:
    async with httpx.AsyncClient(base_url=api.url) as client:
        page = await client.get("/graphql", headers={"accept": "text/html"})
        assert page.status_code == 200
        query = await client.get(
            "/graphql", params={"query": "{ taskCounts { count } }"},
            headers={"accept": "text/html"},
        )
        assert query.status_code == 401
        for path in ("/healthz", "/metrics"):
            assert (await client.get(path)).status_code == 200


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_revocation_ends_an_open_subscription_within_5_seconds(
    api: AccessServer, protocol: str
) -> None:
    access, engine = await api.access()
    try:
        name = f"short-lived-{protocol}"
        header = f"Bearer {await access.create(name, 'viewer')}"
        await api.until_accepted(header)
        start = "subscribe" if protocol == TRANSPORT_WS else "start"
        query = 'subscription { taskStatusChanged(afterEventId: "0") { eventId } }'
        async with ws_connection(api.ws_url, protocol) as ws:
            init = {"type": "connection_init", "payload": {"Authorization": header}}
            await ws.send(orjson.dumps(init).decode())
            ack = await receive(ws)
            assert ack is not None
            assert ack["type"] == "connection_ack"
            await send(ws, {"id": "s", "type": start, "payload": {"query": query}})
            first = await receive(ws)
            assert first is not None
            assert first["type"] in ("next", "data")  # the subscription is live

            await access.revoke(name)
            revoked_at = asyncio.get_running_loop().time()
            ending = await receive(ws, seconds=5.0)
            while ending is not None and ending["type"] in ("next", "data"):  # replayed events
                ending = await receive(ws, seconds=5.0)
            assert ending is not None
            assert ending["type"] == "error"
            assert ending["id"] == "s"
            errors = ending["payload"] if protocol == TRANSPORT_WS else [ending["payload"]]
            assert [error["extensions"]["code"] for error in errors] == [UNAUTHENTICATED]
            assert await receive(ws, seconds=5.0) is None
            assert ws.close_code == 4401
            assert asyncio.get_running_loop().time() - revoked_at < 5.0
    finally:
        await engine.dispose()
