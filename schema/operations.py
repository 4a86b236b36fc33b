"""Each GraphQL operation counted by name, type and outcome (checkmate.metrics), and its request
id and name put in the log context (checkmate.logs) while it runs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from strawberry.extensions import SchemaExtension

from checkmate import logs, metrics


def _outcome(result: Any) -> str:
    errors = getattr(result, "errors", None)
    if not errors:
        return "ok"
    code = (getattr(errors[0], "extensions", None) or {}).get("code")
    return str(code) if code else "error"


class OperationMetrics(SchemaExtension):
    """Listed first among the extensions, so its exit sees the errors ErrorCodes has coded."""

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context
        request_id = str(getattr(context.context, "request_id", "-"))
        with logs.operation_context(request_id, context.operation_name):
            yield
        try:
            kind = context.operation_type.value
        except RuntimeError:  # the document did not parse: no operation to name
            kind = "unknown"
        metrics.OPERATIONS.labels(
            metrics.operation_label(context.operation_name), kind, _outcome(context.result)
        ).inc()
