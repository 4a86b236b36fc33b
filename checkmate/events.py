"""Status events: one dedicated LISTEN connection per process, fanned out in memory.

INTERFACE (the GraphQL layer codes against it):

    hub = EventHub(service, max_queue=...)   # service: CheckMateService (engine + database_url)
    await hub.start()                        # opens the dedicated asyncpg LISTEN connection
    async for event in hub.subscribe(task_filter, after_event_id):   # StatusEvent objects
        ...
    await hub.stop()

`subscribe` raises SubscriberLagging(last_event_id) when the subscriber's bounded queue
overflowed; the client resumes with afterEventId = last_event_id.

How the reader delivers every event exactly once, in id order
-------------------------------------------------------------
Event ids come from a sequence, so concurrent transactions may commit out of id order (6 visible
before 5) and rolled-back ones leave holes that never fill. The hub keeps a cursor `delivered`:
every id at or below it was dispatched or is known never to exist. Rows above a hole are held
until the hole resolves, so every subscriber sees strictly increasing ids and `afterEventId` is
an exact cursor on any server process: a client that saw id N has seen every event below N.

A hole resolves by transaction visibility, not by a timer. Each read is one statement that
returns pg_current_snapshot() S, the snapshot its rows come from, and pg_current_xact_id() X, an
xid the reading transaction takes while the statement runs, so after S was taken. Say id h is
missing below a visible id b. The writer T of h drew h before b was drawn, and b's writer
committed before S. The trigger writes the task row (which gives T its xid) before it draws an
event id, so T had its xid before S: xid(T) < X. And at S, T had rolled back or was running
(had it committed, h would be visible), and then xid(T) >= S.xmin. So once every xid in
[S.xmin, X], the hole's candidate range, has ended, T has ended. A later read whose snapshot S2
shows that (X < S2.xmax and none of S2's in-progress xids in the range) and still lacks h
proves that T rolled back: the cursor moves on. A hole never resolves in the read that found
it (X is not yet ended in S). A committed hole resolves as soon as a read sees its row; only
rolled-back holes wait for their range, so an unrelated long transaction in it delays them
(up to `max_hold`).
Starting up, the hub places its cursor the same way: below the oldest hole that was filled
meanwhile or may still be, else at the newest event.

The range is not S's in-progress list (xip). A snapshot lists there only the running xids
below its xmax, which is latestCompletedXid + 1; a running transaction with a newer xid is in
no list at all. That is the common case of short concurrent writers: A takes xid 100, B takes
xid 101 and draws id 7, A draws 8 and commits. A snapshot now has xmax 101 and an empty xip,
though B is running. Treating the xip as the candidates therefore skipped holes whose
transactions then committed: those events were never delivered (the bug this design fixes).
X bounds the newer xids without knowing them, and costs one xid per read.

Commits wake the reader by NOTIFY; rollbacks do not, so while holes are open the reader polls:
soon after a read that found new holes (their writers are usually finished by then), then
every `gap_poll` seconds.

Only a transaction kept open for longer than `max_hold` (a forgotten psql session) would stall
the feed; past that its hole is skipped and watched as "overdue", and if it commits later its
events are still delivered to live subscribers, late and out of order (logged).

A LISTEN connection that drops is reopened with backoff; the cursor lives in memory, so the next
read replays everything committed meanwhile. Fan-out never waits on a subscriber: each has a
bounded queue and is dropped with SubscriberLagging when it overflows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
from prometheus_client import Counter, Gauge

from checkmate import metrics
from checkmate.db import queries
from checkmate.db.engine import asyncpg_dsn
from checkmate.db.tables import EVENTS_CHANNEL
from checkmate.models import StageStatus, StatusEvent, TaskFilter

log = logging.getLogger(__name__)

SUBSCRIBERS = Gauge("checkmate_event_subscribers", "Open status-event subscriptions.")
EVENTS_READ = Counter("checkmate_events_read_total", "Status events read by the event hub.")
LAGGING = Counter("checkmate_event_subscribers_lagging_total", "Subscribers dropped as too slow.")
LISTEN_RECONNECTS = Counter("checkmate_event_listen_reconnects_total", "LISTEN reconnections.")

LISTEN_APPLICATION_NAME = "checkmate-listen"
# When the hub starts while writers are in flight, holes among this many newest ids are waited
# for; an id drawn by a transaction that has been open for longer than that is not.
_START_LOOKBACK = 10_000
_BACKFILL_PAGE = 1_000
# A read after the one that found a hole proves it rolled back if its writer has ended: most
# are short transactions, so that read comes soon rather than after `gap_poll`.
_CONFIRM_DELAY = 0.02


class SubscriberLagging(Exception):
    """The subscriber fell behind and was dropped; resume with `last_event_id`."""

    def __init__(self, last_event_id: int) -> None:
        super().__init__(
            f"subscriber fell too far behind; resubscribe with afterEventId={last_event_id}"
        )
        self.last_event_id = last_event_id


@dataclass(frozen=True, slots=True)
class TaskFacts:
    """Fields of the event's task that filters match on, read with the event."""

    name: str | None
    tags: tuple[str, ...]
    created_at: datetime | None
    cleaned: bool | None


