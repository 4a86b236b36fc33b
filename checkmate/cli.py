"""The `checkmate` command."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar
from uuid import UUID

import typer
from rich.console import Console
from rich.table import Table

from checkmate.cli_tasks import tasks_app
from checkmate.cli_tokens import refuse_open_network_bind, token_app
from checkmate.db.engine import create_engine, resolve_database_url, stop_embedded
from checkmate.db.migrate import current, downgrade, upgrade
from checkmate.demo import ROLES as DEMO_ROLES
from checkmate.gcpolicy import apply_process_policy
from checkmate.logs import LogFormat, LogLevel
from checkmate.models import StageStatus
from checkmate.service import CheckMateService
from checkmate.settings import get_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine
    from starlette.applications import Starlette

T = TypeVar("T")

LogFormatOption = Annotated[
    LogFormat,
    typer.Option(envvar="CHECKMATE_LOG_FORMAT", help="text, or json: one object a line."),
]
LogLevelOption = Annotated[LogLevel, typer.Option(envvar="CHECKMATE_LOG_LEVEL")]

app = typer.Typer(help="CheckMate: operate pipeline tasks at scale.", no_args_is_help=True)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"checkmate {version('checkmate')}")
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """CheckMate: operate pipeline tasks at scale."""
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
app.add_typer(tasks_app, name="tasks")
console = Console()


def _with_engine(step: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def run() -> T:
        settings = get_settings()
        engine = create_engine(resolve_database_url(settings), pool_size=1)
        try:
            return await step(engine)
        finally:
            await engine.dispose()
            if not settings.database_url:
                stop_embedded(settings.resolved_data_dir)

    return asyncio.run(run())


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply the migrations to the configured (or embedded) database."""
    _with_engine(lambda engine: upgrade(engine, revision))
    console.print(f"database at revision [bold]{revision}[/bold]")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision, e.g. 0001 or base.")],
) -> None:
    """Take the database back to REVISION ("base": drop everything CheckMate created)."""
    _with_engine(lambda engine: downgrade(engine, revision))
    console.print(f"database at revision [bold]{revision}[/bold]")


@db_app.command("current")
def db_current() -> None:
    """The database's migration revision, and whether it is the newest this version knows."""
    revision, head = _with_engine(current)
    state = "up to date" if revision == head else f"newest is {head}: checkmate db upgrade"
    typer.echo(f"{revision or 'none (not migrated)'} ({state})")


@db_app.command("stop")
def db_stop(
    force: Annotated[
        bool, typer.Option(help="Stop it even while live CheckMate processes still use it.")
    ] = False,
) -> None:
    """Stop the embedded PostgreSQL of the data dir (CHECKMATE_DATA_DIR).

    Refused (exit 1) while live CheckMate processes use it, as they would lose their database;
    processes that died without releasing it (kill -9, a closed terminal) do not count.
    """
    from checkmate.db.engine import embedded

    embedded_compat = embedded()
    settings = get_settings()
    if settings.database_url:
        typer.echo(
            "CHECKMATE_DATABASE_URL is set: that database is not embedded and is left alone; "
            "looking for an embedded server under the data dir only."
        )
    outcome = embedded_compat.stop(settings.resolved_data_dir, force=force)
    users = ", ".join(str(pid) for pid in outcome.users)
    if outcome.result == "in use":
        typer.echo(
            f"embedded PostgreSQL (pid {outcome.server_pid}) of {outcome.pgdata} is in use by "
            f"CheckMate process(es) {users}: stop them first (it then stops with the last one), "
            "or pass --force.",
            err=True,
        )
        raise typer.Exit(1)
    if outcome.result == "not running":
        typer.echo(f"no embedded PostgreSQL is running for {outcome.pgdata}")
        return
    typer.echo(f"stopped embedded PostgreSQL (pid {outcome.server_pid}) of {outcome.pgdata}")
    if outcome.users:
        typer.echo(f"still using it, now without a database: {users}")


def _hangup_as_terminate() -> None:
    """A closed terminal (SIGHUP) ends the process the way SIGTERM does: a clean shutdown that
    releases the embedded database, instead of the default death that leaves it running."""
    signal.signal(signal.SIGHUP, lambda signum, frame: signal.raise_signal(signal.SIGTERM))


