"""CheckMate against PostGraphile v4 on the same database, side by side, driven by wrk.

    python -m bench.bench_reads [--rows 200000] [--duration 10] \
        [--database-url postgresql://postgres@127.0.0.1:5432/postgres]

One process each, on loopback. It seeds (or reuses) the database `checkmate_bench_reads`,
installs PostGraphile v4 with npm into --cache-dir when it is not there yet, and runs wrk at
each of --connections, alternating CheckMate and PostGraphile (A B A B, --rounds pairs) for:
the 100-task page of queue q1's QUEUED tasks, the same page with totalCount, and one query of
10,000 tasks. It prints req/s, p50 and p99 of each run and the ratio of the mean req/s; then the
CheckMate-only figures: the 100-task page with stage metadata against the scalar page of the
same tasks, and the server time (Server-Timing) of the 10,000-task query. The table goes to
--write (docs/benchmarks.md by default) with the machine, the versions and the date.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import asyncpg
import httpx

from bench.bench_api import _free_port, wait_ready
from bench.databases import add_database_url, existing_database
from bench.seed import seed
from checkmate.db.engine import asyncpg_dsn

DATABASE = "checkmate_bench_reads"
QUEUES = ("q1", "q2", "q3")
ROOT = Path(__file__).resolve().parents[1]
COLUMNS = "id name queue status tags createdAt"
FILTER = 'filter: {queue: "q1", status: QUEUED}'
PG_FILTER = 'condition: {queue: "q1", status: "QUEUED"}, orderBy: [CREATED_AT_DESC, ID_DESC]'


@dataclass(frozen=True)
class Shape:
    """One read, as CheckMate and as PostGraphile's generated connection ask for it."""

    name: str
    checkmate: str
    postgraphile: str


def shapes(big: int) -> list[Shape]:
    return [
        Shape(
            "page",
            f"{{ tasks({FILTER}, maxResults: 100) {{ nodes {{ {COLUMNS} }} }} }}",
            f"{{ allTasks({PG_FILTER}, first: 100) {{ nodes {{ {COLUMNS} }} }} }}",
        ),
        Shape(
            "page+totalCount",
            f"{{ tasks({FILTER}, maxResults: 100) {{ totalCount nodes {{ {COLUMNS} }} }} }}",
            f"{{ allTasks({PG_FILTER}, first: 100) {{ totalCount nodes {{ {COLUMNS} }} }} }}",
        ),
        Shape(
            f"{big} tasks",
            f"{{ tasks(maxResults: {big}) {{ nodes {{ {COLUMNS} }} }} }}",
            f"{{ allTasks(orderBy: [CREATED_AT_DESC, ID_DESC], first: {big}) "
            f"{{ nodes {{ {COLUMNS} }} }} }}",
        ),
    ]


# A console's page of finished work: the newest 100 COMPLETED tasks (all with store objects).
METADATA_PAGE = (
    "{ tasks(filter: {status: COMPLETED}, maxResults: 100) { nodes { id name queue status "
    "createdAt attempts metadata { index name status startedAt finishedAt } } } }"
)
SCALAR_PAGE = (
    "{ tasks(filter: {status: COMPLETED}, maxResults: 100) "
    "{ nodes { id name queue status createdAt attempts } } }"
)


async def prepare(server_url: str, rows: int, store_url: str, objects_for: int) -> str:
    """The bench database with `rows` tasks in queues q1..q3 (seeded once, reused after)."""
    url = await existing_database(server_url, DATABASE)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        count = await conn.fetchval("SELECT count(*) FROM tasks")
        stored = Path(store_url.removeprefix("file://")) / "tasks"
        objects = len(os.listdir(stored)) if stored.exists() else 0
        if count != rows or objects < objects_for:
            print(f"seeding {rows} tasks (found {count}) ...", flush=True)
            await conn.execute("TRUNCATE tasks, status_events")
            await seed(url, rows, store_url=store_url, objects_for=objects_for, queues=QUEUES)
        await conn.execute("DELETE FROM api_tokens")  # open access: no token ever created
    finally:
        await conn.close()
    return url


# Database connections of each server: as many as wrk's connections, for both. Fewer made
# SQLAlchemy's pool open and close an overflow connection per request (a TLS handshake each
# with sslmode=prefer), where PostGraphile's pool queues: measured 684 against 893 req/s.
POOL = 32


def start_checkmate(url: str, store_url: str, port: int, cap: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CHECKMATE_DATABASE_URL": url,
        "CHECKMATE_STORE_URL": store_url,
        "CHECKMATE_MAX_RESULTS_CAP": str(max(cap, 100)),
        "CHECKMATE_DB_POOL_SIZE": str(POOL),
    }
    command = [
        sys.executable, "-m", "uvicorn", "checkmate.cli:serving_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        "--no-access-log",
    ]
    return subprocess.Popen(command, env=env, cwd=ROOT)