def matches(task_filter: TaskFilter, event: StatusEvent, facts: TaskFacts) -> bool:
    """The TaskFilter semantics of queries.filter_clause, applied to one event."""
    f = task_filter
    created = facts.created_at
    return (
        (f.ids is None or event.task_id in f.ids)
        and (f.status is None or event.status == f.status)
        and (f.statuses is None or event.status in f.statuses)
        and (f.queue is None or event.queue == f.queue)
        and (not f.tags or set(f.tags).issubset(facts.tags))
        and (f.since is None or (created is not None and created >= f.since))
        and (f.until is None or (created is not None and created < f.until))
        and (f.cleaned is None or facts.cleaned is f.cleaned)
        and (f.name is None or facts.name == f.name)
    )


def _from_row(row: Any) -> tuple[StatusEvent, TaskFacts]:
    previous = row.previous_status
    event = StatusEvent.model_construct(
        event_id=row.id,
        task_id=row.task_id,
        status=StageStatus(row.status),
        previous_status=StageStatus(previous) if previous is not None else None,
        stage=row.stage,
        queue=row.queue,
        changed_at=row.changed_at,
    )
    facts = TaskFacts(row.name, tuple(row.tags or ()), row.created_at, row.cleaned)
    return event, facts


@dataclass(frozen=True, slots=True)
class _Hole:
    """A missing id whose writer's xid is in [low, high]: see "How the reader ..." above."""

    low: int  # xmin of the snapshot of the read that found it
    high: int  # the xid that read drew after its snapshot
    seen_at: float


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """A pg_snapshot, from its text form 'xmin:xmax:xip,xip,...'."""

    xmin: int
    xmax: int
    xip: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> _Snapshot:
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), tuple(int(xid) for xid in xip.split(",") if xid))

    def all_ended(self, low: int, high: int) -> bool:
        """Every transaction with an xid in [low, high] had ended when this snapshot was taken.

        Xids at or above xmax count as running though xip does not list them."""
        return high < self.xmax and not any(low <= xid <= high for xid in self.xip)


def _missing(ids: list[int]) -> list[int]:
    """The ids absent between the first and last of `ids` (ascending)."""
    present = set(ids)
    return [i for i in range(ids[0], ids[-1]) if i not in present] if ids else []


