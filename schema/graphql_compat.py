"""What CheckMate relies on inside graphql-core's executor (its `:meta private:` methods),
checked at import: outside the tested versions, or with a hook that changed its signature,
the import fails here instead of the fast completion path silently turning itself off (its
failures fall back by design) or subscription rendering breaking at the first event.

- schema/execution.py overrides Executor.complete_iterable_value and
  execute_collected_subfields and calls collect_subfields, get_stream_usage and reads
  middleware_manager (through strawberry's execution context, a subclass of Executor).
- schema/broadcast.py builds one Executor per subscription group (Executor.build) and renders
  each event with build_per_event_executor(event).execute_operation(False).

Read from graphql-core 3.3.0 to 3.3.2; strawberry requires >=3.3.0,<3.4.0 as well.
"""

from __future__ import annotations

import inspect

from graphql.execution import Executor
from graphql.pyutils import Path

from checkmate.versions import require_tested

__all__ = ["TESTED_RANGE", "Executor", "Path", "changed_hooks"]

TESTED_RANGE = ("3.3.0", "3.4")
require_tested("graphql-core", *TESTED_RANGE)

# Executor method -> the parameters (after self) that our overrides and calls pass.
HOOKS: dict[str, tuple[str, ...]] = {
    "build": (
        "schema", "document", "root_value", "context_value", "raw_variable_values",
        "operation_name",
    ),
    "build_per_event_executor": ("payload",),
    "execute_operation": ("serially",),
    "complete_iterable_value": (
        "item_type", "field_details_list", "info", "path", "items", "position_context",
    ),
    "execute_collected_subfields": (
        "parent_type", "source_value", "path", "grouped_field_set", "new_defer_usages",
        "position_context",
    ),
    "collect_subfields": ("return_type", "field_details_list"),
    "get_stream_usage": ("field_details_list", "path"),
}


def changed_hooks(executor: type) -> list[str]:
    """The hooks of `executor` that are missing or whose leading parameters differ."""
    changed = []
    for name, expected in HOOKS.items():
        method = getattr(executor, name, None)
        if method is None:
            changed.append(f"{name}: missing")
            continue
        parameters = [
            parameter.name
            for parameter in inspect.signature(method).parameters.values()
            if parameter.name not in ("self", "cls")
        ]
        if tuple(parameters[: len(expected)]) != expected:
            changed.append(f"{name}{tuple(parameters)}, expected {expected}")
    return changed


_changed = changed_hooks(Executor)
if _changed:
    raise ImportError(
        "graphql-core's Executor no longer has the hooks CheckMate relies on "
        f"(schema/execution.py, schema/broadcast.py): {'; '.join(_changed)}"
    )
