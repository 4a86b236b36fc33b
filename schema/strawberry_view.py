"""Every place CheckMate reaches into strawberry's internals, and the strawberry versions they
were tested with: importing this module with another version fails at once, instead of the
overrides below silently no longer applying (or applying to code that changed meaning).

What is overridden, and why:
- the websocket adapter: strawberry sends `bytes` from `encode_json` as binary frames, and real
  clients (npm graphql-ws, Python gql) reject binary frames; every frame here is text;
- the protocol handlers' `run_operation` / `handle_async_results`: the view gets each operation
  at the start of its own task, so subscription events can be rendered once for all sockets
  (schema.broadcast); `handle_subscribe` / `handle_start` cap a connection's operations with a
  coded error, `shutdown` / `cleanup` / `end` let schema.access end a revoked token's socket;
- the HTTP entry: strawberry answers transport errors (body not JSON, JSON that is not an
  object, wrong content type, no query, wrong method) in text/plain, and a JSON body that is not
  an object crashes its parser (HTTP 500); here each becomes a status and a message the view
  renders as a GraphQL error (GraphQL-over-HTTP);
- a mutation over GET gets GraphQL-over-HTTP's 405 (strawberry: 400);
- the exceptions schema/errors.py codes (InvalidOperationTypeError, PreExecutionError);
- `Info._raw_info`, graphql-core's resolve info behind strawberry's `Info`;
- for schema/execution.py's fast completion path: strawberry's execution context class, its
  GraphQL-core converter (resolvers of plain fields) and StrawberryField; for schema/errors.py,
  strawberry's own snake_case -> camelCase rule (so argument names read as in the schema).

The version is checked (checkmate.versions) before any strawberry module is imported, so a
release that moved one of them fails naming the tested range, not the missing module.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from checkmate.versions import require_tested

# The releases these overrides were written against and tested with (0.341.2 is the release the
# suite runs; no 0.340 was on the package index to test). Widen after running the suite on one.
TESTED_RANGE = ("0.341", "0.342")
require_tested("strawberry-graphql", *TESTED_RANGE)

# Imported only once the version is known to be a tested one (E402 allowed in pyproject).
import orjson
from cross_web import HTTPException
from graphql import GraphQLResolveInfo
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from strawberry.asgi import ASGIWebSocketAdapter, GraphQL
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.http.parse_content_type import parse_content_type
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.types.execution import PreExecutionError
from strawberry.types.field import StrawberryField
from strawberry.types.graphql import OperationType
from strawberry.utils.str_converters import to_camel_case

from schema.access import ConnectionWatch, error_body
from schema.context import GraphQLContext

if TYPE_CHECKING:
    from cross_web import AsyncHTTPRequestAdapter
    from strawberry.http import GraphQLRequestData
    from strawberry.types import Info

__all__ = [
    "TESTED_RANGE",
    "GraphQLCoreConverter",
    "GraphQLView",
    "HTTPException",
    "InvalidOperationTypeError",
    "PreExecutionError",
    "StrawberryField",
    "StrawberryGraphQLCoreExecutionContext",
    "WebSocketDisconnected",
    "WebSocketOperation",
    "resolve_info",
    "to_camel_case",
]


def resolve_info(info: Info[Any, Any]) -> GraphQLResolveInfo[Any]:
    """graphql-core's resolve info (field nodes, fragments, schema) behind strawberry's Info."""
    raw: GraphQLResolveInfo[Any] = info._raw_info
    return raw


class TextFrameWebSocket(ASGIWebSocketAdapter):
    """Sends every protocol message (ack, ping, pong, ka, error, complete, results) as text."""

    async def send_json(self, message: Mapping[str, object]) -> None:
        try:
            await self.ws.send_text(orjson.dumps(message).decode())
        except WebSocketDisconnect as error:
            raise WebSocketDisconnected from error


@dataclass(frozen=True, slots=True)
class WebSocketOperation:
    """One operation started on a websocket, as the protocol handlers see it."""

    websocket: WebSocket
    kind: str  # the protocol's result message type: "next" (graphql-transport-ws) or "data"
    id: str
    query: str
    variables: dict[str, Any] | None
    operation_name: str | None
    is_open: Callable[[], bool]


TOO_MANY_SUBSCRIPTIONS = "TOO_MANY_SUBSCRIPTIONS"
# Close code of a websocket whose token stopped being valid (graphql-transport-ws' 4401).
CLOSE_UNAUTHENTICATED = 4401


def _over_limit(handler: Any, message: Any, running: Any) -> dict[str, Any] | None:
    """The error for an operation over the connection's limit (strawberry's own refusal has
    no code), or None. `running`: the handler's operations in flight, by id."""
    limit = handler.max_subscriptions_per_connection
    if (
        not handler.connection_acknowledged
        or limit is None
        or message.get("id") in running
        or len(running) < limit
    ):
        return None
    message = f"at most {limit} operations at once on one connection"
    return error_body(message, TOO_MANY_SUBSCRIPTIONS)


def _forget(handler: Any) -> None:
    """A closing websocket leaves the revocation watch."""
    state = handler.context.request.app.state
    watch: ConnectionWatch | None = getattr(state, "connection_watch", None)
    if watch is not None:
        watch.discard(handler)


