"""The hub's own tasks end when it stops, whatever they are doing."""

from __future__ import annotations

import asyncio
import time

from checkmate.events import EventHub
from checkmate.service import CheckMateService


def hub_tasks() -> list[asyncio.Task[object]]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("checkmate-events")]


async def test_stop_ends_the_read_loop_even_when_a_wake_arrives_as_it_is_cancelled(
    service: CheckMateService,
) -> None:
    # A NOTIFY wakes the read loop one step before stop() cancels it: on Python 3.11,
    # asyncio.wait_for swallowed that cancellation and stop() waited for ever.
    for _ in range(3):
        hub = EventHub(service.database, service.settings, keepalive=60)
        await hub.start()
        hub._on_notify()
        await asyncio.sleep(0)
        started = time.monotonic()
        async with asyncio.timeout(5):  # only a bound for the test: stop() takes milliseconds
            await hub.stop()
        assert time.monotonic() - started < 5, "stop() hung until the test's timeout"
        assert hub_tasks() == []
