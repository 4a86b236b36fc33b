"""`checkmate tasks` through typer's runner (the service in this process) against a real database:
output, filters, relative times, dry run versus --execute, the prompt, exit codes, errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from checkmate import cli_tasks
from tests.cli_support import (
    cli_env,
    completed_with_objects,
    lines,
    objects_of,
    run,
    seed,
    sql,
)
from tests.support import TaskRow

__all__ = ["cli_env"]  # the fixture, used by name


@pytest.fixture
def mixed(database_url: str, cli_env: Path) -> dict[str, list[str]]:
    old = datetime.now(UTC) - timedelta(days=3)
    return {
        "old": seed(database_url, [
            TaskRow(queue="nightly", tags=["etl"], created_at=old) for _ in range(2)
        ]),
        "queued": seed(database_url, [TaskRow(status="QUEUED", tags=["etl", "eu"])
                                      for _ in range(3)]),
        "error": seed(database_url, [TaskRow(status="ERROR", queue="gpu")]),
    }


def test_list_json_and_table_with_filters_and_relative_times(
    mixed: dict[str, list[str]],
) -> None:
    everything = run("list", "--json")
    assert everything.exit_code == 0, everything.output
    records = lines(everything)
    assert len(records) == 6
    assert set(records[0]) >= {"id", "name", "queue", "tags", "status", "createdAt", "attempts"}

    recent = lines(run("list", "--json", "--since", "2h"))
    assert {r["id"] for r in recent} == set(mixed["queued"] + mixed["error"])
    older = lines(run("list", "--json", "--until", "1d"))
    assert {r["id"] for r in older} == set(mixed["old"])
    iso = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert len(lines(run("list", "--json", "--since", iso))) == 4
    tagged = lines(run("list", "--json", "--tag", "etl", "--tag", "eu", "--status", "queued"))
    assert {r["id"] for r in tagged} == set(mixed["queued"])
    assert [r["id"] for r in lines(run("list", "--json", "--queue", "gpu"))] == mixed["error"]
    oldest = lines(run("list", "--json", "--asc", "--max", "2"))
    assert {r["id"] for r in oldest} == set(mixed["old"])

    table = run("list", "--status", "ERROR")
    assert table.exit_code == 0
    assert mixed["error"][0] in table.stdout
    assert "1 task(s)" in table.stdout

    counts = {r["status"]: r["count"] for r in lines(run("counts", "--json", "--since", "2h"))}
    assert counts["QUEUED"] == 3
    assert counts["ERROR"] == 1
    assert counts["CREATED"] == 0


def test_clean_is_a_dry_run_until_executed_and_confirmed(
    database_url: str, cli_env: Path
) -> None:
    ids = completed_with_objects(database_url, cli_env, 2)

    def state() -> list[tuple[bool, bool]]:
        cleaned = {
            str(row["id"]): row["cleaned"]
            for row in sql(database_url, "SELECT id, cleaned FROM tasks")
        }
        return [(cleaned[task_id], objects_of(cli_env, task_id)) for task_id in ids]

    assert state() == [(False, True), (False, True)]
    dry = run("clean", "--tag", "done")
    assert dry.exit_code == 0, dry.output
    assert "dry run of clean: 2 would succeed" in dry.stdout
    for answer in ("n\n", ""):  # "n", and end of input, both mean no
        declined = run("clean", "--tag", "done", "--execute", input=answer)
        assert declined.exit_code == 1
        assert "Clean 2 tasks? [y/N]" in declined.stderr
        assert state() == [(False, True), (False, True)]

    done = run("clean", *ids, "--execute", "--yes", "--json", "--reason", "cli test")
    assert done.exit_code == 0, done.output
    assert {(r["taskId"], r["dryRun"], r["error"]) for r in lines(done)} == {
        (task_id, False, None) for task_id in ids
    }
    assert state() == [(True, False), (True, False)]
    [audit] = sql(database_url, "SELECT reason FROM audit_log WHERE action = 'CLEAN'")
    assert audit["reason"] == "cli test"


def test_a_piped_yes_executes(database_url: str, cli_env: Path) -> None:
    [task_id] = seed(database_url, [TaskRow(status="QUEUED", queue="q1")])
    result = run("cancel", "--queue", "q1", "--execute", input="y\n")
    assert result.exit_code == 0, result.output
    assert "cancel: 1 succeeded, 0 failed" in result.stdout
    [row] = sql(database_url, "SELECT status FROM tasks WHERE id = $1::uuid", task_id)
    assert row["status"] == "CANCELED"


def test_exit_codes_and_one_line_errors(database_url: str, cli_env: Path) -> None:
    done, queued = seed(database_url, [TaskRow(status="COMPLETED"), TaskRow(status="QUEUED")])
    some_failed = run("cancel", done, queued, "--json")
    assert some_failed.exit_code == 1
    by_id = {r["taskId"]: r for r in lines(some_failed)}
    assert by_id[queued]["error"] is None
    assert "terminal" in by_id[done]["error"]
    assert "1 would fail" in some_failed.stderr
    assert "COMPLETED" in some_failed.stderr  # the summary by reason

    for args in (("get", "not-an-id"), ("cancel", "--status", "QUEUED", "--max", "0")):
        bad = run(*args)
        assert bad.exit_code == 2, bad.output
        assert bad.stdout == ""
        [line] = bad.stderr.strip().splitlines()
        assert line.startswith("error: ")
        assert "Traceback" not in bad.output

    assert run("get", "00000000-0000-0000-0000-000000000000").exit_code == 1
    assert run("cancel").exit_code == 2  # no ids and no filter
    assert run("list", "--since", "yesterday").exit_code == 2
    unreachable = run("list", "--url", "http://127.0.0.1:9")
    assert unreachable.exit_code == 2
    [line] = unreachable.stderr.strip().splitlines()
    assert "cannot reach" in line
    assert "UNAVAILABLE" in line


def test_get_shows_the_lock_and_the_stages(database_url: str, cli_env: Path) -> None:
    [task_id] = completed_with_objects(database_url, cli_env, 1)
    shown = run("get", task_id)
    assert shown.exit_code == 0, shown.output
    assert task_id in shown.stdout
    assert "lock: none" in shown.stdout
    [record] = lines(run("get", task_id, "--json"))
    assert record["id"] == task_id
    assert record["metadata"] == []
    assert record["lock"] is None


def test_a_big_no_transact_batch_runs_in_chunks_with_progress(
    database_url: str, cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_tasks, "CHUNK_SIZE", 100)
    monkeypatch.setattr(cli_tasks, "PROGRESS_MIN", 100)
    seed(database_url, [TaskRow(status="QUEUED", queue="bulk") for _ in range(250)])
    result = run("cancel", "--queue", "bulk", "--max", "1000", "--no-transact", "--execute", "-y")
    assert result.exit_code == 0, result.output
    assert "cancel: 250 succeeded" in result.stdout
    assert "250/250" in result.stderr
    audits = sql(
        database_url, "SELECT cardinality(succeeded) AS n FROM audit_log ORDER BY id"
    )
    assert [row["n"] for row in audits] == [100, 100, 50]
