"""Task kinds the worker tests run; worker processes import this via CHECKMATE_TASK_MODULES."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from checkmate.tasks import StageContext, task_kind

record_run = task_kind("tests.record_run")


@record_run.stage
def append(ctx: StageContext) -> dict[str, Any]:
    """A per-run side effect: one line per execution, so a task run twice shows twice."""
    with open(ctx.params["log"], "a") as log:
        log.write(f"{ctx.task_id} {ctx.attempt} {os.getpid()}\n")
    return {"pid": os.getpid()}


mixed = task_kind("tests.mixed")


@mixed.stage
def prepare(ctx: StageContext) -> dict[str, Any]:
    time.sleep(ctx.params.get("sync_sleep", 0))
    ctx.record(thread=threading.current_thread().name)
    return {"rows": ctx.params["rows"]}


@mixed.stage(name="sum-up")
async def summarise(ctx: StageContext) -> dict[str, Any]:
    await asyncio.sleep(0)
    ctx.record(total=ctx.outputs["prepare"]["rows"] * 2)
    return {"seen": sorted(ctx.outputs), "params": ctx.params}


@task_kind("tests.bad_data").stage
def returns_unserialisable(ctx: StageContext) -> dict[str, Any]:
    return {"obj": object()}


slow_record = task_kind("tests.slow_record")


def _slow_stage(number: int) -> Any:
    def run(ctx: StageContext) -> dict[str, Any]:
        """Like demo.pipeline's stages, with a per-run side effect: one line per execution of
        each stage, so a stage run twice (or by two workers at once) shows twice."""
        with open(ctx.params["log"], "a") as log:
            log.write(f"{ctx.task_id} {ctx.stage} {ctx.attempt} {os.getpid()}\n")
        time.sleep(ctx.params.get("sleep", 0.4))
        return {"stage": number}

    return run


for _number in (1, 2, 3):
    slow_record.stage(name=f"stage-{_number}")(_slow_stage(_number))
