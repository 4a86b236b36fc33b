"""What a batch action acts on and how it runs: `Selection` (validated ids and filter, order,
how many) and `BatchOptions` (dry run, db_transact, force), built from the service's keyword
arguments, each argument checked before any database work."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from checkmate import arguments
from checkmate.errors import Arg, ServiceError
from checkmate.models import SortOrder, TaskFilter


@dataclass(frozen=True, slots=True)
class Selection:
    """Which tasks a batch acts on: the filter (requested ids included), the order, how many."""

    task_filter: TaskFilter
    sort: SortOrder = "desc"
    max_results: int = 100

    @classmethod
    def build(
        cls,
        task_ids: arguments.TaskIds,
        task_filter: TaskFilter | None,
        filters: Mapping[str, Any],
        *,
        sort: Any,
        max_results: Any,
        cap: int,
    ) -> Selection:
        """From a batch method's arguments, each checked (ServiceError names the wrong one)."""
        order = arguments.sort_order(sort)
        limit = arguments.max_results(max_results, cap)
        base = arguments.checked_filter(task_filter)
        merged = arguments.task_filter(
            **{**dict(base), **arguments.filter_keywords(filters)}
        )
        ids = arguments.task_ids(task_ids)
        if ids is not None:
            if merged.ids is not None:
                wanted = set(merged.ids)
                ids = tuple(task_id for task_id in ids if task_id in wanted)
            merged = merged.model_copy(update={"ids": ids})
        if merged.is_empty():
            raise ServiceError(
                "select tasks with ", Arg("task_ids"),
                " or a filter; an empty selection never means all tasks",
            )
        if merged.ids is not None and len(merged.ids) > limit:
            raise ServiceError(
                f"{len(merged.ids)} task ids given but ", Arg("max_results"),
                f" is {limit}; raise it or pass fewer ids",
            )
        return cls(merged, order, limit)


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """How a batch runs: dry (read only), all-or-nothing in the database, past fresh locks."""

    dry_run: bool = True
    db_transact: bool = True
    force: bool = False

    @classmethod
    def build(cls, *, dry_run: Any, db_transact: Any, force: Any = False) -> BatchOptions:
        return cls(
            arguments.flag("dry_run", dry_run),
            arguments.flag("db_transact", db_transact),
            arguments.flag("force", force),
        )


def describe(selection: Selection, options: BatchOptions) -> dict[str, Any]:
    """The selection and options as the audit log keeps them (JSON)."""
    return {
        "filter": selection.task_filter.model_dump(mode="json", exclude_none=True),
        "maxResults": selection.max_results,
        "sort": selection.sort,
        "dbTransact": options.db_transact,
        **({"force": True} if options.force else {}),
    }
