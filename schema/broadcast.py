"""Subscription events rendered once per event and selection, sent to every websocket as is.

strawberry runs a subscription event through graphql-core, its extensions and the protocol
handler once per subscriber: with 10,000 subscribers watching the same feed that is 10,000
identical executions and JSON encodings of every event. Here the websocket handlers (server.py)
put a `Sink` (the operation's socket, protocol frame and request) in a context variable of the
operation's task; the subscription resolver hands its event stream to `Broadcast.deliver`, which
executes the operation's selection once per (event, group) and sends the same serialized payload
to every subscriber of the group. A group is the document, the operation name and the variables
the selection uses: the variables of the root field's arguments (filter, afterEventId) only
choose which events a subscriber gets, not how an event renders, so subscribers with different
filters share renderings.

Parsing, validation, argument errors, SubscriberLagging and completion still go through
strawberry: the resolver raises as before and only the per-event execution and sending are
taken over. Errors inside a rendering (a task that cannot be loaded) are coded once with the
group's own request id, which the single log line of the failure carries too.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from graphql import DocumentNode, ExecutionResult, GraphQLError, Node, VariableNode
from starlette.websockets import WebSocket, WebSocketDisconnect

from checkmate.models import StatusEvent
from schema.context import GraphQLContext
from schema.dataloaders import Loaders
from schema.errors import coded
from schema.graphql_compat import Executor
from schema.strawberry_view import WebSocketDisconnected, resolve_info

if TYPE_CHECKING:
    from strawberry.schema import BaseSchema
    from strawberry.types import Info

# Renderings kept for subscribers that are a few events behind the others; one that is further
# behind renders again (same result, more work).
RESULTS_KEPT = 10_000
# Distinct subscription documents a deployment uses are few (consoles, scripts).
GROUPS_KEPT = 512

GroupKey = tuple[str, str | None, bytes]


@dataclass(slots=True)
class Sink:
    """One websocket operation: where its results go, and the request that started it."""

    broadcast: Broadcast
    websocket: WebSocket
    prefix: str  # the protocol's frame up to the payload: '{"id":"1","type":"next","payload":'
    query: str
    variables: dict[str, Any] | None
    operation_name: str | None
    is_open: Callable[[], bool] = lambda: True

    async def send(self, payload: str) -> None:
        if not self.is_open():
            return
        try:
            await self.websocket.send_text(f"{self.prefix}{payload}}}")
        except WebSocketDisconnect as error:
            raise WebSocketDisconnected from error


_SINK: ContextVar[Sink | None] = ContextVar("checkmate_subscription_sink", default=None)


def open_sink(sink: Sink) -> None:
    """Called by a websocket handler at the start of an operation's own task."""
    _SINK.set(sink)


def current_sink() -> Sink | None:
    return _SINK.get()


def frame_prefix(kind: str, operation_id: str) -> str:
    """graphql-transport-ws sends results as "next", the legacy graphql-ws as "data"."""
    op_id = orjson.dumps(operation_id).decode()
    if kind == "next":
        return f'{{"id":{op_id},"type":"next","payload":'
    return f'{{"type":"data","id":{op_id},"payload":'


def _variables_in(node: Node) -> Iterator[str]:
    if isinstance(node, VariableNode):
        yield node.name.value
        return
    for key in node.keys:
        value = getattr(node, key, None)
        children = value if isinstance(value, tuple | list) else (value,)
        for child in children:
            if isinstance(child, Node):
                yield from _variables_in(child)


def selection_variables(info: Info[Any, Any]) -> frozenset[str]:
    """Variables that can change how an event renders: any used below or on the root field
    except in its arguments, and any used in a fragment."""
    nodes: list[Node] = []
    raw = resolve_info(info)
    for field in raw.field_nodes:
        nodes.extend(field.directives or ())
        if field.selection_set is not None:
            nodes.append(field.selection_set)
    nodes.extend(raw.fragments.values())
    return frozenset(name for node in nodes for name in _variables_in(node))


def _payload(result: ExecutionResult, request_id: str) -> str:
    body: dict[str, Any] = {"data": result.data}
    if result.errors:
        body["errors"] = [coded(error, request_id).formatted for error in result.errors]
    return orjson.dumps(body).decode()


@dataclass(slots=True)
class _Group:
    executor: Executor[Any]
    request_id: str
    service: Any


