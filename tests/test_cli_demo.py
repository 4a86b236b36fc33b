"""`checkmate demo` makes every status, a dead worker's stale lock, an orphaned RUNNING task and
cleaned tasks, and `checkmate tasks` finds them."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from typer.testing import CliRunner

from checkmate.cli import app
from checkmate.demo import plan
from checkmate.models import StageStatus
from tests.cli_support import cli_env, lines, run, sql

__all__ = ["cli_env"]  # the fixture, used by name


def test_demo_makes_every_status_a_stale_lock_and_an_orphan(
    database_url: str, cli_env: Path
) -> None:
    result = CliRunner().invoke(app, ["demo", "--tasks", "12"])
    assert result.exit_code == 0, result.output
    ids = set(re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                         result.stdout))
    rows = sql(database_url, "SELECT id, status, cleaned, queue, error FROM tasks")
    assert {str(row["id"]) for row in rows} == ids
    statuses = Counter(row["status"] for row in rows)
    assert set(statuses) == {status.value for status in StageStatus}
    roles = Counter(plan(12))
    assert statuses["QUEUED"] == roles["queued"]  # not twice (the old --count bug)
    assert statuses["CREATED"] == roles["created"]
    assert sum(row["cleaned"] for row in rows) == roles["cleaned"]
    assert len({row["queue"] for row in rows}) >= 3

    unlock = {r["taskId"]: r for r in lines(run("unlock", "--status", "RUNNING", "--json"))}
    details = sorted(r["detail"] or r["error"] for r in unlock.values())
    assert len(details) == roles["stale-lock"] + roles["orphan"] + roles["running"]
    assert any("went stale" in detail for detail in details)
    assert any("without a lock" in detail for detail in details)
    assert any("is fresh" in detail for detail in details)

    [failed] = [row for row in rows if row["status"] == "ERROR"][:1]
    [record] = lines(run("get", str(failed["id"]), "--json"))
    [error_stage] = [stage for stage in record["metadata"] if stage["status"] == "ERROR"]
    assert error_stage["error"].startswith("KeyError")
    assert "Traceback" in error_stage["traceback"]
