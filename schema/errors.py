"""Error codes: every error a client sees carries `extensions.code`; nothing unexpected leaks.

Runs once per operation (and once per subscription event), never per field.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from graphql import GraphQLError, GraphQLSyntaxError
from strawberry.extensions import SchemaExtension

from checkmate.events import SubscriberLagging
from checkmate.service import ServiceError
from schema.strawberry_view import operation_type_refused

log = logging.getLogger("checkmate.api")

BAD_USER_INPUT = ServiceError.BAD_USER_INPUT
INTERNAL = ServiceError.INTERNAL
PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
# A request that cannot be run at all (over HTTP: not JSON, not an object, wrong method, media or
# content type, no query; the status says which) or an operation its transport does not run.
BAD_REQUEST = "BAD_REQUEST"
VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
SUBSCRIBER_LAGGING = "SUBSCRIBER_LAGGING"


def _with(error: GraphQLError, message: str, extensions: dict[str, Any]) -> GraphQLError:
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions={**(error.extensions or {}), **extensions},
    )


def coded(error: GraphQLError, request_id: str) -> GraphQLError:
    """The error as the client may see it."""
    original = error.original_error
    if error.extensions and "code" in error.extensions:
        return error
    if original is None:
        code = PARSE_FAILED if isinstance(error, GraphQLSyntaxError) else VALIDATION_FAILED
        return _with(error, error.message, {"code": code})
    if isinstance(original, ServiceError):
        return _with(error, original.message, {"code": original.code})
    if isinstance(original, SubscriberLagging):
        extensions = {"code": SUBSCRIBER_LAGGING, "lastEventId": str(original.last_event_id)}
        return _with(error, str(original), extensions)
    if (refused := operation_type_refused(original)) is not None:
        return _with(error, refused, {"code": BAD_REQUEST})
    if isinstance(original, GraphQLError):  # raised by a resolver, already phrased for clients
        return coded(original, request_id)
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
            result.errors = [coded(error, request_id) for error in errors]

    def on_operation(self) -> Iterator[None]:
        self._streamed = False
        yield
        if not self._streamed:
            self._rewrite(self.execution_context.result)

    def on_stream_result(self, result: Any) -> Iterator[None]:
        self._streamed = True
        self._rewrite(result)
        yield
