"""Reading tasks' store objects (params, stage metadata, lock) for many tasks at once, with
final stage metadata served from checkmate.stage_cache."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from checkmate import arguments
from checkmate.models import CheckMateTask, StageMetadata, TaskLock
from checkmate.stage_cache import StageCache, Version
from checkmate.store import TaskStore

log = logging.getLogger("checkmate.service")


@dataclass(frozen=True, slots=True)
class TaskObjects:
    """What the store holds for one task: its params, stage metadata and lock."""

    params: dict[str, Any] | None
    metadata: list[StageMetadata]
    lock: TaskLock | None

    @property
    def lock_detected(self) -> bool:
        return self.lock is not None


ObjectPart = Literal["params", "metadata", "lock"]
OBJECT_PARTS: frozenset[ObjectPart] = frozenset(("params", "metadata", "lock"))



class ObjectReader:
    """The service's reads of store objects."""

    def __init__(self, store: TaskStore, stage_cache: StageCache, lock_timeout: float) -> None:
        self.store = store
        self.stage_cache = stage_cache
        self.lock_timeout = lock_timeout

    async def read(
        self,
        task_ids: Sequence[UUID],
        parts: Collection[ObjectPart] = OBJECT_PARTS,
        versions: Mapping[UUID, Version] | None = None,
    ) -> dict[UUID, TaskObjects | BaseException]:
        """Store objects of many tasks, read concurrently; a failed read is returned, not raised.
        Only the `parts` asked for are read (each costs store requests: params the task object,
        metadata a listing and one read per stage, lock one read); the others come back empty
        (params None, metadata [], lock None). `versions`: the record versions
        (stage_cache.version_of) of tasks whose metadata may be served from the cache."""
        arguments.one_of("parts", parts, OBJECT_PARTS)
        ids = [arguments.task_id(task_id, "task_ids") for task_id in task_ids]
        objects: dict[UUID, TaskObjects | BaseException] = {}
        cache = self.stage_cache
        if versions and set(parts) == {"metadata"}:
            # Metadata of COMPLETED tasks is final (checkmate.stage_cache): read it once.
            for task_id in ids:
                version = versions.get(task_id)
                cached = None if version is None else cache.get(task_id, version)
                if cached is not None:
                    objects[task_id] = TaskObjects(None, cached, None)
            ids = [task_id for task_id in ids if task_id not in objects]
        found = await self.store.read_many(
            ids, task="params" in parts, stages="metadata" in parts, lock="lock" in parts
        )
        now = datetime.now(UTC)
        for task_id, result in found.items():
            if isinstance(result, BaseException):
                objects[task_id] = result
                continue
            task_object, metadata, lock = result
            version = versions.get(task_id) if versions else None
            if version is not None and "metadata" in parts:
                cache.put(task_id, version, metadata)
            if lock is not None:
                lock.stale = lock.is_stale(now, self.lock_timeout)
            objects[task_id] = TaskObjects(
                task_object.params if task_object else None, metadata, lock
            )
        return objects

    async def attach(self, tasks: Sequence[CheckMateTask]) -> None:
        """Set each task's store-backed fields; a task whose read failed keeps them empty."""
        objects = await self.read([task.id for task in tasks])
        for task in tasks:
            found = objects[task.id]
            if isinstance(found, BaseException):
                log.warning("store read failed for task %s: %s", task.id, found)
                continue
            task.params = found.params
            task.metadata = found.metadata
            task.lock = found.lock
            task.lock_detected = found.lock_detected
            task.stage_status = found.metadata[-1].status if found.metadata else None
