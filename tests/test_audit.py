"""The audit trail: one row per real mutation (createTask included) in the transaction of its
effect, none for dry runs; auditLog's order, filters, pages and role."""

from __future__ import annotations

import json
from typing import Any
from uuid import uuid4

import asyncpg
import pytest

from checkmate.access import AccessControl
from checkmate.models import StageStatus
from checkmate.service import CheckMateService, ServiceError
from checkmate.store import TaskStore
from tests.core_helpers import TaskSpec, make_tasks
from tests.graphql_helpers import Api

S = StageStatus
AUDIT = """
query($filter: AuditFilter, $max: Int, $after: String) {
  auditLog(filter: $filter, maxResults: $max, after: $after) {
    nodes { id at actor action selection reason succeeded failed }
    pageInfo { hasNextPage endCursor }
  }
}"""


async def rows(raw_conn: asyncpg.Connection) -> list[dict[str, Any]]:
    found = await raw_conn.fetch("SELECT * FROM audit_log ORDER BY id")
    return [{**row, "selection": json.loads(row["selection"])} for row in found]


async def test_every_real_mutation_writes_one_row_and_dry_runs_none(
    api: Api, raw_conn: asyncpg.Connection, store: TaskStore
) -> None:
    created, error, done = await make_tasks(
        raw_conn, store, [TaskSpec(S.CREATED), TaskSpec(S.ERROR), TaskSpec(S.COMPLETED)]
    )
    missing = uuid4()
    for mutation in ("cancelTasks", "unlockTasks", "cleanTasks", "invokeTasks"):
        await api.data(
            f'mutation {{ {mutation}(taskIds: ["{created}"], reason: "preview") {{ dryRun }} }}'
        )
    assert await rows(raw_conn) == []

    cases = [
        ("cancelTasks", [created, missing], "CANCEL", [created], [missing]),
        ("invokeTasks", [error], "INVOKE", [error], []),
        ("cleanTasks", [done, created], "CLEAN", [done, created], []),
        ("unlockTasks", [done], "UNLOCK", [], [done]),
    ]
    for mutation, ids, action, succeeded, failed in cases:
        id_list = ", ".join(f'"{task_id}"' for task_id in ids)
        await api.data(
            f"mutation {{ {mutation}(taskIds: [{id_list}], dryRun: false, maxResults: 7, "
            f'reason: "ticket 42") {{ dryRun }} }}'
        )
        last = (await rows(raw_conn))[-1]
        assert (last["actor"], last["action"], last["reason"]) == ("local", action, "ticket 42")
        assert sorted(last["succeeded"]) == sorted(succeeded)
        assert sorted(last["failed"]) == sorted(failed)
        assert last["selection"]["maxResults"] == 7
        assert sorted(last["selection"]["filter"]["ids"]) == sorted(str(i) for i in ids)

    task = await api.data(
        'mutation { createTask(input: {name: "demo.pipeline", queue: "q"}) { id } }'
    )
    entries = await rows(raw_conn)
    assert len(entries) == len(cases) + 1
    assert entries[-1]["action"] == "CREATE"
    assert [str(i) for i in entries[-1]["succeeded"]] == [task["createTask"]["id"]]
    assert entries[-1]["selection"] == {"name": "demo.pipeline", "queue": "q", "invoke": False}
    assert entries[-1]["reason"] is None


async def test_the_actor_is_the_tokens_name(
    api: Api, raw_conn: asyncpg.Connection
) -> None:
    access: AccessControl = api.app.state.access  # the server's own: no snapshot to outwait
    secret = await access.create("ci-bot", "operator")
    body = await api.client.post(
        "/graphql",
        json={"query": f'mutation {{ cancelTasks(taskIds: ["{uuid4()}"], dryRun: false) '
                       "{ dryRun } }"},
        headers={"authorization": f"Bearer {secret}"},
    )
    assert body.status_code == 200, body.text
    [entry] = await rows(raw_conn)
    assert entry["actor"] == "ci-bot"


