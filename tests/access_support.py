"""One API server with tokens of every kind for a whole test module (the access matrix, the
limits and the fuzz test share it), and a websocket client that reports how an operation ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from sqlalchemy.engine import make_url
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from checkmate.access import AccessControl
from checkmate.db.engine import asyncpg_dsn, create_engine
from tests.conftest import _admin
from tests.subscription_support import ServerProcess

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"


@dataclass
class AccessServer:
    server: ServerProcess
    database_url: str
    tokens: dict[str, str] = field(default_factory=dict)  # name -> secret
    task_id: str = ""
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ws_url(self) -> str:
        return self.server.ws_url

    async def until_accepted(self, header: str, seconds: float = 5.0) -> None:
        """Wait until the server knows a token just created (within its miss-reload interval)."""
        deadline = asyncio.get_running_loop().time() + seconds
        async with httpx.AsyncClient(base_url=self.url) as client:
            while True:
                response = await client.post(
                    "/graphql", json={"query": "{ __typename }"}, headers={"authorization": header}
                )
                if response.status_code == 200:
                    return
                assert asyncio.get_running_loop().time() < deadline, response.text

    async def access(self) -> tuple[AccessControl, Any]:
        engine = create_engine(self.database_url, pool_size=1)
        return AccessControl(engine, ttl=0.01), engine


async def _prepare(database_url: str) -> tuple[dict[str, str], str]:
    engine = create_engine(database_url, pool_size=1)
    try:
        access = AccessControl(engine)
        tokens = {
            "viewer": await access.create("viewer", "viewer"),
            "operator": await access.create("operator", "operator"),
            "revoked": await access.create("revoked", "operator"),
        }
        await access.revoke("revoked")
    finally:
        await engine.dispose()
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        task_id = await conn.fetchval(
            "INSERT INTO tasks (name, status) VALUES ('demo.pipeline', 'CREATED') RETURNING id"
        )
    finally:
        await conn.close()
    return tokens, str(task_id)


@contextlib.contextmanager
def access_server(
    server_url: str, template_url: str, data_dir: Path, env: Mapping[str, str] | None = None
) -> Iterator[AccessServer]:
    """A fresh database cloned from the template, tokens viewer/operator/revoked, one CREATED
    task, and a server on it whose stderr goes to data_dir/server.log."""
    template = make_url(template_url).database
    name = f"checkmate_access_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    database_url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        tokens, task_id = asyncio.run(_prepare(database_url))
        log_path = data_dir / "server.log"
        with log_path.open("wb") as log:
            server = ServerProcess(database_url, data_dir, env=env, stderr=log)
            try:
                server.wait_ready()
                yield AccessServer(server, database_url, tokens, task_id, log_path)
            finally:
                server.stop()
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class WsOutcome:
    """How a websocket operation ended: `rejected` (connection_init refused: close code or the
    legacy connection_error payload), or the operation's messages, or `closed` with a code."""

    rejected: Any = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None

    @property
    def codes(self) -> list[str]:
        found: list[str] = []
        for message in self.messages:
            payload = message.get("payload")
            errors = payload if isinstance(payload, list) else None
            if isinstance(payload, dict):
                errors = payload.get("errors") or ([payload] if "extensions" in payload else [])
            found += [error.get("extensions", {}).get("code", "") for error in errors or []]
        return found


async def receive(ws: ClientConnection, seconds: float = 10.0) -> dict[str, Any] | None:
    """The next message other than keep-alives; None when the server closed the socket."""
    while True:
        try:
            message: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), seconds))
        except ConnectionClosed:
            return None
        if message.get("type") == "ping":
            await ws.send(orjson.dumps({"type": "pong"}).decode())
        elif message.get("type") not in ("ka", "pong"):
            return message


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(message).decode())


def init_payload(authorization: str | None) -> dict[str, Any]:
    return {} if authorization is None else {"Authorization": authorization}


@contextlib.asynccontextmanager
async def ws_connection(ws_url: str, protocol: str) -> Any:
    async with connect(
        ws_url, subprotocols=[Subprotocol(protocol)], ping_interval=None, compression=None
    ) as ws:
        yield ws


async def ws_operation(
    ws_url: str,
    protocol: str,
    authorization: str | None,
    query: str,
    variables: dict[str, Any] | None = None,
    first_only: bool = False,
) -> WsOutcome:
    """connection_init with the token, then one operation; its messages until it completes
    (or the first one, for a subscription that would go on)."""
    async with ws_connection(ws_url, protocol) as ws:
        init = {"type": "connection_init", "payload": init_payload(authorization)}
        await ws.send(orjson.dumps(init).decode())
        ack = await receive(ws)
        if ack is None:
            return WsOutcome(rejected=ws.close_code)
        if ack["type"] != "connection_ack":
            return WsOutcome(rejected=ack)
        start = "subscribe" if protocol == TRANSPORT_WS else "start"
        payload = {"query": query, "variables": variables or {}}
        await ws.send(orjson.dumps({"id": "1", "type": start, "payload": payload}).decode())
        outcome = WsOutcome()
        while True:
            message = await receive(ws)
            if message is None:
                outcome.close_code = ws.close_code
                return outcome
            if message["type"] == "complete":
                return outcome
            outcome.messages.append(message)
            if message["type"] == "error" or first_only:
                return outcome
