"""`checkmate tasks list|get|counts|cancel|unlock|clean|invoke|watch`.

The same commands and rules against the service in this process (the server's CHECKMATE_*
settings) or a remote API (`--url`, `--token` / CHECKMATE_TOKEN): see checkmate.operator_client.
Exit codes: 0 all succeeded, 1 some tasks failed (or an --execute was declined), 2 bad usage or
an unreachable service. Errors are one line on stderr unless --debug.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer

from checkmate import cli_output as out
from checkmate.actions import BatchAction
from checkmate.cli_when import parse_when
from checkmate.models import StageStatus
from checkmate.operator_client import (
    BatchReply,
    BatchRequest,
    ClientError,
    LocalClient,
    OperatorClient,
    Record,
    RemoteClient,
)

tasks_app = typer.Typer(help="See and act on tasks (local service or --url).", no_args_is_help=True)
T = TypeVar("T")

# A real run over more tasks than this, without --no-transact... see _execute.
CHUNK_SIZE = 500
# Batches at least this big get a progress bar on stderr.
PROGRESS_MIN = 300

Url = Annotated[
    str | None,
    typer.Option(envvar="CHECKMATE_URL", help="A remote API (http://host:8000); default: the "
                 "service in this process with the server's CHECKMATE_* settings."),
]
Token = Annotated[
    str | None,
    typer.Option(envvar="CHECKMATE_TOKEN", help="API token for --url.", show_default=False),
]
Json = Annotated[bool, typer.Option("--json", help="JSON lines (GraphQL field names).")]
Debug = Annotated[bool, typer.Option("--debug", help="Tracebacks on errors.")]
Statuses = Annotated[
    list[StageStatus] | None, typer.Option("--status", case_sensitive=False, help="Repeatable.")
]
Queue = Annotated[str | None, typer.Option(help="Exactly this queue.")]
Tags = Annotated[list[str] | None, typer.Option("--tag", help="Carries every --tag given.")]
Name = Annotated[str | None, typer.Option(help="Task kind, exact.")]
When = Annotated[
    str | None,
    typer.Option(help="Created at or after: ISO time (UTC unless an offset) or 90s, 2h, 3d."),
]
Until = Annotated[str | None, typer.Option(help="Created before: ISO time or 90s, 2h, 3d.")]
Cleaned = Annotated[bool | None, typer.Option("--cleaned/--not-cleaned", show_default=False)]
Max = Annotated[int, typer.Option("--max", help="Most tasks to select.")]
Ids = Annotated[list[str] | None, typer.Argument(help="Task ids (with filters: both must hold).")]


def _when(option: str, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return parse_when(value).isoformat()
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint=option) from None


def _filter(
    statuses: list[StageStatus] | None, queue: str | None, tags: list[str] | None,
    name: str | None, since: str | None, until: str | None, cleaned: bool | None,
) -> Record | None:
    """The GraphQL TaskFilter input of the options given (None when none is)."""
    found = {
        "statuses": [status.value for status in statuses] if statuses else None,
        "queue": queue, "tags": tags or None, "name": name,
        "since": _when("--since", since), "until": _when("--until", until), "cleaned": cleaned,
    }
    return {key: value for key, value in found.items() if value is not None} or None


def _run(
    url: str | None, token: str | None, debug: bool,
    command: Callable[[OperatorClient], Awaitable[T]],
) -> T:
    async def run() -> T:
        if url:
            client: OperatorClient = RemoteClient(url, token)
        else:
            from checkmate.settings import Settings

            client = await LocalClient.open(Settings())
        try:
            return await command(client)
        finally:
            await client.close()

    try:
        return asyncio.run(run())
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except ClientError as error:
        if debug:
            raise
        out.error(f"{error} ({error.code})" if error.code != "BAD_USER_INPUT" else str(error))
        raise typer.Exit(1 if error.code == "NOT_FOUND" else 2) from None
    except Exception as error:
        if debug:
            raise
        out.error(f"{type(error).__name__}: {error}  (--debug shows the traceback)")
        raise typer.Exit(2) from None


@tasks_app.command("list")
def list_tasks(
    status: Statuses = None, queue: Queue = None, tag: Tags = None, name: Name = None,
    since: When = None, until: Until = None, cleaned: Cleaned = None,
    max_results: Max = 100,
    asc: Annotated[bool, typer.Option("--asc", help="Oldest first.")] = False,
    as_json: Json = False, url: Url = None, token: Token = None, debug: Debug = False,
) -> None:
    """Tasks matching the filters, newest first."""
    task_filter = _filter(status, queue, tag, name, since, until, cleaned)
    tasks = _run(url, token, debug, lambda client: client.list_tasks(
        task_filter, sort="ASC" if asc else "DESC", max_results=max_results
    ))
    if as_json:
        out.json_lines(tasks)
    else:
        out.task_table(tasks, max_results)


@tasks_app.command("get")
def get_task(
    task_id: Annotated[str, typer.Argument(help="Task id.")],
    as_json: Json = False, url: Url = None, token: Token = None, debug: Debug = False,
) -> None:
    """One task: its record, its lock (owner, age, stale) and per-stage metadata."""
    task = _run(url, token, debug, lambda client: client.get_task(task_id))
    if task is None:
        out.error(f"no task has id {task_id}")
        raise typer.Exit(1)
    if as_json:
        out.json_lines([task])
    else:
        out.task_detail(task)


@tasks_app.command("counts")
def counts(
    status: Statuses = None, queue: Queue = None, tag: Tags = None, name: Name = None,
    since: When = None, until: Until = None, cleaned: Cleaned = None,
    as_json: Json = False, url: Url = None, token: Token = None, debug: Debug = False,
) -> None:
    """Tasks per status."""
    task_filter = _filter(status, queue, tag, name, since, until, cleaned)
    found = _run(url, token, debug, lambda client: client.counts(task_filter))
    if as_json:
        out.json_lines([{"status": key, "count": value} for key, value in found.items()])
    else:
        out.count_table(found)


def _batch_command(action: BatchAction) -> Callable[..., None]:
    verb = action.value.lower()

    def command(
        task_ids: Ids = None,
        status: Statuses = None, queue: Queue = None, tag: Tags = None, name: Name = None,
        since: When = None, until: Until = None, cleaned: Cleaned = None,
        max_results: Max = 100,
        force: Annotated[
            bool, typer.Option(help="unlock: also fresh locks (a live worker's).")
        ] = False,
        transact: Annotated[
            bool,
            typer.Option("--transact/--no-transact", help="All or nothing in the database."),
        ] = True,
        reason: Annotated[str | None, typer.Option(help="Why (kept in the audit log).")] = None,
        execute: Annotated[
            bool, typer.Option("--execute", help="Act for real (default: a dry run).")
        ] = False,
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
        as_json: Json = False, url: Url = None, token: Token = None, debug: Debug = False,
    ) -> None:
        if force and action is not BatchAction.UNLOCK:
            raise typer.BadParameter("only unlock takes --force", param_hint="--force")
        request = BatchRequest(
            action, task_ids or None, _filter(status, queue, tag, name, since, until, cleaned),
            max_results, dry_run=True, db_transact=transact, force=force, reason=reason,
        )
        if request.task_ids is None and request.task_filter is None:
            raise typer.BadParameter(
                "give task ids or a filter (--status, --queue, --tag, --name, --since, ...): "
                "an empty selection never means all tasks"
            )
        reply, dry_run = _run(url, token, debug, lambda client: _act(client, request, execute, yes))
        out.batch_results(action, reply, dry_run=dry_run, as_json=as_json)
        raise typer.Exit(1 if reply.failed else 0)

    command.__doc__ = {
        BatchAction.CANCEL: "Cancel tasks that are not finished (dry run unless --execute).",
        BatchAction.UNLOCK: "Remove locks of lost workers; --force also fresh ones (dry run "
        "unless --execute).",
        BatchAction.CLEAN: "Delete the stored objects of finished, unlocked tasks (dry run "
        "unless --execute).",
        BatchAction.INVOKE: "Queue CREATED, ERROR and CANCELED tasks (dry run unless --execute).",
    }[action]
    command.__name__ = verb
    return command


for _action in BatchAction:
    tasks_app.command(_action.value.lower())(_batch_command(_action))


async def _act(
    client: OperatorClient, request: BatchRequest, execute: bool, yes: bool
) -> tuple[BatchReply, bool]:
    """The dry run; with --execute, after a yes, the real run of the tasks it selected."""
    dry = await client.batch(request)
    if not execute:
        return dry, True
    ids = [result["taskId"] for result in dry.succeeded]
    if not ids:
        return dry, False
    if not yes and not _confirm(f"{request.action.value.title()} {len(ids):,} tasks? [y/N] "):
        out.error("nothing changed")
        raise typer.Exit(1)
    return await _execute(client, request, ids, dry.failed), False


def _confirm(question: str) -> bool:
    """The answer is read from stdin (a piped "y" works); end of input means no."""
    sys.stderr.write(question)
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if not answer or not sys.stdin.isatty():
        sys.stderr.write("\n")  # a piped answer or none was not echoed by a terminal
    return answer.strip().lower() in ("y", "yes")


async def _execute(
    client: OperatorClient, request: BatchRequest, ids: list[str], known_failed: list[Record]
) -> BatchReply:
    """Acts on exactly the ids the dry run selected (what was confirmed is what runs), with the
    same filter so a task that changed since is refused, not acted on.

    The service has no progress hook, so progress comes from here: with --no-transact the ids
    go in chunks of CHUNK_SIZE, each its own request and transaction, and the bar moves as each
    commits. With --transact (all or nothing) it stays one request: chunking it would break
    the promise, so the bar only completes when that one transaction commits."""
    from dataclasses import replace

    chunk_size = CHUNK_SIZE if not request.db_transact else len(ids)
    reply = BatchReply([], list(known_failed))
    with out.progress(len(ids), request.action.value.lower(), len(ids) >= PROGRESS_MIN) as step:
        for start in range(0, len(ids), chunk_size):
            chunk = ids[start : start + chunk_size]
            part = await client.batch(
                replace(request, task_ids=chunk, max_results=len(chunk), dry_run=False)
            )
            reply.succeeded += part.succeeded
            reply.failed += part.failed
            step(len(chunk))
    return reply


@tasks_app.command("watch")
def watch(
    status: Statuses = None, queue: Queue = None, tag: Tags = None, name: Name = None,
    after: Annotated[
        str | None, typer.Option(help="Replay the events after this event id first.")
    ] = None,
    as_json: Json = False, url: Url = None, token: Token = None, debug: Debug = False,
) -> None:
    """Status changes as they commit, one line each, until Ctrl-C; reconnects and resumes after
    the last event it printed when the connection drops."""
    task_filter = _filter(status, queue, tag, name, None, None, None)

    async def follow(client: OperatorClient) -> None:
        async for event in client.watch(task_filter, after):
            out.event_line(event, as_json)

    try:
        _run(url, token, debug, follow)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
