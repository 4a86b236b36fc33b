"""The `checkmate` command."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from checkmate.cli_tokens import refuse_open_network_bind, token_app
from checkmate.db.engine import create_engine, resolve_database_url
from checkmate.db.migrate import upgrade
from checkmate.gcpolicy import apply_process_policy
from checkmate.models import StageStatus
from checkmate.service import CheckMateService
from checkmate.settings import get_settings

if TYPE_CHECKING:
    from starlette.applications import Starlette

app = typer.Typer(help="CheckMate: operate pipeline tasks at scale.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
console = Console()


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply the migrations to the configured (or embedded) database."""

    async def run() -> None:
        engine = create_engine(resolve_database_url(get_settings()), pool_size=1)
        try:
            await upgrade(engine, revision)
        finally:
            await engine.dispose()

    asyncio.run(run())
    console.print(f"database at revision [bold]{revision}[/bold]")


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
    from checkmate.db import embedded_compat

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
    count: Annotated[int, typer.Option(help="Tasks per status.")] = 2,
) -> None:
    """Create demo.pipeline tasks and bring some into every status a database alone can give."""

    async def run() -> None:
        service = await CheckMateService.open()
        try:
            created = [
                await service.create("demo.pipeline", tags=["demo"], params={"stages": 3})
                for _ in range(count * 4)
            ]
            ids = [task.id for task in created]
            await service.invoke(ids[count:], dry_run=False)
            await service.cancel(ids[2 * count : 3 * count], dry_run=False)
            await service.invoke(ids[3 * count :], dry_run=False)
            counts = await service.count_by_status()
        finally:
            await service.close()
        table = Table("status", "tasks")
        for status in StageStatus:
            table.add_row(status.value, str(counts.get(status, 0)))
        console.print(table)

    asyncio.run(run())


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
) -> None:
    """Run the GraphQL API with uvicorn (embedded database when none is configured)."""
    import uvicorn

    refuse_open_network_bind(host, insecure)
    _hangup_as_terminate()
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(
        "checkmate.cli:serving_app", factory=True, host=host, port=port, reload=reload,
        ws_per_message_deflate=ws_compression,
    )


def serving_app() -> Starlette:
    """The app `checkmate serve` runs, in a process with CheckMate's GC policy. uvicorn calls
    this factory in the process that serves (also the one --reload restarts), so the policy is
    set there and only there: apps built by tests or embedded elsewhere keep their collector."""
    from server import create_app

    apply_process_policy()
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
) -> None:
    """Claim and run queued tasks until SIGTERM, SIGINT or SIGHUP (finishes current stages,
    requeues)."""
    from checkmate.worker import run_worker

    _hangup_as_terminate()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    apply_process_policy()
    raise typer.Exit(
        run_worker(
            queues=queue or ["default"],
            concurrency=concurrency,
            name=name,
            poll_interval=poll_interval,
        )
    )


if __name__ == "__main__":
    app()
