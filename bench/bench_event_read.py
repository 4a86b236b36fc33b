"""What the event hub's hole bound costs per read: its read transaction also draws an xid.

    python -m bench.bench_event_read --database-url postgresql://postgres@127.0.0.1:5432/postgres
        [--reads 1000] [--rounds 8]

Each hub read is BEGIN; one SELECT; ROLLBACK (the pool's reset). Since the fix for holes of
writers with xids above the snapshot's xmax (checkmate/events/reader.py), that SELECT also
calls pg_current_xact_id(), which gives the read transaction an xid. This times the bare
read transaction with and without it, alternating, and prints the best round of each
(microseconds per read transaction, one connection over loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg

QUERIES = {
    "snapshot only": "SELECT pg_current_snapshot()::text",
    "snapshot + xid": "SELECT pg_current_snapshot()::text, pg_current_xact_id()::text",
}


async def _per_read(conn: asyncpg.Connection, sql: str, reads: int) -> float:
    start = time.perf_counter()
    for _ in range(reads):
        await conn.execute("BEGIN")
        await conn.fetchrow(sql)
        await conn.execute("ROLLBACK")
    return (time.perf_counter() - start) / reads * 1e6


async def main(database_url: str, reads: int, rounds: int) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        best = dict.fromkeys(QUERIES, float("inf"))
        for _ in range(rounds):
            for label, sql in QUERIES.items():
                best[label] = min(best[label], await _per_read(conn, sql, reads))
    finally:
        await conn.close()
    for label, micros in best.items():
        print(f"{label:15s} {micros:7.1f} us per read transaction (best of {rounds} x {reads})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--reads", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args.database_url, args.reads, args.rounds))
