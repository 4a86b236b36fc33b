"""The everyday commands around `checkmate tasks`: --version, db current/downgrade, and the WHEN
parser the task filters use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from checkmate.cli import app
from checkmate.cli_when import age, parse_when
from tests.cli_support import cli_env, sql

__all__ = ["cli_env"]  # the fixture, used by name

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", NOW - timedelta(seconds=90)),
        ("15m", NOW - timedelta(minutes=15)),
        ("2h", NOW - timedelta(hours=2)),
        ("3d", NOW - timedelta(days=3)),
        ("1w", NOW - timedelta(weeks=1)),
        ("2026-05-31T00:00:00Z", datetime(2026, 5, 31, tzinfo=UTC)),
        ("2026-05-31T02:00:00+02:00", datetime(2026, 5, 31, tzinfo=UTC)),
        ("2026-05-31T00:00:00", datetime(2026, 5, 31, tzinfo=UTC)),  # no offset: UTC
    ],
)
def test_when_takes_relative_and_iso_times(text: str, expected: datetime) -> None:
    assert parse_when(text, NOW) == expected


def test_when_refuses_anything_else() -> None:
    with pytest.raises(ValueError, match="90s, 15m, 2h, 3d, 1w"):
        parse_when("yesterday", NOW)
    assert age((NOW - timedelta(minutes=3, seconds=12)).isoformat(), NOW) == "3m12s ago"
    assert age(None, NOW) == "-"


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.startswith("checkmate ")


def test_db_current_and_downgrade(database_url: str, cli_env: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["db", "current"]).stdout.strip().endswith("(up to date)")
    assert runner.invoke(app, ["db", "downgrade", "0001"]).exit_code == 0
    [row] = sql(database_url, "SELECT version_num FROM alembic_version")
    assert row["version_num"] == "0001"
    behind = runner.invoke(app, ["db", "current"]).stdout
    assert "0001" in behind
    assert "checkmate db upgrade" in behind
