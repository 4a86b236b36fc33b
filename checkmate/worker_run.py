"""What a worker's claimed run is: the plan it follows, its outcome, its lock."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from uuid import UUID

import orjson

from checkmate.models import StageMetadata, StageStatus, TaskLock
from checkmate.tasks import Stage
from checkmate.worker_db import Run


class Outcome(Enum):
    COMPLETED = "completed"
    ERROR = "error"
    # The task stopped being ours between stages (canceled, or unlocked by an operator).
    STOPPED = "stopped"
    # The worker is shutting down: the task goes back to QUEUED for another worker.
    REQUEUE = "requeue"


@dataclass(slots=True)
class Plan:
    """What a claimed task will run: its params, its stages and what earlier runs left."""

    params: dict[str, Any] = field(default_factory=dict)
    stages: list[Stage] = field(default_factory=list)
    previous: dict[int, StageMetadata] = field(default_factory=dict)
    error: str | None = None
    kind: str = ""

    def done_before(self, index: int) -> StageMetadata | None:
        """The metadata an earlier run left for stage `index`, if it is the same stage."""
        before = self.previous.get(index)
        # A different name means the kind's plan changed since: a different stage.
        return before if before is not None and before.name == self.stages[index].name else None

    def first_to_run(self) -> str | None:
        for index, stage in enumerate(self.stages):
            before = self.done_before(index)
            if before is None or before.status is not StageStatus.COMPLETED:
                return stage.name
        return None


@dataclass(frozen=True, slots=True)
class Claim:
    run: Run
    lock: TaskLock
    plan: Plan

    @property
    def task_id(self) -> UUID:
        return self.run.task_id


@dataclass(frozen=True, slots=True)
class RunResult:
    outcome: Outcome
    error: str | None = None


def stage_data(result: Any, recorded: dict[str, Any]) -> dict[str, Any] | None:
    """What a stage returned merged with what it recorded; must survive a JSON round trip."""
    if result is None:
        data = dict(recorded)
    elif isinstance(result, dict):
        data = {**result, **recorded}
    else:
        data = {"result": result, **recorded}
    # Checked here, inside the stage's try, so unserialisable data fails the stage, not the worker.
    return orjson.loads(orjson.dumps(data)) if data else None


def is_ours(lock: TaskLock | None, claim: Claim) -> bool:
    return lock is not None and (lock.owner, lock.acquired_at) == (
        claim.lock.owner,
        claim.lock.acquired_at,
    )
