"""The event hub against real PostgreSQL; every change is committed by a separate raw asyncpg
connection (or several), as any other process or a hand-written UPDATE would."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import cast
from uuid import UUID, uuid4

import asyncpg
import pytest

from checkmate.db import event_queries
from checkmate.db.engine import asyncpg_dsn
from checkmate.events import EventHub, SubscriberLagging, TaskFacts, matches
from checkmate.events.reader import Snapshot as _Snapshot
from checkmate.models import StageStatus, StatusEvent, TaskFilter
from checkmate.service import CheckMateService
from tests.support import TaskRow, bounded, insert_task_rows, wait_until

Events = AsyncGenerator[StatusEvent, None]


@pytest.fixture
async def hub(service: CheckMateService) -> AsyncIterator[EventHub]:
    # A keep-alive longer than any test: recovery must come from the reconnect, not a poll.
    hub = EventHub(service.database, service.settings, keepalive=60)
    await hub.start()
    yield hub
    await bounded(hub.stop(), "EventHub.stop")


async def new_tasks(
    conn: asyncpg.Connection, count: int, *, name: str = "demo", queue: str = "default",
    tags: tuple[str, ...] = (),
) -> list[UUID]:
    rows = [TaskRow(name=name, queue=queue, tags=tags) for _ in range(count)]
    return await insert_task_rows(conn, rows)


async def set_status(conn: asyncpg.Connection, ids: list[UUID], status: StageStatus) -> None:
    await conn.execute("UPDATE tasks SET status = $1 WHERE id = ANY($2)", status.value, ids)


async def stored_events(conn: asyncpg.Connection, after: int = 0) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM status_events WHERE id > $1 ORDER BY id", after
    )
    return rows


async def take(events: Events, count: int, seconds: float = 15.0) -> list[StatusEvent]:
    """The next `count` events; the subscription stays open for more."""
    taken: list[StatusEvent] = []

    async def run() -> None:
        while len(taken) < count:
            taken.append(await anext(events))

    await asyncio.wait_for(run(), seconds)
    return taken


async def nothing_more(
    events: Events, wait: float = 0.5, pending: asyncio.Task[StatusEvent] | None = None
) -> bool:
    """No further event arrives within `wait` (continuing `pending` if a step is under way)."""
    task = pending or asyncio.ensure_future(anext(events))
    done, _ = await asyncio.wait({task}, timeout=wait)
    if done:
        return False
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task  # the cancelled step ends the subscription
    return True


async def caught_up(hub: EventHub) -> None:
    async with hub.database.connect() as conn:
        newest = await event_queries.select_last_event_id(conn)
    await wait_until(lambda: hub.delivered >= newest, describe=lambda: f"never delivered {newest}")


async def read_past(hub: EventHub, conn: asyncpg.Connection) -> int:
    """Wait until the hub's reader has read up to the newest committed event id; that id."""
    newest = (await stored_events(conn))[-1]["id"]
    await wait_until(
        lambda: hub.reader.read_upto >= newest, describe=lambda: f"never read {newest}"
    )
    return int(newest)


def count_reads(hub: EventHub) -> list[int]:
    """A one-item list counting the hub's reads from now on."""
    reads = [0]
    read_once = hub.read_once

    async def counted() -> bool:
        reads[0] += 1
        return await read_once()

    hub.read_once = counted  # type: ignore[method-assign]
    return reads


async def open_subscription(
    hub: EventHub,
    task_filter: TaskFilter | None = None,
    after: int | None = None,
    *,
    catch_up: bool = True,
) -> tuple[Events, asyncio.Task[StatusEvent]]:
    """Once the hub delivered everything committed so far, start a subscription and register
    it; returns it and its pending first step."""
    if catch_up:
        await caught_up(hub)
    before = hub.subscriber_count
    events = cast(Events, hub.subscribe(task_filter, after))  # an async generator: aclose()
    first = asyncio.ensure_future(anext(events))
    await wait_until(
        lambda: hub.subscriber_count > before or first.done(),
        describe=lambda: "subscription never registered",
    )
    return events, first


