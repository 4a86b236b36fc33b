"""Error codes: every error a client sees carries `extensions.code`; nothing unexpected leaks.

Runs once per operation (and once per subscription event), never per field.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from graphql import FieldNode, GraphQLError, GraphQLSyntaxError
from strawberry.extensions import SchemaExtension

from checkmate.arguments import FILTER_FIELDS
from checkmate.errors import Arg
from checkmate.events import SubscriberLagging
from checkmate.service import ServiceError
from schema.limits import QUERY_TOO_COMPLEX, is_token_limit
from schema.strawberry_view import InvalidOperationTypeError, PreExecutionError, to_camel_case

log = logging.getLogger("checkmate.api")

BAD_USER_INPUT = ServiceError.BAD_USER_INPUT
INTERNAL = ServiceError.INTERNAL
PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
# An HTTP request that cannot be run at all (not JSON, not an object, wrong method, media or
# content type, no query); the status says which.
BAD_REQUEST = "BAD_REQUEST"
VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
SUBSCRIBER_LAGGING = "SUBSCRIBER_LAGGING"
STATEMENT_TIMEOUT = "STATEMENT_TIMEOUT"
QUERY_CANCELED = "57014"  # PostgreSQL's query_canceled: statement_timeout fired


# Service arguments whose GraphQL argument is not their camelCase name.
_RENAMED = {"task_id": "id", "task_filter": "filter"}


def graphql_argument(field: str | None, arg: Arg) -> str:
    """The name a GraphQL client knows for a service argument, in the field that failed:
    `maxResults`, `filter.queue`, `input.params`."""
    if field == "createTask":
        return f"input.{to_camel_case(arg.name)}"
    if arg.name in FILTER_FIELDS:
        return f"filter.{to_camel_case(arg.name)}"
    return _RENAMED.get(arg.name) or to_camel_case(arg.name)


def _service_error(error: GraphQLError, original: ServiceError) -> GraphQLError:
    node = error.nodes[0] if error.nodes else None
    field = node.name.value if isinstance(node, FieldNode) else None
    extensions = {"code": original.code}
    if original.arg is not None:
        extensions["argument"] = graphql_argument(field, original.arg)
    message = original.render(lambda arg: graphql_argument(field, arg))
    return _with(error, message, extensions)


def _with(error: GraphQLError, message: str, extensions: dict[str, Any]) -> GraphQLError:
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions={**(error.extensions or {}), **extensions},
    )


def _sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a database error (SQLAlchemy wraps the driver's error in .orig)."""
    orig = getattr(error, "orig", None)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def coded(error: GraphQLError, request_id: str, *, executed: bool = False) -> GraphQLError:
    """The error as the client may see it. `executed`: the operation passed validation (an
    error without path or cause there is a variable its type rejects)."""
    original = error.original_error
    if error.extensions and "code" in error.extensions:
        return error
    if original is None:
        if isinstance(error, GraphQLSyntaxError):
            code = QUERY_TOO_COMPLEX if is_token_limit(error) else PARSE_FAILED
        elif executed and error.path is None:
            code = BAD_USER_INPUT
        else:
            code = VALIDATION_FAILED
        return _with(error, error.message, {"code": code})
    if isinstance(original, ServiceError):
        return _service_error(error, original)
    if _sqlstate(original) == QUERY_CANCELED:
        message = "the database statement ran longer than the statement timeout"
        return _with(error, message, {"code": STATEMENT_TIMEOUT})
    if isinstance(original, InvalidOperationTypeError):
        # The legacy graphql-ws protocol carries subscriptions only (strawberry's handler).
        message = original.as_http_error_reason("graphql-ws") + (
            "; send them over HTTP or graphql-transport-ws"
        )
        return _with(error, message, {"code": VALIDATION_FAILED})
    if isinstance(original, SubscriberLagging):
        extensions = {"code": SUBSCRIBER_LAGGING, "lastEventId": str(original.last_event_id)}
        return _with(error, str(original), extensions)
    if isinstance(original, GraphQLError):  # raised by a resolver, already phrased for clients
        return coded(original, request_id, executed=executed and error.path is None)
    log.error(
        "unexpected error (request %s) at %s", request_id, error.path, exc_info=original
    )
    return _with(
        error,
        f"internal server error; quote request id {request_id} to the operators",
        {"code": INTERNAL, "requestId": request_id},
    )


class ErrorCodes(SchemaExtension):
    """Rewrites the errors of each result (the pattern of strawberry's MaskErrors)."""

    def __init__(self) -> None:
        self._streamed = False

    def _request_id(self) -> str:
        return str(getattr(self.execution_context.context, "request_id", "-"))

    def _rewrite(self, result: Any) -> None:
        errors = getattr(result, "errors", None)
        if errors:
            request_id = self._request_id()
            executed = not isinstance(result, PreExecutionError)
            result.errors = [
                coded(error, request_id, executed=executed) for error in errors
            ]

    def on_operation(self) -> Iterator[None]:
        self._streamed = False
        yield
        if not self._streamed:
            self._rewrite(self.execution_context.result)

    def on_stream_result(self, result: Any) -> Iterator[None]:
        self._streamed = True
        self._rewrite(result)
        yield
