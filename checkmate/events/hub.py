"""The event hub: one dedicated LISTEN connection per process, the reader loop, the fan-out to
subscribers, their backfill, and event pruning. Which rows are delivered when is decided by
the pure EventReader (reader.py); this module does the I/O around it.

A LISTEN connection that drops is reopened with backoff; the cursor lives in memory, so the next
read replays everything committed meanwhile. Fan-out never waits on a subscriber: each has a
bounded queue and is dropped with SubscriberLagging when it overflows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from uuid import UUID

import asyncpg
from prometheus_client import Counter, Gauge

from checkmate.db import event_queries
from checkmate.db.database import Database
from checkmate.db.tables import EVENTS_CHANNEL
from checkmate.errors import ServiceError
from checkmate.events.reader import (
    EventReader,
    EventRow,
    Snapshot,
    check_event_id,
    check_resume,
    event_from_row,
    matches,
    missing,
    start_position,
)
from checkmate.events.subscriber import Subscriber
from checkmate.metrics import EVENTS_FANNED_OUT
from checkmate.models import StatusEvent, TaskFilter
from checkmate.settings import Settings
from checkmate.waiting import wait_event

log = logging.getLogger("checkmate.events")

SUBSCRIBERS = Gauge("checkmate_event_subscribers", "Open status-event subscriptions.")
EVENTS_READ = Counter("checkmate_events_read_total", "Status events read by the event hub.")
LAGGING = Counter("checkmate_event_subscribers_lagging_total", "Subscribers dropped as too slow.")
LISTEN_RECONNECTS = Counter("checkmate_event_listen_reconnects_total", "LISTEN reconnections.")

LISTEN_APPLICATION_NAME = "checkmate-listen"
# When the hub starts while writers are in flight, holes among this many newest ids are waited
# for; an id drawn by a transaction that has been open for longer than that is not.
_START_LOOKBACK = 10_000
_BACKFILL_PAGE = 1_000


class EventHub:
    """The process's LISTEN connection, event reader, fan-out and event pruning.

        hub = EventHub(database, settings, max_queue=...)
        await hub.start()                  # opens the dedicated asyncpg LISTEN connection
        async for event in hub.subscribe(task_filter, after_event_id):   # StatusEvent objects
            ...
        await hub.stop()

    `subscribe` raises SubscriberLagging(last_event_id) when the subscriber's bounded queue
    overflowed (the client resumes with afterEventId = last_event_id), and ServiceError for an
    afterEventId it cannot resume after (BAD_USER_INPUT, EVENTS_PRUNED) or a database that
    cannot be reached (UNAVAILABLE), before it delivers anything.
    """

    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        max_queue: int = 1_000,
        batch_size: int = 5_000,
        keepalive: float = 10.0,
        gap_poll: float = 0.2,
        max_hold: float = 10.0,
        prune_interval: float = 3_600.0,
        prune_batch: int = 10_000,
        reconnect_max_delay: float = 5.0,
    ) -> None:
        self.database = database
        self.retention = settings.event_retention
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.keepalive = keepalive
        self.gap_poll = gap_poll
        self.prune_interval = prune_interval
        self.prune_batch = prune_batch
        self.reconnect_max_delay = reconnect_max_delay
        self.reader = EventReader(max_hold=max_hold)
        self._groups: dict[TaskFilter, set[Subscriber]] = {}
        self._by_task: dict[UUID, set[TaskFilter]] = {}
        self._unindexed: set[TaskFilter] = set()
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._listen_conn: asyncpg.Connection | None = None
        self._listen_lost = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def delivered(self) -> int:
        """Every event id at or below this was dispatched or never exists."""
        return self.reader.delivered

    @property
    def max_hold(self) -> float:
        return self.reader.max_hold

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the LISTEN connection, then place the cursor: nothing committed after is missed."""
        self._closed.clear()
        await self._listen()
        await self._place_cursor()
        self._tasks = [
            asyncio.create_task(self._listen_loop(), name="checkmate-events-listen"),
            asyncio.create_task(self._read_loop(), name="checkmate-events-read"),
            asyncio.create_task(self._prune_loop(), name="checkmate-events-prune"),
        ]

    async def stop(self) -> None:
        """Stop reading; open subscriptions end (their iterators finish)."""
        self._closed.set()
        for task in self._tasks:
            task.cancel()
        # gather, not `with suppress(CancelledError): await task`, which would also swallow a
        # cancellation of stop() itself.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._close_listen()
        for subscribers in self._groups.values():
            for subscriber in subscribers:
                subscriber.wake()

    @property
    def listener_pid(self) -> int | None:
        """Server pid of the LISTEN connection (for operators and tests)."""
        conn = self._listen_conn
        return None if conn is None or conn.is_closed() else int(conn.get_server_pid())

    @property
    def subscriber_count(self) -> int:
        return sum(len(subscribers) for subscribers in self._groups.values())

    # --- subscriptions -------------------------------------------------------------------

    async def subscribe(
        self, task_filter: TaskFilter | None = None, after_event_id: int | None = None
    ) -> AsyncIterator[StatusEvent]:
        """Live events matching the filter; with after_event_id, first the stored ones after it.

        Registers before it backfills, so nothing committed meanwhile falls between the two;
        the backfill stops at the hub's cursor at registration and live events start above it.
        """
        task_filter = task_filter or TaskFilter()
        if after_event_id is not None:
            check_event_id(after_event_id)
            if after_event_id != self.delivered:  # this hub's own cursor needs no check
                await self._check_resume(after_event_id)
        position = self.delivered
        after = position if after_event_id is None else after_event_id
        subscriber = Subscriber(task_filter, after, self.max_queue)
        self._register(subscriber)
        try:
            if after_event_id is not None and after_event_id < position:
                async for event in self._backfill(subscriber, after_event_id, position):
                    subscriber.last_event_id = event.event_id
                    yield event
            while True:
                batch = await subscriber.next_batch(self._closed)
                if not batch:
                    return
                for event in batch:
                    subscriber.last_event_id = event.event_id
                    yield event
        finally:
            self._unregister(subscriber)

    async def _check_resume(self, after: int) -> None:
        async with self.database.connect() as conn:
            oldest, newest = await event_queries.select_event_bounds(conn)
        check_resume(after, oldest, newest)

    async def _backfill(
        self, subscriber: Subscriber, after: int, upto: int
    ) -> AsyncIterator[StatusEvent]:
        # Overdue ids (skipped holes that may still commit) come live, late, whenever they
        # commit; reading them here too could send them twice.
        overdue = set(self.reader.overdue)
        cursor = after
        while cursor < upto:
            async with self.database.connect() as conn:
                rows = await event_queries.select_events_after(conn, cursor, limit=_BACKFILL_PAGE)
            if not rows:
                return
            for row in rows:
                if row.id > upto:
                    return
                cursor = row.id
                event, facts = event_from_row(row)
                if row.id not in overdue and matches(subscriber.filter, event, facts):
                    yield event

    def _register(self, subscriber: Subscriber) -> None:
        task_filter = subscriber.filter
        group = self._groups.get(task_filter)
        if group is None:
            group = self._groups[task_filter] = set()
            if task_filter.ids is not None:
                for task_id in task_filter.ids:
                    self._by_task.setdefault(task_id, set()).add(task_filter)
            else:
                self._unindexed.add(task_filter)
        group.add(subscriber)
        SUBSCRIBERS.inc()

    def _unregister(self, subscriber: Subscriber) -> None:
        task_filter = subscriber.filter
        group = self._groups.get(task_filter)
        if group is None or subscriber not in group:
            return
        group.discard(subscriber)
        SUBSCRIBERS.dec()
        if group:
            return
        del self._groups[task_filter]
        self._unindexed.discard(task_filter)
        for task_id in task_filter.ids or ():
            filters = self._by_task.get(task_id)
            if filters is not None:
                filters.discard(task_filter)
                if not filters:
                    del self._by_task[task_id]

    def _fan_out(self, events: Iterable[EventRow], late: bool) -> None:
        dropped: list[Subscriber] = []
        pushed = 0
        for event, facts in events:
            filters: Iterable[TaskFilter] = self._unindexed
            indexed = self._by_task.get(event.task_id)
            if indexed:
                filters = [*self._unindexed, *indexed]
            for task_filter in filters:
                if not matches(task_filter, event, facts):
                    continue
                for subscriber in self._groups[task_filter]:
                    if not subscriber.lagging:
                        pushed += 1
                        if not subscriber.push(event, late):
                            dropped.append(subscriber)
        EVENTS_FANNED_OUT.inc(pushed)
        for subscriber in dropped:
            LAGGING.inc()
            self._unregister(subscriber)

    # --- the reader ----------------------------------------------------------------------

    async def _place_cursor(self) -> None:
        """Start at the newest event, or below the oldest hole that may fill or has filled."""
        async with self.database.connect() as conn:
            first, xid, ids = await event_queries.select_event_id_tail(conn, _START_LOOKBACK)
        later, filled = first, []
        if missing(ids):
            # A second snapshot, once the first read's xid ended: which holes filled meanwhile.
            async with self.database.connect() as conn:
                later, _, rows = await event_queries.select_event_batch(
                    conn, ids[-1], missing(ids), limit=0
                )
            filled = [row.id for row in rows]
        self.reader.start_at(
            start_position(ids, Snapshot.parse(first), xid, Snapshot.parse(later), filled)
        )

    async def read_once(self) -> bool:
        """Read new rows once, resolve holes, dispatch what is in order. True if more remain."""
        async with self.database.connect() as conn:
            text, xid, rows = await event_queries.select_event_batch(
                conn, self.reader.read_upto, self.reader.asked(), limit=self.batch_size
            )
        EVENTS_READ.inc(len(rows))
        delivery = self.reader.apply(
            Snapshot.parse(text), xid, [event_from_row(row) for row in rows], time.monotonic()
        )
        if delivery.late:
            self._fan_out(delivery.late, late=True)
        self._fan_out(delivery.ready, late=False)
        return delivery.above >= self.batch_size

    async def _read_loop(self) -> None:
        failures = 0
        while True:
            timeout = self.reader.next_wait(self.keepalive, self.gap_poll)
            await wait_event(self._wake, timeout)
            self._wake.clear()
            try:
                while await self.read_once():
                    pass
                failures = 0
            except Exception:
                failures += 1
                log.exception("reading status events failed; retrying")
                await asyncio.sleep(min(0.1 * 2**failures, self.reconnect_max_delay))
                self._wake.set()

    # --- the LISTEN connection -----------------------------------------------------------

    async def _listen(self) -> None:
        conn = await self.database.raw_connect(
            server_settings={"application_name": LISTEN_APPLICATION_NAME}
        )
        self._listen_lost.clear()
        conn.add_termination_listener(lambda _conn: self._listen_lost.set())
        try:
            await conn.add_listener(EVENTS_CHANNEL, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        self._listen_conn = conn
        # Anything committed while no connection listened is read now.
        self._wake.set()

    def _on_notify(self, *_args: object) -> None:
        # The payload (the statement's highest id) is not needed: the reader reads all new rows,
        # and many notifications arriving during one read collapse into one more read.
        self._wake.set()

    async def _close_listen(self) -> None:
        conn, self._listen_conn = self._listen_conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)
            if not conn.is_closed():
                conn.terminate()

    async def _listen_loop(self) -> None:
        while True:
            await self._keep_alive()
            await self._close_listen()
            log.warning("event LISTEN connection lost; reconnecting")
            await self._reconnect()

    async def _keep_alive(self) -> None:
        """Return when the LISTEN connection is gone or stops answering."""
        while True:
            await wait_event(self._listen_lost, self.keepalive)
            conn = self._listen_conn
            if self._listen_lost.is_set() or conn is None or conn.is_closed():
                return
            try:
                async with asyncio.timeout(self.keepalive):
                    await conn.fetchval("SELECT 1")
            except Exception:
                return

    async def _reconnect(self) -> None:
        delay = 0.05
        while True:
            try:
                await self._listen()
            except (ServiceError, OSError, asyncpg.PostgresError, TimeoutError) as error:
                log.warning("event LISTEN reconnect failed (%s); retrying in %.1fs", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max_delay)
            else:
                LISTEN_RECONNECTS.inc()
                return

    # --- pruning -------------------------------------------------------------------------

    async def prune(self) -> int:
        """Delete the events older than the retention (a prefix of ids; the newest event is
        always kept), in short batches; the number deleted."""
        cutoff = datetime.now(UTC) - self.retention
        async with self.database.connect() as conn:
            bound = await event_queries.select_prune_bound(conn, cutoff)
        total = 0
        while bound is not None:
            async with self.database.begin() as conn:
                deleted = await event_queries.delete_events_below(
                    conn, bound, limit=self.prune_batch
                )
            total += deleted
            if deleted < self.prune_batch:
                break
        return total

    async def _prune_loop(self) -> None:
        while True:
            try:
                deleted = await self.prune()
                if deleted:
                    log.info("pruned %d status events", deleted)
            except Exception:
                log.exception("pruning status events failed")
            await asyncio.sleep(self.prune_interval)
