"""The committed SDL is the code's SDL, and it keeps every part of the public contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from schema.export import SDL_PATH, main, sdl

REPO = Path(__file__).resolve().parents[1]
CHECKER = REPO.parent / "shared" / "contract" / "check_contract.py"


def test_committed_sdl_is_exported_from_the_code() -> None:
    assert SDL_PATH.read_text() == sdl(), "run: python -m schema.export"
    assert main(["--check"]) == 0


def test_export_check_fails_when_the_file_differs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "schema.graphql"
    stale.write_text(sdl().replace("lockDetected: Boolean", ""))
    monkeypatch.setattr("schema.export.SDL_PATH", stale)
    assert main(["--check"]) == 1


def test_contract_checker_reports_no_violation() -> None:
    if not CHECKER.exists():
        pytest.skip(f"contract checker not found at {CHECKER} (outside this repository)")
    result = subprocess.run(
        [sys.executable, str(CHECKER), str(SDL_PATH)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 contract violations" in result.stdout


def test_contract_checker_catches_a_removed_field(tmp_path: Path) -> None:
    """The check above can fail: dropping a contract field is reported."""
    if not CHECKER.exists():
        pytest.skip(f"contract checker not found at {CHECKER} (outside this repository)")
    broken = tmp_path / "broken.graphql"
    broken.write_text(sdl().replace("  pageInfo: PageInfo!\n", ""))
    result = subprocess.run(
        [sys.executable, str(CHECKER), str(broken)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "TaskConnection.pageInfo" in result.stdout
