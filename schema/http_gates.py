"""ASGI gates in front of /graphql over HTTP, decided before the body is parsed or any database
work: authentication (401 UNAUTHENTICATED) and the request body size (413 PAYLOAD_TOO_LARGE)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from checkmate.access import AccessControl, AccessError
from schema.access import error_body

PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
UNAVAILABLE = "UNAVAILABLE"
_STATUS = {AccessError.UNAUTHENTICATED: 401, UNAVAILABLE: 503, PAYLOAD_TOO_LARGE: 413}


async def send_error(send: Send, message: str, code: str, **headers: str) -> None:
    body = orjson.dumps({"errors": [error_body(message, code)]})
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()),
    ]
    await send({"type": "http.response.start", "status": _STATUS[code], "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _is_graphiql_page(scope: Scope, headers: Headers) -> bool:
    """A browser's GET of the GraphiQL page (no query): static HTML, no data, no token needed;
    GraphiQL then sends the token with each query (its Headers tab)."""
    return (
        scope["method"] == "GET"
        and b"query=" not in scope.get("query_string", b"")
        and "text/html" in headers.get("accept", "")
    )


def route_path(scope: Scope) -> str:
    """The path the app routes on: without the root path a proxy mounted the app under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


class AuthenticationGate:
    """Authenticates each HTTP request from its Authorization header alone, except to the
    `public` paths and prefixes, and puts the principal in the request state
    (scope["state"]["principal"]). Everything not listed needs a token: a new route is
    guarded by default."""

    def __init__(
        self,
        app: ASGIApp,
        access: Any,
        public: frozenset[str] = frozenset(),
        public_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        # The AccessControl, or a callable returning it (the app's lifespan creates it).
        self._access = access
        self.public = public
        self.public_prefixes = public_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if path in self.public or path.startswith(self.public_prefixes):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        access: AccessControl = self._access() if callable(self._access) else self._access
        try:
            principal = await access.authenticate(headers.get("authorization"))
        except AccessError as error:
            if _is_graphiql_page(scope, headers):
                await self.app(scope, receive, send)
                return
            await send_error(send, error.message, error.code, www_authenticate="Bearer")
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


class BodySizeLimit:
    """413 for a body over `limit` bytes: at once from Content-Length, else as soon as the
    chunks read exceed it (never more than limit + one chunk is held)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in {"GET", "HEAD"}:
            await self.app(scope, receive, send)
            return
        too_large = f"request body over {self.limit} bytes"
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await send_error(send, too_large, PAYLOAD_TOO_LARGE, connection="close")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await send_error(send, too_large, PAYLOAD_TOO_LARGE, connection="close")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
