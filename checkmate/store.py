"""The persistence store: task objects, stage metadata and locks, as JSON on obstore.

Layout, one prefix per task: tasks/<id>/task.json, tasks/<id>/stages/<index>-<name>.json,
tasks/<id>/lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import obstore
import orjson
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    GenericError,
    NotFoundError,
    PreconditionError,
)
from obstore.store import MemoryStore, ObjectStore, S3Store
from pydantic import BaseModel, ValidationError

from checkmate.models import StageMetadata, TaskLock, TaskObject
from checkmate.obstore_compat import LocalStore  # its file layout is shared: see there
from checkmate.retry import Backoff, RetriesExhausted, retry_call

if TYPE_CHECKING:
    from obstore.store import RetryConfig

T = TypeVar("T")
# A task's objects as read_many returns them: task object, stage metadata, lock.
TaskParts = tuple["TaskObject | None", "list[StageMetadata]", "TaskLock | None"]


# S3's DeleteObjects takes at most 1,000 keys a request.
BULK_DELETE_KEYS = 1000


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


# obstore (object_store) retries 5xx answers (503 SlowDown included), connection errors and
# timeouts of idempotent requests itself, for up to STORE_RETRY_SECONDS.
STORE_RETRY_SECONDS = 60.0
_OBSTORE_RETRY: RetryConfig = {
    "max_retries": 15,
    "backoff": {"init_backoff": timedelta(milliseconds=50), "max_backoff": timedelta(seconds=5)},
    "retry_timeout": timedelta(seconds=STORE_RETRY_SECONDS),
}
# What it leaves to us: 429 Too Many Requests, a timeout of a request it does not deem
# idempotent (a create-only put), a body cut off after the headers, and its own give-up on a
# 5xx. The message is all obstore's GenericError carries.
_TRANSIENT = re.compile(
    r"\b(429|5\d\d)\b|too many requests|slow ?down|timed? ?out|connection (reset|closed|refused)"
    r"|broken pipe|error sending request|error decoding response body|incomplete ?message",
    re.IGNORECASE,
)


def transient_store_error(error: BaseException) -> bool:
    """True for an error a repeat of the same request may not meet: throttling, a server
    error, a timeout, a dropped connection. False for what repeating cannot fix: a missing
    object, a refused permission, a failed precondition, a bad path."""
    if isinstance(error, BaseError):
        return isinstance(error, GenericError) and bool(_TRANSIENT.search(str(error)))
    return isinstance(error, ConnectionError | TimeoutError)


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
            client_options={"allow_http": allow_http, "connect_timeout": "5s", "timeout": "30s"},
            retry_config=_OBSTORE_RETRY,
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

    def __init__(
        self, store: ObjectStore, *, concurrency: int = 64, inline_local: bool = False
    ) -> None:
        self.store = store
        self._concurrency = concurrency
        # A local folder's files are read directly by read_many (see there).
        self._local_root: Path | None = store.prefix if isinstance(store, LocalStore) else None
        self._inline_root = str(self._local_root) if inline_local and self._local_root else None

    def inline_local(self) -> TaskStore:
        """This store with a local folder's single-object reads and writes made by plain file
        calls in the calling thread: ~100 us each for a worker's small objects, where an obstore
        call (event loop -> Rust runtime -> event loop) costs ~300 us of CPU. Not for a server:
        a slow disk would stall its event loop."""
        return TaskStore(self.store, concurrency=self._concurrency, inline_local=True)

    @classmethod
    def from_url(cls, url: str, *, concurrency: int = 64) -> TaskStore:
        return cls(open_object_store(url), concurrency=concurrency)

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call` repeated on a transient store error (see transient_store_error) for up to
        STORE_RETRY_SECONDS; then its last error. Only for calls that are safe to repeat."""
        try:
            return await retry_call(
                call,
                max_seconds=STORE_RETRY_SECONDS,
                backoff=Backoff(first=0.1, most=5.0),
                retryable=transient_store_error,
            )
        except RetriesExhausted as exhausted:
            raise exhausted.__cause__ or exhausted from None

    async def _get(self, path: str) -> bytes | None:
        if self._inline_root is not None:
            return _read_file(Path(self._inline_root), path)

        async def get() -> bytes | None:
            try:
                result = await obstore.get_async(self.store, path)
                return bytes(await result.bytes_async())
            except (NotFoundError, FileNotFoundError):
                return None

        return await self._retrying(get)

    async def _put(self, path: str, payload: bytes, *, create: bool = False) -> bool:
        if self._inline_root is not None:
            return _write_local(self._inline_root, path, payload, create=create)

        async def put() -> bool:
            try:
                await obstore.put_async(
                    self.store, path, payload, mode="create" if create else None
                )
            except (AlreadyExistsError, PreconditionError):
                if not create:
                    raise
                # Exists: still ours when an earlier try of this very put landed but its
                # answer was lost (obstore's own retry, or ours).
                return await self._get(path) == payload
            return True

        return await self._retrying(put)

    async def _list(self, prefix: str) -> list[str]:
        async def list_paths() -> list[str]:
            listing = obstore.list(self.store, prefix)
            return [meta["path"] async for batch in listing for meta in batch]

        return await self._retrying(list_paths)

    async def _delete(self, paths: list[str]) -> None:
        if self._inline_root is not None:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self._inline_root, path))
            return

        async def delete(chunk: list[str]) -> None:
            try:
                # One request per chunk on S3 (DeleteObjects), where a missing key is no error.
                await obstore.delete_async(self.store, chunk)
            except (NotFoundError, FileNotFoundError):
                # A local folder reports a missing file (having deleted the others).
                for path in chunk:
                    with contextlib.suppress(NotFoundError, FileNotFoundError):
                        await obstore.delete_async(self.store, path)

        # A bulk delete is idempotent: safe to retry whole.
        for start in range(0, len(paths), BULK_DELETE_KEYS):
            await self._retrying(
                functools.partial(delete, paths[start : start + BULK_DELETE_KEYS])
            )

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
        paths = await self._list(f"{task_prefix(task_id)}/stages/")
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
        """Write the lock only if none exists; False when another holder has it. A create
        whose answer was lost is resolved by reading the lock back: ours if it holds exactly
        what we wrote."""
        return await self._put(lock_path(task_id), _dump(lock), create=True)

    async def put_lock(self, task_id: UUID, lock: TaskLock) -> None:
        await self._put(lock_path(task_id), _dump(lock))

    async def delete_lock(self, task_id: UUID) -> None:
        await self._delete([lock_path(task_id)])

    async def delete_task(self, task_id: UUID) -> None:
        """Delete every object of the task (see delete_tasks)."""
        failed = await self.delete_tasks([task_id])
        if task_id in failed:
            raise failed[task_id]

    async def delete_locks(self, task_ids: Sequence[UUID]) -> None:
        """The lock objects of many tasks, in bulk (1,000 a request on S3)."""
        await self._delete([lock_path(task_id) for task_id in task_ids])

    async def delete_tasks(self, task_ids: Sequence[UUID]) -> dict[UUID, BaseException]:
        """Delete every object of these tasks; return the tasks whose delete failed, with why.
        Each task's prefix is listed (a worker writes the stages its task kind has when it runs,
        which need not be the task object's stage plan, so the plan cannot name them all); then
        two bulk rounds: everything but the task objects, then the task objects. A delete cut
        short still shows a task object while anything else of the task is left."""
        listed = await self.for_each(task_ids, self._paths)
        failed: dict[UUID, BaseException] = {
            tid: error for tid, error in listed.items() if isinstance(error, BaseException)
        }
        kept = [task_id for task_id in task_ids if task_id not in failed]
        last = {task_id: task_path(task_id) for task_id in kept}
        paths = {
            tid: found for tid, found in listed.items() if not isinstance(found, BaseException)
        }
        try:
            await self._delete(
                [path for tid, found in paths.items() for path in found if path != last[tid]]
            )
            await self._delete(list(last.values()))
        except Exception as error:
            failed.update(dict.fromkeys(kept, error))
        return failed

    async def _paths(self, task_id: UUID) -> list[str]:
        prefix = f"{task_prefix(task_id)}/"
        return await self._list(prefix)

    async def read_many(
        self, task_ids: Iterable[UUID], *, task: bool, stages: bool, lock: bool
    ) -> dict[UUID, TaskParts | BaseException]:
        """The objects of many tasks, each part only when asked for (else None or []); a task
        whose read failed gets its error. A local folder is read in one worker thread for all
        of them: through obstore every file is its own round trip between the event loop and
        the Rust runtime (a listing and four reads per task made a 100-task page with metadata
        cost ~100 ms of CPU)."""
        ids = list(task_ids)
        if self._local_root is not None:
            root = self._local_root
            return await asyncio.to_thread(_read_local_many, root, ids, task, stages, lock)

        async def read(task_id: UUID) -> TaskParts:
            task_object, metadata, lock_object = await asyncio.gather(
                self.get_task(task_id) if task else _nothing(),
                self.get_stages(task_id) if stages else _no_stages(),
                self.get_lock(task_id) if lock else _nothing(),
            )
            return task_object, metadata, lock_object

        return await self.for_each(ids, read)

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


