"""The persistence store: task objects, stage metadata and locks, as JSON on obstore.

Layout, one prefix per task: tasks/<id>/task.json, tasks/<id>/stages/<index>-<name>.json,
tasks/<id>/lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import obstore
import orjson
from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError
from obstore.store import LocalStore, MemoryStore, ObjectStore, S3Store
from pydantic import BaseModel, ValidationError

from checkmate.models import StageMetadata, TaskLock, TaskObject

T = TypeVar("T")


class StoreError(Exception):
    """An object exists but cannot be used (corrupt JSON, wrong shape), or the store failed."""


def task_prefix(task_id: UUID) -> str:
    return f"tasks/{task_id}"


def task_path(task_id: UUID) -> str:
    return f"{task_prefix(task_id)}/task.json"


def lock_path(task_id: UUID) -> str:
    return f"{task_prefix(task_id)}/lock"


def stage_path(task_id: UUID, index: int, name: str) -> str:
    # Zero-padded so that a plain listing comes back in stage order.
    return f"{task_prefix(task_id)}/stages/{index:04d}-{name}.json"


def open_object_store(url: str) -> ObjectStore:
    """An obstore store for file:///..., memory:// or s3://bucket/prefix (AWS_* from env)."""
    if url.startswith("memory:"):
        return MemoryStore()
    if url.startswith("file:"):
        path = Path(url.removeprefix("file://"))
        path.mkdir(parents=True, exist_ok=True)
        return LocalStore(path)
    if url.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        allow_http = os.environ.get("AWS_ALLOW_HTTP", "").lower() in {"1", "true", "yes"} or (
            endpoint is not None and endpoint.startswith("http://")
        )
        config: dict[str, Any] = {}
        if endpoint:
            config["endpoint"] = endpoint
        return S3Store.from_url(
            url,
            config=config,  # type: ignore[arg-type]
            client_options={"allow_http": allow_http},
        )
    raise ValueError(f"unsupported store URL {url!r}: use file:///path, memory:// or s3://bucket")


def _dump(model: BaseModel) -> bytes:
    return orjson.dumps(model.model_dump(mode="json"))


def _load(model: type[BaseModel], raw: bytes, path: str) -> Any:
    try:
        return model.model_validate(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValidationError) as error:
        raise StoreError(f"{path} is not a valid {model.__name__} object") from error


class TaskStore:
    """Typed access to one task's objects; many tasks' reads run concurrently, bounded."""

    def __init__(self, store: ObjectStore, *, concurrency: int = 64) -> None:
        self.store = store
        self._concurrency = concurrency

    @classmethod
    def from_url(cls, url: str, *, concurrency: int = 64) -> TaskStore:
        return cls(open_object_store(url), concurrency=concurrency)

    async def _get(self, path: str) -> bytes | None:
        try:
            result = await obstore.get_async(self.store, path)
            return bytes(await result.bytes_async())
        except (NotFoundError, FileNotFoundError):
            return None

    async def _put(self, path: str, payload: bytes, *, create: bool = False) -> bool:
        try:
            await obstore.put_async(self.store, path, payload, mode="create" if create else None)
        except (AlreadyExistsError, PreconditionError):
            return False
        return True

    async def _delete(self, paths: list[str]) -> None:
        for path in paths:
            with contextlib.suppress(NotFoundError, FileNotFoundError):
                await obstore.delete_async(self.store, path)

    async def ping(self) -> None:
        """Raise if the store cannot be listed (used by readiness checks)."""
        stream = obstore.list(self.store, "tasks/", chunk_size=1)
        async for _ in stream:
            break

    async def put_task(self, task: TaskObject) -> None:
        await self._put(task_path(task.id), _dump(task))

    async def get_task(self, task_id: UUID) -> TaskObject | None:
        """The task object, None when missing; StoreError when it cannot be parsed."""
        path = task_path(task_id)
        raw = await self._get(path)
        return None if raw is None else _load(TaskObject, raw, path)

    async def put_stage(self, task_id: UUID, stage: StageMetadata) -> None:
        await self._put(stage_path(task_id, stage.index, stage.name), _dump(stage))

    async def get_stages(self, task_id: UUID) -> list[StageMetadata]:
        prefix = f"{task_prefix(task_id)}/stages/"
        paths = [meta["path"] async for batch in obstore.list(self.store, prefix) for meta in batch]
        raws = await asyncio.gather(*(self._get(path) for path in paths))
        stages = [
            _load(StageMetadata, raw, path)
            for path, raw in zip(paths, raws, strict=True)
            if raw is not None
        ]
        return sorted(stages, key=lambda stage: stage.index)

    async def get_lock(self, task_id: UUID) -> TaskLock | None:
        path = lock_path(task_id)
        raw = await self._get(path)
        return None if raw is None else _load(TaskLock, raw, path)

    async def create_lock(self, task_id: UUID, lock: TaskLock) -> bool:
        """Write the lock only if none exists; False when another holder has it."""
        return await self._put(lock_path(task_id), _dump(lock), create=True)

    async def put_lock(self, task_id: UUID, lock: TaskLock) -> None:
        await self._put(lock_path(task_id), _dump(lock))

    async def delete_lock(self, task_id: UUID) -> None:
        await self._delete([lock_path(task_id)])

    async def delete_task(self, task_id: UUID) -> None:
        """Delete every object of the task: stage metadata first, the task object last, so that
        an interrupted delete still shows a task object while anything else is left."""
        prefix = f"{task_prefix(task_id)}/"
        paths = [meta["path"] async for batch in obstore.list(self.store, prefix) for meta in batch]
        last = task_path(task_id)
        await self._delete([path for path in paths if path != last])
        await self._delete([last])

    async def for_each(
        self, task_ids: Iterable[UUID], read: Callable[[UUID], Awaitable[T]]
    ) -> dict[UUID, T | BaseException]:
        """Run `read` for every task, at most `concurrency` at a time; errors are returned."""
        semaphore = asyncio.Semaphore(self._concurrency)

        async def one(task_id: UUID) -> T | BaseException:
            async with semaphore:
                try:
                    return await read(task_id)
                except Exception as error:
                    return error

        ids = list(task_ids)
        results = await asyncio.gather(*(one(task_id) for task_id in ids))
        return dict(zip(ids, results, strict=True))