async def test_the_audit_row_shares_the_effects_transaction(
    service: CheckMateService, raw_conn: asyncpg.Connection, store: TaskStore
) -> None:
    """With the audit insert failing, the effect rolls back too (db_transact and create)."""
    [task_id] = await make_tasks(raw_conn, store, [TaskSpec(S.CREATED)])
    await raw_conn.execute(
        "ALTER TABLE audit_log ADD CONSTRAINT refuse_all CHECK (false) NOT VALID"
    )
    with pytest.raises(Exception, match="refuse_all"):
        await service.cancel(task_id, dry_run=False, db_transact=True)
    assert await raw_conn.fetchval("SELECT status FROM tasks") == "CREATED"
    with pytest.raises(Exception, match="refuse_all"):
        await service.create("demo.pipeline")
    assert await raw_conn.fetchval("SELECT count(*) FROM tasks") == 1


async def test_chunked_runs_append_each_chunks_ids(
    service: CheckMateService, raw_conn: asyncpg.Connection
) -> None:
    """db_transact=False commits per chunk (50 here): the row holds every committed id."""
    await raw_conn.execute(
        "INSERT INTO tasks (name) SELECT 'demo.pipeline' FROM generate_series(1, 120)"
    )
    succeeded, failed = await service.cancel(
        status=S.CREATED, max_results=1000, dry_run=False, db_transact=False, reason="drain"
    )
    [entry] = await rows(raw_conn)
    assert sorted(map(str, entry["succeeded"])) == sorted(r.task_id for r in succeeded)
    assert len(entry["succeeded"]) == 120
    assert entry["failed"] == []
    assert failed == []


async def test_a_long_reason_is_bad_user_input(service: CheckMateService) -> None:
    with pytest.raises(ServiceError) as raised:
        await service.cancel(uuid4(), reason="x" * 1001)
    assert raised.value.code == ServiceError.BAD_USER_INPUT


async def _audit(api: Api, **variables: Any) -> dict[str, Any]:
    data = await api.data(AUDIT, variables)
    return dict(data["auditLog"])


async def test_audit_log_order_filters_and_pages(
    api: Api, raw_conn: asyncpg.Connection
) -> None:
    await raw_conn.executemany(
        "INSERT INTO audit_log (at, actor, action, selection, succeeded, failed) "
        "VALUES ($1::text::timestamptz, $2, $3, '{}', '{}', '{}')",
        [
            ("2026-01-01T00:00:00Z", "alice", "CANCEL"),
            ("2026-01-02T00:00:00Z", "bob", "INVOKE"),
            ("2026-01-02T00:00:00Z", "alice", "INVOKE"),  # same time: the id breaks the tie
            ("2026-01-03T00:00:00Z", "bob", "CLEAN"),
        ],
    )
    everything = await _audit(api)
    assert [(n["actor"], n["action"]) for n in everything["nodes"]] == [
        ("bob", "CLEAN"), ("alice", "INVOKE"), ("bob", "INVOKE"), ("alice", "CANCEL")
    ]
    pages: list[str] = []
    after = None
    while True:
        page = await _audit(api, max=1, after=after)
        pages += [node["id"] for node in page["nodes"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert pages == [node["id"] for node in everything["nodes"]]

    by_actor = await _audit(api, filter={"actor": "alice"})
    assert [n["action"] for n in by_actor["nodes"]] == ["INVOKE", "CANCEL"]
    by_action = await _audit(api, filter={"action": "INVOKE"})
    assert [n["actor"] for n in by_action["nodes"]] == ["alice", "bob"]
    window = await _audit(
        api, filter={"since": "2026-01-02T00:00:00Z", "until": "2026-01-03T00:00:00Z"}
    )
    assert len(window["nodes"]) == 2

    for variables in ({"after": "garbage"}, {"max": 0}, {"max": 2**31 - 1}):
        body = await api.post(AUDIT, variables)
        assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"]
