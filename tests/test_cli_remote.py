"""`checkmate tasks` as a real subprocess: against a real server over GraphQL (`--url`, a token)
and in-process, including `watch` printing a change committed by raw SQL."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkmate.access import AccessControl
from checkmate.db.engine import create_engine
from tests.cli_support import seed, sql
from tests.subscription_support import ROOT, ServerProcess
from tests.support import TaskRow

pytestmark = pytest.mark.slow


def _env(database_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value for key, value in os.environ.items()
        if key not in ("CHECKMATE_URL", "CHECKMATE_TOKEN")
    }
    return {
        **env,
        "CHECKMATE_DATABASE_URL": database_url,
        "CHECKMATE_STORE_URL": (data_dir / "store").as_uri(),
        "CHECKMATE_DATA_DIR": str(data_dir),
        **extra,
    }


def checkmate(env: dict[str, str], *args: str, input: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "checkmate.cli", "tasks", *args], cwd=ROOT, env=env, input=input,
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.fixture
def remote(database_url: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    async def token() -> str:
        engine = create_engine(database_url, pool_size=1)
        try:
            return await AccessControl(engine).create("cli", "operator")
        finally:
            await engine.dispose()

    secret = asyncio.run(token())
    server = ServerProcess(database_url, tmp_path)
    try:
        server.wait_ready()
        yield server, secret
    finally:
        server.stop()


def test_remote_with_a_token_gives_the_same_output_and_rules(
    database_url: str, tmp_path: Path, remote: tuple[ServerProcess, str]
) -> None:
    server, secret = remote
    ids = seed(database_url, [TaskRow(status="QUEUED", queue="remote") for _ in range(2)])
    env = _env(database_url, tmp_path, CHECKMATE_TOKEN=secret)
    listed = checkmate(env, "list", "--url", server.url, "--json", "--queue", "remote")
    assert listed.returncode == 0, listed.stderr
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {r["id"] for r in records} == set(ids)
    local = checkmate(env, "list", "--json", "--queue", "remote")
    assert sorted(local.stdout.splitlines()) == sorted(listed.stdout.splitlines())

    declined = checkmate(env, "cancel", "--url", server.url, "--queue", "remote", "--execute")
    assert declined.returncode == 1
    assert "Cancel 2 tasks? [y/N]" in declined.stderr
    assert {r["status"] for r in sql(database_url, "SELECT status FROM tasks")} == {"QUEUED"}

    done = checkmate(env, "cancel", "--url", server.url, "--queue", "remote", "--execute",
                     input="yes\n")
    assert done.returncode == 0, done.stderr
    assert "cancel: 2 succeeded, 0 failed" in done.stdout
    assert {r["status"] for r in sql(database_url, "SELECT status FROM tasks")} == {"CANCELED"}

    refused = checkmate(_env(database_url, tmp_path, CHECKMATE_TOKEN="cm_wrong"),
                        "counts", "--url", server.url)
    assert refused.returncode == 2
    [line] = refused.stderr.strip().splitlines()
    assert "UNAUTHENTICATED" in line


def _read_lines(stream: object, into: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line)


@pytest.mark.parametrize("over", ["url", "in-process"])
def test_watch_prints_a_change_committed_by_raw_sql(
    database_url: str, tmp_path: Path, remote: tuple[ServerProcess, str], over: str
) -> None:
    server, secret = remote
    [task_id] = seed(database_url, [TaskRow(status="QUEUED", queue="watched")])
    [last] = sql(database_url, "SELECT coalesce(max(id), 0) AS id FROM status_events")
    args = ["--url", server.url, "--token", secret] if over == "url" else []
    watcher = subprocess.Popen(
        [sys.executable, "-m", "checkmate.cli", "tasks", "watch", "--json", "--queue", "watched",
         "--after", str(last["id"]), *args],
        cwd=ROOT, env=_env(database_url, tmp_path), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    received: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(watcher.stdout, received), daemon=True).start()
    try:
        sql(database_url, "UPDATE tasks SET status = 'ERROR' WHERE id = $1::uuid", task_id)
        deadline = time.monotonic() + 60
        while True:
            assert watcher.poll() is None, watcher.stderr.read() if watcher.stderr else ""
            try:
                event = json.loads(received.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail("watch printed nothing")
            if event["taskId"] == task_id and event["status"] == "ERROR":
                break
        assert event["previousStatus"] == "QUEUED"
        assert int(event["eventId"]) > last["id"]
    finally:
        watcher.terminate()
        watcher.wait(20)


def test_watch_resumes_after_the_server_went_away(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection drops (the server stops); a change committed meanwhile arrives once the
    server is back, exactly once, and nothing printed before is printed again."""
    first = ServerProcess(database_url, tmp_path)
    [task_id] = seed(database_url, [TaskRow(status="QUEUED", queue="resumed")])
    [last] = sql(database_url, "SELECT coalesce(max(id), 0) AS id FROM status_events")
    received: queue.Queue[str] = queue.Queue()
    watcher = None
    second = None
    try:
        first.wait_ready()
        watcher = subprocess.Popen(
            [sys.executable, "-m", "checkmate.cli", "tasks", "watch", "--json", "--queue",
             "resumed", "--after", str(last["id"]), "--url", first.url],
            cwd=ROOT, env=_env(database_url, tmp_path), stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True,
        )
        threading.Thread(target=_read_lines, args=(watcher.stdout, received), daemon=True).start()
        sql(database_url, "UPDATE tasks SET status = 'RUNNING' WHERE id = $1::uuid", task_id)
        assert json.loads(received.get(timeout=60))["status"] == "RUNNING"
        first.stop()
        sql(database_url, "UPDATE tasks SET status = 'ERROR' WHERE id = $1::uuid", task_id)
        monkeypatch.setattr("tests.subscription_support.free_port", lambda: first.port)
        second = ServerProcess(database_url, tmp_path)
        second.wait_ready()
        event = json.loads(received.get(timeout=60))
        assert (event["previousStatus"], event["status"]) == ("RUNNING", "ERROR")
        sql(database_url, "UPDATE tasks SET status = 'QUEUED' WHERE id = $1::uuid", task_id)
        assert json.loads(received.get(timeout=60))["status"] == "QUEUED"  # no repeat between
    finally:
        if watcher is not None:
            watcher.terminate()
            watcher.wait(20)
        for server in (first, second):
            if server is not None:
                server.stop()
