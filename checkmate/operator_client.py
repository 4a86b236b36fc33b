"""What `checkmate tasks` needs from CheckMate, in one small interface with two implementations:
the service layer in this process (`LocalClient`) or a remote API over GraphQL (`RemoteClient`:
httpx for queries and mutations, `websockets` with graphql-transport-ws for the live feed).

Both return plain dicts keyed by the GraphQL field names (`taskId`, `previousStatus`, ...), so
the commands print the same thing and follow the same rules whichever side answers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

from checkmate.actions import BatchAction
from checkmate.errors import ServiceError
from checkmate.models import StageStatus, TaskFilter
from checkmate.settings import Settings

Record = dict[str, Any]


class ClientError(Exception):
    """The request could not be served: bad input, refused, or the service unreachable.
    `code` is the GraphQL error code (BAD_USER_INPUT, UNAUTHENTICATED, UNAVAILABLE, ...)."""

    def __init__(self, message: str, code: str = "BAD_USER_INPUT") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class BatchRequest:
    action: BatchAction
    task_ids: Sequence[str] | None
    task_filter: Record | None  # GraphQL TaskFilter input (camelCase keys, JSON values)
    max_results: int
    dry_run: bool = True
    db_transact: bool = True
    force: bool = False
    reason: str | None = None
    sort: str = "DESC"


@dataclass
class BatchReply:
    succeeded: list[Record] = field(default_factory=list)
    failed: list[Record] = field(default_factory=list)


class OperatorClient(Protocol):
    async def list_tasks(
        self, task_filter: Record | None, *, sort: str, max_results: int
    ) -> list[Record]: ...

    async def get_task(self, task_id: str) -> Record | None: ...

    async def counts(self, task_filter: Record | None) -> dict[str, int]: ...

    async def batch(self, request: BatchRequest) -> BatchReply: ...

    def watch(self, task_filter: Record | None, after: str | None) -> AsyncIterator[Record]: ...

    async def close(self) -> None: ...


# --- field names ---------------------------------------------------------------------------


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _camel_keys(value: Any) -> Any:
    """A model dump (mode="python") as the GraphQL API answers it: camelCase keys (only the
    model's own: a stage's free-form `data` keeps its keys), times in isoformat (as the
    DateTime scalar writes them), ids and enums as strings."""
    if isinstance(value, dict):
        return {
            camel(key): item if key in ("data", "params") else _camel_keys(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_camel_keys(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, UUID):
        return str(value)
    return value


def _snake_filter(task_filter: Record | None) -> TaskFilter | None:
    if not task_filter:
        return None
    names = {camel(name): name for name in TaskFilter.model_fields}
    return TaskFilter.model_validate({names[key]: value for key, value in task_filter.items()})


# --- the service in this process ---------------------------------------------------------


class LocalClient:
    """The service layer with the server's settings (CHECKMATE_* environment)."""

    def __init__(self, service: Any) -> None:
        self.service = service

    @classmethod
    async def open(cls, settings: Settings) -> LocalClient:
        from checkmate.service import CheckMateService

        return cls(await _local(CheckMateService.open(settings)))

    async def list_tasks(
        self, task_filter: Record | None, *, sort: str, max_results: int
    ) -> list[Record]:
        page = await _local(self.service.page(
            _snake_filter(task_filter), sort=sort.lower(), max_results=max_results
        ))
        # The fields a remote listing asks for, no more: the same output either way.
        return [
            _camel_keys(task.model_dump(include=LISTED)) for task in page.tasks
        ]

    async def get_task(self, task_id: str) -> Record | None:
        task = await _local(self.service.find(task_id))
        return None if task is None else _camel_keys(task.model_dump())

    async def counts(self, task_filter: Record | None) -> dict[str, int]:
        counts = await _local(self.service.count_by_status(_snake_filter(task_filter)))
        return {status.value: counts.get(status, 0) for status in StageStatus}

    async def batch(self, request: BatchRequest) -> BatchReply:
        service = self.service
        selection = await _local_call(
            service.select, request.task_ids, _snake_filter(request.task_filter),
            sort=request.sort.lower(), max_results=request.max_results,
        )
        from checkmate.service import BatchOptions

        options = BatchOptions.build(
            dry_run=request.dry_run, db_transact=request.db_transact, force=request.force
        )
        succeeded, failed = await _local(service.run_batch(
            request.action, selection, options, reason=request.reason
        ))
        return BatchReply(
            [_camel_keys(result.model_dump()) for result in succeeded],
            [_camel_keys(result.model_dump()) for result in failed],
        )

    async def watch(self, task_filter: Record | None, after: str | None) -> AsyncIterator[Record]:
        from checkmate.events import EventHub

        hub = EventHub(self.service.database, self.service.settings)
        await _local(hub.start())
        try:
            after_id = None if after is None else int(after)
            async for event in hub.subscribe(_snake_filter(task_filter), after_id):
                record = _camel_keys(event.model_dump())
                record["eventId"] = str(record["eventId"])
                yield record
        finally:
            await hub.stop()

    async def close(self) -> None:
        await self.service.close()


