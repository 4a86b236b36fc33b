"""The one way CheckMate reaches PostgreSQL: `Database`, typed, shared by the service, the
event hub and the worker.

    database = Database.create(url, pool_size=10)
    async with database.connect() as conn:       # SQLAlchemy AsyncConnection, autobegin
        ...
    async with database.begin() as conn:         # the same, in one committed transaction
        ...
    conn = await database.raw_connect()          # a plain asyncpg connection (LISTEN, worker)
    database.engine, database.url, database.dsn  # for what the three above do not cover
    await database.dispose()

Every entry point turns a database that cannot be reached (refused or dropped connection,
server shutting down or starting up, database gone, no connection slot) into
`ServiceError(UNAVAILABLE)`: the client is told to retry, as it is by every other operation,
and the error is raised where the connection is used, not swallowed. Errors of the statements
themselves (a constraint, a missing table) pass through unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from checkmate.db.engine import asyncpg_dsn, create_engine
from checkmate.errors import ServiceError
from checkmate.retry import connection_lost

log = logging.getLogger(__name__)
T = TypeVar("T")

UNREACHABLE_MESSAGE = "the database is unreachable; retry shortly"

# Besides a lost connection (checkmate.retry.connection_lost, which the worker retries on):
# too many connections and the database dropped also mean "no usable connection" to a client.
_UNREACHABLE_STATES = frozenset({"53300", "3D000"})


def is_unreachable(error: BaseException) -> bool:
    """True when `error` (or what it wraps) says the database cannot be reached or the
    connection was lost, rather than that a statement failed."""
    if connection_lost(error):
        return True
    current: BaseException | None = error
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if getattr(current, "sqlstate", None) in _UNREACHABLE_STATES:
            return True
        # SQLAlchemy wraps the driver's error in .orig, the asyncpg adapter in __cause__.
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False


def unavailable() -> ServiceError:
    return ServiceError(UNREACHABLE_MESSAGE, code=ServiceError.UNAVAILABLE)


class Database:
    """A SQLAlchemy engine and the libpq URL it was made from."""

    def __init__(self, engine: AsyncEngine, url: str) -> None:
        self.engine = engine
        # The libpq URL (postgresql://...); `dsn` is the same for asyncpg.connect().
        self.url = url
        self.dsn = asyncpg_dsn(url)

    @classmethod
    def create(cls, url: str, *, pool_size: int = 10, statement_timeout: float = 0.0) -> Database:
        engine = create_engine(url, pool_size=pool_size, statement_timeout=statement_timeout)
        return cls(engine, url)

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection; UNAVAILABLE when the database is unreachable or the connection
        is lost while in use."""
        try:
            async with self.engine.connect() as conn:
                yield conn
        except (DBAPIError, OSError) as error:
            if not is_unreachable(error):
                raise
            raise unavailable() from error

    async def read(self, read: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run a read; once more on a fresh connection if its pooled one turned out dropped.
        Checkout does not ping (engine.py: no round trip per request), so a connection the
        server closed since (restart, pg_terminate_backend, idle timeout) fails on first use;
        SQLAlchemy then invalidates the whole pool, and the retry connects anew."""
        try:
            async with self.connect() as conn:
                return await read(conn)
        except ServiceError as error:
            cause = error.__cause__
            if not (isinstance(cause, DBAPIError) and cause.connection_invalidated):
                raise
            log.info("a pooled connection was dropped; the read runs again on a fresh one")
        async with self.connect() as conn:
            return await read(conn)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """As connect(), in one transaction committed at the end (rolled back on error)."""
        async with self.connect() as conn, conn.begin():
            yield conn

    async def raw_connect(self, **options: Any) -> asyncpg.Connection:
        """A dedicated asyncpg connection (options as for asyncpg.connect); the caller closes
        it. UNAVAILABLE when the database is unreachable."""
        try:
            conn: asyncpg.Connection = await asyncpg.connect(self.dsn, **options)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            if not is_unreachable(error):
                raise
            raise unavailable() from error
        return conn

    async def dispose(self) -> None:
        await self.engine.dispose()
