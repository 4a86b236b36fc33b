"""The worker's side of the database: held connections, retries across a lost connection, and
statements that are safe to repeat.

A failover, a restart or an idle-connection reaper cuts the worker's connections while tasks
run. Every call below then retries on a fresh connection (checkmate.retry) for up to
CHECKMATE_DB_RETRY_SECONDS. Each statement is keyed on the run (task id, worker, attempts), so a
repeat after a lost reply changes nothing; where a repeat finds nothing to change, the task's
row is read back to tell "our first try was applied" from "the task is no longer ours".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar
from uuid import UUID

import asyncpg

from checkmate.db import queries
from checkmate.db.engine import asyncpg_dsn
from checkmate.models import StageStatus
from checkmate.retry import connection_lost, retry_call

log = logging.getLogger("checkmate.worker")
T = TypeVar("T")

# A connect that hangs (a dropped route, a server that accepts and never answers) is retried
# like a refused one instead of holding a task for asyncpg's default minute.
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Run:
    """One claimed run of a task: what every statement of the run is keyed on."""

    task_id: UUID
    attempts: int


@dataclass(slots=True)
class _Finish:
    run: Run
    status: StageStatus
    error: str | None
    done: asyncio.Future[bool]


class WorkerDatabase:
    """The worker's asyncpg connections, kept open: a pool checkout costs a reset round trip
    per statement, more than the one-statement updates a task makes. A connection is reused
    until a statement on it fails. Its statements are the worker section of queries.py: asyncpg
    prepares each once per connection."""

    def __init__(self, database_url: str, worker: str, *, retry_seconds: float) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self.worker = worker
        self.retry_seconds = retry_seconds
        self._idle: list[asyncpg.Connection] = []
        self._claim: asyncpg.Connection | None = None
        self._lost_at: float | None = None
        # Finishes that arrived while one was in flight, and whether one is.
        self._finishing: list[_Finish] = []
        self._finishing_now = False
        self._finisher: asyncio.Task[None] | None = None

    # --- connections ----------------------------------------------------------------------

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            self._dsn,
            timeout=CONNECT_TIMEOUT,
            server_settings={"application_name": "checkmate-worker"},
        )

    def _discard(self, conn: asyncpg.Connection, error: BaseException) -> None:
        conn.terminate()  # whatever failed, never reuse a connection in doubt
        if connection_lost(error):
            # The server went away: the idle connections are most likely dead too.
            for idle in self._idle:
                idle.terminate()
            self._idle.clear()
            if self._claim is not None:
                self._claim.terminate()
                self._claim = None

    def _idle_connection(self) -> asyncpg.Connection | None:
        """An idle connection still open (the server may have cut some while they idled)."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.is_closed():
                return conn
        return None

    @asynccontextmanager
    async def statement(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for one statement (its own transaction)."""
        conn = self._idle_connection() or await self.connect()
        try:
            yield conn
        except BaseException as error:
            self._discard(conn, error)
            raise
        self._idle.append(conn)

    @asynccontextmanager
    async def claim_transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """The claim loop's connection, in a transaction that commits when the block ends."""
        conn, self._claim = self._claim, None
        if conn is None or conn.is_closed():
            conn = await self.connect()
        try:
            async with conn.transaction():
                yield conn
        except BaseException as error:
            self._discard(conn, error)
            raise
        self._claim = conn

    async def close(self) -> None:
        if self._finisher is not None:
            await asyncio.gather(self._finisher, return_exceptions=True)
        for conn in [*self._idle, *filter(None, [self._claim])]:
            await conn.close()
        self._idle, self._claim = [], None

    # --- health: one line when the database goes, one when it is back ----------------------

    @property
    def reachable(self) -> bool:
        return self._lost_at is None

    def lost(self, error: BaseException) -> None:
        if self._lost_at is None:
            self._lost_at = time.monotonic()
            log.warning(
                "worker %s lost the database (%s: %s); retrying, no new claims until it is back",
                self.worker, type(error).__name__, error,
            )

    def back(self) -> None:
        if self._lost_at is not None:
            log.warning(
                "worker %s: database back after %.1fs", self.worker,
                time.monotonic() - self._lost_at,
            )
            self._lost_at = None

    async def _retrying(self, call: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """`call` on a held connection, retried on a fresh one while the connection is lost."""

        async def once() -> T:
            async with self.statement() as conn:
                return await call(conn)

        result = await retry_call(
            once, max_seconds=self.retry_seconds, on_retry=self.lost
        )
        self.back()
        return result

    async def _run_states(self, ids: Sequence[UUID]) -> dict[UUID, tuple[str, str | None, int]]:
        async def read(conn: asyncpg.Connection) -> dict[UUID, tuple[str, str | None, int]]:
            async with conn.transaction():
                return await queries.select_run_states(conn, ids)

        return await self._retrying(read)

    def _is(self, state: tuple[str, str | None, int] | None, run: Run, status: str) -> bool:
        return state is not None and state == (status, self.worker, run.attempts)

    # --- the run's statements ----------------------------------------------------------------

    async def claimed(self, runs: Sequence[Run]) -> set[UUID]:
        """After a claim whose COMMIT got no answer: the runs that did turn RUNNING for us."""
        states = await self._run_states([run.task_id for run in runs])
        return {
            run.task_id for run in runs
            if self._is(states.get(run.task_id), run, StageStatus.RUNNING.value)
        }

    async def enter_stage(self, run: Run, stage: str) -> bool:
        """Record the stage about to run; False when the task stopped being this run's. A
        repeat writes the same stage again, so a lost reply needs no read back."""
        return await self._retrying(
            lambda conn: queries.set_running_stage(
                conn, run.task_id, self.worker, run.attempts, stage
            )
        )

    async def requeue(self, run: Run) -> bool:
        if await self._retrying(
            lambda conn: queries.requeue_task(conn, run.task_id, self.worker, run.attempts)
        ):
            return True
        state = (await self._run_states([run.task_id])).get(run.task_id)
        # Applied by a try whose reply was lost: QUEUED, nobody's, same attempt.
        return state == (StageStatus.QUEUED.value, None, run.attempts)

    async def finish(self, run: Run, status: StageStatus, error: str | None) -> bool:
        """Set the run's terminal status; False when the task is no longer this run's
        (canceled or unlocked meanwhile). Outcomes that arrive while a finish is in flight go
        together in one statement after it."""
        if self._finishing_now:
            done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._finishing.append(_Finish(run, status, error, done))
            return await done
        self._finishing_now = True
        try:
            applied = await self._finish_batch([(run, status, error)])
        finally:
            if self._finishing:
                # Those that queued behind this one go in one statement, off this task's path.
                self._finisher = asyncio.create_task(self._finish_queued())
            else:
                self._finishing_now = False
        return run.task_id in applied

    async def _finish_queued(self) -> None:
        while self._finishing:
            batch, self._finishing = self._finishing, []
            try:
                applied = await self._finish_batch([(f.run, f.status, f.error) for f in batch])
            except Exception as error:
                for item in batch:
                    item.done.set_exception(error)
                continue
            for item in batch:
                item.done.set_result(item.run.task_id in applied)
        self._finishing_now = False

    async def _finish_batch(
        self, batch: list[tuple[Run, StageStatus, str | None]]
    ) -> set[UUID]:
        outcomes = [(run.task_id, run.attempts, status, error) for run, status, error in batch]
        applied = await self._retrying(
            lambda conn: queries.finish_tasks(conn, self.worker, outcomes)
        )
        rest = [(run, status) for run, status, _ in batch if run.task_id not in applied]
        if rest:
            # Not changed now: canceled or unlocked meanwhile, or changed by a try whose
            # reply was lost. The row tells which.
            states = await self._run_states([run.task_id for run, _ in rest])
            applied |= {
                run.task_id for run, status in rest
                if self._is(states.get(run.task_id), run, status.value)
            }
        return applied
