"""The event reader's rules: which rows read from status_events are delivered, in which order,
and where a subscription may resume. Pure: no I/O, no clock of its own (the hub passes reads
and times in), so every rule is unit-tested without PostgreSQL (tests/test_event_reader.py).

How the reader delivers every event exactly once, in id order
-------------------------------------------------------------
Event ids come from a sequence, so concurrent transactions may commit out of id order (6 visible
before 5) and rolled-back ones leave holes that never fill. The reader keeps a cursor `delivered`:
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
meanwhile or may still be, else at the newest event (`start_position`).

The range is not S's in-progress list (xip). A snapshot lists there only the running xids
below its xmax, which is latestCompletedXid + 1; a running transaction with a newer xid is in
no list at all. That is the common case of short concurrent writers: A takes xid 100, B takes
xid 101 and draws id 7, A draws 8 and commits. A snapshot now has xmax 101 and an empty xip,
though B is running. Treating the xip as the candidates therefore skipped holes whose
transactions then committed: those events were never delivered (the bug this design fixes).
X bounds the newer xids without knowing them, and costs one xid per read.

Commits wake the reader by NOTIFY; rollbacks do not, so while holes are open the reader polls:
soon after a read that found new holes (their writers are usually finished by then), then
every `gap_poll` seconds (`next_wait`).

Only a transaction kept open for longer than `max_hold` (a forgotten psql session) would stall
the feed; past that its hole is skipped and watched as "overdue", and if it commits later its
events are still delivered to live subscribers, late and out of order (logged).

Where a subscription may resume
-------------------------------
Pruning deletes a prefix of ids and always keeps the newest event
(checkmate.db.event_queries.delete_events_below), so the table holds every committed event from
its oldest row on. A client's afterEventId N is an id it was delivered, so it was committed: N
above the newest row cannot be from this database (restored, wiped: BAD_USER_INPUT), and N below
the oldest row minus one means events after N
were deleted (EVENTS_PRUNED: reload, then subscribe without afterEventId).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from checkmate.errors import ServiceError
from checkmate.models import StageStatus, StatusEvent, TaskFilter

log = logging.getLogger("checkmate.events")

# Event ids are PostgreSQL bigints.
MAX_EVENT_ID = 2**63 - 1
# A read after the one that found a hole proves it rolled back if its writer has ended: most
# are short transactions, so that read comes soon rather than after `gap_poll`.
CONFIRM_DELAY = 0.02


@dataclass(frozen=True, slots=True)
class TaskFacts:
    """Fields of the event's task that filters match on, read with the event."""

    name: str | None
    tags: tuple[str, ...]
    created_at: datetime | None
    cleaned: bool | None


EventRow = tuple[StatusEvent, TaskFacts]


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


def event_from_row(row: Any) -> EventRow:
    """An event and its task's facts from a row of queries' event reads."""
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
class Snapshot:
    """A pg_snapshot, from its text form 'xmin:xmax:xip,xip,...'."""

    xmin: int
    xmax: int
    xip: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), tuple(int(xid) for xid in xip.split(",") if xid))

    def all_ended(self, low: int, high: int) -> bool:
        """Every transaction with an xid in [low, high] had ended when this snapshot was taken.

        Xids at or above xmax count as running though xip does not list them."""
        return high < self.xmax and not any(low <= xid <= high for xid in self.xip)


@dataclass(frozen=True, slots=True)
class Hole:
    """A missing id whose writer's xid is in [low, high]: see "How the reader ..." above."""

    low: int  # xmin of the snapshot of the read that found it
    high: int  # the xid that read drew after its snapshot
    seen_at: float


def missing(ids: Sequence[int]) -> list[int]:
    """The ids absent between the first and last of `ids` (ascending)."""
    present = set(ids)
    return [i for i in range(ids[0], ids[-1]) if i not in present] if ids else []


def start_position(
    ids: Sequence[int], first: Snapshot, xid: int, later: Snapshot, filled: Sequence[int]
) -> int:
    """Where the cursor starts, from the newest visible ids (ascending) read with snapshot
    `first` and xid `xid`, and a second read (snapshot `later`) of which of their holes are
    now filled: below the oldest hole that filled or may still fill, else at the newest id."""
    holes = missing(ids)
    # If every writer that could hold a hole had ended by `later`, only the filled ones count.
    if holes and later.all_ended(first.xmin, xid):
        holes = sorted(filled)
    return holes[0] - 1 if holes else (ids[-1] if ids else 0)


@dataclass(slots=True)
class Delivery:
    """What one read makes deliverable."""

    ready: list[EventRow]  # in id order, above the previous cursor
    late: list[EventRow]  # overdue ids that committed after all: out of order
    above: int  # rows above the previous read position (a full batch means: read again)


