"""The JavaScript clients consoles are built on, against a real server: npm graphql-ws (the
reference client of graphql-transport-ws, used by Apollo Client, urql and Relay) subscribes and
receives events committed by raw SQL; graphql-http's audit checks GraphQL-over-HTTP.

The packages are pinned in tests/clients/package-lock.json (`npm ci --prefix tests/clients`, which
.ci/run does); without node or those packages these tests are skipped, saying so."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from checkmate.settings import Settings
from tests.graphql_helpers import insert_tasks
from tests.subscription_support import TIMEOUT, Served, serving
from tests.support import wait_until

CLIENTS = Path(__file__).resolve().parent / "clients"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(
    NODE is None or not (CLIENTS / "node_modules" / "graphql-ws").is_dir(),
    reason="needs node and the pinned npm clients: npm ci --prefix tests/clients",
)


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[Served]:
    async with serving(settings) as served:
        yield served


class NodeScript:
    """A script of tests/clients run with node; its stdout is one JSON object per line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, script: str, *args: str) -> NodeScript:
        assert NODE is not None
        process = await asyncio.create_subprocess_exec(
            NODE, str(CLIENTS / script), *args, cwd=CLIENTS,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            raw = await self.process.stdout.readline()
        if not raw:
            stderr = await self.process.stderr.read() if self.process.stderr else b""
            raise AssertionError(f"node exited: {stderr.decode()}")
        line: dict[str, Any] = json.loads(raw)
        assert "error" not in line, line["error"]
        return line

    async def exit_code(self) -> int:
        async with asyncio.timeout(TIMEOUT):
            return await self.process.wait()


async def test_graphql_ws_client_subscribes_receives_and_completes(
    served: Served, raw_conn: asyncpg.Connection
) -> None:
    [task_id, other] = await insert_tasks(raw_conn, 2)
    hub = served.app.state.hub
    client = await NodeScript.start("subscribe.mjs", served.url, str(task_id), "2")
    try:
        assert await client.line() == {"connected": True}
        query = await client.line()
        assert {row["status"] for row in query["query"]["data"]["taskCounts"]} >= {"CREATED"}
        assert await client.line() == {"queryCompleted": True}  # the server's `complete`
        assert await client.line() == {"subscribed": True}
        await wait_until(lambda: hub.subscriber_count == 1)
        for status in ("QUEUED", "RUNNING"):  # committed by another connection, by hand
            await raw_conn.execute("UPDATE tasks SET status = $2 WHERE id = $1", other, status)
            await raw_conn.execute("UPDATE tasks SET status = $2 WHERE id = $1", task_id, status)
        events = [(await client.line())["event"]["data"]["taskStatusChanged"] for _ in range(2)]
        assert await client.line() == {"done": True}
        assert await client.exit_code() == 0
    finally:
        if client.process.returncode is None:
            client.process.kill()
            await client.process.wait()
    assert [(e["taskId"], e["previousStatus"], e["status"]) for e in events] == [
        (str(task_id), "CREATED", "QUEUED"), (str(task_id), "QUEUED", "RUNNING")
    ]
    await wait_until(lambda: hub.subscriber_count == 0)  # the client's `complete` ended it


async def test_graphql_http_audit_passes_every_must_and_should(served: Served) -> None:
    audit = await NodeScript.start("audit.mjs", served.http_url)
    report = await audit.line()
    assert await audit.exit_code() == 0
    levels = report["levels"]
    print(
        "graphql-http audit: "
        + ", ".join(f"{level} {c['ok']}/{c['total']}" for level, c in levels.items())
    )
    must_and_should = [f for f in report["failures"] if not f["name"].startswith("MAY")]
    assert must_and_should == []
    assert levels["MUST"]["total"] > 0
    assert levels["SHOULD"]["total"] > 0
