"""The same store tests against every backend: a local folder, memory, and S3 (moto_server on
a loopback port, reached through the AWS_* variables as in production)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import boto3
import obstore
import pytest
from moto.server import ThreadedMotoServer

from checkmate.models import StageMetadata, StageStatus, TaskLock, TaskObject
from checkmate.store import StoreError, TaskStore, lock_path, stage_path, task_path

BUCKET = "checkmate-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=BUCKET
        )
        yield endpoint
    server.stop()


@pytest.fixture(params=["local", "local-inline", "memory", "s3"])
def task_store(request: pytest.FixtureRequest, tmp_path: Path) -> TaskStore:
    if request.param == "local":
        return TaskStore.from_url((tmp_path / "store").as_uri())
    if request.param == "local-inline":  # the worker's: plain file calls, obstore's layout
        return TaskStore.from_url((tmp_path / "store").as_uri()).inline_local()
    if request.param == "memory":
        return TaskStore.from_url("memory://")
    request.getfixturevalue("s3_endpoint")
    # A prefix per test: tests share the bucket, never each other's objects.
    return TaskStore.from_url(f"s3://{BUCKET}/{uuid4().hex}")


def _task(task_id: UUID) -> TaskObject:
    return TaskObject(
        id=task_id,
        name="demo.pipeline",
        queue="default",
        params={"stages": 3, "nested": {"a": [1, 2]}},
        stages=["stage-1", "stage-2", "stage-3"],
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def _lock(owner: str, age: float = 0.0) -> TaskLock:
    at = datetime.now(UTC) - timedelta(seconds=age)
    return TaskLock(owner=owner, host="host", pid=1, acquired_at=at, heartbeat_at=at)


async def test_task_object_roundtrip(task_store: TaskStore) -> None:
    task_id = uuid4()
    assert await task_store.get_task(task_id) is None
    await task_store.put_task(_task(task_id))
    assert await task_store.get_task(task_id) == _task(task_id)


async def test_stages_come_back_in_order(task_store: TaskStore) -> None:
    task_id = uuid4()
    # Written out of order, and past index 9 so that a plain string sort would misorder them.
    for index in [10, 2, 0, 9, 1]:
        await task_store.put_stage(
            task_id, StageMetadata(index=index, name=f"s{index}", status=StageStatus.COMPLETED)
        )
    # Rewriting a stage (start, then end) replaces its object.
    await task_store.put_stage(
        task_id, StageMetadata(index=2, name="s2", status=StageStatus.ERROR, error="boom")
    )
    stages = await task_store.get_stages(task_id)
    assert [stage.index for stage in stages] == [0, 1, 2, 9, 10]
    assert (stages[2].status, stages[2].error) == (StageStatus.ERROR, "boom")
    assert await task_store.get_stages(uuid4()) == []


async def test_create_lock_is_atomic(task_store: TaskStore) -> None:
    task_id = uuid4()
    results = await asyncio.gather(
        *(task_store.create_lock(task_id, _lock(f"worker-{n}")) for n in range(5))
    )
    assert sorted(results) == [False, False, False, False, True]
    winner = f"worker-{results.index(True)}"
    lock = await task_store.get_lock(task_id)
    assert lock is not None
    assert lock.owner == winner
    assert await task_store.create_lock(task_id, _lock("late")) is False
    # A heartbeat rewrites the holder's lock; after a delete the lock can be created again.
    await task_store.put_lock(task_id, _lock(winner))
    await task_store.delete_lock(task_id)
    assert await task_store.get_lock(task_id) is None
    assert await task_store.create_lock(task_id, _lock("next")) is True


async def test_stale_lock(task_store: TaskStore) -> None:
    task_id = uuid4()
    await task_store.put_lock(task_id, _lock("w", age=120))
    lock = await task_store.get_lock(task_id)
    assert lock is not None
    now = datetime.now(UTC)
    assert lock.is_stale(now, lock_timeout=60)
    assert not lock.is_stale(now, lock_timeout=600)


async def test_delete_task_removes_everything_of_that_task_only(task_store: TaskStore) -> None:
    task_id, other = uuid4(), uuid4()
    for tid in (task_id, other):
        await task_store.put_task(_task(tid))
        await task_store.put_lock(tid, _lock("w"))
        for index in range(3):
            await task_store.put_stage(
                tid, StageMetadata(index=index, name=f"stage-{index + 1}", status="COMPLETED")
            )

    await task_store.delete_task(task_id)
    await task_store.delete_task(uuid4())  # nothing there: not an error

    assert await task_store.get_task(task_id) is None
    assert await task_store.get_stages(task_id) == []
    assert await task_store.get_lock(task_id) is None
    listed = [m["path"] async for batch in obstore.list(task_store.store) for m in batch]
    assert not [path for path in listed if str(task_id) in path]
    assert await task_store.get_task(other) == _task(other)
    assert len(await task_store.get_stages(other)) == 3


@pytest.mark.parametrize(
    ("path_of", "read"),
    [
        (task_path, "get_task"),
        (lock_path, "get_lock"),
        (lambda tid: stage_path(tid, 0, "stage-1"), "get_stages"),
    ],
)
@pytest.mark.parametrize("payload", [b"{not json", b'{"unexpected": "shape"}', b""])
async def test_corrupt_objects_raise_store_error(
    task_store: TaskStore, path_of: object, read: str, payload: bytes
) -> None:
    task_id = uuid4()
    path = path_of(task_id)  # type: ignore[operator]
    await obstore.put_async(task_store.store, path, payload)
    with pytest.raises(StoreError) as raised:
        await getattr(task_store, read)(task_id)
    assert path in str(raised.value)


async def test_for_each_returns_errors_per_task(task_store: TaskStore) -> None:
    good, bad = uuid4(), uuid4()
    await task_store.put_task(_task(good))
    await obstore.put_async(task_store.store, task_path(bad), b"[]")
    results = await task_store.for_each([good, bad], task_store.get_task)
    assert results[good] == _task(good)
    assert isinstance(results[bad], StoreError)


def test_unsupported_url() -> None:
    with pytest.raises(ValueError, match="unsupported store URL"):
        TaskStore.from_url("ftp://example/x")


async def test_read_many_answers_like_the_single_reads(task_store: TaskStore) -> None:
    """read_many (one worker thread over a local folder, concurrent reads elsewhere) returns
    exactly what get_task, get_stages and get_lock return, only the parts asked for, and a
    corrupt object as that task's StoreError."""
    full, bare, corrupt = uuid4(), uuid4(), uuid4()
    await task_store.put_task(_task(full))
    await task_store.put_lock(full, _lock("w"))
    for index in [10, 0, 2]:
        await task_store.put_stage(
            full, StageMetadata(index=index, name=f"s{index}", status=StageStatus.COMPLETED)
        )
    await task_store.put_task(_task(corrupt))
    await obstore.put_async(task_store.store, stage_path(corrupt, 1, "s1"), b"{not json")

    everything = await task_store.read_many(
        [full, bare, corrupt], task=True, stages=True, lock=True
    )
    assert everything[full] == (
        await task_store.get_task(full),
        await task_store.get_stages(full),
        await task_store.get_lock(full),
    )
    assert [stage.index for stage in everything[full][1]] == [0, 2, 10]  # type: ignore[index]
    assert everything[bare] == (None, [], None)
    assert isinstance(everything[corrupt], StoreError)
    assert stage_path(corrupt, 1, "s1") in str(everything[corrupt])

    lock_only = await task_store.read_many([full, corrupt], task=False, stages=False, lock=True)
    assert lock_only[full] == (None, [], await task_store.get_lock(full))
    assert lock_only[corrupt] == (None, [], None)  # its broken stage was not read