async def collect(
    events: Events, first: asyncio.Task[StatusEvent], count: int
) -> list[StatusEvent]:
    head = await asyncio.wait_for(first, 15)
    return [head, *await take(events, count - 1)] if count > 1 else [head]


def as_tuple(event: StatusEvent) -> tuple[object, ...]:
    return (event.event_id, event.task_id, event.status, event.previous_status, event.queue)


def record_tuple(row: asyncpg.Record) -> tuple[object, ...]:
    previous = StageStatus(row["previous_status"]) if row["previous_status"] else None
    return (row["id"], row["task_id"], StageStatus(row["status"]), previous, row["queue"])


async def test_hub_receives_an_update_made_by_raw_sql(
    hub: EventHub, raw_conn: asyncpg.Connection
) -> None:
    events, first = await open_subscription(hub)
    (task_id,) = await new_tasks(raw_conn, 1, queue="q1")
    await set_status(raw_conn, [task_id], StageStatus.QUEUED)
    received = await collect(events, first, 2)
    assert [as_tuple(e) for e in received] == [
        record_tuple(row) for row in await stored_events(raw_conn)
    ]
    assert received[1].status is StageStatus.QUEUED
    assert received[1].previous_status is StageStatus.CREATED
    assert received[1].queue == "q1"
    await events.aclose()
    assert hub.subscriber_count == 0


async def test_out_of_order_commits_are_delivered_in_id_order(
    hub: EventHub, raw_conn: asyncpg.Connection, database_url: str
) -> None:
    first_task, second_task = await new_tasks(raw_conn, 2)
    events, first = await open_subscription(hub)
    slow = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        transaction = slow.transaction()
        await transaction.start()
        await set_status(slow, [first_task], StageStatus.QUEUED)  # takes the lower id
        await set_status(raw_conn, [second_task], StageStatus.QUEUED)  # commits first
        await read_past(hub, raw_conn)
        assert not first.done(), "an event above an open transaction's id was not held back"
        await transaction.commit()
    finally:
        await slow.close()
    received = await collect(events, first, 2)
    assert [e.task_id for e in received] == [first_task, second_task]
    assert received[0].event_id < received[1].event_id


async def test_a_rolled_back_hole_does_not_stall_the_feed(
    hub: EventHub, raw_conn: asyncpg.Connection, database_url: str
) -> None:
    first_task, second_task = await new_tasks(raw_conn, 2)
    events, first = await open_subscription(hub)
    aborted = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        transaction = aborted.transaction()
        await transaction.start()
        await set_status(aborted, [first_task], StageStatus.QUEUED)
        await set_status(raw_conn, [second_task], StageStatus.QUEUED)
        await transaction.rollback()
    finally:
        await aborted.close()
    (received,) = await collect(events, first, 1)
    assert received.task_id == second_task
    # The hole was resolved by visibility, well before max_hold would have skipped it.
    assert hub.max_hold > 5
    assert not hub.reader.holes
    assert not hub.reader.overdue


async def test_a_transaction_in_flight_when_the_hub_starts_is_not_missed(
    service: CheckMateService, raw_conn: asyncpg.Connection, database_url: str
) -> None:
    first_task, second_task = await new_tasks(raw_conn, 2)
    slow = await asyncpg.connect(asyncpg_dsn(database_url))
    hub = EventHub(service.database, service.settings, keepalive=60)
    try:
        transaction = slow.transaction()
        await transaction.start()
        await set_status(slow, [first_task], StageStatus.QUEUED)
        await set_status(raw_conn, [second_task], StageStatus.QUEUED)  # newest id at start
        await hub.start()
        await read_past(hub, raw_conn)  # the first read ran before the subscription
        events, first = await open_subscription(hub, catch_up=False)
        await transaction.commit()
        received = await collect(events, first, 1)
        assert received[0].task_id == first_task
    finally:
        await slow.close()
        await bounded(hub.stop(), "EventHub.stop")


