"""Requests that cannot be run get what GraphQL-over-HTTP asks for: a JSON body with `errors`
(each with a code), the fitting status, never text/plain and never a 500."""

from __future__ import annotations

from typing import Any

import pytest

from tests.graphql_helpers import Api

JSON = "application/json"
GRAPHQL_RESPONSE = "application/graphql-response+json"
QUERY = "{ taskCounts { count } }"


def post(body: str, content_type: str | None = JSON, **headers: str) -> dict[str, Any]:
    if content_type is not None:
        headers["content-type"] = content_type
    return {"method": "POST", "content": body, "headers": headers}


def get(**params: str) -> dict[str, Any]:
    return {"method": "GET", "params": params, "headers": {"accept": JSON}}


BAD_REQUESTS = {
    "body not JSON": (post("{bad"), 400, "not JSON"),
    "JSON null": (post("null"), 400, "must be a JSON object"),
    "JSON string": (post('"x"'), 400, "must be a JSON object"),
    "JSON number": (post(" 1"), 400, "must be a JSON object"),
    "JSON array (batching is off)": (post("[]"), 400, "send one operation per request"),
    "no query": (post("{}"), 400, "no `query`"),
    "query not a string": (post('{"query": 1}'), 400, "`query` must be a string"),
    "variables not an object": (
        post(f'{{"query": "{QUERY}", "variables": [1]}}'), 400, "`variables` must be an object"
    ),
    "text/plain": (post(QUERY, "text/plain"), 415, "unsupported content type 'text/plain'"),
    "no content type": (post(f'{{"query": "{QUERY}"}}', None), 415, "unsupported content type"),
    "unacceptable Accept": (post(f'{{"query": "{QUERY}"}}', accept="text/plain"), 406, "Accept"),
    "PUT": ({"method": "PUT", "content": "{}", "headers": {"content-type": JSON}}, 405, "GET"),
    "GET variables not JSON": (get(query=QUERY, variables="{bad"), 400, "not JSON"),
    "GET mutation": (
        get(query="mutation { cancelTasks(taskIds: []) { dryRun } }"), 405, "sent with POST"
    ),
}


@pytest.mark.parametrize(
    ("request_args", "status", "message"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys()
)
async def test_transport_errors_are_graphql_errors(
    api: Api, request_args: dict[str, Any], status: int, message: str
) -> None:
    response = await api.client.request(url="/graphql", **request_args)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == JSON
    body = response.json()
    assert "data" not in body
    [error] = body["errors"]
    assert error["extensions"] == {"code": "BAD_REQUEST"}
    assert message in error["message"]
    assert response.headers["x-request-id"]
    if status == 405:
        expected = "POST" if request_args["method"] == "GET" else "GET, POST"
        assert response.headers["allow"] == expected


async def test_transport_errors_follow_the_accepted_media_type(api: Api) -> None:
    response = await api.client.post(
        "/graphql", content="null",
        headers={"content-type": JSON, "accept": GRAPHQL_RESPONSE},
    )
    assert (response.status_code, response.headers["content-type"]) == (400, GRAPHQL_RESPONSE)
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_content_type_parameters_are_accepted(api: Api) -> None:
    response = await api.client.post(
        "/graphql", content=f'{{"query": "{QUERY}"}}',
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200, response.text
    assert "errors" not in response.json()
