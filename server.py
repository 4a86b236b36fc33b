"""The ASGI app: Starlette with the GraphQL router at /graphql, health, readiness and metrics.

`checkmate serve` runs `server:create_app` with uvicorn.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.http import GraphQLHTTPResponse
from strawberry.types import ExecutionResult

from checkmate.access import AccessControl
from checkmate.events import EventHub
from checkmate.service import CheckMateService
from checkmate.settings import Settings, get_settings
from schema import build_schema
from schema.access import FORBIDDEN, ConnectionWatch, authenticate_connection, error_body
from schema.broadcast import Broadcast, Sink, frame_prefix, open_sink
from schema.context import GraphQLContext
from schema.errors import BAD_REQUEST
from schema.graphiql import graphiql_assets, graphiql_page
from schema.http_gates import AuthenticationGate, BodySizeLimit
from schema.limits import Limits
from schema.strawberry_view import GraphQLView, PreExecutionError, WebSocketOperation

log = logging.getLogger("checkmate.api")

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
APPLICATION_JSON = "application/json"
READINESS_TIMEOUT = 2.0
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Custom close code before accepting a websocket: the server answers the handshake with 403.
WS_ORIGIN_REFUSED = 4403
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

# Module level: one Prometheus registry per process. Open subscriptions are the event hub's
# gauge, checkmate_event_subscribers.
REQUESTS = Counter(
    "checkmate_http_requests_total", "HTTP requests served.", ["method", "path", "status"]
)
LATENCY = Histogram(
    "checkmate_http_request_seconds",
    "Time to serve an HTTP request, until the last byte of its response.",
    ["method", "path"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


@functools.lru_cache(maxsize=256)  # clients send few distinct Accept headers; parsed per request
def response_media_type(accept: str) -> str | None:
    """GraphQL-over-HTTP: application/graphql-response+json when the client lists it at least as
    high as application/json; application/json for everyone else (legacy clients, */*, no
    Accept). None when the Accept header rules out both: the request gets 406."""
    if not accept.strip():
        return APPLICATION_JSON
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
    if max(best.get(name, 0.0) for name in (APPLICATION_JSON, "application/*", "*/*")) > 0:
        return APPLICATION_JSON
    return None


def request_id_of(headers: Mapping[str, str]) -> str:
    given = headers.get("x-request-id", "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex[:16]


class GraphQLRouter(GraphQLView):
    """strawberry's ASGI view with orjson bodies, a request id and GraphQL-over-HTTP media types
    and request errors; subscription events are rendered once per event for all sockets
    (schema.broadcast)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.broadcast = Broadcast(self.schema)

    async def render_graphql_ide(self, request: Request) -> Response:
        return graphiql_page(request)

    def encode_json(self, data: object) -> bytes:
        # HTTP bodies only: websocket frames are text (schema.strawberry_view.TextFrameWebSocket).
        return orjson.dumps(data)

    def decode_json(self, data: str | bytes) -> object:
        return orjson.loads(data)

    def start_operation(self, operation: WebSocketOperation) -> None:
        open_sink(
            Sink(
                broadcast=self.broadcast,
                websocket=operation.websocket,
                prefix=frame_prefix(operation.kind, operation.id),
                query=operation.query,
                variables=operation.variables,
                operation_name=operation.operation_name,
                is_open=operation.is_open,
            )
        )

    def response_media_type(self, accept: str) -> str | None:
        return response_media_type(accept)

    def request_error(
        self, request: Request, status: int, message: str, headers: Mapping[str, str]
    ) -> Response:
        request_id = request_id_of(request.headers)
        body = {"errors": [error_body(message, BAD_REQUEST)]}
        log.info("request %s refused (%d): %s", request_id, status, message)
        return Response(
            orjson.dumps(body),
            status_code=status,
            media_type=response_media_type(request.headers.get("accept", "")) or APPLICATION_JSON,
            headers={**headers, "x-request-id": request_id},
        )

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
        sub_response.media_type = (
            response_media_type(request.headers.get("accept", "")) or APPLICATION_JSON
        )
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


def _host_port(scheme: str, netloc: str) -> tuple[str, int | None] | None:
    try:
        parts = urlsplit(f"//{netloc.strip()}")
        return (parts.hostname or "", parts.port or _DEFAULT_PORTS.get(scheme))
    except ValueError:
        return None


def origin_allowed(headers: Headers, allowed: Collection[str]) -> bool:
    """The browser-origin rule of HTTP requests and websocket handshakes alike: requests without
    an Origin (not from a browser page) and same-origin ones are allowed, others only from the
    configured origins (normalized like a browser's Origin header, see checkmate.settings)."""
    origin = headers.get("origin")
    if origin is None or headers.get("sec-fetch-site") == "same-origin":
        return True
    if "*" in allowed or origin.lower() in allowed:
        return True
    scheme, _, netloc = origin.partition("://")
    here = _host_port(scheme.lower(), headers.get("host", ""))
    return here is not None and here[0] != "" and _host_port(scheme.lower(), netloc) == here


class OriginPolicy:
    """Refuses browser requests and websocket handshakes from origins that are not allowed
    (CHECKMATE_CORS_ORIGINS): 403 with a GraphQL error over HTTP, a close before accepting on a
    websocket (the handshake gets 403). CORSMiddleware inside it adds the CORS headers."""

    def __init__(self, app: ASGIApp, allowed: Collection[str]) -> None:
        self.app = app
        self.allowed = frozenset(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] in ("http", "websocket") else None
        if headers is None or origin_allowed(headers, self.allowed):
            await self.app(scope, receive, send)
            return
        origin, kind = headers["origin"], "websocket" if scope["type"] == "websocket" else "request"
        message = f"origin {origin} is not allowed; the server's CHECKMATE_CORS_ORIGINS lists those"
        log.warning("refused a %s to %s from origin %r (host %r): not in CHECKMATE_CORS_ORIGINS",
                    kind, scope["path"], origin, headers.get("host"))
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": WS_ORIGIN_REFUSED, "reason": message})
            return
        body = {"errors": [error_body(message, FORBIDDEN)]}
        await JSONResponse(body, status_code=403)(scope, receive, send)


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
        hub = EventHub(service.database, service.settings)
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

    # Origins are checked by OriginPolicy, for websockets too: strawberry's own check is off.
    graphql = GraphQLRouter(
        build_schema(
            limits=Limits.from_settings(settings), compiled_reads=settings.compiled_reads
        ),
        keep_alive=True,
        keep_alive_interval=15,
        allowed_origins=("*",),
    )
    graphql.max_subscriptions_per_connection = settings.max_subscriptions_per_connection
    routes = [
        Route("/graphql", graphql, methods=None),
        WebSocketRoute("/graphql", graphql),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        # Until a console lives at /, it points to GraphiQL.
        Route("/", lambda request: RedirectResponse("/graphql", status_code=307)),
        graphiql_assets(),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    # The last added runs first: metrics see every answer; browser origins are checked, then
    # CORS answered; a request is authenticated from its headers before its body is read; the
    # body is bounded before GraphQL parses it.
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    app.add_middleware(
        AuthenticationGate,
        access=lambda: app.state.access,
        public=frozenset({"/", "/healthz", "/readyz", "/metrics"}),
        public_prefixes=("/graphql/static/",),  # GraphiQL's assets
    )
    app.add_middleware(  # preflights (before authentication) and CORS headers, 401s included
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST"],
        allow_headers=["accept", "authorization", "content-type", "x-request-id"],
        expose_headers=["x-request-id", "server-timing"],
        max_age=600,
    )
    app.add_middleware(OriginPolicy, allowed=settings.cors_origins)
    app.add_middleware(MetricsMiddleware)
    return app