@app.command()
def demo(
    tasks: Annotated[
        int, typer.Option(min=len(DEMO_ROLES), help="How many demo.pipeline tasks to make.")
    ] = 24,
) -> None:
    """Make a realistic picture: tasks in every status over several queues and tags, stage
    metadata, a failed stage with its traceback, a dead worker's stale lock, an orphaned
    RUNNING task and cleaned tasks; prints their ids."""
    from checkmate.demo import create_demo

    async def run() -> tuple[dict[str, list[UUID]], dict[StageStatus, int]]:
        service = await CheckMateService.open()
        try:
            return await create_demo(service, tasks), await service.count_by_status()
        finally:
            await service.close()

    by_role, counts = asyncio.run(run())
    roles = Table("role", "ids")
    for role, ids in by_role.items():
        roles.add_row(role, "\n".join(str(task_id) for task_id in ids))
    console.print(roles)
    table = Table("status", "tasks")
    for status in StageStatus:
        table.add_row(status.value, str(counts.get(status, 0)))
    console.print(table)
    console.print(
        "try: checkmate tasks list --status RUNNING; checkmate tasks unlock --status RUNNING; "
        f"checkmate tasks get {by_role['failed'][0]}"
    )


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    reload: Annotated[bool, typer.Option(help="Restart on code changes (development).")] = False,
    ws_compression: Annotated[
        bool,
        typer.Option(
            envvar="CHECKMATE_WS_COMPRESSION",
            help=(
                "Offer permessage-deflate on websockets. Off by default: its per-socket zlib "
                "state costs about 40 KiB per subscription and compressing each event for "
                "each socket costs more CPU than the small event messages save."
            ),
        ),
    ] = False,
    insecure: Annotated[
        bool,
        typer.Option(
            envvar="CHECKMATE_INSECURE",
            help="Serve a non-loopback address even while no API token exists (open access).",
        ),
    ] = False,
    log_format: LogFormatOption = LogFormat.text,
    log_level: LogLevelOption = LogLevel.info,
) -> None:
    """Run the GraphQL API with uvicorn (embedded database when none is configured)."""
    import uvicorn

    refuse_open_network_bind(host, insecure)
    _hangup_as_terminate()
    # The serving process (a --reload child too) configures its logging from these.
    os.environ["CHECKMATE_LOG_FORMAT"], os.environ["CHECKMATE_LOG_LEVEL"] = log_format, log_level
    _configure_logs()
    shown = f"[{host}]" if ":" in host else host
    logging.getLogger("checkmate").info(
        "CheckMate API on http://%s:%d/graphql (GraphiQL in a browser; /metrics, /readyz)",
        shown, port,
    )
    uvicorn.run(
        "checkmate.cli:serving_app", factory=True, host=host, port=port, reload=reload,
        ws_per_message_deflate=ws_compression, log_config=None,
    )


def _configure_logs() -> None:
    """From CHECKMATE_LOG_FORMAT/LEVEL; the embedded PostgreSQL's chatter goes to a file under
    the data dir."""
    from checkmate import logs

    logs.configure(
        os.environ.get("CHECKMATE_LOG_LEVEL", "info"),
        os.environ.get("CHECKMATE_LOG_FORMAT", "text"),
        embedded_log=get_settings().resolved_data_dir / "embedded-postgres.log",
    )


def serving_app() -> Starlette:
    """The app `checkmate serve` runs, in a process with CheckMate's GC policy. uvicorn calls
    this factory in the process that serves (also the one --reload restarts), so the policy is
    set there and only there: apps built by tests or embedded elsewhere keep their collector."""
    from server import create_app

    apply_process_policy()
    _configure_logs()
    # Also here: with --reload this is a child process, which a closed terminal hangs up too.
    _hangup_as_terminate()
    return create_app()


@app.command()
def worker(
    queue: Annotated[list[str] | None, typer.Option(help="Queue to serve (repeatable).")] = None,
    concurrency: Annotated[int, typer.Option(min=1)] = 1,
    name: Annotated[str | None, typer.Option(help="Worker id (default host:pid).")] = None,
    poll_interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between claims when no notification comes.")
    ] = 5.0,
    metrics_port: Annotated[
        int | None,
        typer.Option(envvar="CHECKMATE_WORKER_METRICS_PORT",
                     help="Serve Prometheus metrics (claims, stages, outcomes) on this port."),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(envvar="CHECKMATE_WORKER_METRICS_HOST",
                     help="Address of the metrics port (0.0.0.0 in a container)."),
    ] = "127.0.0.1",
    log_format: LogFormatOption = LogFormat.text,
    log_level: LogLevelOption = LogLevel.info,
) -> None:
    """Claim and run queued tasks until SIGTERM, SIGINT or SIGHUP (finishes current stages,
    requeues)."""
    from checkmate.worker import run_worker

    _hangup_as_terminate()
    os.environ["CHECKMATE_LOG_FORMAT"], os.environ["CHECKMATE_LOG_LEVEL"] = log_format, log_level
    _configure_logs()
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_host)
        logging.getLogger("checkmate").info(
            "worker metrics on http://%s:%d/metrics", metrics_host, metrics_port
        )
    apply_process_policy()
    raise typer.Exit(
        run_worker(
            queues=queue or ["default"],
            concurrency=concurrency,
            name=name,
            poll_interval=poll_interval,
        )
    )


def run() -> None:
    """The `checkmate` command: a missing embedded extra is one line, not a traceback."""
    from checkmate.db.engine import EmbeddedUnavailable

    try:
        app()
    except EmbeddedUnavailable as error:
        typer.echo(f"error: {error}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    run()