async def _nothing() -> None:
    return None


async def _no_stages() -> list[StageMetadata]:
    return []


def _read_file(root: Path, path: str) -> bytes | None:
    try:
        return (root / path).read_bytes()
    except FileNotFoundError:
        return None


def _read_local(root: Path, task_id: UUID, task: bool, stages: bool, lock: bool) -> TaskParts:
    """What get_task, get_stages and get_lock return, from the files of a LocalStore folder."""
    task_object = None
    if task and (raw := _read_file(root, task_path(task_id))) is not None:
        task_object = _load(TaskObject, raw, task_path(task_id))
    lock_object = None
    if lock and (raw := _read_file(root, lock_path(task_id))) is not None:
        lock_object = _load(TaskLock, raw, lock_path(task_id))
    metadata: list[StageMetadata] = []
    if stages:
        prefix = f"{task_prefix(task_id)}/stages"
        try:
            names = sorted(os.listdir(root / prefix))
        except FileNotFoundError:
            names = []
        for name in names:
            # obstore stages a write in a "<name>#<n>" file before renaming it into place.
            path = f"{prefix}/{name}"
            if name.endswith(".json") and (raw := _read_file(root, path)) is not None:
                metadata.append(_load(StageMetadata, raw, path))
        metadata.sort(key=lambda stage: stage.index)
    return task_object, metadata, lock_object


def _read_local_many(
    root: Path, task_ids: list[UUID], task: bool, stages: bool, lock: bool
) -> dict[UUID, TaskParts | BaseException]:
    found: dict[UUID, TaskParts | BaseException] = {}
    for task_id in task_ids:
        try:
            found[task_id] = _read_local(root, task_id, task, stages, lock)
        except Exception as error:
            found[task_id] = error
    return found


def _write_local(root: str, path: str, payload: bytes, *, create: bool) -> bool:
    """Write an object into a LocalStore folder the way obstore does, so that either reads the
    other's files: the bytes go to a "<name>#<digits>" staging file, which listings skip, then
    are renamed into place, or for `create` hard-linked, which fails when the object exists.
    No reader ever sees a partial object. False when `create` found the object."""
    target = os.path.join(root, path)
    staging = f"{target}#{secrets.randbits(62)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(staging, flags, 0o666)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fd = os.open(staging, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
        if create:
            try:
                os.link(staging, target)
            except FileExistsError:
                return False
            return True
        os.replace(staging, target)
        staging = ""
        return True
    finally:
        if staging:
            os.unlink(staging)
