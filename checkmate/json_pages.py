"""The service side of compiled reads (schema/compiled.py): the same argument checks as
CheckMateService.page, task and count_by_status, then one statement (checkmate/db/json_reads)
that returns the JSON text. Errors are raised, not reported: the caller's ordinary path then
answers and reports them as it always has."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from checkmate import arguments
from checkmate.db import json_reads
from checkmate.records import decode_cursor

if TYPE_CHECKING:
    from checkmate.service import CheckMateService


def _filter(given: Mapping[str, Any] | None) -> Any:
    if given is None:
        return arguments.checked_filter(None)
    values = dict(given)
    # task_filter checks every field; checking its result again cost a second pass per read.
    return arguments.task_filter(values.pop("ids", None), **values)


async def page_json(
    service: CheckMateService,
    task_filter: Mapping[str, Any] | None,
    plan: json_reads.Plan,
    *,
    sort: Any,
    max_results: Any,
    after: Any,
) -> str:
    checked = _filter(task_filter)
    order = arguments.sort_order(sort)
    limit = arguments.max_results(max_results, service.settings.max_results_cap)
    keyset = None if after is None else decode_cursor(after)
    async with service.engine.connect() as conn:
        return await json_reads.page_json(
            conn, checked, plan, sort=order, limit=limit, after=keyset
        )


async def task_json(service: CheckMateService, task_id: Any, plan: json_reads.Plan) -> str | None:
    parsed = arguments.task_id(task_id)
    async with service.engine.connect() as conn:
        return await json_reads.task_json(conn, parsed, plan)


async def counts_json(
    service: CheckMateService, task_filter: Mapping[str, Any] | None, plan: json_reads.Plan
) -> str:
    checked = _filter(task_filter)
    async with service.engine.connect() as conn:
        return await json_reads.counts_json(conn, checked, plan)
