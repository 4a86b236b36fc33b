"""Task kinds: a name, the params it accepts and its ordered stages, each a Python callable.

User code registers its own kinds with the decorator API and lists its modules in
CHECKMATE_TASK_MODULES, e.g.::

    from checkmate import task_kind

    etl = task_kind("acme.etl")

    @etl.stage
    def extract(ctx):
        return {"rows": 10}

    @etl.stage
    async def load(ctx):
        ctx.record(loaded=ctx.outputs["extract"]["rows"])
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, ValidationError

StageResult = dict[str, Any] | None
StageCallable = Callable[["StageContext"], StageResult | Awaitable[StageResult]]


class TaskKindError(ValueError):
    """Unknown task kind, or params the kind does not accept (`path`: where in the params)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


@dataclass
class StageContext:
    """What a stage callable receives."""

    task_id: UUID
    params: dict[str, Any]
    stage: str
    index: int
    attempt: int
    # The `data` of the stages that completed before this one, by stage name.
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    recorded: dict[str, Any] = field(default_factory=dict)

    def record(self, **values: Any) -> None:
        """Add values to this stage's metadata `data` (merged with what the stage returns)."""
        self.recorded.update(values)


@dataclass(frozen=True)
class Stage:
    name: str
    run: StageCallable


@dataclass
class TaskKind:
    """A registered kind: fixed stages via @kind.stage, or a `plan` built from the params."""

    name: str
    params_model: type[BaseModel] | None = None
    stages: list[Stage] = field(default_factory=list)
    plan: Callable[[dict[str, Any]], list[Stage]] | None = None

    def stage(self, func: StageCallable | None = None, *, name: str | None = None) -> Any:
        """Decorator appending a stage; stages run in the order they are declared."""

        def register(stage_func: StageCallable) -> StageCallable:
            stage_name = name or str(
                getattr(stage_func, "__name__", None) or f"stage-{len(self.stages) + 1}"
            )
            self.stages.append(Stage(stage_name, stage_func))
            return stage_func

        return register(func) if func is not None else register

    def validate_params(self, params: dict[str, Any] | None) -> dict[str, Any]:
        """The params as the kind's model reads them. Keys the model does not declare are an
        error unless the model itself sets `extra` ("allow" or "ignore"): a misspelt key must
        not fall back to the default silently."""
        raw = dict(params or {})
        model = self.params_model
        if model is None:
            return raw
        if model.model_config.get("extra") in (None, "forbid"):
            allowed = _declared_keys(model)
            unknown = sorted(set(raw) - allowed)
            if unknown:
                raise TaskKindError(
                    f"unknown key {unknown[0]!r} for task kind {self.name!r} "
                    f"(allowed: {', '.join(sorted(allowed)) or 'none'})"
                )
        try:
            return model.model_validate(raw).model_dump(mode="json")
        except ValidationError as error:
            first = error.errors()[0]
            path = "".join(
                f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]
            )
            raise TaskKindError(
                f"invalid params for task kind {self.name!r}: {first['msg']} "
                f"(got {first['input']!r})",
                path,
            ) from None

    def stages_for(self, params: dict[str, Any]) -> list[Stage]:
        return self.plan(params) if self.plan is not None else list(self.stages)


def _declared_keys(model: type[BaseModel]) -> set[str]:
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        keys.add(info.alias or name)
        if model.model_config.get("populate_by_name") or info.alias is None:
            keys.add(name)
        if isinstance(info.validation_alias, str):
            keys.add(info.validation_alias)
    return keys


_registry: dict[str, TaskKind] = {}


def task_kind(name: str, *, params: type[BaseModel] | None = None) -> TaskKind:
    """Register (or return the already registered) task kind `name`."""
    kind = _registry.get(name)
    if kind is None:
        kind = _registry[name] = TaskKind(name=name, params_model=params)
    return kind


def register(kind: TaskKind) -> TaskKind:
    _registry[kind.name] = kind
    return kind


def get_kind(name: str) -> TaskKind:
    try:
        return _registry[name]
    except KeyError:
        known = ", ".join(sorted(_registry)) or "none"
        raise TaskKindError(f"unknown task kind {name!r} (registered: {known})") from None


def registered_kinds() -> list[str]:
    return sorted(_registry)


def import_task_modules(modules: Iterable[str]) -> None:
    """Import the modules named in CHECKMATE_TASK_MODULES so that their kinds register."""
    for module in modules:
        importlib.import_module(module)


# --- demo kinds: real tasks for the API, the workers and the tests -----------------------


class DemoPipelineParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stages: int = 3
    sleep: float = 0.0
    fail_at_stage: int | None = None


def _demo_stage(number: int) -> StageCallable:
    async def run(ctx: StageContext) -> StageResult:
        params = DemoPipelineParams.model_validate(ctx.params)
        if params.sleep:
            await asyncio.sleep(params.sleep)
        if params.fail_at_stage == number and ctx.attempt == 1:
            raise RuntimeError(f"demo failure at stage {number}")
        return {"stage": number, "attempt": ctx.attempt}

    return run


def _demo_plan(params: dict[str, Any]) -> list[Stage]:
    count = DemoPipelineParams.model_validate(params).stages
    return [Stage(f"stage-{number}", _demo_stage(number)) for number in range(1, count + 1)]


register(TaskKind(name="demo.pipeline", params_model=DemoPipelineParams, plan=_demo_plan))