async def test_inline_local_and_obstore_share_one_folder(tmp_path: Path) -> None:
    """The worker writes a local folder with plain file calls, the API reads it through obstore
    (and the other way round): same objects, one lock between them, no staging files left."""
    via_obstore = TaskStore.from_url((tmp_path / "store").as_uri())
    inline = via_obstore.inline_local()
    task_id = uuid4()
    await inline.put_task(_task(task_id))
    for writer, index in [(inline, 0), (via_obstore, 1)]:
        stage = StageMetadata(index=index, name=f"stage-{index + 1}", status=StageStatus.RUNNING)
        await writer.put_stage(task_id, stage)
    assert await via_obstore.get_task(task_id) == _task(task_id)
    for reader in (via_obstore, inline):
        assert [stage.name for stage in await reader.get_stages(task_id)] == ["stage-1", "stage-2"]
    assert await inline.create_lock(task_id, _lock("worker")) is True
    assert await via_obstore.create_lock(task_id, _lock("other")) is False
    await via_obstore.delete_lock(task_id)
    assert await inline.create_lock(task_id, _lock("next")) is True
    assert await inline.create_lock(task_id, _lock("late")) is False
    files = sorted(p.name for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert files == ["0000-stage-1.json", "0001-stage-2.json", "lock", "task.json"]
