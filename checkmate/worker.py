"""`checkmate worker`: claim QUEUED tasks, run their stages under a heart-beating lock object.

One claim is one short transaction (SELECT ... FOR UPDATE SKIP LOCKED, create the lock
object, set RUNNING, commit), so any number of workers on any number of machines share the
queues without taking a task twice. A task's progress lives in its stage metadata objects:
a re-run skips the stages that COMPLETED, which is how `invoke` resumes a failed task.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import socket
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from checkmate import worker_observe
from checkmate.db import queries
from checkmate.db.tables import QUEUED_CHANNEL
from checkmate.models import StageMetadata, StageStatus, TaskLock
from checkmate.retry import Backoff, RetriesExhausted, connection_lost
from checkmate.service import CheckMateService
from checkmate.store import StoreError
from checkmate.tasks import Stage, StageContext, StageResult, TaskKindError, get_kind
from checkmate.waiting import wait_event
from checkmate.worker_db import Run, WorkerDatabase
from checkmate.worker_run import (
    Claim,
    Outcome,
    Plan,
    RunResult,
    is_ours,
    lock_heartbeat,
    stage_data,
)

log = logging.getLogger(__name__)

# Claims happen on notification; this poll only covers a lost LISTEN connection.
DEFAULT_POLL_INTERVAL = 5.0


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    """Claims tasks of `queues` and runs at most `concurrency` of them at a time."""

    def __init__(
        self,
        service: CheckMateService,
        queues: Sequence[str],
        *,
        concurrency: int = 1,
        name: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        if not queues:
            raise ValueError("a worker needs at least one queue")
        self.service = service
        # Plain file calls for a local folder: a task's five small objects through obstore
        # cost more CPU than the rest of a no-op task (see TaskStore.inline_local).
        self.store = service.store.inline_local()
        self.queues = list(dict.fromkeys(queues))
        self.concurrency = concurrency
        self.name = name or default_worker_name()
        self.poll_interval = poll_interval
        self.lock_timeout = service.settings.lock_timeout
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        # Tasks whose stages run; a task that is only recording its outcome no longer counts,
        # so the next claim overlaps that tail (the claim is most of a short task's cost).
        self._busy: set[UUID] = set()
        # QUEUED tasks found with a lock object: left alone until an operator unlocks them.
        self._skip_until: dict[UUID, float] = {}
        self._listener: Any = None
        # Claims retry for as long as the database is away, at most this far apart.
        self._claim_backoff = Backoff(first=0.05, most=1.0)
        self._threads = ThreadPoolExecutor(concurrency, thread_name_prefix="checkmate-stage")
        self._db = WorkerDatabase(
            service.database.url, self.name, retry_seconds=service.settings.db_retry_seconds
        )

    def stop(self) -> None:
        """Finish the current stages, requeue the rest, return from run()."""
        if not self._stopping.is_set():
            log.info("worker %s stopping: finishing current stages", self.name)
        self._stopping.set()
        self._wake.set()
        self._slot_freed.set()

    async def run(self) -> None:
        await self._listen()
        log.info(
            "worker %s serving queues %s with concurrency %d",
            self.name, ", ".join(self.queues), self.concurrency,
        )
        try:
            await self._claim_loop()
            if self._running:
                await asyncio.gather(*self._running, return_exceptions=True)
        finally:
            await self._close_listener()
            await self._db.close()
            self._threads.shutdown(wait=False)
        log.info("worker %s stopped", self.name)

    async def _claim_loop(self) -> None:
        retries = 0
        while not self._stopping.is_set():
            # Outcome recording may lag behind by at most `concurrency` tasks.
            free = min(
                self.concurrency - len(self._busy), 2 * self.concurrency - len(self._running)
            )
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            self._wake.clear()
            try:
                claims = await self.claim(free)
            except Exception as error:
                if not connection_lost(error):
                    log.exception("claim failed; retrying in %gs", self.poll_interval)
                    await self._idle()
                    continue
                # No new work while the database is away; the running tasks ride it out.
                self._db.lost(error)
                await self._pause(self._claim_backoff.delay(retries))
                retries += 1
                continue
            retries = 0
            self._db.back()
            for claim in claims:
                self._spawn(claim)
            if not claims:
                await self._idle()

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds` or until stop()."""
        await wait_event(self._stopping, seconds)

    async def _idle(self) -> None:
        """Sleep until a notification, a stop, or the poll interval; reconnect LISTEN if lost."""
        if self._listener is None or self._listener.is_closed():
            await self._listen()
        await wait_event(self._wake, self.poll_interval)

    def _spawn(self, claim: Claim) -> None:
        self._busy.add(claim.task_id)
        task = asyncio.create_task(self._execute(claim))
        self._running.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._running.discard(finished)
            self._slot_freed.set()

        task.add_done_callback(done)

    def _stages_done(self, task_id: UUID) -> None:
        """The task runs no more stage code: its slot goes to the next claim (once)."""
        if task_id in self._busy:
            self._busy.discard(task_id)
            self._slot_freed.set()

    # --- LISTEN -----------------------------------------------------------------------------

    async def _listen(self) -> None:
        await self._close_listener()
        try:
            conn = await self._db.connect()
            await conn.add_listener(QUEUED_CHANNEL, self._on_queued)
        except (OSError, asyncpg.PostgresError) as error:
            if self._db.reachable:  # while the database is away, the claim loop says so once
                log.warning("LISTEN failed (%s); polling every %gs", error, self.poll_interval)
            return
        self._listener = conn

    def _on_queued(self, _conn: object, _pid: int, _channel: str, queue: str) -> None:
        if queue in self.queues:
            self._wake.set()

    async def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None and not listener.is_closed():
            await listener.close()

    # --- claim ------------------------------------------------------------------------------

    async def claim(self, limit: int) -> list[Claim]:
        """Claim up to `limit` tasks in one transaction; their lock objects exist on return.

        The task objects are read inside the transaction too, so that the UPDATE to RUNNING
        also records the stage each task starts at: one statement less per task.
        """
        now = time.monotonic()
        self._skip_until = {i: t for i, t in self._skip_until.items() if t > now}
        locked: list[tuple[UUID, TaskLock]] = []
        claims: list[Claim] = []
        committing = False
        try:
            async with self._db.claim_transaction() as conn:
                rows = await queries.select_claimable(
                    conn, self.queues, limit, list(self._skip_until)
                )
                if not rows:
                    return []
                # Plans are read alongside the locks; a task left unlocked wastes its read.
                locked, plans = await asyncio.gather(
                    self._create_locks([task_id for task_id, _, _ in rows]),
                    asyncio.gather(*(self._plan(i, stage is not None) for i, stage, _ in rows)),
                )
                found = {task_id: (attempts, plan) for (task_id, _, attempts), plan in zip(
                    rows, plans, strict=True
                )}
                claims = [
                    Claim(Run(task_id, found[task_id][0]), lock, found[task_id][1])
                    for task_id, lock in locked
                ]
                if claims:
                    first = {claim.task_id: claim.plan.first_to_run() for claim in claims}
                    await queries.mark_running(conn, first, self.name)
                    committing = True
        except BaseException as error:
            if committing and connection_lost(error):
                # The COMMIT went out and no answer came back: it may have been applied.
                return await self._resolve_claims(claims, error)
            # The claim did not commit: nobody runs these tasks, so their locks must go.
            await asyncio.shield(self._delete_locks([task_id for task_id, _ in locked]))
            raise
        worker_observe.taken(claims)
        return claims

    async def _resolve_claims(self, claims: list[Claim], error: BaseException) -> list[Claim]:
        """Keep the claims the database did commit; unlock the rest."""
        self._db.lost(error)
        try:
            held = await self._db.claimed([claim.run for claim in claims])
        except Exception:
            # In doubt for good: the locks stay (and go stale) rather than leave a RUNNING
            # task without one.
            log.error("claim of %d tasks in doubt: the database stayed away", len(claims))
            raise
        await self._delete_locks([c.task_id for c in claims if c.task_id not in held])
        return [claim for claim in claims if claim.task_id in held]

    async def _plan(self, task_id: UUID, ran_before: bool) -> Plan:
        try:
            task_object = await self.store.get_task(task_id)
            if task_object is None:
                return Plan(error="task object missing from the store")
            stages = get_kind(task_object.name).stages_for(task_object.params)
            # A task that never reached a stage has no metadata: skip listing the store.
            previous = await self.store.get_stages(task_id) if ran_before else []
        except (StoreError, TaskKindError) as error:
            return Plan(error=str(error))
        previous_by_index = {meta.index: meta for meta in previous}
        return Plan(task_object.params, stages, previous_by_index, kind=task_object.name)

    async def _create_locks(self, task_ids: Sequence[UUID]) -> list[tuple[UUID, TaskLock]]:
        acquired_at = datetime.now(UTC)
        lock = TaskLock(
            owner=self.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            acquired_at=acquired_at,
            heartbeat_at=acquired_at,
        )
        results = await asyncio.gather(
            *(self.store.create_lock(task_id, lock) for task_id in task_ids),
            return_exceptions=True,
        )
        locked = []
        for task_id, created in zip(task_ids, results, strict=True):
            if created is True:
                locked.append((task_id, lock))
                continue
            reason = "a lock object exists" if created is False else f"store error: {created}"
            log.warning("not claiming QUEUED task %s: %s", task_id, reason)
            self._skip_until[task_id] = time.monotonic() + self.lock_timeout
        return locked

    async def _delete_locks(self, task_ids: Sequence[UUID]) -> None:
        await asyncio.gather(*(self.store.delete_lock(task_id) for task_id in task_ids))

    # --- run a claimed task -----------------------------------------------------------------

    async def _execute(self, claim: Claim) -> None:
        try:
            async with lock_heartbeat(self.store, claim, self.lock_timeout / 3):
                try:
                    result = await self._run_task(claim)
                finally:
                    self._stages_done(claim.task_id)
                # Under the heartbeat: while this waits for the database, the lock stays fresh.
                finished = await self._record(claim, result)
            await self._settle(claim, result, finished)
            worker_observe.finished(claim, result, finished)
        except RetriesExhausted as error:
            # The database stayed away: the lock stays and goes stale, as when killed.
            log.error("task %s: outcome not recorded, %s", claim.task_id, error)
        except Exception:
            log.exception("task %s: worker could not record its outcome", claim.task_id)

    async def _record(self, claim: Claim, result: RunResult) -> bool:
        """The run's terminal status in the database; False when the task is no longer ours."""
        if result.outcome is Outcome.COMPLETED:
            return await self._db.finish(claim.run, StageStatus.COMPLETED, None)
        if result.outcome is Outcome.ERROR:
            return await self._db.finish(claim.run, StageStatus.ERROR, result.error)
        return False

    async def _settle(self, claim: Claim, result: RunResult, finished: bool) -> None:
        task_id = claim.task_id
        if result.outcome is Outcome.REQUEUE:
            # Lock first, then QUEUED: a claimer never meets a QUEUED task still locked by us.
            await self._release(claim)
            await self._db.requeue(claim.run)
            log.info("task %s requeued (worker shutting down)", task_id)
            return
        if finished:
            if result.outcome is Outcome.ERROR:
                log.info("task %s failed: %s", task_id, result.error)
            # The record was still ours when it turned terminal, and a terminal task
            # cannot be queued while our lock exists: the lock is ours, no need to read it.
            await self.store.delete_lock(task_id)
            return
        log.info("task %s stopped: canceled or unlocked while it ran", task_id)
        await self._release(claim)

    async def _release(self, claim: Claim) -> None:
        """Delete the lock if it is still the one this claim wrote (an operator may have
        unlocked the task and another worker claimed it since)."""
        if is_ours(await self.store.get_lock(claim.task_id), claim):
            await self.store.delete_lock(claim.task_id)

    async def _run_task(self, claim: Claim) -> RunResult:
        plan = claim.plan
        if plan.error is not None:
            return RunResult(Outcome.ERROR, plan.error)
        outputs: dict[str, dict[str, Any]] = {}
        first = True
        for index, stage in enumerate(plan.stages):
            before = plan.done_before(index)
            if before is not None and before.status is StageStatus.COMPLETED:
                outputs[stage.name] = before.data or {}
                continue
            if self._stopping.is_set():
                return RunResult(Outcome.REQUEUE)
            # The claim recorded the first stage; before any later one, re-read the status.
            if not first and not await self._db.enter_stage(claim.run, stage.name):
                return RunResult(Outcome.STOPPED)
            first = False
            attempt = before.attempt + 1 if before is not None else 1
            context = StageContext(
                claim.task_id, plan.params, stage.name, index, attempt, outputs=dict(outputs)
            )
            meta = await self._run_stage(stage, context, last=index == len(plan.stages) - 1)
            worker_observe.stage_done(claim, meta)
            if meta.status is StageStatus.ERROR:
                return RunResult(Outcome.ERROR, f"stage {stage.name} failed: {meta.error}")
            outputs[stage.name] = meta.data or {}
        return RunResult(Outcome.COMPLETED)

    async def _run_stage(self, stage: Stage, ctx: StageContext, *, last: bool) -> StageMetadata:
        """Run one stage; its metadata object is written when it starts and when it ends."""
        started = datetime.now(UTC)
        meta = StageMetadata(
            index=ctx.index,
            name=stage.name,
            status=StageStatus.RUNNING,
            started_at=started,
            attempt=ctx.attempt,
        )
        await self.store.put_stage(ctx.task_id, meta)
        clock = time.perf_counter()
        try:
            data = stage_data(await self._call(stage, ctx), ctx.recorded)
            update: dict[str, Any] = {"status": StageStatus.COMPLETED, "data": data}
        except Exception as error:
            update = {
                "status": StageStatus.ERROR,
                "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(),
                "data": stage_data(None, ctx.recorded),
            }
        elapsed = time.perf_counter() - clock
        update |= {"finished_at": datetime.now(UTC), "duration_seconds": elapsed}
        meta = meta.model_copy(update=update)
        if last or meta.status is StageStatus.ERROR:
            # The task's last stage code has run: the next claim's first round trip overlaps
            # the writes that finish this task (yielding lets the claim loop send it).
            self._stages_done(ctx.task_id)
            await asyncio.sleep(0)
        await self.store.put_stage(ctx.task_id, meta)
        return meta

    async def _call(self, stage: Stage, ctx: StageContext) -> StageResult:
        if inspect.iscoroutinefunction(stage.run):
            return await stage.run(ctx)  # type: ignore[no-any-return]
        # Sync stages run in a thread so the event loop keeps heart-beating the lock.
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._threads, stage.run, ctx)
        if inspect.isawaitable(result):
            return await result
        return result


async def serve(
    queues: Sequence[str],
    concurrency: int = 1,
    name: str | None = None,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
) -> None:
    """Open the service, run a worker until SIGTERM or SIGINT, close."""
    service = await CheckMateService.open()
    try:
        worker = Worker(
            service, queues, concurrency=concurrency, name=name, poll_interval=poll_interval
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, worker.stop)
        await worker.run()
    finally:
        await service.close()


def run_worker(
    queues: list[str],
    concurrency: int,
    name: str | None,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
) -> int:
    """Entry point of `checkmate worker`; returns the exit code."""
    asyncio.run(serve(queues, concurrency, name, poll_interval))
    return 0
