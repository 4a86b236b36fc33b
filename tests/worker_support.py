"""Worker processes for the tests: the real `checkmate worker` command against the test DB."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from checkmate.service import CheckMateService
from checkmate.settings import Settings
from tests.support import wait_until

__all__ = [
    "StartWorker",
    "WorkerProcess",
    "start_worker",
    "wait_status",
    "wait_until",
    "worker_env",
]

REPO = Path(__file__).resolve().parent.parent
CHECKMATE = Path(sys.executable).parent / "checkmate"


def worker_env(settings: Settings) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHECKMATE_")}
    env.update(
        CHECKMATE_DATABASE_URL=str(settings.database_url),
        CHECKMATE_STORE_URL=str(settings.store_url),
        CHECKMATE_DATA_DIR=str(settings.data_dir),
        CHECKMATE_LOCK_TIMEOUT=str(settings.lock_timeout),
        CHECKMATE_TASK_MODULES="tests.worker_tasks",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    return env


class WorkerProcess:
    """One `checkmate worker` subprocess; its log goes to a file the test can read."""

    def __init__(
        self,
        settings: Settings,
        *args: str,
        log_dir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.log_path = log_dir / f"worker-{time.monotonic_ns()}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(CHECKMATE), "worker", "--poll-interval", "1", *args],
                env={**worker_env(settings), **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text()

    async def ready(self, within: float = 20) -> None:
        await wait_until(lambda: "serving queues" in self.log(), within, self.log)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def exit_code(self, within: float = 20) -> int:
        await wait_until(lambda: self.process.poll() is not None, within, self.log)
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


async def wait_status(
    service: CheckMateService, task_id: UUID, *statuses: str, within: float = 20
) -> Any:
    async def reached() -> Any:
        task = await service.get(task_id)
        return task if task.status in statuses else None

    return await wait_until(reached, within)


StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(settings: Settings, tmp_path: Path) -> Iterator[StartWorker]:
    """Start `checkmate worker` processes (killed at the end of the test)."""
    started: list[WorkerProcess] = []

    def start(
        *args: str, settings_: Settings = settings, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        worker = WorkerProcess(settings_, *args, log_dir=tmp_path, env=env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()