@dataclass(slots=True)
class EventReader:
    """The cursor over status_events: rows read but held back, and the holes holding them."""

    max_hold: float = 10.0
    delivered: int = 0  # every id at or below was dispatched or never exists
    read_upto: int = 0  # the highest id read
    held: dict[int, EventRow] = field(default_factory=dict)
    holes: dict[int, Hole] = field(default_factory=dict)
    overdue: dict[int, Hole] = field(default_factory=dict)
    new_holes: bool = False  # the last read found holes: confirm them soon

    def start_at(self, position: int) -> None:
        """Rows between the cursor and the newest were committed before start; reading them
        again turns the holes among them into tracked holes."""
        self.delivered = self.read_upto = position

    def asked(self) -> list[int]:
        """Ids below read_upto that the next read must look for (holes, overdue ids)."""
        return sorted({*self.holes, *self.overdue})

    def next_wait(self, keepalive: float, gap_poll: float) -> float:
        """Seconds to wait for a NOTIFY before reading anyway."""
        wait = keepalive
        if self.new_holes:
            wait = min(gap_poll, CONFIRM_DELAY)
        elif self.holes or self.overdue:
            wait = gap_poll
        self.new_holes = False
        return wait

    def apply(
        self, snapshot: Snapshot, xid: int, rows: Sequence[EventRow], now: float
    ) -> Delivery:
        """Take one read (rows in id order: above read_upto, and asked ids now visible) made
        with `snapshot` and `xid`; resolve holes; return what is deliverable."""
        found = Hole(snapshot.xmin, xid, now)
        late: list[EventRow] = []
        above = 0
        newest = self.read_upto
        for row in rows:
            event_id = row[0].event_id
            if event_id in self.overdue:
                del self.overdue[event_id]
                late.append(row)
                log.warning("event %s committed after its hole was skipped; delivered late",
                            event_id)
            elif event_id <= self.read_upto:
                self.holes.pop(event_id, None)
                self.held[event_id] = row
            else:
                above += 1
                for hole_id in range(newest + 1, event_id):
                    self.holes[hole_id] = found
                    self.new_holes = True
                newest = event_id
                self.held[event_id] = row
        self.read_upto = newest
        self._resolve(snapshot)
        return Delivery(self._release(now), late, above)

    def _resolve(self, snapshot: Snapshot) -> None:
        """Forget the holes (and overdue ids) whose writers all ended in `snapshot`: the rows
        read with it lack them, so they were rolled back."""
        ended: dict[Hole, bool] = {}  # holes found by one read share one Hole
        for holes in (self.holes, self.overdue):
            for hole_id, hole in list(holes.items()):
                verdict = ended.get(hole)
                if verdict is None:
                    verdict = ended[hole] = snapshot.all_ended(hole.low, hole.high)
                if verdict:
                    del holes[hole_id]

    def _release(self, now: float) -> list[EventRow]:
        """Advance the cursor over held rows and resolved holes, up to the first open hole."""
        ready: list[EventRow] = []
        while self.delivered < self.read_upto:
            next_id = self.delivered + 1
            held = self.held.pop(next_id, None)
            if held is not None:
                ready.append(held)
            elif next_id in self.holes:
                hole = self.holes[next_id]
                if now - hole.seen_at < self.max_hold:
                    break
                log.warning("event id %s held back for %.0fs; skipping it", next_id, self.max_hold)
                self.overdue[next_id] = self.holes.pop(next_id)
            self.delivered = next_id
        return ready


def check_event_id(event_id: int) -> None:
    """BAD_USER_INPUT for an id no event can have; before any database work."""
    if not 0 <= event_id <= MAX_EVENT_ID:
        raise ServiceError(f"{event_id} is not an event id: event ids are 0 to {MAX_EVENT_ID}")


def check_resume(after: int, oldest: int | None, newest: int) -> None:
    """Whether a subscription can resume after event `after`, given the oldest and newest
    stored event ids (None and 0 when there are none): see "Where a subscription may resume"."""
    if after > newest:
        held = f"the newest is {newest}" if newest else "there are no events yet"
        raise ServiceError(
            f"event {after} does not exist yet; {held}. It may come from a database that was"
            " since restored or replaced: reload, then subscribe without afterEventId"
        )
    if oldest is not None and after < oldest - 1:
        raise ServiceError(
            f"the events after {after} were pruned (the oldest kept is {oldest}): reload,"
            " then subscribe without afterEventId",
            code=ServiceError.EVENTS_PRUNED,
        )
