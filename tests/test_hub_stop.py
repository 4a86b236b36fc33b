"""EventHub.stop() must end. It cancels the hub's loops and awaits them; on Python 3.11,
asyncio.wait_for swallows a cancellation that arrives in the same loop iteration as the event it
waits for (it returns the result instead: fixed in 3.12, which rebuilt wait_for on
asyncio.timeout). The read loop waited with `wait_for(self._wake.wait(), ...)`, so a
notification that woke it just as stop() cancelled it left it running forever, and stop() with
it (stop() also suppressed its own cancellation, so an outer timeout could not end it either).
No notification is even needed: start() sets the wake-up event itself, so an app whose lifespan
stops the hub right after starting it (a test that only GETs a page) hit it, and hung the suite
in an app fixture's teardown. The hub now waits with asyncio.timeout and stop() gathers its
tasks (checkmate/events/hub.py); this test keeps it so. Teardowns that stop a hub stay bounded
(tests/support.py: bounded), so a regression fails a test instead of stalling the suite."""

from __future__ import annotations

import asyncio
import contextlib

from checkmate.events import EventHub
from checkmate.service import CheckMateService
from tests.support import wait_until


async def test_stop_ends_when_a_notification_wakes_the_reader_as_it_stops(
    service: CheckMateService,
) -> None:
    hub = EventHub(service.database, service.settings, keepalive=60)
    await hub.start()
    reads = [0]
    read_once = hub.read_once

    async def counted() -> bool:
        more = await read_once()
        reads[0] += 1
        return more

    hub.read_once = counted  # type: ignore[method-assign]
    await wait_until(lambda: reads[0] >= 1)  # the read loop is back waiting for a wake-up
    tasks = list(hub._tasks)
    try:
        hub._wake.set()  # a notification arrives ...
        stopping = asyncio.ensure_future(hub.stop())  # ... as the hub stops
        await asyncio.wait({stopping}, timeout=2)
        # (stop() suppresses the CancelledError of the tasks it awaits, its own included, so
        # wait_for could not bound it: it would return late, with the read loop still running.)
        assert stopping.done(), "EventHub.stop() did not end"
        assert all(task.done() for task in tasks), "a hub loop outlived stop()"
    finally:
        # However stop() ended, leave no loop running: cancel until each task is done.
        for task in tasks:
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
        await asyncio.wait({stopping}, timeout=2)
        with contextlib.suppress(Exception):
            await hub._close_listen()
