"""Retrying a call whose connection was lost: bounded exponential backoff with full jitter.

Only errors that say "the connection went away" are retried (see `connection_lost`); anything
else (a constraint violation, bad SQL, a permission error) fails at once, because repeating it
cannot help. The caller's call must be safe to repeat: a retried statement runs on a fresh
connection and may find its first try already applied.

The worker uses it for every database call; the API process can use it for its reads.
"""

from __future__ import annotations

import asyncio
import errno
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

T = TypeVar("T")

# asyncpg's "the server or the network went away" errors: class 08 (connection exception) and
# 57P01-57P03 (admin shutdown, crash shutdown, cannot connect now: a restart or a failover).
_LOST_SQLSTATE_CLASSES = ("08",)
_LOST_SQLSTATES = {"57P01", "57P02", "57P03"}
# A server's socket file gone (stopped), a network that cannot reach it. Not every OSError: a
# full disk or a refused permission is no lost connection.
_LOST_ERRNOS = {
    errno.ENOENT, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN,
}


def connection_lost(error: BaseException) -> bool:
    """True when `error` (or what caused it) says the database connection is gone or cannot be
    made now: worth retrying on a fresh connection."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_lost(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_lost(error: BaseException) -> bool:
    if isinstance(error, asyncpg.PostgresError):
        state = getattr(error, "sqlstate", None) or ""
        return state.startswith(_LOST_SQLSTATE_CLASSES) or state in _LOST_SQLSTATES
    if isinstance(error, asyncpg.InterfaceError):
        # asyncpg's own "connection is closed" / "connection was closed in the middle of ...".
        return "closed" in str(error)
    if isinstance(error, asyncpg.InternalClientError):
        # A connection the server cut while it sat idle: its protocol is still consuming the
        # FATAL message ("another operation (2) is in progress") when the next statement comes.
        return "another operation" in str(error)
    # SQLAlchemy marks the errors it found the connection dead on.
    if getattr(error, "connection_invalidated", False):
        return True
    # Refused, reset, broken pipe, unreachable, no socket file, DNS: not there (yet).
    if isinstance(error, ConnectionError | TimeoutError | socket.gaierror):
        return True
    if isinstance(error, OSError):
        # asyncio's "Multiple exceptions: [Errno 111] Connect call failed ..." has no errno.
        return error.errno in _LOST_ERRNOS or "Connect call failed" in str(error)
    return False


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays before each retry: `first`, doubling, capped at `most`; each one drawn uniformly
    below that bound ("full jitter"), so that many clients that lost the same server do not
    come back in step."""

    first: float = 0.05
    most: float = 2.0
    factor: float = 2.0

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """The delay before retry number `retry` (0 for the first retry)."""
        bound = min(self.most, self.first * self.factor ** min(retry, 64))
        return (rng or random).uniform(0, bound)


class RetriesExhausted(Exception):
    """The call kept losing its connection for longer than it may retry; `__cause__` is the
    last error."""


async def retry_call(
    call: Callable[[], Awaitable[T]],
    *,
    max_seconds: float,
    backoff: Backoff = Backoff(),
    retryable: Callable[[BaseException], bool] = connection_lost,
    on_retry: Callable[[BaseException], object] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """Await `call()` until it returns, retrying the errors `retryable` accepts for up to
    `max_seconds` in all; `on_retry(error)` runs before each wait. Other errors propagate at
    once; when the time is up, RetriesExhausted from the last error."""
    deadline = clock() + max_seconds
    retry = 0
    while True:
        try:
            return await call()
        except Exception as error:
            if not retryable(error):
                raise
            now = clock()
            if now >= deadline:
                raise RetriesExhausted(f"gave up after {max_seconds:g}s: {error}") from error
            if on_retry is not None:
                on_retry(error)
            await sleep(min(backoff.delay(retry), deadline - now))
            retry += 1