class Broadcast:
    """Renderings shared by the subscriptions of one API process (one per GraphQL view)."""

    def __init__(self, schema: BaseSchema) -> None:
        # The schema's own execution context (PlainLeavesExecutionContext), as strawberry uses.
        self._executor_class: type[Executor[Any]] = (
            getattr(schema, "execution_context_class", None) or Executor
        )
        self._results: OrderedDict[tuple[int, GroupKey], str | asyncio.Task[str]] = OrderedDict()
        self._groups: OrderedDict[GroupKey, _Group] = OrderedDict()
        self._selection_variables: dict[tuple[str, str | None], frozenset[str]] = {}
        self._loaders: tuple[Any, Loaders] | None = None  # (service, its loaders)

    async def deliver(
        self, info: Info[GraphQLContext, Any], events: AsyncIterator[StatusEvent], sink: Sink
    ) -> None:
        """Send every event of the stream to the sink until the stream ends."""
        key = self._key(info, sink)
        async for event in events:
            payload = self._results.get((event.event_id, key))
            if payload is None:
                payload = self._render(event, key, info, sink)
            if not isinstance(payload, str):
                payload = await asyncio.shield(payload)
            await sink.send(payload)

    def _key(self, info: Info[GraphQLContext, Any], sink: Sink) -> GroupKey:
        document = (sink.query, sink.operation_name)
        names = self._selection_variables.get(document)
        if names is None:
            if len(self._selection_variables) >= GROUPS_KEPT:
                self._selection_variables.clear()
            names = self._selection_variables[document] = selection_variables(info)
        used = {name: value for name, value in (sink.variables or {}).items() if name in names}
        return sink.query, sink.operation_name, orjson.dumps(used, option=orjson.OPT_SORT_KEYS)

    def _render(
        self, event: StatusEvent, key: GroupKey, info: Info[GraphQLContext, Any], sink: Sink
    ) -> str | asyncio.Task[str]:
        group = self._group(key, info, sink)
        result = group.executor.build_per_event_executor(event).execute_operation(False)
        rendered: str | asyncio.Task[str]
        if isinstance(result, ExecutionResult):
            rendered = _payload(result, group.request_id)
        elif inspect.isawaitable(result):
            # An async field (task): one rendering task that every subscriber of the group
            # awaits, and that no single subscriber leaving can cancel.
            rendered = asyncio.ensure_future(self._finish(result, (event.event_id, key), group))
        else:  # incremental delivery results: no wire form for them in a subscription
            raise GraphQLError("@defer and @stream are not supported in subscriptions")
        self._keep((event.event_id, key), rendered)
        return rendered

    async def _finish(self, pending: Any, result_key: tuple[int, GroupKey], group: _Group) -> str:
        try:
            payload = _payload(await pending, group.request_id)
        except BaseException:
            self._results.pop(result_key, None)
            raise
        if result_key in self._results:
            self._results[result_key] = payload
        return payload

    def _keep(self, result_key: tuple[int, GroupKey], value: str | asyncio.Task[str]) -> None:
        self._results[result_key] = value
        while len(self._results) > RESULTS_KEPT:
            self._results.popitem(last=False)

    def _group(self, key: GroupKey, info: Info[GraphQLContext, Any], sink: Sink) -> _Group:
        service = info.context.service
        group = self._groups.get(key)
        # A view outliving its app's lifespan (tests reopen apps) must not render with a
        # closed service.
        if group is not None and group.service is service:
            self._groups.move_to_end(key)
            return group
        raw = resolve_info(info)
        document = DocumentNode(definitions=(raw.operation, *raw.fragments.values()))
        # The group's own context: its loaders are shared by every group, so the `task` reads
        # of one event's renderings go out as one batch; nothing is cached between events.
        request_id = f"feed-{uuid.uuid4().hex[:12]}"
        context = GraphQLContext(
            service=service, hub=info.context.hub, request_id=request_id, cache_loads=False
        )
        if self._loaders is None or self._loaders[0] is not service:
            self._loaders = (service, Loaders(service, cache=False))
        context.loaders = self._loaders[1]
        executor = self._executor_class.build(
            raw.schema, document, None, context, sink.variables, sink.operation_name
        )
        if isinstance(executor, list):  # the subscription itself validated: cannot happen
            raise RuntimeError(f"subscription document does not build: {executor}")
        group = self._groups[key] = _Group(executor, request_id, service)
        while len(self._groups) > GROUPS_KEPT:
            self._groups.popitem(last=False)
        return group

