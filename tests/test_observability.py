"""/metrics of a real server exposes each series CheckMate adds (GraphQL operations, batch
actions and the tasks they touched, events fanned out, lagging drops, open subscriptions, the
database pool) after a few operations; GET / points to /graphql; JSON logs."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from checkmate import logs
from checkmate.service import CheckMateService
from tests.subscription_support import ServerProcess, free_port, subscribe
from tests.support import TaskRow, insert_task_rows, wait_until
from tests.test_serve_safe_default import _env, _serve, _serves
from tests.worker_support import StartWorker, start_worker, wait_status

pytestmark = pytest.mark.slow
__all__ = ["start_worker"]  # the fixture, used by name


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in a Prometheus text exposition (None when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', series))
        if series.split("{")[0] == name and all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


async def test_metrics_expose_every_new_series(
    database_url: str, tmp_path: Path, raw_conn: asyncpg.Connection
) -> None:
    [queued] = await insert_task_rows(raw_conn, [TaskRow(status="QUEUED", queue="seen")])
    server = ServerProcess(database_url, tmp_path)
    try:
        server.wait_ready()
        async with httpx.AsyncClient(base_url=server.url) as client:
            root = await client.get("/", follow_redirects=False)
            assert root.status_code == 307
            assert root.headers["location"] == "/graphql"

            async def post(query: str) -> None:
                assert (await client.post("/graphql", json={"query": query})).status_code == 200

            await post("query Counts { taskCounts { status count } }")
            await post("query Broken { tasks(maxResults: 0) { totalCount } }")
            await post(f'mutation DryCancel {{ cancelTasks(taskIds: ["{queued}"]) {{ dryRun }} }}')
            async with subscribe(server.ws_url, {"filter": {"queue": "seen"}}) as feed:
                await post(
                    f'mutation Cancel {{ cancelTasks(taskIds: ["{queued}"], dryRun: false) '
                    "{ dryRun } }"
                )
                [event] = await feed.events(1)
                assert event["status"] == "CANCELED"
                text = (await client.get("/metrics")).text
                assert sample(text, "checkmate_event_subscribers") == 1

        def count(name: str, **labels: str) -> float:
            value = sample(text, name, **labels)
            assert value is not None, f"{name} {labels} missing"
            return value

        ops = "checkmate_graphql_operations_total"
        assert count(ops, operation="Counts", type="query", outcome="ok") == 1
        assert count(ops, operation="Broken", type="query", outcome="BAD_USER_INPUT") == 1
        assert count(ops, operation="Cancel", type="mutation", outcome="ok") == 1
        actions, tasks = "checkmate_batch_actions_total", "checkmate_batch_tasks_total"
        assert count(actions, action="CANCEL", mode="dry", outcome="ok") == 1
        assert count(actions, action="CANCEL", mode="real", outcome="ok") == 1
        assert count(tasks, action="CANCEL", mode="real", result="succeeded") == 1
        assert count("checkmate_events_fanned_out_total") >= 1
        assert count("checkmate_event_subscribers_lagging_total") == 0
        assert count("checkmate_db_pool_connections_in_use") >= 0
    finally:
        server.stop()


def test_json_logs_carry_the_request_id_and_operation(capfd: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "json")
    try:
        with logs.operation_context("req-1", "Counts"):
            logging.getLogger("checkmate.test").info("hello %s", "there", extra={"task": "t1"})
        logging.getLogger("checkmate.test").info("outside")
    finally:
        logging.getLogger().handlers = []
    first, second = (json.loads(line) for line in capfd.readouterr().err.splitlines()[-2:])
    assert first["message"] == "hello there"
    assert (first["request_id"], first["operation"], first["task"]) == ("req-1", "Counts", "t1")
    assert first["time"].endswith("+00:00")
    assert "request_id" not in second


def test_serve_logs_json_lines_and_says_where_graphiql_is(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    log = _serves(
        _serve(port, "--log-format", "json"), _env(database_url, tmp_path), port,
        tmp_path / "serve.log",
    )
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert all("time" in entry and "level" in entry for entry in entries)
    assert any(f"http://127.0.0.1:{port}/graphql" in entry["message"] for entry in entries)


async def test_worker_logs_each_task_and_serves_its_metrics(
    service: CheckMateService, start_worker: StartWorker
) -> None:
    port = free_port()
    worker = start_worker("--metrics-port", str(port), "--log-format", "json")
    await worker.ready()
    done = await service.create("demo.pipeline", params={"stages": 2}, invoke=True)
    failed = await service.create(
        "demo.pipeline", params={"stages": 2, "fail_at_stage": 2}, invoke=True
    )
    await wait_status(service, done.id, "COMPLETED")
    await wait_status(service, failed.id, "ERROR")

    def finished_lines() -> list[dict[str, Any]]:
        entries = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
        return [entry for entry in entries if "finished" in entry["message"]]

    await wait_until(lambda: len(finished_lines()) == 2, describe=worker.log)
    outcomes = {entry["task_id"]: entry for entry in finished_lines()}
    assert outcomes[str(done.id)]["outcome"] == "completed"
    assert outcomes[str(failed.id)]["outcome"] == "error"
    assert outcomes[str(done.id)]["kind"] == "demo.pipeline"
    assert outcomes[str(done.id)]["duration_seconds"] >= 0
    assert all("time" in json.loads(line) for line in worker.log().splitlines())

    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    assert sample(text, "checkmate_worker_claims_total") == 2
    assert sample(text, "checkmate_worker_tasks_total", outcome="completed") == 1
    assert sample(text, "checkmate_worker_tasks_total", outcome="error") == 1
    assert sample(
        text, "checkmate_worker_stage_seconds_count", kind="demo.pipeline", outcome="ERROR"
    ) == 1
    assert sample(
        text, "checkmate_worker_stage_seconds_count", kind="demo.pipeline", outcome="COMPLETED"
    ) == 3
