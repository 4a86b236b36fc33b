"""What a worker tells operators about its tasks: one log line when it takes a task and one when
the task leaves it (id, kind, outcome, duration), and the Prometheus series of checkmate.metrics
(claims, stage durations by kind and outcome, task outcomes) that `checkmate worker
--metrics-port` serves. Kept out of the worker's code paths but for one call at each point."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from uuid import UUID

from checkmate import metrics
from checkmate.models import StageMetadata
from checkmate.worker_run import Claim, Outcome, RunResult

log = logging.getLogger("checkmate.worker")

# When this process took each task it still runs (monotonic seconds).
_taken: dict[UUID, float] = {}


def taken(claims: Sequence[Claim]) -> None:
    now = time.monotonic()
    for claim in claims:
        _taken[claim.task_id] = now
        log.info(
            "task %s (%s) taken", claim.task_id, claim.plan.kind or "?",
            extra={"task_id": str(claim.task_id), "kind": claim.plan.kind},
        )
    if claims:
        metrics.WORKER_CLAIMS.inc(len(claims))


def stage_done(claim: Claim, meta: StageMetadata) -> None:
    if meta.duration_seconds is not None:
        metrics.STAGE_SECONDS.labels(claim.plan.kind or "?", meta.status.value).observe(
            meta.duration_seconds
        )


def finished(claim: Claim, result: RunResult, recorded: bool) -> None:
    """`recorded`: the terminal status was written (else the task stopped being ours)."""
    outcome = result.outcome
    if outcome in (Outcome.COMPLETED, Outcome.ERROR) and not recorded:
        outcome = Outcome.STOPPED
    seconds = time.monotonic() - _taken.pop(claim.task_id, time.monotonic())
    metrics.WORKER_TASKS.labels(outcome.value).inc()
    log.info(
        "task %s (%s) finished: %s in %.3fs", claim.task_id, claim.plan.kind or "?",
        outcome.value, seconds,
        extra={"task_id": str(claim.task_id), "kind": claim.plan.kind, "outcome": outcome.value,
               "duration_seconds": round(seconds, 6)},
    )
