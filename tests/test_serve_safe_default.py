"""`checkmate serve` refuses a non-loopback address while access is open (no token), unless
--insecure; and says once at start that access is open."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from checkmate.access import AccessControl
from checkmate.db.engine import create_engine
from tests.subscription_support import ROOT, free_port

pytestmark = pytest.mark.slow


def _env(database_url: str, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CHECKMATE_DATABASE_URL": database_url,
        "CHECKMATE_STORE_URL": (data_dir / "store").as_uri(),
        "CHECKMATE_DATA_DIR": str(data_dir),
    }


def _serve(port: int, *options: str) -> list[str]:
    return [sys.executable, "-m", "checkmate.cli", "serve", "--port", str(port), *options]


def _serves(command: list[str], env: dict[str, str], port: int, log: Path) -> str:
    """Start the command, wait for /healthz on loopback, stop it; its log."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=out, stdout=out)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, log.read_text()
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).is_success:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.1)
        finally:
            process.terminate()
            process.wait(20)
    return log.read_text()


def test_open_access_on_a_network_address_exits_2(database_url: str, tmp_path: Path) -> None:
    result = subprocess.run(
        _serve(free_port(), "--host", "0.0.0.0"), cwd=ROOT, env=_env(database_url, tmp_path),
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "checkmate token create" in line
    assert "--insecure" in line


def test_insecure_starts_and_says_access_is_open(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    log = _serves(
        _serve(port, "--host", "0.0.0.0", "--insecure"), _env(database_url, tmp_path), port,
        tmp_path / "serve.log",
    )
    assert log.count("access is open") == 1


def test_with_a_token_a_network_address_needs_no_flag(database_url: str, tmp_path: Path) -> None:
    async def create_token() -> None:
        engine = create_engine(database_url, pool_size=1)
        try:
            await AccessControl(engine).create("ops", "operator")
        finally:
            await engine.dispose()

    asyncio.run(create_token())
    port = free_port()
    log = _serves(
        _serve(port, "--host", "0.0.0.0"), _env(database_url, tmp_path), port,
        tmp_path / "serve.log",
    )
    assert "access is open" not in log