async def _local(awaitable: Any) -> Any:
    try:
        return await awaitable
    except ServiceError as error:
        raise ClientError(error.message, error.code) from error


async def _local_call(function: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return function(*args, **kwargs)
    except ServiceError as error:
        raise ClientError(error.message, error.code) from error


# --- a remote API over GraphQL -------------------------------------------------------------

# In the order of the model's fields, so both clients print the same JSON lines.
TASK_FIELDS = (
    "id name queue tags status stage createdAt updatedAt startedAt finishedAt attempts error"
    " cleaned cleanedAt worker"
)
DETAIL_FIELDS = (
    f"{TASK_FIELDS} params lockDetected stageStatus"
    " lock { owner host pid acquiredAt heartbeatAt stale }"
    " metadata { index name status startedAt finishedAt durationSeconds attempt error traceback"
    " data }"
)
RESULT_FIELDS = "taskId status previousStatus error detail"
EVENT_FIELDS = "eventId taskId status previousStatus stage queue changedAt"
# TASK_FIELDS as the model's names.
LISTED = {
    "id", "name", "queue", "tags", "status", "stage", "created_at", "updated_at", "started_at",
    "finished_at", "cleaned", "cleaned_at", "attempts", "error", "worker",
}
MUTATIONS = {
    BatchAction.CANCEL: "cancelTasks",
    BatchAction.UNLOCK: "unlockTasks",
    BatchAction.CLEAN: "cleanTasks",
    BatchAction.INVOKE: "invokeTasks",
}


def graphql_url(url: str) -> str:
    """`http://host:8000` or `http://host:8000/graphql`: the endpoint."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https"):
        raise ClientError(f"--url must be an http(s) URL (got {url!r})")
    path = parts.path.rstrip("/")
    if not path.endswith("/graphql"):
        path += "/graphql"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class RemoteClient:
    """The GraphQL API at `url`, with a Bearer token when given."""

    def __init__(self, url: str, token: str | None, timeout: float = 60.0) -> None:
        import httpx

        self.url = graphql_url(url)
        self.token = token
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(headers=headers, timeout=timeout)

    async def execute(self, query: str, variables: Record | None = None) -> Record:
        import httpx

        try:
            response = await self.http.post(
                self.url, json={"query": query, "variables": variables or {}}
            )
        except httpx.HTTPError as error:
            raise ClientError(f"cannot reach {self.url}: {error}", "UNAVAILABLE") from None
        try:
            body = response.json()
        except ValueError:
            raise ClientError(
                f"{self.url} answered HTTP {response.status_code}, not GraphQL", "UNAVAILABLE"
            ) from None
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors:
            first = errors[0]
            code = (first.get("extensions") or {}).get("code", "INTERNAL_SERVER_ERROR")
            raise ClientError(str(first.get("message")), code)
        data: Record = body["data"]
        return data

    async def list_tasks(
        self, task_filter: Record | None, *, sort: str, max_results: int
    ) -> list[Record]:
        data = await self.execute(
            "query($f: TaskFilter, $s: SortOrder, $m: Int) {"
            f" tasks(filter: $f, sort: $s, maxResults: $m) {{ nodes {{ {TASK_FIELDS} }} }} }}",
            {"f": task_filter, "s": sort.upper(), "m": max_results},
        )
        nodes: list[Record] = data["tasks"]["nodes"]
        return nodes

    async def get_task(self, task_id: str) -> Record | None:
        data = await self.execute(
            f"query($id: ID!) {{ task(id: $id) {{ {DETAIL_FIELDS} }} }}", {"id": task_id}
        )
        task: Record | None = data["task"]
        return task

    async def counts(self, task_filter: Record | None) -> dict[str, int]:
        data = await self.execute(
            "query($f: TaskFilter) { taskCounts(filter: $f) { status count } }",
            {"f": task_filter},
        )
        found = {row["status"]: row["count"] for row in data["taskCounts"]}
        return {status.value: found.get(status.value, 0) for status in StageStatus}

    async def batch(self, request: BatchRequest) -> BatchReply:
        name = MUTATIONS[request.action]
        unlock = request.action is BatchAction.UNLOCK
        variables: Record = {
            "ids": request.task_ids, "f": request.task_filter, "s": request.sort.upper(),
            "m": request.max_results, "dry": request.dry_run, "tx": request.db_transact,
            "reason": request.reason, **({"force": request.force} if unlock else {}),
        }
        data = await self.execute(
            "mutation($ids: [ID!], $f: TaskFilter, $s: SortOrder, $m: Int, $dry: Boolean,"
            f" $tx: Boolean, $reason: String{', $force: Boolean' if unlock else ''}) {{"
            f" {name}(taskIds: $ids, filter: $f, sort: $s, maxResults: $m, dryRun: $dry,"
            f" dbTransact: $tx, reason: $reason{', force: $force' if unlock else ''}) {{"
            f" succeeded {{ {RESULT_FIELDS} }} failed {{ {RESULT_FIELDS} }} }} }}",
            variables,
        )
        outcome = data[name]
        return BatchReply(outcome["succeeded"], outcome["failed"])

    async def watch(self, task_filter: Record | None, after: str | None) -> AsyncIterator[Record]:
        """Events over graphql-transport-ws; after a dropped connection (or SUBSCRIBER_LAGGING)
        it reconnects and resumes with afterEventId = the last event it yielded."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
        from websockets.typing import Subprotocol

        ws_url = "ws" + self.url.removeprefix("http")
        last = after
        delays = itertools.chain([0.2, 0.5, 1.0, 2.0], itertools.repeat(5.0))
        while True:
            try:
                async with connect(
                    ws_url, subprotocols=[Subprotocol("graphql-transport-ws")], open_timeout=10
                ) as ws:
                    payload = {"Authorization": f"Bearer {self.token}"} if self.token else {}
                    await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
                    ack = json.loads(await ws.recv())
                    if ack.get("type") != "connection_ack":
                        raise ClientError(f"the server refused the feed: {ack}", "UNAVAILABLE")
                    await ws.send(json.dumps({
                        "id": "1", "type": "subscribe",
                        "payload": {
                            "query": "subscription($f: TaskFilter, $after: ID) {"
                            " taskStatusChanged(filter: $f, afterEventId: $after)"
                            f" {{ {EVENT_FIELDS} }} }}",
                            "variables": {"f": task_filter, "after": last},
                        },
                    }))
                    delays = itertools.chain([0.2, 0.5, 1.0, 2.0], itertools.repeat(5.0))
                    async for raw in ws:
                        message = json.loads(raw)
                        kind = message.get("type")
                        if kind == "ping":
                            await ws.send(json.dumps({"type": "pong"}))
                        elif kind == "next":
                            result = message["payload"]
                            if result.get("errors"):
                                _raise_unless_lagging(result["errors"])
                                break
                            event: Record = result["data"]["taskStatusChanged"]
                            last = event["eventId"]
                            yield event
                        elif kind == "error":
                            _raise_unless_lagging(message.get("payload") or [])
                            break
                        elif kind == "complete":
                            break
            except (ConnectionClosed, OSError, InvalidHandshake, TimeoutError) as error:
                refused = (
                    isinstance(error, InvalidStatus) and error.response.status_code in (401, 403)
                ) or (isinstance(error, ConnectionClosed) and error.rcvd is not None
                      and error.rcvd.code in (4401, 4403))
                if refused:
                    raise ClientError("the server refused the token", "UNAUTHENTICATED") from None
            await asyncio.sleep(next(delays))

    async def close(self) -> None:
        await self.http.aclose()


def _raise_unless_lagging(errors: list[Record]) -> None:
    codes = [(error.get("extensions") or {}).get("code") for error in errors]
    if "SUBSCRIBER_LAGGING" in codes:
        return
    message = errors[0].get("message") if errors else "the subscription ended"
    raise ClientError(str(message), str(codes[0] if codes else "INTERNAL_SERVER_ERROR"))