class TransportWsHandler(BaseGraphQLTransportWSHandler[GraphQLContext, None]):
    """graphql-transport-ws: the view sees each operation in the operation's own task; the
    connection's operations are capped and end when its token is revoked (schema.access)."""

    view: GraphQLView

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.context.ws_handler = self

    async def handle_subscribe(self, message: Any) -> None:
        error = _over_limit(self, message, self.operations)
        if error is not None:
            refusal: Any = {"id": message["id"], "type": "error", "payload": [error]}
            await self.send_message(refusal)
            return
        await super().handle_subscribe(message)

    async def shutdown(self) -> None:
        _forget(self)
        await super().shutdown()

    async def end(self, error: dict[str, Any]) -> None:
        """Every operation ends with `error`, then the socket closes (token revoked)."""
        for operation in list(self.operations.values()):
            ending: Any = {"id": operation.id, "type": "error", "payload": [error]}
            await operation.send_operation_message(ending)
        await self.websocket.close(CLOSE_UNAUTHENTICATED, error["extensions"]["code"])

    async def run_operation(self, operation: Operation[GraphQLContext, None]) -> None:
        assert isinstance(self.websocket, ASGIWebSocketAdapter)
        self.view.start_operation(
            WebSocketOperation(
                self.websocket.ws, "next", operation.id, operation.query, operation.variables,
                operation.operation_name, lambda: not operation.completed,
            )
        )
        await super().run_operation(operation)


class LegacyWsHandler(BaseGraphQLWSHandler[GraphQLContext, None]):
    """graphql-ws (subscriptions-transport-ws), the same way."""

    view: GraphQLView

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.context.ws_handler = self

    async def handle_start(self, message: Any) -> None:
        error = _over_limit(self, message, self.tasks)
        if error is not None:
            refusal: Any = {"type": "error", "id": message["id"], "payload": error}
            await self.send_message(refusal)
            return
        await super().handle_start(message)

    async def cleanup(self) -> None:
        _forget(self)
        await super().cleanup()

    async def end(self, error: dict[str, Any]) -> None:
        for operation_id in list(self.tasks):
            self.tasks.pop(operation_id).cancel()
            ending: Any = {"type": "error", "id": operation_id, "payload": error}
            await self.send_message(ending)
        await self.websocket.close(CLOSE_UNAUTHENTICATED, error["extensions"]["code"])

    async def handle_async_results(
        self,
        operation_id: str,
        query: str,
        operation_name: str | None,
        variables: dict[str, object] | None,
    ) -> None:
        assert isinstance(self.websocket, ASGIWebSocketAdapter)
        self.view.start_operation(
            WebSocketOperation(
                self.websocket.ws, "data", operation_id, query, variables, operation_name,
                lambda: True,
            )
        )
        await super().handle_async_results(operation_id, query, operation_name, variables)


# Request errors strawberry raises with a message written for developers of strawberry apps.
_REASONS = {
    "Batching is not enabled": (
        "the request body is a JSON array (a batch); send one operation per request, as a "
        "JSON object"
    ),
    "Unable to parse request body as JSON": "the request body (or a JSON parameter) is not JSON",
    "No GraphQL query found in the request": "the request has no `query`",
}


class GraphQLView(GraphQL[GraphQLContext, None], abc.ABC):
    """strawberry's ASGI view with text websocket frames and GraphQL errors for bad requests."""

    websocket_adapter_class = TextFrameWebSocket  # type: ignore[assignment]
    graphql_transport_ws_handler_class = TransportWsHandler
    graphql_ws_handler_class = LegacyWsHandler

    @abc.abstractmethod
    def start_operation(self, operation: WebSocketOperation) -> None:
        """Called in a websocket operation's own task before it executes."""

    @abc.abstractmethod
    def response_media_type(self, accept: str) -> str | None:
        """The media type of the response for this Accept header; None when none is served."""

    @abc.abstractmethod
    def request_error(
        self, request: Request, status: int, message: str, headers: Mapping[str, str]
    ) -> Response:
        """The response to a request that cannot be run (malformed, wrong method or type)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await self.run(request)
        except HTTPException as error:
            status, reason, headers = error.status_code, error.reason, {}
            cause = error.__cause__
            if status == 405:
                headers["allow"] = "GET, POST"
            elif (
                isinstance(cause, InvalidOperationTypeError)
                and cause.operation_type is OperationType.MUTATION
                and request.method == "GET"
            ):
                # GraphQL-over-HTTP: a mutation over GET is 405; POST is the method to use.
                status, reason, headers["allow"] = 405, "mutations are sent with POST", "POST"
            reason = _REASONS.get(reason, reason)
            response = self.request_error(request, status, reason, headers)
        await response(scope, receive, send)

    async def parse_http_body(
        self, request: AsyncHTTPRequestAdapter
    ) -> GraphQLRequestData | list[GraphQLRequestData]:
        if self.response_media_type(request.headers.get("accept", "")) is None:
            raise HTTPException(
                406,
                "the Accept header lists no media type this endpoint serves: accept "
                "application/graphql-response+json or application/json",
            )
        if request.method == "POST":
            media_type, _ = parse_content_type(request.content_type or "")
            if media_type != "application/json":
                raise HTTPException(
                    415,
                    f"unsupported content type {media_type or '(none)'!r}: send the "
                    "operation as JSON with content-type application/json",
                )
            # A JSON object or array starts with { or [; anything else is an error (strawberry
            # would call .get on it), parsed here only to say which one.
            body = await request.get_body()
            if body.lstrip()[:1] not in (b"{", b"["):
                self.parse_json(body)  # not JSON at all: 400 from strawberry
                raise HTTPException(
                    400,
                    "the request body must be a JSON object with a `query` (and optionally "
                    "`variables`, `operationName`, `extensions`)",
                )
        return await super().parse_http_body(request)
