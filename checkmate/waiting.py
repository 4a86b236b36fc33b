"""Waiting for an asyncio.Event with a time limit, safely on Python 3.11."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Until `event` is set or `seconds` passed; True when it was set. Not asyncio.wait_for:
    on Python 3.11 it swallows a cancellation that arrives as the event is set (gh-86296), and
    a task that ignored its stop's cancel kept running and hung the shutdown."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()
