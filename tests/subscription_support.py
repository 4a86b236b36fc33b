"""A real API server on a loopback port (its own process, or uvicorn in the test's event loop),
and GraphQL websocket clients for both subscription protocols. Shared by the subscription and
client tests and bench/bench_subscriptions.py."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from checkmate.settings import Settings
from server import GraphQLRouter, create_app
from tests.support import bounded, wait_until

ROOT = Path(__file__).resolve().parent.parent

EVENT_FIELDS = "eventId taskId status previousStatus stage queue changedAt"
SUBSCRIPTION = (
    "subscription($filter: TaskFilter, $after: ID) {"
    f" taskStatusChanged(filter: $filter, afterEventId: $after) {{ {EVENT_FIELDS} }} }}"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port

TIMEOUT = 15


@dataclass
class Served:
    url: str  # websocket URL of /graphql
    app: Starlette  # in this process, so tests can ask its hub

    @property
    def http_url(self) -> str:
        return "http" + self.url.removeprefix("ws")

    @property
    def graphql(self) -> GraphQLRouter:
        """The app's GraphQL view (tests shorten its keep-alive interval)."""
        return next(
            route.endpoint for route in self.app.routes
            if isinstance(getattr(route, "endpoint", None), GraphQLRouter)
        )


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Served]:
    """A uvicorn server on a free loopback port, in this event loop."""
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started, TIMEOUT)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Served(f"ws://127.0.0.1:{port}/graphql", app)
    finally:
        server.should_exit = True
        await bounded(task, "uvicorn shutdown (lifespan: EventHub.stop, service.close)")


class ServerProcess:
    """`uvicorn checkmate.cli:serving_app` in its own process, as `checkmate serve` runs it
    (websocket compression off unless `ws_compression`); with `cli`, `checkmate serve` itself."""

    def __init__(
        self,
        database_url: str,
        data_dir: Path,
        *,
        ws_compression: bool = False,
        env: Mapping[str, str] | None = None,
        cli: bool = False,
        stderr: Any = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/graphql"
        environment = {
            **os.environ,
            "CHECKMATE_DATABASE_URL": database_url,
            "CHECKMATE_STORE_URL": (data_dir / "store").as_uri(),
            "CHECKMATE_DATA_DIR": str(data_dir),
            **(env or {}),
        }
        command = [
            sys.executable, "-m", "uvicorn", "checkmate.cli:serving_app", "--factory",
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
            "--ws-max-queue", "1024",
            "--ws-per-message-deflate", "true" if ws_compression else "false",
        ]
        if cli:
            command = [
                sys.executable, "-m", "checkmate.cli", "serve", "--port", str(self.port),
                *(["--ws-compression"] if ws_compression else []),
            ]
        self.process = subprocess.Popen(command, cwd=ROOT, env=environment, stderr=stderr)

    def wait_ready(self, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError("the server did not come up")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    @property
    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @property
    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024


@contextlib.contextmanager
def running_server(
    database_url: str, data_dir: Path, env: Mapping[str, str] | None = None
) -> Iterator[ServerProcess]:
    server = ServerProcess(database_url, data_dir, env=env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


class Subscription:
    """One GraphQL subscription over its own websocket, in either protocol."""

    def __init__(self, ws: ClientConnection, protocol: str, op_id: str) -> None:
        self.ws = ws
        self.protocol = protocol
        self.op_id = op_id

    async def next_message(self) -> dict[str, Any]:
        """The next payload-bearing message for this operation; keep-alives are answered."""
        while True:
            message = orjson.loads(await self.ws.recv())
            kind = message.get("type")
            if kind == "ping":
                await self.ws.send(orjson.dumps({"type": "pong"}).decode())
            elif kind in ("pong", "ka"):
                continue
            else:
                return dict(message)

    async def next_event(self) -> dict[str, Any]:
        """The next taskStatusChanged payload; any other message is an error here."""
        message = await self.next_message()
        if message.get("type") not in ("next", "data") or message["payload"].get("errors"):
            raise AssertionError(f"unexpected message {message}")
        return dict(message["payload"]["data"]["taskStatusChanged"])

    async def events(self, count: int, seconds: float = 30.0) -> list[dict[str, Any]]:
        async def take() -> list[dict[str, Any]]:
            return [await self.next_event() for _ in range(count)]

        return await asyncio.wait_for(take(), seconds)


_ids = itertools.count(1)


@contextlib.asynccontextmanager
async def subscribe(
    ws_url: str,
    variables: dict[str, Any] | None = None,
    protocol: str = "graphql-transport-ws",
    query: str = SUBSCRIPTION,
    compress: bool = True,
) -> AsyncIterator[Subscription]:
    """Subscribe over a new websocket; `compress` offers permessage-deflate as browsers do."""
    # The server keeps the connection alive (graphql-ws pings); a client ping timing out under
    # load would close sockets mid-measurement.
    options: dict[str, Any] = {"compression": None} if not compress else {}
    async with connect(
        ws_url, subprotocols=[Subprotocol(protocol)], max_queue=None, ping_interval=None,
        **options,
    ) as ws:
        await ws.send(orjson.dumps({"type": "connection_init", "payload": {}}).decode())
        subscription = Subscription(ws, protocol, str(next(_ids)))
        ack = await subscription.next_message()
        if ack["type"] != "connection_ack":
            raise AssertionError(f"expected connection_ack, got {ack}")
        start = "subscribe" if protocol == "graphql-transport-ws" else "start"
        payload = {"query": query, "variables": variables or {}}
        await ws.send(
            orjson.dumps({"id": subscription.op_id, "type": start, "payload": payload}).decode()
        )
        yield subscription
