"""Every place CheckMate reaches into strawberry's internals, and the strawberry versions they
were tested with: importing this module with another version fails at once, instead of the
overrides below silently no longer applying (or applying to code that changed meaning).

What is overridden, and why:
- the websocket adapter: strawberry sends `bytes` from `encode_json` as binary frames, and real
  clients (npm graphql-ws, Python gql) reject binary frames; every frame here is text;
- the protocol handlers' `run_operation` / `handle_async_results`: the view gets each operation
  at the start of its own task, so subscription events can be rendered once for all sockets
  (schema.broadcast);
- the HTTP entry: strawberry answers transport errors (body not JSON, JSON that is not an
  object, wrong content type, no query, wrong method) in text/plain, and a JSON body that is not
  an object crashes its parser (HTTP 500); here each becomes a status and a message the view
  renders as a GraphQL error (GraphQL-over-HTTP);
- `execute_single`: a subscription over plain HTTP is refused (strawberry runs it as a query,
  which fails as an internal error) and a mutation over GET gets GraphQL-over-HTTP's 405; a
  query over legacy graphql-ws (subscriptions only there) is named as such, not as internal;
- `Info._raw_info`, graphql-core's resolve info behind strawberry's `Info`.

The version is checked before any strawberry module is imported, so a release that moved one of
them fails with the message below rather than an ImportError about the module.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

# The releases these overrides were written against and tested with (0.341.2 is the release the
# suite runs; no 0.340 was on the package index to test). Widen after running the suite on one.
TESTED_VERSIONS = ((0, 341), (0, 342))  # [from, to)


def check_version(installed: str) -> None:
    """Refuse a strawberry release outside the tested range, naming both."""
    try:
        release = tuple(int(part) for part in installed.split(".")[:2])
    except ValueError:
        release = ()
    low, high = TESTED_VERSIONS
    if not low <= release < high:
        raise ImportError(
            f"CheckMate's server overrides strawberry internals (schema/strawberry_view.py) "
            f"tested with strawberry-graphql >={low[0]}.{low[1]},<{high[0]}.{high[1]}; "
            f"{installed} is installed. Install a tested release "
            f"(pip install 'strawberry-graphql>={low[0]}.{low[1]},<{high[0]}.{high[1]}')."
        )


check_version(version("strawberry-graphql"))

# Imported only once the version is known to be a tested one (E402 allowed in pyproject).
import orjson
from cross_web import HTTPException
from graphql import GraphQLResolveInfo
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from strawberry.asgi import ASGIWebSocketAdapter, GraphQL
from strawberry.exceptions import MissingQueryError
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.http.parse_content_type import parse_content_type
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.types import ExecutionResult
from strawberry.types.execution import PreExecutionError
from strawberry.types.graphql import OperationType

from schema.context import GraphQLContext

if TYPE_CHECKING:
    from cross_web import AsyncHTTPRequestAdapter
    from strawberry.http import GraphQLRequestData
    from strawberry.types import Info

__all__ = [
    "GraphQLView",
    "HTTPException",
    "PreExecutionError",
    "WebSocketDisconnected",
    "WebSocketOperation",
    "check_version",
    "operation_type_refused",
    "resolve_info",
]


def resolve_info(info: Info[Any, Any]) -> GraphQLResolveInfo[Any]:
    """graphql-core's resolve info (field nodes, fragments, schema) behind strawberry's Info."""
    raw: GraphQLResolveInfo[Any] = info._raw_info
    return raw


def operation_type_refused(error: BaseException | None) -> str | None:
    """What to tell a client whose operation type this transport does not run (strawberry's
    legacy graphql-ws runs subscriptions only; it reports a query as an unexpected error)."""
    if not isinstance(error, InvalidOperationTypeError):
        return None
    kind = error.operation_type.value
    return (
        f"a {kind} cannot run over this transport: send queries and mutations over HTTP "
        "(or graphql-transport-ws), subscriptions over a websocket"
    )


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


class TransportWsHandler(BaseGraphQLTransportWSHandler[GraphQLContext, None]):
    """graphql-transport-ws: the view sees each operation in the operation's own task."""

    view: GraphQLView

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
}


class RequestRefused(HTTPException):
    """A request error with response headers (Allow of a 405)."""

    def __init__(self, status_code: int, reason: str, headers: Mapping[str, str]) -> None:
        super().__init__(status_code, reason)
        self.headers = headers


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
            headers = dict(getattr(error, "headers", {}))
            if error.status_code == 405:
                headers.setdefault("allow", "GET, POST")
            reason = _REASONS.get(error.reason, error.reason)
            response = self.request_error(request, error.status_code, reason, headers)
        await response(scope, receive, send)

    async def execute_single(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: Response,
        context: GraphQLContext,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        # strawberry's own, except that a subscription over plain HTTP (no SSE or multipart
        # transport is offered) is refused: strawberry would run it as a query, whose field
        # then fails as null. Mutations over GET get GraphQL-over-HTTP's 405.
        method = request_adapter.method
        allowed = OperationType.from_http(method) - {OperationType.SUBSCRIPTION}
        try:
            return await self.schema.execute(
                request_data.query,
                root_value=root_value,
                variable_values=request_data.variables,
                context_value=context,
                operation_name=request_data.operation_name,
                allowed_operation_types=allowed,
                operation_extensions=request_data.extensions,
            )
        except CannotGetOperationTypeError as error:
            raise HTTPException(400, error.as_http_error_reason()) from error
        except InvalidOperationTypeError as error:
            if error.operation_type is OperationType.SUBSCRIPTION:
                raise HTTPException(
                    400, "subscriptions go over a websocket to this URL (graphql-transport-ws)"
                ) from error
            if error.operation_type is OperationType.MUTATION and method == "GET":
                raise RequestRefused(
                    405, "mutations are not allowed over GET; send them with POST",
                    {"allow": "POST"},
                ) from error
            raise HTTPException(400, error.as_http_error_reason(method)) from error
        except MissingQueryError as error:
            raise HTTPException(400, "the request has no `query`") from error

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