def install_postgraphile(cache_dir: Path) -> Path | None:
    """PostGraphile v4's CLI under cache_dir (npm-installed on first use); None without npm."""
    cli = cache_dir / "node_modules" / ".bin" / "postgraphile"
    if cli.exists():
        return cli
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        return None
    cache_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(cache_dir), "postgraphile@4"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    if done.returncode != 0:
        print(f"npm install postgraphile@4 failed: {done.stderr.strip()[-300:]}", flush=True)
        return None
    return cli


def postgres_js_url(url: str) -> str:
    """The libpq URL in the form node-postgres reads (a unix socket stays a `host` parameter)."""
    return url.replace("postgresql://", "postgres://", 1)


def start_postgraphile(cli: Path, url: str, port: int) -> subprocess.Popen[bytes]:
    command = [
        str(cli), "--connection", postgres_js_url(url), "--schema", "public",
        "--host", "127.0.0.1", "--port", str(port), "--disable-query-log",
        "--disable-default-mutations", "--max-pool-size", str(POOL),
    ]
    env = {**os.environ, "NODE_ENV": "production"}
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)


async def wait_graphql(base: str, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                response = await client.post(f"{base}/graphql", json={"query": "{ __typename }"})
                if response.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("PostGraphile not ready after 60 s")


LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open(os.getenv("BENCH_BODY_FILE")):read("*a")
"""

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(url: str, query: str, connections: int, duration: int, workdir: Path) -> dict[str, float]:
    """One wrk run posting `query`: req/s, p50 and p99 in ms, non-2xx responses."""
    body = workdir / "body.json"
    body.write_text(json.dumps({"query": query}))
    script = workdir / "post.lua"
    script.write_text(LUA)
    done = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{duration}s", "--latency",
         "--timeout", "30s", "-s", str(script), url],
        capture_output=True, text=True, check=True, timeout=duration + 60,
        env={**os.environ, "BENCH_BODY_FILE": str(body)},
    )
    out = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "p50": p50, "p99": p99, "bad": float(bad.group(1)) if bad else 0.0}


async def check_answers(base: str, query: str, rows: int) -> None:
    """A run counts only if the server answers the query with data and no errors."""
    async with httpx.AsyncClient(timeout=60) as client:
        body = (await client.post(f"{base}/graphql", json={"query": query})).json()
    if body.get("errors") or not body.get("data"):
        raise RuntimeError(f"{base} answered {json.dumps(body)[:500]}")


async def server_time(base: str, query: str, repeats: int) -> dict[str, float]:
    """Server-Timing of `query`, one at a time, after two warm-up requests."""
    server_ms: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for attempt in range(repeats + 2):
            response = await client.post("/graphql", json={"query": query})
            if attempt >= 2:
                server_ms.append(float(response.headers["server-timing"].split("dur=")[1]))
    size = float(len(response.content))
    return {"p50": statistics.median(server_ms), "min": min(server_ms), "bytes": size}


def _mean(runs: Sequence[dict[str, float]], key: str) -> float:
    return statistics.fmean(run[key] for run in runs)


def _versions(cli: Path | None) -> str:
    found = [f"Python {platform.python_version()}"]
    for package in ("strawberry-graphql", "graphql-core", "asyncpg", "sqlalchemy", "uvicorn"):
        found.append(f"{package} {version(package)}")
    if cli is not None:
        manifest = cli.parents[1] / "postgraphile" / "package.json"
        found.append(f"PostGraphile {json.loads(manifest.read_text())['version']}")
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
        found.append(f"Node {node.stdout.strip()}")
    wrk_version = subprocess.run(
        ["wrk", "--version"], capture_output=True, text=True, check=False
    ).stdout
    found.append(wrk_version.split(" [")[0].strip())
    return ", ".join(found)


async def run(args: argparse.Namespace) -> list[str]:
    store_dir: Path = args.store_dir
    url = await prepare(args.database_url, args.rows, store_dir.as_uri(), args.objects_for)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        pg_version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    cli = install_postgraphile(Path(args.cache_dir)) if args.postgraphile else None
    if cli is None:
        print("PostGraphile unavailable: CheckMate-only figures", flush=True)
    cm_port, pg_port = _free_port(), _free_port()
    processes = [start_checkmate(url, store_dir.as_uri(), cm_port, args.big)]
    if cli is not None:
        processes.append(start_postgraphile(cli, url, pg_port))
    cm_base, pg_base = f"http://127.0.0.1:{cm_port}", f"http://127.0.0.1:{pg_port}"
    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}: {os.cpu_count()} CPUs, "
        f"{platform.platform()}, PostgreSQL {pg_version}; {_versions(cli)}.",
        f"{args.rows} tasks; one server process each, wrk on the same machine, "
        f"{args.duration} s a run, {args.rounds} rounds A B; {POOL} database connections each.",
        "",
        "| query | connections | CheckMate req/s (p50/p99 ms) | PostGraphile v4 req/s "
        "(p50/p99 ms) | ratio |",
        "|---|---|---|---|---|",
    ]
    try:
        await wait_ready(cm_base, processes[0])
        if cli is not None:
            await wait_graphql(pg_base, processes[1])
        with tempfile.TemporaryDirectory() as workdir:
            for shape in shapes(args.big):
                if args.queries and shape.name.split()[0] not in args.queries:
                    continue
                await check_answers(cm_base, shape.checkmate, args.rows)
                if cli is not None:
                    await check_answers(pg_base, shape.postgraphile, args.rows)
                for connections in args.connections:
                    ours: list[dict[str, float]] = []
                    theirs: list[dict[str, float]] = []
                    for _ in range(args.rounds):
                        ours.append(wrk(f"{cm_base}/graphql", shape.checkmate, connections,
                                        args.duration, Path(workdir)))
                        if cli is not None:
                            theirs.append(wrk(f"{pg_base}/graphql", shape.postgraphile,
                                              connections, args.duration, Path(workdir)))
                    line = _row(shape.name, connections, ours, theirs)
                    print(line, flush=True)
                    lines.append(line)
            lines.append("")
            lines.extend(await checkmate_only(cm_base, args, Path(workdir)))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
    return lines


def _row(name: str, connections: int, ours: list[dict[str, float]],
         theirs: list[dict[str, float]]) -> str:
    def cell(runs: list[dict[str, float]]) -> str:
        if not runs:
            return "-"
        shown = " / ".join(f"{run['rps']:.0f}" for run in runs)
        bad = sum(run["bad"] for run in runs)
        return (f"{shown} ({_mean(runs, 'p50'):.1f}/{_mean(runs, 'p99'):.1f})"
                + (f" {bad:.0f} non-2xx" if bad else ""))

    ratio = f"{_mean(ours, 'rps') / _mean(theirs, 'rps'):.2f}x" if theirs else "-"
    return f"| {name} | {connections} | {cell(ours)} | {cell(theirs)} | {ratio} |"


async def checkmate_only(base: str, args: argparse.Namespace, workdir: Path) -> list[str]:
    connections = max(args.connections)
    scalar = wrk(f"{base}/graphql", SCALAR_PAGE, connections, args.duration, workdir)
    metadata = wrk(f"{base}/graphql", METADATA_PAGE, connections, args.duration, workdir)
    big = await server_time(
        base, f"{{ tasks(maxResults: {args.big}) {{ nodes {{ {COLUMNS} }} }} }}", args.big_repeats
    )
    lines = [
        f"CheckMate only ({connections} connections): 100 COMPLETED tasks with stage metadata "
        f"{metadata['rps']:.0f} req/s against {scalar['rps']:.0f} req/s for the same page's "
        f"scalars ({metadata['rps'] / scalar['rps']:.2f}x); one {args.big}-task query: server "
        f"time p50 {big['p50']:.1f} ms (min {big['min']:.1f} ms, {big['bytes'] / 1e6:.2f} MB).",
    ]
    for line in lines:
        print(line, flush=True)
    return lines


# bench_reads rewrites only what stands between these markers of docs/benchmarks.md.
BEGIN, END = "<!-- bench_reads: begin -->", "<!-- bench_reads: end -->"


def write_report(path: Path, lines: list[str], command: str) -> None:
    generated = (
        "CheckMate against PostGraphile v4 on the same database (`bench/bench_reads.py`). Each "
        "cell lists the req/s of every round, then the mean p50/p99 latency; the ratio is of "
        f"the mean req/s.\n\nCommand: `{command}`\n\n" + "\n".join(lines) + "\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = path.read_text() if path.exists() else ""
    if BEGIN in previous and END in previous:
        before, rest = previous.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
    else:
        before, after = previous + "\n## Reads side by side with PostGraphile v4\n\n", "\n"
    path.write_text(f"{before}{BEGIN}\n{generated}{END}{after}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    add_database_url(parser)
    parser.add_argument("--store-dir", default="/tmp/checkmate-bench-reads-store")
    parser.add_argument("--objects-for", type=int, default=600,
                        help="newest tasks with store objects (every sixth is COMPLETED)")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--duration", type=int, default=10, help="seconds of each wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="A B pairs per figure")
    parser.add_argument("--big", type=int, default=10_000)
    parser.add_argument("--big-repeats", type=int, default=10)
    parser.add_argument("--queries", nargs="*", help="only these shapes: page page+totalCount N")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "checkmate-bench"))
    parser.add_argument("--no-postgraphile", dest="postgraphile", action="store_false")
    parser.add_argument("--write", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install -y wrk)")
    args.store_dir = Path(args.store_dir).resolve()
    args.store_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    lines = asyncio.run(run(args))
    command = "python -m bench.bench_reads " + " ".join(argv if argv is not None else sys.argv[1:])
    write_report(Path(args.write), lines, command.strip())
    print(f"written to {args.write} in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
