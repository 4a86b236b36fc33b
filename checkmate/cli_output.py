"""How `checkmate tasks` prints: rich tables for people, JSON lines for scripts (stdout), errors,
prompts, progress and the summary of a JSON run on stderr."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from checkmate.actions import BatchAction
from checkmate.cli_when import age
from checkmate.models import StageStatus

Record = dict[str, Any]
# Past this many rows a table costs more than it shows: plain lines instead.
TABLE_ROWS = 200


def _stdout() -> Console:
    # Built per call: typer's CliRunner swaps sys.stdout per invocation. Piped output is not
    # squeezed into 80 columns (ids would be cut).
    width = None if sys.stdout.isatty() else 200
    return Console(file=sys.stdout, soft_wrap=True, width=width)


def error(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


def json_lines(records: Sequence[Record]) -> None:
    write = sys.stdout.write
    for record in records:
        write(json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _short(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def task_table(tasks: Sequence[Record], max_results: int) -> None:
    console = _stdout()
    table = Table("name", "queue", "status", "stage", "tags", "created", "attempts", "error")
    table.columns.insert(0, Column("id", no_wrap=True, min_width=36))
    for task in tasks:
        table.add_row(
            task["id"], task["name"], task["queue"], task["status"], task.get("stage") or "",
            ",".join(task.get("tags") or ()), task["createdAt"][:19], str(task["attempts"]),
            escape(_short(task.get("error"), 40)),
        )
    console.print(table)
    more = f" (the first {max_results}: --max for more)" if len(tasks) == max_results else ""
    console.print(f"{len(tasks)} task(s){more}")


def count_table(counts: dict[str, int]) -> None:
    table = Table("status", "tasks")
    for status in StageStatus:
        table.add_row(status.value, f"{counts.get(status.value, 0):,}")
    table.add_row("total", f"{sum(counts.values()):,}")
    _stdout().print(table)


def task_detail(task: Record) -> None:
    console = _stdout()
    record = Table.grid(padding=(0, 2))
    for key in (
        "id", "name", "queue", "tags", "status", "stage", "attempts", "worker", "createdAt",
        "startedAt", "finishedAt", "updatedAt", "cleaned", "cleanedAt", "error", "params",
    ):
        value = task.get(key)
        if isinstance(value, list | dict):
            value = json.dumps(value)
        record.add_row(key, escape("-" if value is None else str(value)))
    console.print(record)
    lock = task.get("lock")
    if lock:
        stale = "[red]stale[/red]" if lock["stale"] else "fresh"
        console.print(
            f"lock: {escape(lock['owner'])} (pid {lock.get('pid') or '-'}), acquired "
            f"{age(lock['acquiredAt'])}, heartbeat {age(lock.get('heartbeatAt'))}: {stale}"
        )
    else:
        console.print("lock: none")
    stages = task.get("metadata") or []
    if not stages:
        console.print("stages: no metadata")
        return
    table = Table("#", "stage", "status", "attempt", "duration", "error", title="stages")
    for stage in stages:
        duration = stage.get("durationSeconds")
        table.add_row(
            str(stage["index"]), stage["name"], stage["status"], str(stage["attempt"]),
            "-" if duration is None else f"{duration:.3f}s", escape(_short(stage.get("error"))),
        )
    console.print(table)
    for stage in stages:
        if stage.get("traceback"):
            console.print(f"traceback of stage {stage['index']} ({stage['name']}):")
            console.print(escape(stage["traceback"].rstrip()), style="dim", highlight=False)


def batch_results(
    action: BatchAction, reply: Any, *, dry_run: bool, as_json: bool
) -> None:
    if as_json:
        json_lines([
            {**result, "dryRun": dry_run} for result in [*reply.succeeded, *reply.failed]
        ])
    else:
        _result_lines(reply, dry_run)
    _summary(action, reply, dry_run, Console(stderr=True) if as_json else _stdout())


def _result_lines(reply: Any, dry_run: bool) -> None:
    console = _stdout()
    rows = [
        (r["taskId"], r.get("previousStatus"), r.get("status"), "ok", r.get("detail"))
        for r in reply.succeeded
    ] + [
        (r["taskId"], r.get("previousStatus"), r.get("status"), "failed", r.get("error"))
        for r in reply.failed
    ]
    if not rows:
        return
    head = "would be" if dry_run else "now"
    if len(rows) > TABLE_ROWS:
        for task_id, before, after, outcome, note in rows:
            console.print(f"{task_id} {before or '-'} -> {after or '-'} {outcome} {note or ''}",
                          markup=False, highlight=False)
        return
    table = Table(Column("task", no_wrap=True, min_width=36), "status", head, "outcome",
                  "error / detail")
    for task_id, before, after, outcome, note in rows:
        style = "red" if outcome == "failed" else None
        table.add_row(task_id, before or "-", after or "-", outcome, escape(note or ""),
                      style=style)
    console.print(table)


def _summary(action: BatchAction, reply: Any, dry_run: bool, console: Console) -> None:
    verb = action.value.lower()
    ok, failed = len(reply.succeeded), len(reply.failed)
    if dry_run:
        console.print(
            f"dry run of {verb}: {ok:,} would succeed, {failed:,} would fail; nothing changed "
            "(--execute to act)", highlight=False,
        )
    else:
        console.print(f"{verb}: {ok:,} succeeded, {failed:,} failed", highlight=False)
    by_reason = Counter(_short(result.get("error"), 100) or "?" for result in reply.failed)
    for reason, count in by_reason.most_common():
        console.print(f"  {count:,}: {escape(reason)}", highlight=False)


@contextmanager
def progress(total: int, label: str, shown: bool) -> Iterator[Callable[[int], None]]:
    """A bar on stderr (when `shown`); the step function advances it."""
    if not shown:
        yield lambda _: None
        return
    bar = Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=False,
    )
    with bar:
        task = bar.add_task(label, total=total)
        yield lambda done: bar.advance(task, done)


def event_line(event: Record, as_json: bool) -> None:
    if as_json:
        line = json.dumps(event, separators=(",", ":"))
    else:
        line = (
            f"{event['changedAt'][:23]} #{event['eventId']} {event['taskId']} "
            f"{event.get('previousStatus') or '-'} -> {event['status']} "
            f"queue={event['queue']} stage={event.get('stage') or '-'}"
        )
    print(line, flush=True)
