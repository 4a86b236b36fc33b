"""Property-based fuzz of the real server (hypothesis, derandomized: the same cases every run).

Generated hostile operations, variables, bodies and headers (wrong types, ints beyond 2^31 and
2^63, deep nesting, invalid UUIDs, NUL bytes, lone surrogates, 100 kB strings, odd JSON). For
every answer: no 5xx, nothing internal (paths, SQL, tracebacks) that the request did not carry
itself; after all of them: no unhandled exception in the server's log, /healthz still answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.access_support import AccessServer, access_server

pytestmark = pytest.mark.slow

CASES = 2_000
# What must never reach a client unless the client sent it.
INTERNALS = [
    "Traceback", 'File "', "site-packages", "/work/", ".py", "sqlalchemy", "asyncpg",
    "SELECT ", "UPDATE ", "INSERT ", "psycopg", "pg_", "checkmate.", "Error(",
]
LOG_PROBLEMS = ["Traceback", "unexpected error", "Exception in ASGI", "Task exception"]

OPERATIONS = [
    "query($f: TaskFilter, $n: Int, $a: String, $s: SortOrder)"
    " { tasks(filter: $f, maxResults: $n, after: $a, sort: $s)"
    " { totalCount nodes { id status params metadata { index data } lock { owner } } "
    "pageInfo { endCursor } } }",
    "query($id: ID!) { task(id: $id) { id name tags params lockDetected stageStatus } }",
    "query($f: TaskFilter) { taskCounts(filter: $f) { status count } }",
    "query($f: AuditFilter, $n: Int, $a: String)"
    " { auditLog(filter: $f, maxResults: $n, after: $a) { nodes { id selection } } }",
    "mutation($ids: [ID!], $f: TaskFilter, $n: Int, $d: Boolean, $t: Boolean, $r: String)"
    " { cancelTasks(taskIds: $ids, filter: $f, maxResults: $n, dryRun: $d, dbTransact: $t,"
    " reason: $r) { dryRun succeeded { taskId } failed { taskId error } } }",
    "mutation($ids: [ID!], $f: TaskFilter, $n: Int, $d: Boolean)"
    " { unlockTasks(taskIds: $ids, filter: $f, maxResults: $n, dryRun: $d, force: true)"
    " { failed { error } } }",
    "mutation($ids: [ID!], $f: TaskFilter, $n: Int) { cleanTasks(taskIds: $ids, filter: $f,"
    " maxResults: $n) { failed { error } } }",
    "mutation($ids: [ID!], $n: Int) { invokeTasks(taskIds: $ids, maxResults: $n)"
    " { failed { error } } }",
    "mutation($i: CreateTaskInput!, $r: String) { createTask(input: $i, reason: $r) { id } }",
    "subscription { taskStatusChanged { eventId } }",
]
VARIABLE_NAMES = ["f", "n", "a", "s", "id", "ids", "d", "t", "r", "i", "x"]

hostile_ints = st.sampled_from(
    [0, -1, 1, 100, 2**31 - 1, 2**31, -(2**31) - 1, 2**53 + 1, 2**63, -(2**63) - 1, 2**64, 10**40]
)
hostile_strings = st.one_of(
    st.text(max_size=40),
    st.sampled_from([
        "", "\x00", "a\x00b", "\ud800", "x\udfffy", "not-a-uuid", "00000000-0000-0000-0000",
        "00000000-0000-0000-0000-000000000000", "{00000000-0000-0000-0000-000000000000}",
        "' OR 1=1 --", "%s%s%n", "../../etc/passwd", "ERROR", "QUEUED", "desc", "ASC",
        "2026-13-45T99:99:99", "9999-12-31T23:59:59+14:00", "-1", "1e309", "NaN",
        "bWFsZm9ybWVk", "MjAyNi0wMS0wMVQwMDowMDowMHwx", "x" * 100_000,
    ]),
)
leaves = st.one_of(
    st.none(), st.booleans(), hostile_ints, st.floats(allow_nan=False), hostile_strings
)
json_values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(
                st.sampled_from(["ids", "status", "statuses", "queue", "tags", "since", "until",
                                 "cleaned", "name", "action", "actor", "params", "invoke"]),
                st.text(max_size=8),
            ),
            children,
            max_size=4,
        ),
    ),
    max_leaves=12,
)
variables = st.dictionaries(st.sampled_from(VARIABLE_NAMES), json_values, max_size=6)


def deep(depth: int, open_: str, close: str, inner: str = "") -> str:
    return open_ * depth + inner + close * depth


documents = st.one_of(
    st.sampled_from(OPERATIONS),
    st.sampled_from(OPERATIONS).map(lambda op: op.replace("{", "{ {", 1)),
    st.text(max_size=200),
    st.integers(1, 5_000).map(lambda n: deep(n, "{ tasks { nodes ", "} } ", "{ id }")),
    st.integers(1, 3_000).map(lambda n: "{ " + " ".join(f"a{i}: taskCounts {{ count }}"
                                                       for i in range(n)) + " }"),
    st.integers(1, 3_000).map(lambda n: "query { __schema { types { " * n + "name" + " } } }"),
    st.just("query { __typename }\x00"),
    st.just('{ tasks(maxResults: 99999999999999999999999) { totalCount } }'),
    st.just('{ tasks(filter: {ids: ["\\u0000"]}) { totalCount } }'),
    st.just("fragment F on Query { ...F } { ...F }"),
)


def encode(value: Any) -> bytes:
    # ensure_ascii: lone surrogates travel as \\ud800 escapes, which is valid JSON text.
    return json.dumps(value, ensure_ascii=True).encode()


graphql_bodies = st.builds(
    lambda query, variables, operation_name: encode(
        {"query": query, "variables": variables, "operationName": operation_name}
    ),
    documents,
    st.one_of(variables, json_values),
    st.one_of(st.none(), hostile_strings, hostile_ints),
)
odd_bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(encode),
    st.integers(1, 3_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 3_000).map(lambda n: b'{"query":' * n + b'"x"' + b"}" * n),
    st.just(b'{"query": "{ __typename }", "variables": "not an object"}'),
    st.just(b'{"query": "{ __typename }"'),
    st.just(b'{"query": 1e999}'),
    st.just(b"\xff\xfe{\x00}"),
)
ACCEPTS = ["application/json", "application/graphql-response+json", "*/*", "text/html",
           "application/json;q=abc", "", "text/html;q=0.1, */*;q=2"]
CONTENT_TYPES = ["application/json", "application/graphql", "text/plain", "multipart/form-data",
                 "application/x-www-form-urlencoded", "", "application/json; charset=latin-1"]
# What a header value may carry on the wire (h11 refuses control characters and edge spaces).
latin1 = st.text(
    st.characters(codec="latin-1", exclude_categories=("Cc",)), max_size=60
).map(str.strip)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(st.one_of(graphql_bodies, graphql_bodies, graphql_bodies, odd_bodies))
    credential = draw(st.sampled_from(["operator", "operator", "viewer", "none", "garbage"]))
    headers = {
        "content-type": draw(st.sampled_from(CONTENT_TYPES)),
        "accept": draw(st.sampled_from(ACCEPTS)),
    }
    if credential == "garbage":
        headers["authorization"] = draw(latin1)
    elif credential != "none":
        headers["authorization"] = f"Bearer {{{credential}}}"
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET"]))
    return {"method": method, "body": body, "headers": headers,
            # A URL carries at most a few kB (httpx refuses longer query strings).
            "query_param": draw(st.one_of(documents, latin1))[:4000]}


@pytest.fixture(scope="module")
def api(
    server_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AccessServer]:
    with access_server(server_url, template_url, tmp_path_factory.mktemp("fuzz")) as server:
        yield server


def test_hostile_requests_get_clean_answers(api: AccessServer) -> None:
    seen = {"cases": 0}
    started = time.monotonic()
    with httpx.Client(base_url=api.url, timeout=30) as client:

        @settings(
            max_examples=CASES, derandomize=True, deadline=None, database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(request=requests())
        def answer_is_clean(request: dict[str, Any]) -> None:
            seen["cases"] += 1
            headers = [
                (
                    name.encode(),
                    (value.format(**api.tokens) if value.startswith("Bearer {") else value)
                    .encode("latin-1"),
                )
                for name, value in request["headers"].items()
            ]
            if request["method"] == "GET":
                response = client.get(
                    "/graphql", params={"query": request["query_param"]}, headers=headers
                )
                sent = request["query_param"].encode("utf-8", "surrogatepass")
            else:
                response = client.post("/graphql", content=request["body"], headers=headers)
                sent = request["body"]
            assert response.status_code < 500, (response.status_code, response.text[:500])
            text = response.text
            for marker in INTERNALS:
                if marker in text:
                    assert marker.encode() in sent, (marker, text[:1000])

        answer_is_clean()
    elapsed = time.monotonic() - started
    print(f"\nfuzz: {seen['cases']} cases in {elapsed:.1f} s")
    assert seen["cases"] >= CASES
    assert httpx.get(f"{api.url}/healthz", timeout=5).status_code == 200
    assert api.log_path is not None
    log = api.log_path.read_text(errors="replace")
    for problem in LOG_PROBLEMS:
        assert problem not in log, log[-3000:]
