"""What verifying a request's token costs in process: AccessControl.authenticate against its
in-memory snapshot (reloaded every CHECKMATE_TOKEN_CACHE_TTL), with a token and while open.

    python -m bench.bench_auth --database-url postgresql://postgres@127.0.0.1:5432/postgres
        [--calls 100000] [--rounds 5]

Prints the best round of each, in microseconds per call.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.databases import fresh_database
from checkmate.access import AccessControl
from checkmate.db.engine import create_engine


async def _per_call(access: AccessControl, header: str | None, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        await access.authenticate(header)
    return (time.perf_counter() - start) / calls * 1e6


async def _best(access: AccessControl, header: str | None, calls: int, rounds: int) -> float:
    await access.authenticate(header)  # the first call loads the snapshot
    return min([await _per_call(access, header, calls) for _ in range(rounds)])


async def main(server_url: str, calls: int, rounds: int) -> None:
    url = await fresh_database(server_url, "checkmate_bench_auth")
    engine = create_engine(url, pool_size=1)
    try:
        open_access = AccessControl(engine, ttl=3600)
        print(f"open (no token exists): {await _best(open_access, None, calls, rounds):.2f} us")
        secret = await AccessControl(engine).create("bench", "viewer")
        with_token = AccessControl(engine, ttl=3600)
        header = f"Bearer {secret}"
        print(f"with a token:           {await _best(with_token, header, calls, rounds):.2f} us")
    finally:
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="a server's maintenance database")
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.database_url, args.calls, args.rounds))
