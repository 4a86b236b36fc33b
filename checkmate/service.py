"""CheckMateService: list, get, create and the batch actions cancel, unlock, clean, invoke."""

from __future__ import annotations

import asyncio
import base64
import builtins
import logging
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from uuid import UUID, uuid4

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from checkmate import actions
from checkmate.actions import (
    NO_FACTS,
    BatchAction,
    Candidate,
    DbEffect,
    Decision,
    Rules,
    StoreEffect,
    StoreFacts,
)
from checkmate.db import queries
from checkmate.db.database import Database
from checkmate.db.engine import create_engine, resolve_database_url, stop_embedded
from checkmate.db.migrate import upgrade
from checkmate.errors import ServiceError as ServiceError  # re-exported: its old home
from checkmate.gcpause import allocation_burst
from checkmate.models import (
    STATUS_BY_VALUE,
    CheckMateTask,
    CheckMateTaskBatchResult,
    SortOrder,
    StageMetadata,
    StageStatus,
    TaskFilter,
    TaskLock,
    TaskObject,
    TaskPage,
    trusted,
)
from checkmate.settings import Settings, get_settings
from checkmate.store import StoreError, TaskParts, TaskStore
from checkmate.tasks import TaskKindError, get_kind, import_task_modules

log = logging.getLogger(__name__)

BatchResults = tuple[list[CheckMateTaskBatchResult], list[CheckMateTaskBatchResult]]
TaskIds = Sequence[str | UUID] | str | UUID | None


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


def parse_task_id(value: str | UUID) -> UUID:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise ServiceError(f"{value!r} is not a task id: task ids are UUIDs") from None


def parse_task_ids(task_ids: TaskIds) -> tuple[UUID, ...] | None:
    if task_ids is None:
        return None
    if isinstance(task_ids, str | UUID):
        task_ids = [task_ids]
    # dict keeps the first occurrence of each id, in the order given.
    return tuple(dict.fromkeys(parse_task_id(value) for value in task_ids))


def encode_cursor(task: CheckMateTask) -> str:
    raw = f"{task.created_at.isoformat()}|{task.id}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        created_at, task_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(created_at), UUID(task_id)
    except (ValueError, UnicodeDecodeError):
        raise ServiceError(f"{cursor!r} is not a cursor returned by this API") from None


# Every field of the model, None where a row has no such column (a narrowed read).
_TASK_DEFAULTS: dict[str, Any] = {
    name: None if field.is_required() else field.default
    for name, field in CheckMateTask.model_fields.items()
}
# Always read: the cursor is made of them.
_KEY_COLUMNS = ("id", "created_at")


def _columns_for(fields: Collection[str]) -> builtins.list[str]:
    wanted = set(fields) | set(_KEY_COLUMNS)
    return [name for name in queries.TASK_COLUMN_NAMES if name in wanted]


def _tasks_from_rows(rows: Sequence[Any]) -> builtins.list[CheckMateTask]:
    """Models of tasks rows, unvalidated: the columns already have the fields' types (the
    table's constraints hold them) except status, text in the row. Validation cost more than
    the SQL and the GraphQL execution of a 10,000-task page together."""
    if not rows:
        return []
    fields = rows[0]._fields  # a property that builds a tuple: once, not per row
    fields_set = set(fields)
    with_status = "status" in fields_set
    tasks = []
    for row in rows:
        values = _TASK_DEFAULTS.copy()
        values.update(zip(fields, row, strict=True))
        if with_status:
            values["status"] = STATUS_BY_VALUE[values["status"]]
        tasks.append(trusted(CheckMateTask, values, fields_set.copy()))
    return tasks


E = TypeVar("E")


