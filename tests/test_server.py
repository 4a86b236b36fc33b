"""The HTTP side of the server: GraphQL-over-HTTP (GET, media types, request errors), GraphiQL,
health, readiness, metrics, and error codes for failures outside the user's control."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from graphql import GraphQLError

from checkmate.db.engine import create_engine
from checkmate.events import SubscriberLagging
from checkmate.service import CheckMateService
from checkmate.settings import Settings
from checkmate.store import TaskStore
from schema import schema
from schema.context import GraphQLContext
from schema.errors import coded
from server import response_media_type
from tests.graphql_helpers import Api, insert_tasks, running_api

GRAPHQL_RESPONSE = "application/graphql-response+json"


async def test_get_runs_a_query_with_variables(api: Api, raw_conn: asyncpg.Connection) -> None:
    [task_id] = await insert_tasks(raw_conn, 1, queues=("gpu",))
    response = await api.client.get(
        "/graphql",
        params={
            "query": "query Q($id: ID!) { task(id: $id) { id queue } }",
            "variables": f'{{"id": "{task_id}"}}',
        },
        headers={"accept": "application/json"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"data": {"task": {"id": str(task_id), "queue": "gpu"}}}


async def test_get_refuses_a_mutation(api: Api, raw_conn: asyncpg.Connection) -> None:
    [task_id] = await insert_tasks(raw_conn, 1)
    mutation = f'mutation {{ cancelTasks(taskIds: ["{task_id}"], dryRun: false) {{ dryRun }} }}'
    response = await api.client.get("/graphql", params={"query": mutation})
    assert response.status_code in {400, 405}
    assert await raw_conn.fetchval("SELECT status FROM tasks") == "CREATED"


async def test_graphiql_on_a_browser_get(api: Api) -> None:
    response = await api.client.get("/graphql", headers={"accept": "text/html"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "graphiql" in response.text.lower()


async def test_graphql_response_media_type_and_request_errors(api: Api) -> None:
    ok = await api.client.post(
        "/graphql", json={"query": "{ tasks { nodes { id } } }"},
        headers={"accept": f"{GRAPHQL_RESPONSE}, application/json;q=0.9"},
    )
    assert (ok.status_code, ok.headers["content-type"]) == (200, GRAPHQL_RESPONSE)
    assert ok.json() == {"data": {"tasks": {"nodes": []}}}

    for accept, status in ((GRAPHQL_RESPONSE, 400), ("application/json", 200)):
        broken = await api.client.post(
            "/graphql", json={"query": "{ tasks { nodes { id }"}, headers={"accept": accept}
        )
        assert broken.status_code == status
        assert broken.headers["content-type"].startswith(accept)
        body = broken.json()
        assert "data" not in body, "a request error has no data entry"
        assert [e["extensions"]["code"] for e in body["errors"]] == ["GRAPHQL_PARSE_FAILED"]

    invalid = await api.client.post(
        "/graphql", json={"query": "{ tasks { nodes { nope } } }"},
        headers={"accept": GRAPHQL_RESPONSE},
    )
    assert invalid.status_code == 400
    [error] = invalid.json()["errors"]
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "nope" in error["message"]


def test_media_type_negotiation() -> None:
    assert response_media_type("") == "application/json"
    assert response_media_type("*/*") == "application/json"
    assert response_media_type(GRAPHQL_RESPONSE) == GRAPHQL_RESPONSE
    assert response_media_type(f"application/json, {GRAPHQL_RESPONSE}") == GRAPHQL_RESPONSE
    assert response_media_type(f"application/json, {GRAPHQL_RESPONSE};q=0.5") == (
        "application/json"
    )
    assert response_media_type("application/*") == "application/json"
    # Neither media type acceptable: the request gets 406 (GraphQL-over-HTTP recommends it).
    assert response_media_type(f"{GRAPHQL_RESPONSE};q=0") is None
    assert response_media_type("text/plain") is None


async def test_request_id_is_echoed_or_made(api: Api) -> None:
    query = {"query": "{ taskCounts { count } }"}
    given = await api.client.post("/graphql", json=query, headers={"x-request-id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = await api.client.post("/graphql", json=query, headers={"x-request-id": "bad id!\x01"})
    assert made.headers["x-request-id"] not in {"", "bad id!\x01"}


async def test_unexpected_errors_are_masked_and_logged_with_the_request_id(
    api: Api, raw_conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    await raw_conn.execute("ALTER TABLE tasks RENAME TO tasks_gone")
    try:
        response = await api.client.post(
            "/graphql", json={"query": "{ tasks { nodes { id } } }"},
            headers={"x-request-id": "req-42"},
        )
    finally:
        await raw_conn.execute("ALTER TABLE tasks_gone RENAME TO tasks")
    [error] = response.json()["errors"]
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "requestId": "req-42"}
    assert "req-42" in error["message"]
    for leak in ("tasks", "SELECT", "relation", "Traceback", "asyncpg"):
        assert leak not in error["message"]
    assert any("req-42" in record.getMessage() for record in caplog.records)
    # The next request works again: nothing was left broken.
    assert (await api.data("{ tasks { nodes { id } } }")) == {"tasks": {"nodes": []}}


async def test_database_unreachable_is_unavailable(tmp_path: Path) -> None:
    dead_url = "postgresql://postgres@127.0.0.1:9/nowhere"
    settings = Settings(database_url=dead_url, store_url="memory://", data_dir=tmp_path)
    service = CheckMateService(
        create_engine(dead_url, pool_size=1), TaskStore.from_url("memory://"), settings, dead_url
    )
    try:
        result = await schema.execute(
            "{ tasks { nodes { id } } }",
            context_value=GraphQLContext(service=service, hub=None, request_id="r1"),
        )
    finally:
        await service.close()
    assert result.errors is not None
    [error] = result.errors
    assert error.extensions == {"code": "UNAVAILABLE"}
    assert "database" in error.message


def test_a_lagging_subscriber_is_told_where_to_resume() -> None:
    error = coded(GraphQLError("x", original_error=SubscriberLagging(1234)), "r1")
    assert error.extensions == {"code": "SUBSCRIBER_LAGGING", "lastEventId": "1234"}
    assert "afterEventId=1234" in error.message


async def test_healthz_readyz_and_metrics(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    ready = await api.client.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"database": "ok", "store": "ok"})
    await api.client.post("/graphql", json={"query": "{ taskCounts { count } }"})
    metrics = (await api.client.get("/metrics")).text
    assert 'checkmate_http_requests_total{method="POST",path="/graphql",status="200"}' in metrics
    assert 'checkmate_http_request_seconds_bucket{le="0.001",method="POST",path="/graphql"}' in (
        metrics
    )
    assert "checkmate_event_subscribers" in metrics
    timing = (await api.client.get("/healthz")).headers["server-timing"]
    assert timing.startswith("app;dur=")
    assert float(timing.removeprefix("app;dur=")) >= 0


async def test_readyz_reports_an_unreachable_store(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real S3 client aimed at a closed loopback port.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    unreachable = settings.model_copy(update={"store_url": "s3://bucket/prefix"})
    async with running_api(unreachable) as api:
        ready = await api.client.get("/readyz")
    assert (ready.status_code, ready.json()) == (503, {"database": "ok", "store": "unreachable"})
