"""Access control at the API's edges: who a websocket is, which fields a role may run, and the
watch that ends websockets whose token was revoked. The rule itself is checkmate.access.may."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

from graphql import GraphQLError
from starlette.requests import Request
from strawberry.exceptions import ConnectionRejectionError
from strawberry.extensions import SchemaExtension
from strawberry.permission import BasePermission
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from checkmate.access import AccessControl, AccessError, Action, Principal, may

log = logging.getLogger("checkmate.api")

FORBIDDEN = AccessError.FORBIDDEN
UNAUTHENTICATED = AccessError.UNAUTHENTICATED
BAD_USER_INPUT = "BAD_USER_INPUT"


def error_body(message: str, code: str) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": code}}


def _allowed(action: Action) -> type[BasePermission]:
    class Allowed(BasePermission):
        message = (
            f"forbidden: {action.value} needs the operator role"
            + (" (a viewer may only dry-run it)" if action.value != "READ_AUDIT" else "")
        )
        error_extensions = {"code": FORBIDDEN}

        def has_permission(self, source: Any, info: Any, **kwargs: Any) -> bool:
            principal: Principal | None = info.context.principal
            dry_run = kwargs.get("dry_run", True) is not False  # null means the default: dry
            return principal is not None and may(principal.role, action, dry_run=dry_run)

    Allowed.__name__ = f"Allowed{action.value.title().replace('_', '')}"
    return Allowed


# One permission class per guarded action (strawberry instantiates them per field).
ALLOWED: dict[Action, type[BasePermission]] = {action: _allowed(action) for action in Action}


class SubscriptionsOverWebsockets(SchemaExtension):
    """A subscription sent as an HTTP request is refused before it runs (graphql-core would run
    it as a plain field and fail inside): subscriptions are served over websockets."""

    def on_execute(self) -> Iterator[None]:
        context = self.execution_context
        request = getattr(context.context, "request", None)
        if context.operation_type is OperationType.SUBSCRIPTION and isinstance(request, Request):
            message = "subscriptions are served over websockets (graphql-transport-ws, graphql-ws)"
            error = GraphQLError(message, extensions={"code": BAD_USER_INPUT})
            context.result = ExecutionResult(data=None, errors=[error])  # skips execution
        yield


def authorization_of(connection_params: object) -> str | None:
    """The Authorization value a client put in its connection_init payload (any key case)."""
    if not isinstance(connection_params, Mapping):
        return None
    for key, value in connection_params.items():
        if isinstance(key, str) and key.lower() == "authorization":
            return value if isinstance(value, str) else ""
    return None


async def authenticate_connection(access: AccessControl, connection_params: object) -> Principal:
    """The principal of a websocket's connection_init; ConnectionRejectionError if refused."""
    try:
        return await access.authenticate(authorization_of(connection_params))
    except AccessError as error:
        raise ConnectionRejectionError(error_body(error.message, error.code)) from None


class ConnectionWatch:
    """Re-checks every open websocket's principal each `interval` seconds (the token snapshot's
    TTL, so one query per interval per process), and ends those no longer valid through their
    handler's `end(error)`: each of their operations gets an error with code UNAUTHENTICATED,
    then the socket closes with 4401. Handlers are held weakly (and discarded when they close),
    so the watch never keeps a closed connection alive."""

    def __init__(self, access: AccessControl, interval: float) -> None:
        self.access = access
        self.interval = interval
        self._connections: weakref.WeakKeyDictionary[Any, Principal] = (
            weakref.WeakKeyDictionary()
        )
        self._task: asyncio.Task[None] | None = None

    def add(self, handler: Any, principal: Principal) -> None:
        self._connections[handler] = principal

    def __len__(self) -> int:
        return len(self._connections)

    def discard(self, handler: Any) -> None:
        self._connections.pop(handler, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="checkmate-connection-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:
                log.exception("connection watch: check failed; retrying")

    async def check(self) -> None:
        for handler, principal in list(self._connections.items()):
            try:
                valid = await self.access.still_valid(principal)
            except AccessError:
                return  # the token store is unreachable: decide on the next round
            if not valid:
                self.discard(handler)
                log.info("ending websocket of %r: its token is no longer valid", principal.name)
                message = (
                    "the token of this connection was revoked"
                    if principal.token_hash is not None
                    else "access now needs a token (one was created)"
                )
                await handler.end(error_body(message, UNAUTHENTICATED))