def _chunks(items: Sequence[E], size: int) -> list[Sequence[E]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _split(decisions: Sequence[Decision]) -> BatchResults:
    succeeded: builtins.list[CheckMateTaskBatchResult] = []
    failed: builtins.list[CheckMateTaskBatchResult] = []
    for decision in decisions:
        (failed if decision.error is not None else succeeded).append(decision.result())
    return succeeded, failed


def _id_order(task_id: UUID) -> int:
    # PostgreSQL orders uuids bytewise, as their big-endian ints; sorting by the int avoids
    # UUID.__lt__ (a Python call per comparison: 0.2 s for 100,000 ids).
    return task_id.int


class CheckMateService:
    """The service layer: every operation an operator or the API performs on tasks."""

    def __init__(
        self, engine: AsyncEngine, store: TaskStore, settings: Settings, database_url: str
    ) -> None:
        # The typed seam to PostgreSQL (maps an unreachable database to UNAVAILABLE); the event
        # hub and workers use it too. `engine` and `database_url` are the same, kept for callers.
        self.database = Database(engine, database_url)
        self.engine = engine
        self.store = store
        self.settings = settings
        self.database_url = database_url

    @classmethod
    async def open(cls, settings: Settings | None = None) -> CheckMateService:
        """Connect to the configured database (or start the embedded one) and the store."""
        settings = settings or get_settings()
        import_task_modules(settings.task_modules)
        url = await asyncio.to_thread(resolve_database_url, settings)
        engine = create_engine(url, pool_size=settings.db_pool_size)
        if settings.database_url is None:
            await upgrade(engine)
        store_url = settings.store_url or (settings.resolved_data_dir / "store").as_uri()
        store = TaskStore.from_url(store_url, concurrency=settings.store_concurrency)
        return cls(engine, store, settings, url)

    async def close(self) -> None:
        await self.database.dispose()
        if self.settings.database_url is None:
            await asyncio.to_thread(stop_embedded, self.settings.resolved_data_dir)

    # --- reads -----------------------------------------------------------------------------

    def _check_max_results(self, max_results: int | None) -> int:
        cap = self.settings.max_results_cap
        if max_results is None:
            return cap
        if max_results < 1 or max_results > cap:
            raise ServiceError(f"max_results must be between 1 and {cap} (got {max_results})")
        return max_results

    async def page(
        self,
        task_filter: TaskFilter | None = None,
        *,
        sort: SortOrder = "desc",
        max_results: int | None = 100,
        after: str | None = None,
        include_metadata: bool = False,
        fields: Collection[str] | None = None,
    ) -> TaskPage:
        """One page of tasks in keyset order; `end_cursor` continues it. With `fields`, only
        those record fields are read (the others are None): for callers that know what they
        will look at, like a GraphQL selection."""
        limit = self._check_max_results(max_results)
        keyset = decode_cursor(after) if after else None
        columns = None if fields is None else _columns_for(fields)
        with allocation_burst():
            async with self._connect() as conn:
                rows = await queries.select_tasks(
                    conn,
                    task_filter or TaskFilter(),
                    sort=sort,
                    limit=limit + 1,
                    after=keyset,
                    columns=columns,
                )
            tasks = _tasks_from_rows(rows[:limit])
        if include_metadata:
            await self._attach_objects(tasks)
        return TaskPage(
            tasks=tasks,
            end_cursor=encode_cursor(tasks[-1]) if tasks else None,
            has_next_page=len(rows) > limit,
        )

    async def list(
        self,
        *,
        cleaned: bool | None = None,
        status: StageStatus | None = None,
        statuses: Sequence[StageStatus] | None = None,
        queue: str | None = None,
        tags: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        name: str | None = None,
        sort: SortOrder = "desc",
        max_results: int | None = 100,
        after: str | None = None,
        include_metadata: bool = True,
        db_transact: bool = True,
    ) -> builtins.list[CheckMateTask]:
        """Tasks matching every given filter, newest first unless sort="asc"."""
        task_filter = TaskFilter(
            cleaned=cleaned,
            status=status,
            statuses=tuple(statuses) if statuses is not None else None,
            queue=queue,
            tags=tuple(tags) if tags is not None else None,
            since=since,
            until=until,
            name=name,
        )
        page = await self.page(
            task_filter,
            sort=sort,
            max_results=max_results,
            after=after,
            include_metadata=include_metadata,
        )
        return page.tasks

    async def count(self, task_filter: TaskFilter | None = None) -> int:
        async with self._connect() as conn:
            return await queries.count_tasks(conn, task_filter or TaskFilter())

    async def count_by_status(
        self, task_filter: TaskFilter | None = None
    ) -> dict[StageStatus, int]:
        async with self._connect() as conn:
            counts = await queries.count_tasks_by_status(conn, task_filter or TaskFilter())
        return {StageStatus(status): count for status, count in counts}

    async def find(
        self, task_id: str | UUID, include_metadata: bool = True
    ) -> CheckMateTask | None:
        """The task, or None when no task has that id; ServiceError for a malformed id."""
        parsed = parse_task_id(task_id)
        async with self._connect() as conn:
            row = await queries.select_task(conn, parsed)
        if row is None:
            return None
        [task] = _tasks_from_rows([row])
        if include_metadata:
            await self._attach_objects([task])
        return task

    async def get(
        self, task_id: str | UUID, include_metadata: bool = True, db_transact: bool = True
    ) -> CheckMateTask:
        """The task with its metadata and lock; ServiceError if it does not exist."""
        task = await self.find(task_id, include_metadata)
        if task is None:
            raise ServiceError(f"no task has id {task_id}", code=ServiceError.NOT_FOUND)
        return task

    async def read_objects(
        self, task_ids: Sequence[UUID], parts: Collection[ObjectPart] = OBJECT_PARTS
    ) -> dict[UUID, TaskObjects | BaseException]:
        """Store objects of many tasks, read concurrently; a failed read is returned, not raised.
        Only the `parts` asked for are read (each costs store requests: params the task object,
        metadata a listing and one read per stage, lock one read); the others come back empty
        (params None, metadata [], lock None)."""
        found = await self.store.read_many(
            task_ids, task="params" in parts, stages="metadata" in parts, lock="lock" in parts
        )
        now = datetime.now(UTC)
        objects: dict[UUID, TaskObjects | BaseException] = {}
        for task_id, result in found.items():
            if isinstance(result, BaseException):
                objects[task_id] = result
                continue
            task_object, metadata, lock = result
            if lock is not None:
                lock.stale = lock.is_stale(now, self.settings.lock_timeout)
            objects[task_id] = TaskObjects(
                task_object.params if task_object else None, metadata, lock
            )
        return objects

    async def _attach_objects(self, tasks: Sequence[CheckMateTask]) -> None:
        objects = await self.read_objects([task.id for task in tasks])
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

    async def ping(self) -> None:
        """Raise ServiceError(UNAVAILABLE) when the database does not answer (readiness)."""
        async with self._connect() as conn:
            await queries.ping(conn)

    # --- create ----------------------------------------------------------------------------

    async def create(
        self,
        name: str,
        queue: str = "default",
        tags: Sequence[str] | None = None,
        params: dict[str, Any] | None = None,
        invoke: bool = False,
    ) -> CheckMateTask:
        """Record a task of a registered kind and write its task object; QUEUED if invoke."""
        try:
            kind = get_kind(name)
            clean_params = kind.validate_params(params)
        except TaskKindError as error:
            raise ServiceError(str(error)) from None
        if not queue:
            raise ServiceError("queue must not be empty")
        task_id = uuid4()
        stages = [stage.name for stage in kind.stages_for(clean_params)]
        task_object = TaskObject(
            id=task_id,
            name=name,
            queue=queue,
            params=clean_params,
            stages=stages,
            created_at=datetime.now(UTC),
        )
        # The object first: a record never points at a task object that was not written.
        await self.store.put_task(task_object)
        values: dict[str, Any] = {
            "id": task_id, "name": name, "queue": queue, "tags": list(tags or [])
        }
        if invoke:
            values |= {"status": StageStatus.QUEUED.value, "attempts": 1}
        try:
            async with self._connect() as conn:
                row = await queries.insert_task(conn, values)
                await conn.commit()
        except BaseException:
            await self.store.delete_task(task_id)
            raise
        [task] = _tasks_from_rows([row])
        task.params, task.metadata, task.lock_detected = clean_params, [], False
        return task

    # --- batch actions ---------------------------------------------------------------------

    async def cancel(
        self,
        task_ids: TaskIds = None,
        *,
        sort: SortOrder = "desc",
        max_results: int | None = 100,
        dry_run: bool = True,
        db_transact: bool = True,
        task_filter: TaskFilter | None = None,
        **filters: Any,
    ) -> BatchResults:
        """Set non-terminal tasks to CANCELED; terminal tasks go to failed, unchanged."""
        return await self._batch(
            BatchAction.CANCEL, task_ids, task_filter, filters, sort, max_results, dry_run,
            db_transact,
        )

    async def unlock(
        self,
        task_ids: TaskIds = None,
        *,
        sort: SortOrder = "desc",
        max_results: int | None = 100,
        dry_run: bool = True,
        db_transact: bool = True,
        force: bool = False,
        task_filter: TaskFilter | None = None,
        **filters: Any,
    ) -> BatchResults:
        """Delete lock objects; a RUNNING task whose worker is lost becomes ERROR."""
        return await self._batch(
            BatchAction.UNLOCK, task_ids, task_filter, filters, sort, max_results, dry_run,
            db_transact, force=force,
        )

    async def clean(
        self,
        task_ids: TaskIds = None,
        *,
        sort: SortOrder = "desc",
        max_results: int | None = 100,
        dry_run: bool = True,
        db_transact: bool = True,
        task_filter: TaskFilter | None = None,
        **filters: Any,
    ) -> BatchResults:
        """Delete the store objects of terminal, unlocked tasks, then mark them cleaned."""
        return await self._batch(
            BatchAction.CLEAN, task_ids, task_filter, filters, sort, max_results, dry_run,
            db_transact,
        )

    async def invoke(
        self,
        task_ids: TaskIds = None,
        *,
        sort: SortOrder = "desc",
        max_results: int | None = 100,
        dry_run: bool = True,
        db_transact: bool = True,
        task_filter: TaskFilter | None = None,
        **filters: Any,
    ) -> BatchResults:
        """Queue CREATED, ERROR and CANCELED tasks for a worker (attempts + 1)."""
        return await self._batch(
            BatchAction.INVOKE, task_ids, task_filter, filters, sort, max_results, dry_run,
            db_transact,
        )

    def _selection(
        self,
        task_ids: TaskIds,
        task_filter: TaskFilter | None,
        filters: dict[str, Any],
        max_results: int | None,
    ) -> tuple[TaskFilter, int]:
        try:
            base = task_filter.model_dump(exclude_none=True) if task_filter else {}
            merged = TaskFilter.model_validate({**base, **filters})
        except ValueError as error:
            raise ServiceError(f"invalid filter: {error}") from None
        ids = parse_task_ids(task_ids)
        if ids is not None:
            if merged.ids is not None:
                ids = tuple(task_id for task_id in ids if task_id in set(merged.ids))
            merged = merged.model_copy(update={"ids": ids})
        if merged.is_empty():
            raise ServiceError(
                "select tasks with task ids or a filter; an empty selection never means all tasks"
            )
        limit = self._check_max_results(max_results)
        if merged.ids is not None and len(merged.ids) > limit:
            raise ServiceError(
                f"{len(merged.ids)} task ids given but max_results is {limit}; "
                "raise max_results or pass fewer ids"
            )
        return merged, limit

    async def _batch(
        self,
        action: BatchAction,
        task_ids: TaskIds,
        task_filter: TaskFilter | None,
        filters: dict[str, Any],
        sort: SortOrder,
        max_results: int | None,
        dry_run: bool,
        db_transact: bool,
        *,
        force: bool = False,
    ) -> BatchResults:
        selection, limit = self._selection(task_ids, task_filter, filters, max_results)
        with allocation_burst():
            return await self._run(action, selection, limit, sort, dry_run, db_transact, force)

    async def _run(
        self,
        action: BatchAction,
        selection: TaskFilter,
        limit: int,
        sort: SortOrder,
        dry_run: bool,
        db_transact: bool,
        force: bool,
    ) -> BatchResults:
        async with self._connect() as conn:
            rows = await queries.select_batch_candidates(conn, selection, sort=sort, limit=limit)
        from_row = Candidate.from_row
        candidates = [from_row(row) for row in rows]
        missing = await self._unselected(selection, candidates)
        facts = await self._store_facts(action, candidates)
        rules = Rules(datetime.now(UTC), self.settings.lock_timeout, force)
        decide = actions.DECIDE[action]
        get_facts = facts.get
        decisions = [decide(task, get_facts(task.id, NO_FACTS), rules) for task in candidates]
        if not dry_run:
            plan = _Plan(action, candidates, facts, rules)
            decisions = await self._apply(plan, decisions, db_transact)
        return _split([*decisions, *missing])

    async def _unselected(
        self, selection: TaskFilter, candidates: Sequence[Candidate]
    ) -> builtins.list[Decision]:
        """Requested ids the selection left out: unknown, or excluded by the other filters
        (one more query, only when an id is missing and a filter was given too)."""
        if selection.ids is None:
            return []
        found = {candidate.id for candidate in candidates}
        absent = [task_id for task_id in selection.ids if task_id not in found]
        existing: dict[UUID, StageStatus] = {}
        if absent and not selection.model_copy(update={"ids": None}).is_empty():
            by_id = TaskFilter(ids=tuple(absent))
            async with self._connect() as conn:
                rows = await queries.select_batch_candidates(
                    conn, by_id, sort="asc", limit=len(absent)
                )
            existing = {row.id: StageStatus(row.status) for row in rows}
        return [
            actions.excluded(task_id, existing[task_id])
            if task_id in existing
            else actions.not_found(task_id)
            for task_id in absent
        ]

    async def _store_facts(
        self, action: BatchAction, candidates: Sequence[Candidate]
    ) -> dict[UUID, StoreFacts]:
        if action not in actions.READS_STORE:
            return {}
        lock_ids = [task.id for task in candidates if actions.needs_lock_read(action, task)]
        object_ids = [
            task.id for task in candidates if actions.needs_task_object_read(action, task)
        ]
        if not lock_ids:
            return {}
        # Two passes, so that a corrupt lock and a corrupt task object stay told apart.
        locks = await self.store.read_many(lock_ids, task=False, stages=False, lock=True)
        objects = await self.store.read_many(object_ids, task=True, stages=False, lock=False)
        return {task_id: _facts(locks[task_id], objects.get(task_id)) for task_id in lock_ids}

    async def _apply(
        self, plan: _Plan, decisions: builtins.list[Decision], db_transact: bool
    ) -> builtins.list[Decision]:
        """Carry out the applicable decisions; return every decision as it finally stands."""
        final = {decision.task_id: decision for decision in decisions}
        ids = sorted((d.task_id for d in decisions if d.error is None), key=_id_order)
        chunks = _chunks(ids, self.settings.batch_chunk_size)
        if db_transact:
            try:
                async with self.engine.begin() as conn:
                    for chunk in chunks:
                        final.update(await self._apply_chunk(conn, plan, chunk, final))
                    _raise_if_any_failed([final[i] for i in ids])
            except (_ChunkFailed, SQLAlchemyError, OSError) as error:
                reason = _rollback_reason(error)
                for task_id in ids:
                    if final[task_id].applies:
                        final[task_id] = final[task_id].failed(reason)
        else:
            for chunk in chunks:
                final.update(await self._apply_own_transaction(plan, chunk, final))
        return [final[decision.task_id] for decision in decisions]

    async def _apply_own_transaction(
        self, plan: _Plan, chunk: Sequence[UUID], planned: dict[UUID, Decision]
    ) -> dict[UUID, Decision]:
        """Commit one chunk; if its transaction fails, retry its tasks one by one so that only
        the task at fault fails (the slow path runs only after an error)."""
        try:
            async with self.engine.begin() as conn:
                return await self._apply_chunk(conn, plan, chunk, planned)
        except (SQLAlchemyError, OSError) as error:
            if len(chunk) == 1:
                reason = f"database error ({type(error).__name__}); not changed"
                return {chunk[0]: planned[chunk[0]].failed(reason)}
        outcome: dict[UUID, Decision] = {}
        for task_id in chunk:
            outcome.update(await self._apply_own_transaction(plan, [task_id], planned))
        return outcome

    async def _apply_chunk(
        self,
        conn: AsyncConnection,
        plan: _Plan,
        chunk: Sequence[UUID],
        planned: dict[UUID, Decision],
    ) -> dict[UUID, Decision]:
        """Lock the chunk's rows in id order, decide again on what is locked, do the store side,
        then one UPDATE per effect. Store objects go before the record changes (clean's crash
        window). (One statement locking and updating through a CTE was measured slower on
        PostgreSQL 15 than the two.)"""
        decisions = plan.redecide(await queries.lock_tasks(conn, chunk), planned, chunk)
        await self._apply_store_effects(decisions)
        by_effect: dict[DbEffect, list[UUID]] = {}
        for decision in decisions.values():
            if decision.applies and decision.db_effect is not None:
                by_effect.setdefault(decision.db_effect, []).append(decision.task_id)
        for db_effect, effect_ids in by_effect.items():
            await _DB_EFFECTS[db_effect](conn, effect_ids)
        return decisions

    async def _apply_store_effects(self, decisions: dict[UUID, Decision]) -> None:
        effects = {
            task_id: decision.store_effect
            for task_id, decision in decisions.items()
            if decision.applies and decision.store_effect is not None
        }
        if not effects:
            return

        async def run(task_id: UUID) -> None:
            if effects[task_id] is StoreEffect.DELETE_LOCK:
                await self.store.delete_lock(task_id)
            else:
                await self.store.delete_task(task_id)

        results = await self.store.for_each(effects, run)
        for task_id, result in results.items():
            if isinstance(result, BaseException):
                decisions[task_id] = decisions[task_id].failed(f"store error: {result}")

    def _connect(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return self.database.connect()


def _facts(
    lock_read: TaskParts | BaseException, object_read: TaskParts | BaseException | None
) -> StoreFacts:
    """StoreFacts from read_many's answers (object_read None: the task object was not read)."""
    for read in (lock_read, object_read):
        if isinstance(read, BaseException) and not isinstance(read, StoreError):
            # The store did not answer: treat the task as locked so that nothing acts on it.
            return StoreFacts(lock_error=f"store unreachable: {read}")
    lock, lock_error = None, None
    if isinstance(lock_read, StoreError):
        lock_error = str(lock_read)
    elif isinstance(lock_read, tuple):
        lock = lock_read[2]
    missing, object_error = False, None
    if isinstance(object_read, StoreError):
        object_error = str(object_read)
    elif isinstance(object_read, tuple):
        missing = object_read[0] is None
    return StoreFacts(lock, lock_error, missing, object_error)


class _Plan:
    """What a real run decided on: the action, the selected records, store facts, rules."""

    def __init__(
        self,
        action: BatchAction,
        candidates: Sequence[Candidate],
        facts: dict[UUID, StoreFacts],
        rules: Rules,
    ) -> None:
        self.action = action
        self.candidates = {candidate.id: candidate for candidate in candidates}
        self.facts = facts
        self.rules = rules

    def redecide(
        self, locked_rows: Sequence[Any], planned: dict[UUID, Decision], chunk: Sequence[UUID]
    ) -> dict[UUID, Decision]:
        """Decisions on the row-locked records; a record unchanged since it was selected keeps
        its planned decision (the rules are pure), so only changed ones are decided again."""
        decide = actions.DECIDE[self.action]
        decisions: dict[UUID, Decision] = {}
        for row in locked_rows:
            task = Candidate.from_row(row)
            if task == self.candidates.get(task.id):
                decisions[task.id] = planned[task.id]
            else:
                decisions[task.id] = decide(task, self.facts.get(task.id, NO_FACTS), self.rules)
        for task_id in chunk:
            if task_id not in decisions:  # deleted by hand since it was selected
                decisions[task_id] = actions.not_found(task_id)
        return decisions


class _ChunkFailed(Exception):
    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.error)
        self.decision = decision


def _raise_if_any_failed(decisions: Sequence[Decision]) -> None:
    """All or nothing: one task whose store side failed rolls the whole batch back."""
    for decision in decisions:
        if decision.error is not None and decision.error.startswith("store error"):
            raise _ChunkFailed(decision)


def _rollback_reason(error: BaseException) -> str:
    if isinstance(error, _ChunkFailed):
        return (
            f"not applied: task {error.decision.task_id} failed ({error.decision.error}) "
            "and db_transact rolled the batch back"
        )
    return f"not applied: database error ({type(error).__name__}); the batch was rolled back"


async def _worker_lost(conn: AsyncConnection, ids: Sequence[UUID]) -> int:
    return await queries.mark_worker_lost(conn, ids, "worker lost; unlocked by an operator")


_DB_EFFECTS = {
    DbEffect.CANCEL: queries.cancel_tasks,
    DbEffect.WORKER_LOST: _worker_lost,
    DbEffect.CLEAN: queries.mark_cleaned,
    DbEffect.QUEUE: queries.queue_tasks,
}


@asynccontextmanager
async def service_context(
    *service_classes: type[CheckMateService], settings: Settings | None = None
) -> AsyncIterator[tuple[CheckMateService, ...]]:
    """`async with service_context(CheckMateService) as (service,):` as in the original API."""
    first = await (service_classes[0] if service_classes else CheckMateService).open(settings)
    services = (
        first,
        *(cls(first.engine, first.store, first.settings, first.database_url)
          for cls in service_classes[1:]),
    )
    try:
        yield services
    finally:
        await first.close()