class _Subscriber:
    """One subscription's bounded queue; the hub pushes, the subscribe() generator pops."""

    __slots__ = ("after", "filter", "lagging", "last_event_id", "max_queue", "queue", "waiter")

    def __init__(self, task_filter: TaskFilter, after: int, max_queue: int) -> None:
        self.filter = task_filter
        self.after = after
        self.last_event_id = after
        self.max_queue = max_queue
        self.queue: deque[StatusEvent] = deque()
        self.lagging = False
        self.waiter: asyncio.Future[None] | None = None

    def push(self, event: StatusEvent, late: bool) -> bool:
        """Queue one event; False when the queue is full (the caller drops this subscriber)."""
        # In-order events at or below `after` reached this client already (it came from another
        # process that is ahead); late ones may be new to it, so they are not dropped.
        if event.event_id <= self.after and not late:
            return True
        if len(self.queue) >= self.max_queue:
            self.lagging = True
            self.queue.clear()
            self._wake()
            return False
        self.queue.append(event)
        self._wake()
        return True

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def next_batch(self, hub_closed: asyncio.Event) -> list[StatusEvent]:
        while not self.queue:
            if self.lagging:
                raise SubscriberLagging(self.last_event_id)
            if hub_closed.is_set():
                return []
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        batch = list(self.queue)
        self.queue.clear()
        return batch


