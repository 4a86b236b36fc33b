"""Every public service method rejects a wrong argument with BAD_USER_INPUT naming it, before any
database work: the service under test points at a database that does not exist, so a check that
came after a connection would answer UNAVAILABLE instead."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest
from pydantic import BaseModel, ConfigDict

from checkmate.models import StageStatus, TaskFilter
from checkmate.service import CheckMateService, ServiceError
from checkmate.settings import Settings
from checkmate.tasks import TaskKind, TaskKindError

NAIVE = datetime(2026, 1, 1)
GOOD_ID = str(uuid4())
ACTIONS = ["cancel", "unlock", "clean", "invoke"]

# (keyword arguments, the argument the error must name, a fragment of what it accepts)
SELECTION_CASES: list[tuple[dict[str, Any], str, str]] = [
    ({"sort": "sideways"}, "sort", "'asc' or 'desc'"),
    ({"sort": None}, "sort", "'asc' or 'desc'"),
    ({"sort": 1}, "sort", "'asc' or 'desc'"),
    ({"max_results": 0}, "max_results", "between 1 and 10000"),
    ({"max_results": 10_001}, "max_results", "between 1 and 10000"),
    ({"max_results": -5}, "max_results", "between 1 and 10000"),
    ({"max_results": 2**70}, "max_results", "between 1 and 10000"),
    ({"max_results": "10"}, "max_results", "integer"),
    ({"max_results": 2.5}, "max_results", "integer"),
    ({"max_results": True}, "max_results", "integer"),
    ({"status": "DONE"}, "status", "CREATED, QUEUED, RUNNING, COMPLETED, ERROR, CANCELED"),
    ({"status": 3}, "status", "CREATED"),
    ({"statuses": "CREATED"}, "statuses", "list"),
    ({"statuses": ["CREATED", "NOPE"]}, "statuses", "CANCELED"),
    ({"tags": "nightly"}, "tags", "list"),
    ({"tags": ["ok", 7]}, "tags", "string"),
    ({"tags": ["a\x00b"]}, "tags", "NUL"),
    ({"queue": 5}, "queue", "string"),
    ({"queue": "a\x00b"}, "queue", "NUL"),
    ({"queue": "a\ud800b"}, "queue", "surrogate"),
    ({"name": "demo\x00"}, "name", "NUL"),
    ({"since": NAIVE}, "since", "UTC offset"),
    ({"since": "2026-01-01T00:00:00+00:00"}, "since", "datetime"),
    ({"until": NAIVE}, "until", "UTC offset"),
    ({"cleaned": "no"}, "cleaned", "True or False"),
    ({"cleaned": 0}, "cleaned", "True or False"),
]
BATCH_CASES: list[tuple[dict[str, Any], str, str]] = [
    ({"task_ids": ["not-a-uuid"]}, "task_ids", "UUID"),
    ({"task_ids": [f"{GOOD_ID}\x00"]}, "task_ids", "NUL"),
    ({"task_ids": 42}, "task_ids", "list"),
    ({"dry_run": "false"}, "dry_run", "True or False"),
    ({"dry_run": 0}, "dry_run", "True or False"),
    ({"dry_run": None}, "dry_run", "True or False"),
    ({"db_transact": 1}, "db_transact", "True or False"),
    ({"task_filter": {"queue": "x"}}, "task_filter", "TaskFilter"),
    ({"task_filter": TaskFilter(queue="a\x00")}, "queue", "NUL"),
]


@pytest.fixture
async def service() -> AsyncIterator[CheckMateService]:
    """A service whose database cannot be reached (port 9 on loopback refuses)."""
    settings = Settings(
        database_url="postgresql://checkmate@127.0.0.1:9/nowhere", store_url="memory://"
    )
    service = await CheckMateService.open(settings)
    yield service
    await service.close()


async def _refused(call: Any, argument: str, fragment: str) -> ServiceError:
    with pytest.raises(ServiceError) as raised:
        await call
    error = raised.value
    assert error.code == ServiceError.BAD_USER_INPUT, error.message
    assert error.argument == argument, error.message
    assert error.message.startswith(argument) or f" {argument} " in error.message, error.message
    assert fragment in error.message, error.message
    return error


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize(("kwargs", "argument", "fragment"), SELECTION_CASES + BATCH_CASES)
async def test_batch_actions_reject_each_wrong_argument(
    service: CheckMateService, action: str, kwargs: dict[str, Any], argument: str, fragment: str
) -> None:
    selection: dict[str, Any] = {"task_ids": [GOOD_ID]}
    await _refused(
        getattr(service, action)(**{**selection, "dry_run": False, **kwargs}), argument, fragment
    )


async def test_unlock_rejects_a_force_that_is_not_a_bool(service: CheckMateService) -> None:
    await _refused(service.unlock([GOOD_ID], force="yes"), "force", "True or False")


@pytest.mark.parametrize(
    ("kwargs", "argument", "fragment"),
    [
        *SELECTION_CASES,
        ({"after": "garbage"}, "after", "cursor"),
        ({"after": "a\x00b"}, "after", "NUL"),
        ({"after": 5}, "after", "string"),
        ({"include_metadata": "yes"}, "include_metadata", "True or False"),
    ],
)
async def test_list_rejects_each_wrong_argument(
    service: CheckMateService, kwargs: dict[str, Any], argument: str, fragment: str
) -> None:
    await _refused(service.list(**kwargs), argument, fragment)


@pytest.mark.parametrize(
    ("kwargs", "argument", "fragment"),
    [
        ({"task_filter": "queue=x"}, "task_filter", "TaskFilter"),
        ({"task_filter": TaskFilter(tags=("x\x00",))}, "tags", "NUL"),
        ({"sort": "DESCENDING"}, "sort", "'asc' or 'desc'"),
        ({"max_results": 0}, "max_results", "between"),
        ({"after": "garbage"}, "after", "cursor"),
        ({"include_metadata": None}, "include_metadata", "True or False"),
        ({"fields": "id"}, "fields", "list"),
    ],
)
async def test_page_rejects_each_wrong_argument(
    service: CheckMateService, kwargs: dict[str, Any], argument: str, fragment: str
) -> None:
    await _refused(service.page(**kwargs), argument, fragment)


@pytest.mark.parametrize("method", ["count", "count_by_status"])
@pytest.mark.parametrize(
    ("task_filter", "argument"),
    [(5, "task_filter"), (TaskFilter(name="a\x00"), "name"), (TaskFilter(since=NAIVE), "since")],
)
async def test_counts_reject_a_wrong_filter(
    service: CheckMateService, method: str, task_filter: Any, argument: str
) -> None:
    await _refused(getattr(service, method)(task_filter), argument, "")


@pytest.mark.parametrize("method", ["find", "get"])
@pytest.mark.parametrize(
    ("args", "argument", "fragment"),
    [
        (("not-a-uuid",), "task_id", "UUID"),
        ((7,), "task_id", "UUID"),
        ((f"{GOOD_ID}\x00",), "task_id", "NUL"),
        ((GOOD_ID, "yes"), "include_metadata", "True or False"),
    ],
)
async def test_find_and_get_reject_each_wrong_argument(
    service: CheckMateService, method: str, args: tuple[Any, ...], argument: str, fragment: str
) -> None:
    await _refused(getattr(service, method)(*args), argument, fragment)


@pytest.mark.parametrize(
    ("kwargs", "argument", "fragment"),
    [
        ({"task_ids": ["nope"]}, "task_ids", "UUID"),
        ({"task_ids": [uuid4()], "parts": ["params", "everything"]}, "parts", "lock, metadata"),
    ],
)
async def test_read_objects_rejects_each_wrong_argument(
    service: CheckMateService, kwargs: dict[str, Any], argument: str, fragment: str
) -> None:
    await _refused(service.read_objects(**kwargs), argument, fragment)


@pytest.mark.parametrize(
    ("kwargs", "argument", "fragment"),
    [
        ({"name": ""}, "name", "empty"),
        ({"name": 5}, "name", "string"),
        ({"name": "demo.pipeline\x00"}, "name", "NUL"),
        ({"name": "no.such.kind"}, "name", "unknown task kind 'no.such.kind'"),
        ({"queue": ""}, "queue", "empty"),
        ({"queue": None}, "queue", "string"),
        ({"queue": "gpu\x00"}, "queue", "NUL"),
        ({"tags": "nightly"}, "tags", "list"),
        ({"tags": [None]}, "tags", "string"),
        ({"tags": ["ok", "\ud800"]}, "tags", "surrogate"),
        ({"params": [1, 2]}, "params", "JSON object"),
        ({"params": {"stagez": 2}}, "params", "allowed: fail_at_stage, sleep, stages"),
        ({"params": {"stages": "many"}}, "params", "integer"),
        ({"params": {"note": {"deep": ["x\x00"]}}}, "params", "NUL"),
        ({"params": {"a\x00": 1}}, "params", "NUL"),
        ({"params": {"stages": 2**64}}, "params", "64-bit"),
        ({"params": {"sleep": float("nan")}}, "params", "finite"),
        ({"params": {"when": datetime.now(UTC)}}, "params", "JSON values"),
        ({"invoke": "yes"}, "invoke", "True or False"),
    ],
)
async def test_create_rejects_each_wrong_argument(
    service: CheckMateService, kwargs: dict[str, Any], argument: str, fragment: str
) -> None:
    await _refused(service.create(**{"name": "demo.pipeline", **kwargs}), argument, fragment)


async def test_params_errors_say_where_in_the_params(service: CheckMateService) -> None:
    error = await _refused(
        service.create("demo.pipeline", params={"note": {"deep": ["ok", "x\x00"]}}), "params", ""
    )
    assert error.message.startswith("params.note.deep[1] must not contain a NUL"), error.message
    error = await _refused(service.create("demo.pipeline", params={"stagez": 2}), "params", "")
    assert "'stagez'" in error.message


@pytest.mark.parametrize("action", ACTIONS)
async def test_an_unknown_filter_keyword_is_a_type_error(
    service: CheckMateService, action: str
) -> None:
    with pytest.raises(TypeError, match="stauts"):
        await getattr(service, action)([GOOD_ID], stauts=StageStatus.CREATED)


@pytest.mark.parametrize("sort", ["asc", "ASC", "Desc", "desc"])
async def test_sort_is_case_insensitive(service: CheckMateService, sort: str) -> None:
    selection = service.select([GOOD_ID], sort=sort)  # type: ignore[arg-type]
    assert selection.sort == sort.lower()


async def test_statuses_are_case_insensitive(service: CheckMateService) -> None:
    selection = service.select(status="running", statuses=["error", StageStatus.CANCELED])
    assert selection.task_filter.status is StageStatus.RUNNING
    assert selection.task_filter.statuses == (StageStatus.ERROR, StageStatus.CANCELED)


def test_user_kinds_refuse_undeclared_params_unless_their_model_allows_them() -> None:
    class Strict(BaseModel):
        rows: int = 1

    class Loose(BaseModel):
        model_config = ConfigDict(extra="allow")
        rows: int = 1

    strict = TaskKind("test.strict", params_model=Strict)
    with pytest.raises(TaskKindError, match=r"unknown key 'rowz' .*\(allowed: rows\)"):
        strict.validate_params({"rowz": 2})
    assert strict.validate_params({"rows": 2}) == {"rows": 2}
    loose = TaskKind("test.loose", params_model=Loose)
    assert loose.validate_params({"rowz": 2}) == {"rows": 1, "rowz": 2}
