"""CheckMateService: list, get, create and the batch actions cancel, unlock, clean, invoke.

Every public method checks its arguments (checkmate.arguments) before any database work; the
batch engine is checkmate.batch.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar, Unpack
from uuid import UUID, uuid4

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from checkmate import arguments, metrics
from checkmate.access import LOCAL_ACTOR
from checkmate.actions import BatchAction
from checkmate.arguments import FilterArgs, TaskIds
from checkmate.audit import AuditPage, AuditRecord, check_reason, read_audit_page
from checkmate.batch import BatchResults, BatchRunner
from checkmate.db import queries
from checkmate.db.database import Database
from checkmate.db.engine import create_engine, resolve_database_url, stop_embedded
from checkmate.db.migrate import upgrade
from checkmate.errors import Arg, ServiceError
from checkmate.models import (
    CheckMateTask,
    SortOrder,
    StageStatus,
    TaskFilter,
    TaskObject,
    TaskPage,
)
from checkmate.objects import OBJECT_PARTS, ObjectPart, ObjectReader, TaskObjects
from checkmate.records import columns_for, decode_cursor, encode_cursor, tasks_from_rows
from checkmate.selection import BatchOptions, Selection, describe
from checkmate.settings import Settings, get_settings
from checkmate.stage_cache import StageCache, Version
from checkmate.store import TaskStore
from checkmate.tasks import TaskKindError, get_kind, import_task_modules

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = [
    "BatchOptions",
    "BatchResults",
    "CheckMateService",
    "Selection",
    "ServiceError",
    "service_context",
]


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
        self.stage_cache = StageCache(settings.stage_cache_size)
        self.objects = ObjectReader(store, self.stage_cache, settings.lock_timeout)
        metrics.track_pool(engine)

    @classmethod
    async def open(cls, settings: Settings | None = None) -> CheckMateService:
        """Connect to the configured database (or start the embedded one) and the store."""
        settings = settings or get_settings()
        import_task_modules(settings.task_modules)
        url = await asyncio.to_thread(resolve_database_url, settings)
        engine = create_engine(
            url, pool_size=settings.db_pool_size, statement_timeout=settings.statement_timeout
        )
        if settings.database_url is None:
            await upgrade(engine)
        store_url = settings.store_url or (settings.resolved_data_dir / "store").as_uri()
        store = TaskStore.from_url(store_url, concurrency=settings.store_concurrency)
        return cls(engine, store, settings, url)

    async def close(self) -> None:
        await self.database.dispose()
        if self.settings.database_url is None:
            await asyncio.to_thread(stop_embedded, self.settings.resolved_data_dir)

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
        checked = arguments.checked_filter(task_filter)
        order = arguments.sort_order(sort)
        limit = arguments.max_results(max_results, self.settings.max_results_cap)
        keyset = None if after is None else decode_cursor(after)
        with_objects = arguments.flag("include_metadata", include_metadata)
        columns = None if fields is None else columns_for(arguments.texts("fields", fields) or ())
        rows = await self._read(
            lambda conn: queries.select_tasks(
                conn, checked, sort=order, limit=limit + 1, after=keyset, columns=columns
            )
        )
        tasks = tasks_from_rows(rows[:limit])
        if with_objects:
            await self.objects.attach(tasks)
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
    ) -> builtins.list[CheckMateTask]:
        """Tasks matching every given filter, newest first unless sort="asc"."""
        task_filter = arguments.task_filter(
            cleaned=cleaned, status=status, statuses=statuses, queue=queue, tags=tags,
            since=since, until=until, name=name,
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
        checked = arguments.checked_filter(task_filter)
        return await self._read(lambda conn: queries.count_tasks(conn, checked))

    async def count_by_status(
        self, task_filter: TaskFilter | None = None
    ) -> dict[StageStatus, int]:
        checked = arguments.checked_filter(task_filter)
        counts = await self._read(lambda conn: queries.count_tasks_by_status(conn, checked))
        return {StageStatus(status): count for status, count in counts}

    async def find(
        self, task_id: str | UUID, include_metadata: bool = True
    ) -> CheckMateTask | None:
        """The task, or None when no task has that id; ServiceError for a malformed id."""
        parsed = arguments.task_id(task_id)
        with_objects = arguments.flag("include_metadata", include_metadata)
        row = await self._read(lambda conn: queries.select_task(conn, parsed))
        if row is None:
            return None
        [task] = tasks_from_rows([row])
        if with_objects:
            await self.objects.attach([task])
        return task

    async def get(self, task_id: str | UUID, include_metadata: bool = True) -> CheckMateTask:
        """The task with its metadata and lock; ServiceError if it does not exist."""
        task = await self.find(task_id, include_metadata)
        if task is None:
            raise ServiceError(f"no task has id {task_id}", code=ServiceError.NOT_FOUND)
        return task

    async def read_objects(
        self,
        task_ids: Sequence[UUID],
        parts: Collection[ObjectPart] = OBJECT_PARTS,
        versions: Mapping[UUID, Version] | None = None,
    ) -> dict[UUID, TaskObjects | BaseException]:
        """Store objects of many tasks (checkmate.objects.ObjectReader.read says how)."""
        return await self.objects.read(task_ids, parts, versions)

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
        *,
        actor: str = LOCAL_ACTOR,
        reason: str | None = None,
    ) -> CheckMateTask:
        """Record a task of a registered kind and write its task object; QUEUED if invoke.
        Its audit row (actor, reason) is written in the transaction of the record."""
        arguments.text("name", name, empty=False)
        arguments.text("queue", queue, empty=False)
        tag_list = list(arguments.texts("tags", tags) or ())
        raw_params = arguments.params(params)
        queued = arguments.flag("invoke", invoke)
        audit = AuditRecord(
            "CREATE", {"name": name, "queue": queue, "invoke": queued},
            arguments.text("actor", actor), check_reason(reason),
        )
        try:
            kind = get_kind(name)
        except TaskKindError as error:
            raise ServiceError(Arg("name"), f": {error}") from None
        try:
            clean_params = kind.validate_params(raw_params)
        except TaskKindError as error:
            raise ServiceError(Arg("params", error.path), f": {error}") from None
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
        values: dict[str, Any] = {"id": task_id, "name": name, "queue": queue, "tags": tag_list}
        if queued:
            values |= {"status": StageStatus.QUEUED.value, "attempts": 1}
        try:
            async with self._connect() as conn:
                row = await queries.insert_task(conn, values)
                await audit.open(conn, succeeded=[task_id])
                await conn.commit()
        except BaseException:
            await self.store.delete_task(task_id)
            raise
        [task] = tasks_from_rows([row])
        task.params, task.metadata, task.lock_detected = clean_params, [], False
        return task

    # --- batch actions: keyword arguments of the original API, one Selection and options ---

    async def cancel(
        self,
        task_ids: TaskIds = None,
        *,
        sort: SortOrder = "desc",
        max_results: int | None = 100,
        dry_run: bool = True,
        db_transact: bool = True,
        task_filter: TaskFilter | None = None,
        actor: str = LOCAL_ACTOR,
        reason: str | None = None,
        **filters: Unpack[FilterArgs],
    ) -> BatchResults:
        """Set non-terminal tasks to CANCELED; terminal tasks go to failed, unchanged."""
        selection = self.select(
            task_ids, task_filter, sort=sort, max_results=max_results, **filters
        )
        options = BatchOptions.build(dry_run=dry_run, db_transact=db_transact)
        return await self.run_batch(
            BatchAction.CANCEL, selection, options, actor=actor, reason=reason
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
        actor: str = LOCAL_ACTOR,
        reason: str | None = None,
        **filters: Unpack[FilterArgs],
    ) -> BatchResults:
        """Delete lock objects; a RUNNING task whose worker is lost becomes ERROR."""
        selection = self.select(
            task_ids, task_filter, sort=sort, max_results=max_results, **filters
        )
        options = BatchOptions.build(dry_run=dry_run, db_transact=db_transact, force=force)
        return await self.run_batch(
            BatchAction.UNLOCK, selection, options, actor=actor, reason=reason
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
        actor: str = LOCAL_ACTOR,
        reason: str | None = None,
        **filters: Unpack[FilterArgs],
    ) -> BatchResults:
        """Delete the store objects of terminal, unlocked tasks, then mark them cleaned."""
        selection = self.select(
            task_ids, task_filter, sort=sort, max_results=max_results, **filters
        )
        options = BatchOptions.build(dry_run=dry_run, db_transact=db_transact)
        results = await self.run_batch(
            BatchAction.CLEAN, selection, options, actor=actor, reason=reason
        )
        if not options.dry_run:
            # Their objects may be gone even where the record update failed (stage_cache).
            self.stage_cache.evict(UUID(str(result.task_id)) for part in results for result in part)
        return results

    async def invoke(
        self,
        task_ids: TaskIds = None,
        *,
        sort: SortOrder = "desc",
        max_results: int | None = 100,
        dry_run: bool = True,
        db_transact: bool = True,
        task_filter: TaskFilter | None = None,
        actor: str = LOCAL_ACTOR,
        reason: str | None = None,
        **filters: Unpack[FilterArgs],
    ) -> BatchResults:
        """Queue CREATED, ERROR and CANCELED tasks for a worker (attempts + 1)."""
        selection = self.select(
            task_ids, task_filter, sort=sort, max_results=max_results, **filters
        )
        options = BatchOptions.build(dry_run=dry_run, db_transact=db_transact)
        return await self.run_batch(
            BatchAction.INVOKE, selection, options, actor=actor, reason=reason
        )

    def select(
        self,
        task_ids: TaskIds = None,
        task_filter: TaskFilter | None = None,
        *,
        sort: SortOrder = "desc",
        max_results: int | None = 100,
        **filters: Unpack[FilterArgs],
    ) -> Selection:
        """The Selection of a batch, every argument checked; ServiceError names a wrong one."""
        return Selection.build(
            task_ids, task_filter, filters, sort=sort, max_results=max_results,
            cap=self.settings.max_results_cap,
        )

    async def run_batch(
        self,
        action: BatchAction,
        selection: Selection,
        options: BatchOptions,
        *,
        actor: str = LOCAL_ACTOR,
        reason: str | None = None,
    ) -> BatchResults:
        """Run `action` over an already built selection (see `select`); a real run writes its
        audit row (checkmate.audit)."""
        audit = AuditRecord(
            action.value, describe(selection, options), arguments.text("actor", actor),
            check_reason(reason),
        )
        runner = BatchRunner(self.engine, self._connect, self.store, self.settings)
        try:
            succeeded, failed = await runner.run(action, selection, options, audit)
        except ServiceError as error:
            metrics.record_batch(action.value, options.dry_run, error.code)
            raise
        except BaseException:
            metrics.record_batch(action.value, options.dry_run, ServiceError.INTERNAL)
            raise
        metrics.record_batch(action.value, options.dry_run, "ok", succeeded, failed)
        return succeeded, failed

    # --- the audit trail -------------------------------------------------------------------

    async def audit_log(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        action: str | None = None,
        actor: str | None = None,
        max_results: int | None = 100,
        after: str | None = None,
    ) -> AuditPage:
        """The audit trail, newest first (see checkmate.audit)."""
        return await read_audit_page(
            self.engine,
            since=arguments.moment("since", since),
            until=arguments.moment("until", until),
            action=arguments.optional_text("action", action),
            actor=arguments.optional_text("actor", actor),
            max_results=arguments.max_results(max_results, self.settings.max_results_cap),
            after=arguments.optional_text("after", after),
        )

    async def _read(self, read: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        return await self.database.read(read)

    def _connect(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return self.database.connect()



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
