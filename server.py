"""The ASGI app: Starlette with the GraphQL router at /graphql, health, readiness and metrics.

`checkmate serve` runs `server:create_app` with uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import orjson
from cross_web import HTTPException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.types import ExecutionResult
from strawberry.types.execution import PreExecutionError

from checkmate.access import AccessControl
from checkmate.events import EventHub
from checkmate.service import CheckMateService
from checkmate.settings import Settings, get_settings
from schema import build_schema
from schema.access import ConnectionWatch, authenticate_connection, error_body
from schema.broadcast import Broadcast, Sink, frame_prefix, open_sink
from schema.context import GraphQLContext
from schema.graphiql import graphiql_assets, graphiql_page
from schema.http_gates import AuthenticationGate, BodySizeLimit
from schema.limits import Limits
from schema.metrics import LATENCY, REQUESTS

log = logging.getLogger("checkmate.api")

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
APPLICATION_JSON = "application/json"
READINESS_TIMEOUT = 2.0
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def response_media_type(accept: str) -> str:
    """GraphQL-over-HTTP: application/graphql-response+json when the client lists it at least as
    high as application/json; application/json for everyone else (legacy clients, */*)."""
    best: dict[str, float] = {}
    for part in accept.split(","):
        media_type, *params = (item.strip() for item in part.split(";"))
        quality = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        best[media_type.lower()] = max(best.get(media_type.lower(), 0.0), quality)
    wanted = best.get(GRAPHQL_RESPONSE_JSON, 0.0)
    if wanted > 0 and wanted >= best.get(APPLICATION_JSON, 0.0):
        return GRAPHQL_RESPONSE_JSON
    return APPLICATION_JSON


def request_id_of(headers: Mapping[str, str]) -> str:
    given = headers.get("x-request-id", "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex[:16]


def _sink(
    handler: Any, kind: str, operation_id: str, query: str, variables: Any, operation_name: Any
) -> Sink:
    return Sink(
        broadcast=handler.view.broadcast,
        websocket=handler.websocket.ws,
        prefix=frame_prefix(kind, operation_id),
        query=query,
        variables=variables,
        operation_name=operation_name,
    )


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
    """graphql-transport-ws; each operation's task delivers shared renderings (schema.broadcast)."""

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
        sink = _sink(
            self, "next", operation.id, operation.query, operation.variables,
            operation.operation_name,
        )
        sink.is_open = lambda: not operation.completed
        open_sink(sink)
        await super().run_operation(operation)


class LegacyWsHandler(BaseGraphQLWSHandler[GraphQLContext, None]):
    """graphql-ws (subscriptions-transport-ws), the same way."""

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
        open_sink(_sink(self, "data", operation_id, query, variables, operation_name))
        await super().handle_async_results(operation_id, query, operation_name, variables)


class GraphQLRouter(GraphQL[GraphQLContext, None]):
    """strawberry's ASGI view with orjson bodies, a request id and GraphQL-over-HTTP media types;
    subscription events are rendered once per event for all sockets (schema.broadcast)."""

    graphql_transport_ws_handler_class = TransportWsHandler
    graphql_ws_handler_class = LegacyWsHandler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.broadcast = Broadcast(self.schema)

    async def render_graphql_ide(self, request: Request) -> Response:
        return graphiql_page(request)

    def encode_json(self, data: object) -> bytes:
        return orjson.dumps(data)

    def decode_json(self, data: str | bytes) -> object:
        return orjson.loads(data)

    def parse_json(self, data: str | bytes) -> Any:
        # strawberry reads .get() off whatever the body decodes to: `null` or `3` was a 500.
        parsed = super().parse_json(data)
        if not isinstance(parsed, dict | list):
            raise HTTPException(400, "the request body must be a JSON object")
        return parsed

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> GraphQLContext:
        state = request.app.state
        request_id = request_id_of(request.headers)
        if isinstance(response, Response):
            response.headers["x-request-id"] = request_id
        return GraphQLContext(
            service=state.service,
            hub=state.hub,
            request_id=request_id,
            request=request,
            response=response,
            cache_loads=isinstance(request, Request),
            # HTTP: set by AuthenticationGate; websockets: by on_ws_connect.
            principal=request.scope.get("state", {}).get("principal"),
        )

    async def on_ws_connect(self, context: GraphQLContext) -> None:
        """connection_init: the token in its payload decides before anything else runs."""
        state = context.request.app.state
        context.principal = await authenticate_connection(state.access, context.connection_params)
        state.connection_watch.add(context.ws_handler, context.principal)

    async def get_sub_response(self, request: Request | WebSocket) -> Response:
        sub_response = await super().get_sub_response(request)
        sub_response.media_type = response_media_type(request.headers.get("accept", ""))
        request.state.sub_response = sub_response
        return sub_response

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        processed = await super().process_result(request, result)
        if isinstance(result, PreExecutionError):
            # A request error (unparsable or invalid document): no execution, so no data entry.
            processed.pop("data", None)
            sub_response = getattr(request.state, "sub_response", None)
            if sub_response is not None and sub_response.media_type == GRAPHQL_RESPONSE_JSON:
                sub_response.status_code = 400
        return processed

    def create_response(
        self,
        response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse],
        sub_response: Response,
    ) -> Response:
        response = Response(
            self.encode_json(response_data),
            status_code=sub_response.status_code or 200,
            media_type=sub_response.media_type or APPLICATION_JSON,
        )
        response.headers.raw.extend(sub_response.headers.raw)
        if sub_response.background:
            response.background = sub_response.background
        return response


_METRIC_PATHS = frozenset({"/graphql", "/healthz", "/readyz", "/metrics"})


class MetricsMiddleware:
    """Counts and times HTTP requests per route (unknown paths share one label); tells the
    client the server's time in a Server-Timing header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in _METRIC_PATHS else "other"
        method = scope["method"]
        status = 500
        started = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # The body is already rendered: this is the server's whole share of the request.
                elapsed_ms = (time.perf_counter() - started) * 1000
                timing = (b"server-timing", f"app;dur={elapsed_ms:.2f}".encode())
                message = {**message, "headers": [*message.get("headers", []), timing]}
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            LATENCY.labels(method, path).observe(time.perf_counter() - started)
            REQUESTS.labels(method, path, str(status)).inc()


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _check(name: str, probe: Any) -> bool:
    try:
        await asyncio.wait_for(probe, READINESS_TIMEOUT)
    except Exception as error:
        log.warning("readiness: %s unreachable: %r", name, error)
        return False
    return True


async def readyz(request: Request) -> Response:
    service: CheckMateService = request.app.state.service
    database, store = await asyncio.gather(
        _check("database", service.ping()), _check("store", service.store.ping())
    )
    body = {
        "database": "ok" if database else "unreachable",
        "store": "ok" if store else "unreachable",
    }
    return JSONResponse(body, status_code=200 if database and store else 503)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def create_app(settings: Settings | None = None) -> Starlette:
    """The app; its lifespan opens the service (database and store), the event hub and the
    token snapshot."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service = await CheckMateService.open(settings)
        hub = EventHub(service)
        access = AccessControl(service.engine, ttl=settings.token_cache_ttl)
        watch = ConnectionWatch(access, interval=settings.token_cache_ttl)
        try:
            await hub.start()
            app.state.service, app.state.hub = service, hub
            app.state.access, app.state.connection_watch = access, watch
            if await access.is_open():
                log.warning(
                    "access is open: no API token exists, every client is an operator; "
                    "create one with: checkmate token create --role operator --name NAME"
                )
            watch.start()
            yield
        finally:
            await watch.stop()
            await hub.stop()
            await service.close()

    graphql = GraphQLRouter(
        build_schema(
            limits=Limits.from_settings(settings), compiled_reads=settings.compiled_reads
        ),
        keep_alive=True,
        keep_alive_interval=15,
    )
    graphql.max_subscriptions_per_connection = settings.max_subscriptions_per_connection
    routes = [
        Route("/graphql", graphql, methods=None),
        WebSocketRoute("/graphql", graphql),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        graphiql_assets(),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    # The last added runs first: metrics see every answer; a request is authenticated from its
    # headers before its body is read; the body is bounded before GraphQL parses it.
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    app.add_middleware(
        AuthenticationGate,
        access=lambda: app.state.access,
        public=frozenset({"/healthz", "/readyz", "/metrics"}),
        public_prefixes=("/graphql/static/",),  # GraphiQL's assets
    )
    app.add_middleware(MetricsMiddleware)
    return app
