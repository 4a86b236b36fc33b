"""afterEventId the server cannot resume after, and a database lost during the backfill: each
answered with its code before (or instead of) any wrong event, over a real websocket to a real
uvicorn server on loopback."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from checkmate.db.engine import asyncpg_dsn
from checkmate.events import EventHub
from checkmate.settings import Settings
from tests.graphql_helpers import insert_tasks
from tests.subscription_support import SUBSCRIPTION
from tests.support import newest_event_id, wait_until
from tests.test_graphql_subscriptions import (
    LegacyWs,
    TransportWs,
    client,
    serving,
)


async def caught_up(hub: EventHub, raw_conn: asyncpg.Connection) -> None:
    """The hub delivered every event committed so far."""
    await wait_until(lambda: has_delivered(hub, raw_conn))


async def has_delivered(hub: EventHub, raw_conn: asyncpg.Connection) -> bool:
    return bool(hub.delivered >= await newest_event_id(raw_conn))


def only_error(message: dict[str, Any]) -> dict[str, Any]:
    """The single GraphQL error of a subscription's error message, whichever the protocol."""
    assert message["type"] in {"next", "data", "error"}, message
    payload = message["payload"]
    errors = payload if message["type"] == "error" else payload.get("errors")
    assert errors is not None, f"expected an error, got {message}"
    [error] = errors
    return dict(error)


async def oldest_is(conn: asyncpg.Connection, event_id: int) -> bool:
    return bool(await conn.fetchval("SELECT min(id) FROM status_events") == event_id)


async def queue(conn: asyncpg.Connection, ids: list[UUID]) -> None:
    await conn.execute("UPDATE tasks SET status = 'QUEUED' WHERE id = ANY($1)", ids)


@pytest.mark.parametrize("kind", [TransportWs, LegacyWs], ids=["transport-ws", "legacy-ws"])
async def test_an_after_event_id_newer_than_the_newest_event_is_bad_user_input(
    settings: Settings, raw_conn: asyncpg.Connection, kind: type[TransportWs]
) -> None:
    await insert_tasks(raw_conn, 3)
    newest = await newest_event_id(raw_conn)
    # An id kept from a database that was since restored or wiped.
    stale = newest + 1_000
    async with serving(settings) as served, client(served, kind) as feed:
        await feed.subscribe({"after": str(stale)}, query=SUBSCRIPTION)
        error = only_error(await feed.receive())
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert f"event {stale} does not exist yet; the newest is {newest}" in error["message"]


async def test_an_after_event_id_whose_successors_were_pruned_says_so(
    settings: Settings, raw_conn: asyncpg.Connection
) -> None:
    ids = await insert_tasks(raw_conn, 4)
    await queue(raw_conn, ids)
    events = [row["id"] for row in await raw_conn.fetch("SELECT id FROM status_events ORDER BY id")]
    assert len(events) == 8
    # The four creations fall out of the retention; the four status changes stay.
    await raw_conn.execute(
        "UPDATE status_events SET changed_at = now() - $1::interval - interval '1 minute'"
        " WHERE id = ANY($2)", settings.event_retention, events[:4],
    )
    oldest_kept = events[4]
    async with serving(settings) as served:
        # The hub prunes when it starts (then hourly).
        await wait_until(lambda: oldest_is(raw_conn, oldest_kept))
        async with client(served) as feed:
            await feed.subscribe({"after": str(events[1])}, query=SUBSCRIPTION)
            error = only_error(await feed.receive())
        # Resuming right below the oldest kept event loses nothing: it is served.
        async with client(served) as feed:
            await feed.subscribe({"after": str(oldest_kept - 1)}, query=SUBSCRIPTION)
            replayed = [await feed.event() for _ in range(4)]
    assert error["extensions"]["code"] == "EVENTS_PRUNED"
    assert f"the events after {events[1]} were pruned" in error["message"]
    assert f"the oldest kept is {oldest_kept}" in error["message"]
    assert [int(event["eventId"]) for event in replayed] == events[4:]


@pytest.mark.parametrize(
    ("after", "says"),
    [
        ("twelve", "afterEventId"),
        ("-5", "afterEventId"),
        ("9223372036854775808", "event ids are 0 to 9223372036854775807"),
        ("1" * 200, "event ids are 0 to 9223372036854775807"),
    ],
    ids=["non-numeric", "negative", "above-bigint", "huge"],
)
async def test_a_malformed_after_event_id_is_bad_user_input(
    settings: Settings, after: str, says: str
) -> None:
    async with serving(settings) as served, client(served) as feed:
        await feed.subscribe({"after": after}, query=SUBSCRIPTION)
        error = only_error(await feed.receive())
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert says in error["message"]


async def test_a_database_dropped_before_the_backfill_is_unavailable(
    settings: Settings, raw_conn: asyncpg.Connection, server_url: str
) -> None:
    await insert_tasks(raw_conn, 3)
    async with serving(settings) as served:
        await caught_up(served.app.state.hub, raw_conn)
        database = make_url(settings.database_url or "").database
        admin = await asyncpg.connect(asyncpg_dsn(server_url))
        try:
            await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
        finally:
            await admin.close()
        async with client(served) as feed:
            await feed.subscribe({"after": "0"}, query=SUBSCRIPTION)
            error = only_error(await feed.receive())
    assert error["extensions"] == {"code": "UNAVAILABLE"}
    assert "database is unreachable" in error["message"]


async def test_a_connection_lost_during_the_backfill_is_unavailable(
    settings: Settings, raw_conn: asyncpg.Connection, database_url: str
) -> None:
    ids = await insert_tasks(raw_conn, 3)
    await queue(raw_conn, ids)
    async with serving(settings) as served:
        await caught_up(served.app.state.hub, raw_conn)
        # The backfill's read joins tasks; with tasks locked it waits in PostgreSQL, where its
        # connection is then terminated, as a failover or a restart would (the resume check
        # before it reads status_events only and passes).
        locker = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
            async with client(served) as feed:
                await feed.subscribe({"after": "0"}, query=SUBSCRIPTION)
                await terminate_backfill(raw_conn)
                error = only_error(await feed.receive())
            await transaction.rollback()
        finally:
            await locker.close()
    assert error["extensions"] == {"code": "UNAVAILABLE"}
    assert "database is unreachable" in error["message"]


async def terminate_backfill(raw_conn: asyncpg.Connection) -> None:
    """Terminate the server's connection once it waits on the lock, reading events after 0."""
    waiting = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE '%status_events%'"
        " AND query NOT LIKE '%pg_current_snapshot%'"  # the hub's own read loop
    )
    rows = await wait_until(lambda: raw_conn.fetch(waiting))
    for pid in [row["pid"] for row in rows]:
        await raw_conn.execute("SELECT pg_terminate_backend($1)", pid)