async def test_after_event_id_resumes_after_a_disconnect_without_loss_or_duplicate(
    hub: EventHub, raw_conn: asyncpg.Connection
) -> None:
    ids = await new_tasks(raw_conn, 6)
    events, first = await open_subscription(hub)
    await set_status(raw_conn, ids[:3], StageStatus.QUEUED)
    seen = await collect(events, first, 3)
    await events.aclose()  # the client disconnects
    # Missed while away: one statement, then several.
    await set_status(raw_conn, ids[3:], StageStatus.QUEUED)
    await set_status(raw_conn, ids[:2], StageStatus.CANCELED)
    await set_status(raw_conn, [ids[2]], StageStatus.RUNNING)
    resumed, first = await open_subscription(hub, after=seen[-1].event_id)
    # Committed after the resubscription: must come once, after the backfill.
    await set_status(raw_conn, ids[3:5], StageStatus.CANCELED)
    missed_and_new = await collect(resumed, first, 8)
    stored = await stored_events(raw_conn, seen[-1].event_id)
    assert [as_tuple(e) for e in missed_and_new] == [record_tuple(row) for row in stored]
    assert await nothing_more(resumed)
    await resumed.aclose()


async def test_after_event_id_ahead_of_this_process_skips_what_the_client_has(
    hub: EventHub, raw_conn: asyncpg.Connection
) -> None:
    ids = await new_tasks(raw_conn, 3)
    newest = (await stored_events(raw_conn))[-1]["id"]
    # A client that saw `newest` on another server process, before this hub delivered it.
    hub_position = hub.delivered
    events, first = await open_subscription(hub, after=newest)
    assert hub_position <= newest
    await set_status(raw_conn, ids, StageStatus.QUEUED)
    received = await collect(events, first, 3)
    assert all(e.event_id > newest for e in received)
    assert {e.task_id for e in received} == set(ids)
    await events.aclose()


