"""What a connection checkout costs the client, around one `SELECT 1`: for the worker's choice
between its own held asyncpg connections and asyncpg's pool, and for the Database seam.

    python -m bench.bench_checkout --database-url postgresql://postgres@127.0.0.1:5432/postgres
        [--statements 10000] [--rounds 5]

Prints client CPU (process time, so a loaded machine does not blur it) per statement, best of
`--rounds`, sides alternating:
- held asyncpg connection (the worker's HeldConnections: a list pop and append);
- asyncpg pool with `reset=` a no-op (no ping on acquire, no round trip on release), with and
  without its idle-connection timer, and with its default reset (one more round trip);
- SQLAlchemy engine.connect() against Database.connect() (the seam's error mapping).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg
from sqlalchemy import text

from checkmate.db.database import Database

Body = Callable[[int], Awaitable[None]]


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Skip the default reset query (RESET ALL, UNLISTEN *, ...): nothing to undo."""


async def main(database_url: str, statements: int, rounds: int) -> None:
    database = Database.create(database_url, pool_size=1)
    held = [await database.raw_connect()]
    pools = {
        "pool, reset=no-op, no idle timer": await asyncpg.create_pool(
            database.dsn, min_size=1, max_size=1, reset=_no_reset,
            max_inactive_connection_lifetime=0,
        ),
        "pool, reset=no-op": await asyncpg.create_pool(
            database.dsn, min_size=1, max_size=1, reset=_no_reset
        ),
        "pool, default reset": await asyncpg.create_pool(database.dsn, min_size=1, max_size=1),
    }
    select_one = text("SELECT 1")

    async def held_connection(count: int) -> None:
        for _ in range(count):
            conn = held.pop()
            await conn.fetchval("SELECT 1")
            held.append(conn)

    def pooled(pool: asyncpg.Pool) -> Body:
        async def body(count: int) -> None:
            for _ in range(count):
                async with pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
        return body

    async def engine_connect(count: int) -> None:
        for _ in range(count):
            async with database.engine.connect() as conn:
                await conn.execute(select_one)

    async def seam_connect(count: int) -> None:
        for _ in range(count):
            async with database.connect() as conn:
                await conn.execute(select_one)

    bodies: dict[str, Body] = {
        "held asyncpg connection": held_connection,
        **{label: pooled(pool) for label, pool in pools.items()},
        "SQLAlchemy engine.connect()": engine_connect,
        "Database.connect()": seam_connect,
    }
    try:
        best = dict.fromkeys(bodies, float("inf"))
        for body in bodies.values():
            await body(200)  # prepared statements, pools filled
        for _ in range(rounds):
            for label, body in bodies.items():
                start = time.process_time()
                await body(statements)
                best[label] = min(best[label], time.process_time() - start)
    finally:
        for pool in pools.values():
            await pool.close()
        await held[0].close()
        await database.dispose()
    for label, seconds in best.items():
        micros = seconds / statements * 1e6
        print(f"{label:34s} {micros:6.1f} us client CPU per statement (best of {rounds})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--statements", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.database_url, args.statements, args.rounds))
