"""Status events: one dedicated LISTEN connection per process, fanned out in memory.

INTERFACE (implemented by the events work; the GraphQL layer codes against it):

    hub = EventHub(service, max_queue=...)   # service: CheckMateService (engine + database_url)
    await hub.start()                        # opens the dedicated asyncpg LISTEN connection
    async for event in hub.subscribe(task_filter, after_event_id):   # StatusEvent objects
        ...
    await hub.stop()

`subscribe` raises SubscriberLagging(last_event_id) when the subscriber's bounded queue
overflowed; the client resumes with afterEventId = last_event_id.
"""

from __future__ import annotations


class SubscriberLagging(Exception):
    """The subscriber fell behind and was dropped; resume with `last_event_id`."""

    def __init__(self, last_event_id: int) -> None:
        super().__init__(
            f"subscriber fell too far behind; resubscribe with afterEventId={last_event_id}"
        )
        self.last_event_id = last_event_id