async def _write_changes(database_url: str, ids: list[UUID], rounds: int) -> None:
    """Status changes, one task per statement and transaction, from one connection."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        statuses = [StageStatus.QUEUED, StageStatus.RUNNING, StageStatus.CANCELED]
        for round_ in range(rounds):
            for task_id in ids:
                await set_status(conn, [task_id], statuses[round_ % len(statuses)])
    finally:
        await conn.close()


@pytest.mark.slow
async def test_terminating_the_listen_connection_during_1000_changes_loses_nothing(
    hub: EventHub, raw_conn: asyncpg.Connection, database_url: str
) -> None:
    writers, per_writer_tasks, rounds = 4, 25, 10  # 4 * 25 * 10 = 1,000 changes
    groups = [await new_tasks(raw_conn, per_writer_tasks) for _ in range(writers)]
    start = (await stored_events(raw_conn))[-1]["id"]
    events, first = await open_subscription(hub, after=start)
    killed: list[int] = []

    async def kill_listener() -> None:
        # Four kills spread over the writes: after 150, 350, 550 and 750 changes, each of a
        # listener the hub reopened after the previous kill.
        for written in (150, 350, 550, 750):

            async def due(written: int = written) -> int | None:
                newest = await raw_conn.fetchval("SELECT max(id) FROM status_events")
                pid = hub.listener_pid
                return pid if newest >= start + written and pid not in (None, *killed) else None

            pid = await wait_until(due, interval=0.01)
            await raw_conn.execute("SELECT pg_terminate_backend($1)", pid)
            killed.append(pid)

    await asyncio.gather(
        *(_write_changes(database_url, ids, rounds) for ids in groups), kill_listener()
    )
    received = await collect(events, first, writers * per_writer_tasks * rounds)
    stored = await stored_events(raw_conn, start)
    assert len(stored) == 1_000
    assert [as_tuple(e) for e in received] == [record_tuple(row) for row in stored]
    assert await nothing_more(events)
    assert len(killed) >= 2
    assert hub.listener_pid is not None
    assert hub.listener_pid not in killed
    await events.aclose()


async def test_an_overflowing_subscriber_is_dropped_while_another_gets_everything(
    service: CheckMateService, raw_conn: asyncpg.Connection
) -> None:
    hub = EventHub(service.database, service.settings, keepalive=60, max_queue=10)
    await hub.start()
    try:
        ids = await new_tasks(raw_conn, 1)
        slow, slow_first = await open_subscription(hub)
        fast, fast_first = await open_subscription(hub)
        await set_status(raw_conn, ids, StageStatus.QUEUED)
        slow_seen = await asyncio.wait_for(slow_first, 15)
        statuses = [StageStatus.CANCELED, StageStatus.QUEUED] * 20
        fast_received = [await asyncio.wait_for(fast_first, 15)]
        for status in statuses:  # 40 statements: far more than the slow queue holds
            await set_status(raw_conn, ids, status)
            fast_received += await take(fast, 1)
        with pytest.raises(SubscriberLagging) as lagging:
            await take(slow, 1)
        assert lagging.value.last_event_id == slow_seen.event_id
        assert hub.subscriber_count == 1
        stored = await stored_events(raw_conn, slow_seen.event_id - 1)
        assert [as_tuple(e) for e in fast_received] == [record_tuple(row) for row in stored]
        # Resuming where it was dropped gives the slow client exactly what it missed.
        resumed, first = await open_subscription(hub, after=lagging.value.last_event_id)
        assert len(await collect(resumed, first, 40)) == 40
        assert await nothing_more(resumed)
        await resumed.aclose()
        await fast.aclose()
    finally:
        await bounded(hub.stop(), "EventHub.stop")


async def test_each_subscriber_gets_exactly_the_events_its_filter_matches(
    hub: EventHub, raw_conn: asyncpg.Connection
) -> None:
    alpha = await new_tasks(raw_conn, 3, name="alpha", queue="qa", tags=("x", "y"))
    beta = await new_tasks(raw_conn, 3, name="beta", queue="qb", tags=("x",))
    await raw_conn.execute("UPDATE tasks SET cleaned = true WHERE id = $1", beta[0])
    filters = {
        "everything": TaskFilter(),
        "by_ids": TaskFilter(ids=(alpha[0], beta[1])),
        "status": TaskFilter(status=StageStatus.RUNNING),
        "statuses": TaskFilter(statuses=(StageStatus.RUNNING, StageStatus.CANCELED)),
        "queue": TaskFilter(queue="qb"),
        "tags": TaskFilter(tags=("x", "y")),
        "name": TaskFilter(name="beta"),
        "cleaned": TaskFilter(cleaned=True),
        "combined": TaskFilter(queue="qa", status=StageStatus.CANCELED),
        "until_past": TaskFilter(until=datetime(2000, 1, 1, tzinfo=UTC)),
    }
    subscriptions = {key: await open_subscription(hub, f) for key, f in filters.items()}
    start = hub.delivered
    await set_status(raw_conn, [*alpha, *beta], StageStatus.QUEUED)
    await set_status(raw_conn, [alpha[0], beta[0], beta[1]], StageStatus.RUNNING)
    await set_status(raw_conn, [alpha[0], alpha[1], beta[2]], StageStatus.CANCELED)
    stored = await stored_events(raw_conn, start)
    tasks = {row["id"]: row for row in await raw_conn.fetch("SELECT * FROM tasks")}
    for key, task_filter in filters.items():
        expected = [
            row["id"] for row in stored
            if matches(task_filter, _event(row), _facts(tasks[row["task_id"]]))
        ]
        events, first = subscriptions[key]
        if expected:
            received = await collect(events, first, len(expected))
            assert [e.event_id for e in received] == expected, key
            assert await nothing_more(events, wait=0.2), key
        else:
            assert await nothing_more(events, wait=0.2, pending=first), key
    assert len([1 for row in stored if row["task_id"] in alpha]) == 6


def _event(row: asyncpg.Record) -> StatusEvent:
    return StatusEvent(
        event_id=row["id"], task_id=row["task_id"], status=row["status"],
        previous_status=row["previous_status"], stage=row["stage"], queue=row["queue"],
        changed_at=row["changed_at"],
    )


def _facts(row: asyncpg.Record) -> TaskFacts:
    return TaskFacts(row["name"], tuple(row["tags"]), row["created_at"], row["cleaned"])


def test_matches_applies_every_filter_field() -> None:
    created = datetime(2026, 1, 2, tzinfo=UTC)
    task_id = uuid4()
    event = StatusEvent(
        event_id=1, task_id=task_id, status=StageStatus.QUEUED, previous_status=None,
        stage=None, queue="q", changed_at=created,
    )
    facts = TaskFacts("kind", ("a", "b"), created, False)
    hits = [
        TaskFilter(ids=(task_id,)), TaskFilter(status=StageStatus.QUEUED),
        TaskFilter(statuses=(StageStatus.ERROR, StageStatus.QUEUED)), TaskFilter(queue="q"),
        TaskFilter(tags=("b",)), TaskFilter(since=created),
        TaskFilter(until=created + timedelta(days=1)),
        TaskFilter(cleaned=False), TaskFilter(name="kind"),
    ]
    misses = [
        TaskFilter(ids=(uuid4(),)), TaskFilter(status=StageStatus.RUNNING),
        TaskFilter(statuses=(StageStatus.ERROR,)), TaskFilter(queue="other"),
        TaskFilter(tags=("a", "c")), TaskFilter(since=created + timedelta(seconds=1)),
        TaskFilter(until=created), TaskFilter(cleaned=True), TaskFilter(name="other"),
    ]
    assert [matches(f, event, facts) for f in hits] == [True] * len(hits)
    assert [matches(f, event, facts) for f in misses] == [False] * len(misses)
    deleted_task = TaskFacts(None, (), None, None)
    assert not matches(TaskFilter(since=created), event, deleted_task)
    assert matches(TaskFilter(queue="q"), event, deleted_task)


async def test_prune_deletes_only_events_older_than_the_retention(
    service: CheckMateService, raw_conn: asyncpg.Connection
) -> None:
    ids = await new_tasks(raw_conn, 7)
    await set_status(raw_conn, ids, StageStatus.QUEUED)
    retention = service.settings.event_retention
    old = [row["id"] for row in await stored_events(raw_conn)][:9]
    await raw_conn.execute(
        "UPDATE status_events SET changed_at = now() - $1::interval - interval '1 minute'"
        " WHERE id = ANY($2)", retention, old,
    )
    hub = EventHub(service.database, service.settings, prune_batch=4)
    assert await hub.prune() == 9
    remaining = [row["id"] for row in await stored_events(raw_conn)]
    assert len(remaining) == 5
    assert not set(remaining) & set(old)


# --- holes whose transaction took its xid after the snapshot's xmax -----------------------
# A snapshot lists in xip only the running transactions with xids below its xmax
# (latestCompletedXid + 1); a running transaction with a newer xid is in no list at all. When
# such a transaction holds the lower event id of a pair, its hole must not pass for rolled back.


async def _xid(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT pg_current_xact_id()::text"))


async def test_a_hole_held_by_a_newer_xid_than_the_last_commit_is_not_skipped(
    hub: EventHub, raw_conn: asyncpg.Connection, database_url: str
) -> None:
    first_task, second_task = await new_tasks(raw_conn, 2)
    events, first = await open_subscription(hub)
    older = await asyncpg.connect(asyncpg_dsn(database_url))
    newer = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        older_tx, newer_tx = older.transaction(), newer.transaction()
        await older_tx.start()
        await newer_tx.start()
        older_xid = await _xid(older)
        await set_status(newer, [first_task], StageStatus.QUEUED)  # newer xid, lower event id
        assert await _xid(newer) > older_xid
        await set_status(older, [second_task], StageStatus.QUEUED)  # older xid, higher id
        await older_tx.commit()  # the newest commit is now the OLDER xid: `newer` >= xmax
        newest = await read_past(hub, raw_conn)
        reads = count_reads(hub)
        await wait_until(lambda: reads[0] >= 3)  # several reads while `newer` is still open
        assert not first.done(), "an event above an open transaction's id was not held back"
        assert hub.delivered < newest
        await newer_tx.commit()
    finally:
        await older.close()
        await newer.close()
    received = await collect(events, first, 2)
    assert [e.task_id for e in received] == [first_task, second_task]
    assert await nothing_more(events)
    await events.aclose()


async def test_a_newer_xid_in_flight_when_the_hub_starts_is_not_missed(
    service: CheckMateService, raw_conn: asyncpg.Connection, database_url: str
) -> None:
    first_task, second_task = await new_tasks(raw_conn, 2)
    older = await asyncpg.connect(asyncpg_dsn(database_url))
    newer = await asyncpg.connect(asyncpg_dsn(database_url))
    hub = EventHub(service.database, service.settings, keepalive=60)
    try:
        older_tx, newer_tx = older.transaction(), newer.transaction()
        await older_tx.start()
        await newer_tx.start()
        await _xid(older)
        await set_status(newer, [first_task], StageStatus.QUEUED)
        await set_status(older, [second_task], StageStatus.QUEUED)
        await older_tx.commit()  # newest id at start; its hole's xid is above xmax
        await hub.start()
        await read_past(hub, raw_conn)  # the first reads ran before the subscription
        events, first = await open_subscription(hub, catch_up=False)
        await newer_tx.commit()
        received = await collect(events, first, 1)
        assert received[0].task_id == first_task
        await events.aclose()
    finally:
        await older.close()
        await newer.close()
        await bounded(hub.stop(), "EventHub.stop")


async def _short_transactions(database_url: str, ids: list[UUID], seed: int) -> None:
    """One writer: per task a short transaction that may take its xid early, sleeps between
    the xid, the event id and the commit, and sometimes rolls back (a hole that never fills)."""
    rng = random.Random(seed)
    statuses = [StageStatus.QUEUED, StageStatus.RUNNING, StageStatus.CANCELED]
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        for round_, task_id in enumerate(ids * 3):
            transaction = conn.transaction()
            await transaction.start()
            if rng.random() < 0.5:
                await conn.execute("SELECT pg_current_xact_id(), pg_sleep($1)", rng.random() / 200)
            await set_status(conn, [task_id], statuses[round_ % 3])
            await conn.execute("SELECT pg_sleep($1)", rng.random() / 200)
            if rng.random() < 0.1:
                await transaction.rollback()
            else:
                await transaction.commit()
    finally:
        await conn.close()


@pytest.mark.slow
async def test_many_writers_committing_short_transactions_out_of_order_lose_nothing(
    hub: EventHub, raw_conn: asyncpg.Connection, database_url: str
) -> None:
    writers, per_writer_tasks = 12, 20  # 12 * 20 * 3 = 720 transactions, ~10% rolled back
    groups = [await new_tasks(raw_conn, per_writer_tasks) for _ in range(writers)]
    start = (await stored_events(raw_conn))[-1]["id"]
    events, first = await open_subscription(hub, after=start)
    await asyncio.gather(
        *(_short_transactions(database_url, ids, seed) for seed, ids in enumerate(groups))
    )
    stored = await stored_events(raw_conn, start)
    assert 550 < len(stored) < 720
    received = await collect(events, first, len(stored))
    assert [as_tuple(e) for e in received] == [record_tuple(row) for row in stored]
    assert await nothing_more(events)
    await events.aclose()


def test_a_hole_resolves_only_when_every_xid_of_its_range_has_ended() -> None:
    # A hole found by a read whose snapshot had xmin 100 and which drew xid 110 afterwards.
    low, high = 100, 110
    # xmax 106: xids 106..110 may be running though xip lists none of them (the old bug).
    assert not _Snapshot.parse("100:106:").all_ended(low, high)
    assert not _Snapshot.parse("100:110:").all_ended(low, high)  # 110 itself is not below xmax
    assert not _Snapshot.parse("95:120:95,104,115").all_ended(low, high)  # 104 still runs
    assert not _Snapshot.parse("100:120:100").all_ended(low, high)
    assert not _Snapshot.parse("105:120:110").all_ended(low, high)
    # Running transactions outside the range do not hold the hole.
    assert _Snapshot.parse("95:111:95").all_ended(low, high)
    assert _Snapshot.parse("111:130:111,125").all_ended(low, high)
    assert _Snapshot.parse("130:130:").all_ended(low, high)