class EventHub:
    """The process's LISTEN connection, event reader, fan-out and event pruning."""

    def __init__(
        self,
        service: Any,
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
        self.service = service
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.keepalive = keepalive
        self.gap_poll = gap_poll
        self.max_hold = max_hold
        self.prune_interval = prune_interval
        self.prune_batch = prune_batch
        self.reconnect_max_delay = reconnect_max_delay
        self.delivered = 0
        self._read_upto = 0
        self._held: dict[int, tuple[StatusEvent, TaskFacts]] = {}
        self._holes: dict[int, _Hole] = {}
        self._overdue: dict[int, _Hole] = {}
        self._new_holes = False
        self._groups: dict[TaskFilter, set[_Subscriber]] = {}
        self._by_task: dict[UUID, set[TaskFilter]] = {}
        self._unindexed: set[TaskFilter] = set()
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._listen_conn: asyncpg.Connection | None = None
        self._listen_lost = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

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
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._close_listen()
        for subscribers in self._groups.values():
            for subscriber in subscribers:
                subscriber._wake()

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
        position = self.delivered
        after = position if after_event_id is None else after_event_id
        subscriber = _Subscriber(task_filter, after, self.max_queue)
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

    async def _backfill(
        self, subscriber: _Subscriber, after: int, upto: int
    ) -> AsyncIterator[StatusEvent]:
        # Overdue ids (skipped holes that may still commit) come live, late, whenever they
        # commit; reading them here too could send them twice.
        overdue = set(self._overdue)
        cursor = after
        while cursor < upto:
            async with self.service.engine.connect() as conn:
                rows = await queries.select_events_after(conn, cursor, limit=_BACKFILL_PAGE)
            if not rows:
                return
            for row in rows:
                if row.id > upto:
                    return
                cursor = row.id
                event, facts = _from_row(row)
                if row.id not in overdue and matches(subscriber.filter, event, facts):
                    yield event

    def _register(self, subscriber: _Subscriber) -> None:
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

    def _unregister(self, subscriber: _Subscriber) -> None:
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

    def _fan_out(self, events: Iterable[tuple[StatusEvent, TaskFacts]], late: bool) -> None:
        dropped: list[_Subscriber] = []
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
        metrics.EVENTS_FANNED_OUT.inc(pushed)
        for subscriber in dropped:
            LAGGING.inc()
            self._unregister(subscriber)

    # --- the reader ----------------------------------------------------------------------

    async def _place_cursor(self) -> None:
        """Start at the newest event, or below the oldest hole that may fill or has filled."""
        async with self.service.engine.connect() as conn:
            snapshot, xid, ids = await queries.select_event_id_tail(conn, _START_LOOKBACK)
        holes = _missing(ids)
        if holes:
            # A second snapshot, once the first read's xid ended: if every writer that could
            # hold a hole has ended, only the holes filled meanwhile are not rolled back.
            async with self.service.engine.connect() as conn:
                later, _, filled = await queries.select_event_batch(conn, ids[-1], holes, limit=0)
            if _Snapshot.parse(later).all_ended(_Snapshot.parse(snapshot).xmin, xid):
                holes = [row.id for row in filled]
        # Rows between the cursor and the newest were committed before start; re-reading them
        # turns the holes among them into tracked holes.
        self.delivered = self._read_upto = holes[0] - 1 if holes else (ids[-1] if ids else 0)

    async def read_once(self) -> bool:
        """Read new rows once, resolve holes, dispatch what is in order. True if more remain."""
        asked = sorted({*self._holes, *self._overdue})
        async with self.service.engine.connect() as conn:
            text, xid, rows = await queries.select_event_batch(
                conn, self._read_upto, asked, limit=self.batch_size
            )
        EVENTS_READ.inc(len(rows))
        snapshot = _Snapshot.parse(text)
        now = time.monotonic()
        found = _Hole(snapshot.xmin, xid, now)
        late: list[tuple[StatusEvent, TaskFacts]] = []
        above = 0
        newest = self._read_upto
        for row in rows:
            if row.id in self._overdue:
                del self._overdue[row.id]
                late.append(_from_row(row))
                log.warning("event %s committed after its hole was skipped; delivered late", row.id)
            elif row.id <= self._read_upto:
                self._holes.pop(row.id, None)
                self._held[row.id] = _from_row(row)
            else:
                above += 1
                for missing in range(newest + 1, row.id):
                    self._holes[missing] = found
                    self._new_holes = True
                newest = row.id
                self._held[row.id] = _from_row(row)
        self._read_upto = newest
        self._resolve(snapshot)
        if late:
            self._fan_out(late, late=True)
        self._fan_out(self._release(now), late=False)
        return above >= self.batch_size

    def _resolve(self, snapshot: _Snapshot) -> None:
        """Forget the holes (and overdue ids) whose writers all ended in `snapshot`: the rows
        read with it lack them, so they were rolled back."""
        ended: dict[_Hole, bool] = {}  # holes found by one read share one _Hole
        for holes in (self._holes, self._overdue):
            for hole_id, hole in list(holes.items()):
                verdict = ended.get(hole)
                if verdict is None:
                    verdict = ended[hole] = snapshot.all_ended(hole.low, hole.high)
                if verdict:
                    del holes[hole_id]

    def _release(self, now: float) -> list[tuple[StatusEvent, TaskFacts]]:
        """Advance the cursor over held rows and resolved holes, up to the first open hole."""
        ready: list[tuple[StatusEvent, TaskFacts]] = []
        while self.delivered < self._read_upto:
            next_id = self.delivered + 1
            held = self._held.pop(next_id, None)
            if held is not None:
                ready.append(held)
            elif next_id in self._holes:
                hole = self._holes[next_id]
                if now - hole.seen_at < self.max_hold:
                    break
                log.warning("event id %s held back for %.0fs; skipping it", next_id, self.max_hold)
                self._overdue[next_id] = self._holes.pop(next_id)
            self.delivered = next_id
        return ready

    async def _read_loop(self) -> None:
        failures = 0
        while True:
            timeout = self.keepalive
            if self._new_holes:
                timeout = min(self.gap_poll, _CONFIRM_DELAY)
            elif self._holes or self._overdue:
                timeout = self.gap_poll
            self._new_holes = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
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
        conn = await asyncpg.connect(
            asyncpg_dsn(self.service.database_url),
            server_settings={"application_name": LISTEN_APPLICATION_NAME},
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listen_lost.wait(), self.keepalive)
            conn = self._listen_conn
            if self._listen_lost.is_set() or conn is None or conn.is_closed():
                return
            try:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), self.keepalive)
            except Exception:
                return

    async def _reconnect(self) -> None:
        delay = 0.05
        while True:
            try:
                await self._listen()
            except (OSError, asyncpg.PostgresError, TimeoutError) as error:
                log.warning("event LISTEN reconnect failed (%s); retrying in %.1fs", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max_delay)
            else:
                LISTEN_RECONNECTS.inc()
                return

    # --- pruning -------------------------------------------------------------------------

    async def prune(self) -> int:
        """Delete events older than the retention, in short batches; the number deleted."""
        cutoff = datetime.now(UTC) - self.service.settings.event_retention
        total = 0
        while True:
            async with self.service.engine.begin() as conn:
                deleted = await queries.delete_events_batch(conn, cutoff, limit=self.prune_batch)
            total += deleted
            if deleted < self.prune_batch:
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
