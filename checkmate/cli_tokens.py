"""`checkmate token create|list|revoke`: API tokens, managed against the configured database."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from checkmate.access import AccessControl, Role, TokenError
from checkmate.service import CheckMateService

token_app = typer.Typer(help="API tokens (viewer or operator).", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)
T = TypeVar("T")


def _run(command: Callable[[AccessControl], Awaitable[T]]) -> T:
    async def run() -> T:
        service = await CheckMateService.open()
        try:
            return await command(AccessControl(service.engine))
        finally:
            await service.close()

    try:
        return asyncio.run(run())
    except TokenError as error:
        errors.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def refuse_open_network_bind(host: str, insecure: bool) -> None:
    """`checkmate serve` on a non-loopback address while no token exists would give every
    client on the network the operator role: exit 2 unless the operator said --insecure."""
    if insecure or is_loopback(host):
        return
    if _run(lambda access: access.is_open()):
        errors.print(
            f"refusing to serve on {host} with open access (no API token exists): create one "
            "with 'checkmate token create --role operator --name NAME', or pass --insecure",
            soft_wrap=True,
        )
        raise typer.Exit(2)


@token_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="A name for the holder, e.g. ci-bot (unique).")],
    role: Annotated[Role, typer.Option(help="viewer: reads and dry runs; operator: all.")],
) -> None:
    """Create a token and print it once: it is stored only as a hash."""
    secret = _run(lambda access: access.create(name, role))
    errors.print(f"token {name!r} ({role.value}); store it now, it is not shown again:")
    # Alone on stdout so that scripts can capture it: TOKEN=$(checkmate token create ...)
    print(secret)


@token_app.command("list")
def list_tokens(
    all_tokens: Annotated[bool, typer.Option("--all", help="Include revoked tokens.")] = False,
) -> None:
    """Name, role, created and last used of each token (never the token itself)."""
    tokens = _run(lambda access: access.list_tokens(include_revoked=all_tokens))
    table = Table("name", "role", "created", "last used", *(["revoked"] if all_tokens else []))
    for token in tokens:
        revoked = [_when(token.revoked_at)] if all_tokens else []
        table.add_row(
            token.name, token.role.value, _when(token.created_at), _when(token.last_used_at),
            *revoked,
        )
    console.print(table)


@token_app.command("revoke")
def revoke(name: str) -> None:
    """Revoke a token: every server refuses it within a few seconds, open websockets included."""
    _run(lambda access: access.revoke(name))
    console.print(f"token {name!r} revoked")
