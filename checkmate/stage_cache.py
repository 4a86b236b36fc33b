"""Stage metadata of COMPLETED tasks, kept in process memory (bounded, least recently used out).

The store stays the source of truth; an entry is only ever served for the exact record version it
was read under: (updated_at, attempts, cleaned) of a COMPLETED task. Why that cannot be stale:
- a worker writes a task's metadata only while it holds the task (QUEUED/RUNNING), and sets
  COMPLETED after its last write (checkmate.worker): a COMPLETED record's metadata is final;
- COMPLETED never changes status (no invoke of it), and clean marks the record cleaned (and
  updated_at) after deleting the objects: the version changes, the entry no longer matches;
- any other status is never cached (a CANCELED task's worker may still finish its stage, an ERROR
  set by unlock may have a live worker behind it).
One window is left: a clean whose record update fails after its store deletes leaves the record
unchanged while its objects are gone; a page read then can still show the cached metadata until
the next clean marks the record (clean is idempotent). This process evicts what it cleans.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

from checkmate.models import StageMetadata, StageStatus

Version = tuple[datetime, int, bool]


def version_of(status: StageStatus | None, updated_at: datetime | None, attempts: int | None,
               cleaned: bool | None) -> Version | None:
    """The version to cache a task's metadata under; None when it must be read every time."""
    if status is not StageStatus.COMPLETED or updated_at is None or attempts is None:
        return None
    return (updated_at, attempts, bool(cleaned))


class StageCache:
    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[UUID, tuple[Version, list[StageMetadata]]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, task_id: UUID, version: Version) -> list[StageMetadata] | None:
        entry = self._entries.get(task_id)
        if entry is None or entry[0] != version:
            self.misses += 1
            return None
        self._entries.move_to_end(task_id)
        self.hits += 1
        return list(entry[1])

    def put(self, task_id: UUID, version: Version, stages: list[StageMetadata]) -> None:
        if self.size <= 0:
            return
        self._entries[task_id] = (version, list(stages))
        self._entries.move_to_end(task_id)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def evict(self, task_ids: Iterable[UUID]) -> None:
        for task_id in task_ids:
            self._entries.pop(task_id, None)
