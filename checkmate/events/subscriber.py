"""One subscription of the event hub: a bounded queue the hub pushes to without waiting and
the subscribe() generator pops from."""

from __future__ import annotations

import asyncio
from collections import deque

from checkmate.models import StatusEvent, TaskFilter


class SubscriberLagging(Exception):
    """The subscriber fell behind and was dropped; resume with `last_event_id`."""

    def __init__(self, last_event_id: int) -> None:
        super().__init__(
            f"subscriber fell too far behind; resubscribe with afterEventId={last_event_id}"
        )
        self.last_event_id = last_event_id


class Subscriber:
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
            self.wake()
            return False
        self.queue.append(event)
        self.wake()
        return True

    def wake(self) -> None:
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
