"""Per-request DataLoaders: every store read and task lookup of one request goes out in batches."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING
from uuid import UUID

from strawberry.dataloader import DataLoader

from checkmate.models import CheckMateTask, TaskFilter
from checkmate.objects import OBJECT_PARTS, ObjectPart, TaskObjects
from checkmate.service import ServiceError
from checkmate.stage_cache import Version, version_of

if TYPE_CHECKING:
    from checkmate.service import CheckMateService

log = logging.getLogger(__name__)


ObjectKey = tuple[UUID, ObjectPart]


class Loaders:
    """`objects`: store objects of tasks, keyed by (task id, part: params, metadata or lock) so
    that a page reads only the parts its selection uses; `tasks`: task records by id."""

    def __init__(self, service: CheckMateService, *, cache: bool = True) -> None:
        self._service = service
        self.objects: DataLoader[ObjectKey, TaskObjects] = DataLoader(
            self._load_objects, cache=cache
        )
        self.tasks: DataLoader[UUID, CheckMateTask | None] = DataLoader(
            self._load_tasks, cache=cache
        )
        # Record versions of the tasks whose metadata is asked for (checkmate.stage_cache).
        self.versions: dict[UUID, Version] = {}

    def load_metadata(self, task: CheckMateTask) -> Awaitable[TaskObjects]:
        version = version_of(task.status, task.updated_at, task.attempts, task.cleaned)
        if version is not None:
            self.versions[task.id] = version
        return self.objects.load((task.id, "metadata"))

    def prime_objects(self, task_id: UUID, objects: TaskObjects) -> None:
        for part in OBJECT_PARTS:
            self.objects.prime((task_id, part), objects)

    async def _load_objects(self, keys: list[ObjectKey]) -> Sequence[TaskObjects | BaseException]:
        # One read per task of every part asked for in this batch (usually one part, or the
        # same few for every task of a page).
        task_ids = list(dict.fromkeys(task_id for task_id, _ in keys))
        parts = {part for _, part in keys}
        # Taken out as used: a websocket's loaders live as long as its connection.
        versions = {tid: self.versions.pop(tid) for tid in task_ids if tid in self.versions}
        found = await self._service.read_objects(task_ids, parts, versions)
        return [_objects_or_error(task_id, found[task_id]) for task_id, _ in keys]

    async def _load_tasks(self, task_ids: list[UUID]) -> Sequence[CheckMateTask | None]:
        # One SELECT per cap-sized chunk; batch results never exceed the cap, so this is one.
        by_id: dict[UUID, CheckMateTask] = {}
        cap = self._service.settings.max_results_cap
        for start in range(0, len(task_ids), cap):
            chunk = tuple(task_ids[start : start + cap])
            page = await self._service.page(TaskFilter(ids=chunk), max_results=len(chunk))
            by_id.update((task.id, task) for task in page.tasks)
        return [by_id.get(task_id) for task_id in task_ids]


def _objects_or_error(
    task_id: UUID, found: TaskObjects | BaseException
) -> TaskObjects | BaseException:
    if not isinstance(found, BaseException):
        return found
    # The cause may name paths or buckets: log it, tell the client only what failed.
    log.warning("store read failed for task %s: %r", task_id, found)
    return ServiceError(
        f"the persistence store could not be read for task {task_id}; "
        "its metadata, lock and params are null",
        code=ServiceError.UNAVAILABLE,
    )
