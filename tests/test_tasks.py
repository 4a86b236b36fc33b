"""The task-kind registry and decorator API, and the demo kind's behaviour."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from pydantic import BaseModel

from checkmate import tasks
from checkmate.tasks import StageContext, TaskKindError, get_kind, task_kind


def _context(**overrides: object) -> StageContext:
    values: dict[str, object] = {
        "task_id": uuid.uuid4(), "params": {}, "stage": "s", "index": 0, "attempt": 1,
    }
    values.update(overrides)
    return StageContext(**values)  # type: ignore[arg-type]


def test_stages_register_in_declaration_order_with_their_names() -> None:
    kind = task_kind(f"t.order.{uuid.uuid4().hex}")

    @kind.stage
    def first(ctx: StageContext) -> None:
        return None

    @kind.stage(name="second-step")
    async def second(ctx: StageContext) -> None:
        return None

    assert [stage.name for stage in kind.stages_for({})] == ["first", "second-step"]
    assert [stage.run for stage in kind.stages] == [first, second]
    # The decorator returns the function itself, so it stays callable and testable.
    assert first(_context()) is None


def test_task_kind_returns_the_registered_kind_for_a_known_name() -> None:
    name = f"t.same.{uuid.uuid4().hex}"
    assert task_kind(name) is task_kind(name) is get_kind(name)
    assert name in tasks.registered_kinds()


def test_unknown_kind_names_the_registered_ones() -> None:
    with pytest.raises(TaskKindError, match=r"unknown task kind 'nope\.nothing'.*demo\.pipeline"):
        get_kind("nope.nothing")


def test_params_model_validates_and_fills_defaults() -> None:
    class Params(BaseModel):
        rows: int
        mode: str = "fast"

    kind = task_kind(f"t.params.{uuid.uuid4().hex}", params=Params)
    assert kind.validate_params({"rows": "3"}) == {"rows": 3, "mode": "fast"}
    with pytest.raises(TaskKindError, match="invalid params"):
        kind.validate_params({"rows": "many"})


def test_demo_pipeline_plans_its_stages_from_params() -> None:
    kind = get_kind("demo.pipeline")
    assert [stage.name for stage in kind.stages_for({"stages": 4})] == [
        "stage-1", "stage-2", "stage-3", "stage-4",
    ]
    assert len(kind.stages_for(kind.validate_params({}))) == 3


def test_demo_fails_only_on_the_first_attempt_of_fail_at_stage() -> None:
    stage = get_kind("demo.pipeline").stages_for({"stages": 2})[1]
    params = {"stages": 2, "fail_at_stage": 2}
    with pytest.raises(RuntimeError, match="demo failure at stage 2"):
        asyncio.run(stage.run(_context(params=params, attempt=1)))  # type: ignore[arg-type]
    result = asyncio.run(stage.run(_context(params=params, attempt=2)))  # type: ignore[arg-type]
    assert result == {"stage": 2, "attempt": 2}


def test_record_accumulates_values_for_the_stage_metadata() -> None:
    ctx = _context()
    ctx.record(rows=1)
    ctx.record(rows=2, path="s3://x")
    assert ctx.recorded == {"rows": 2, "path": "s3://x"}


def test_import_task_modules_registers_the_kinds_a_module_declares() -> None:
    tasks.import_task_modules(["tests.worker_tasks"])
    assert [stage.name for stage in get_kind("tests.mixed").stages] == ["prepare", "sum-up"]
    with pytest.raises(ModuleNotFoundError):
        tasks.import_task_modules(["tests.no_such_module"])
