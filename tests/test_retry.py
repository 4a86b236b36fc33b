"""checkmate.retry: which errors are retried, how long, and how far apart (a fake clock)."""

from __future__ import annotations

import random

import asyncpg
import pytest
from obstore.exceptions import GenericError, NotFoundError, PermissionDeniedError

from checkmate.retry import Backoff, RetriesExhausted, connection_lost, retry_call
from checkmate.settings import Settings
from checkmate.store import transient_store_error


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_connection_lost_accepts_what_a_failover_raises_and_nothing_else() -> None:
    lost = [
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle"),
        asyncpg.exceptions.ConnectionFailureError("08006"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is running"),
        ConnectionRefusedError(111, "refused"),
        ConnectionResetError(104, "reset"),
        TimeoutError(),
        FileNotFoundError(2, "No such file or directory"),  # a stopped server's socket
        OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 5432)"),
    ]
    for error in lost:
        assert connection_lost(error), error
    wrapped = RuntimeError("while finishing")
    wrapped.__cause__ = ConnectionResetError()
    assert connection_lost(wrapped)

    for error in [
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        asyncpg.exceptions.UndefinedTableError("no such table"),
        asyncpg.exceptions.QueryCanceledError("statement timeout"),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        ValueError("bad"),
        OSError(28, "No space left on device"),
        PermissionError(13, "Permission denied"),
    ]:
        assert not connection_lost(error), error


def test_transient_store_errors_are_throttling_server_errors_and_dropped_connections() -> None:
    for message in [
        "Generic S3 error: Server returned non-2xx status code: 503 Service Unavailable",
        "Generic S3 error: Server returned non-2xx status code: 429 Too Many Requests",
        "Generic S3 error: error sending request for url (http://s3/x): operation timed out",
        "Generic S3 error: Error performing GET: error decoding response body",
        "Generic S3 error: connection reset by peer",
    ]:
        assert transient_store_error(GenericError(message)), message
    for error in [
        GenericError("Server returned non-2xx status code: 400 Bad Request"),
        PermissionDeniedError("403 Forbidden"),
        NotFoundError("404 Not Found"),
    ]:
        assert not transient_store_error(error), error


async def test_retries_until_the_call_succeeds_with_growing_jittered_delays() -> None:
    clock = FakeClock()
    calls = 0
    seen: list[BaseException] = []

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 6:
            raise ConnectionResetError("reset")
        return "done"

    result = await retry_call(
        flaky,
        max_seconds=60,
        backoff=Backoff(first=0.1, most=1.0),
        on_retry=seen.append,
        clock=clock,
        sleep=clock.sleep,
    )
    assert result == "done"
    assert calls == 6
    assert len(seen) == len(clock.sleeps) == 5
    # Each delay is drawn below its bound: 0.1, 0.2, 0.4, 0.8, then capped at 1.0.
    for delay, bound in zip(clock.sleeps, [0.1, 0.2, 0.4, 0.8, 1.0], strict=True):
        assert 0 <= delay <= bound


async def test_gives_up_after_max_seconds_with_the_last_error_as_cause() -> None:
    clock = FakeClock()

    async def down() -> None:
        raise ConnectionRefusedError("refused")

    with pytest.raises(RetriesExhausted) as raised:
        await retry_call(
            down, max_seconds=5, backoff=Backoff(first=1, most=1), clock=clock, sleep=clock.sleep
        )
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)
    # Never sleeps past the deadline: the total stays within max_seconds.
    assert sum(clock.sleeps) <= 5
    assert clock.now <= 5


async def test_other_errors_are_not_retried() -> None:
    clock = FakeClock()
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise asyncpg.exceptions.UniqueViolationError("duplicate key")

    with pytest.raises(asyncpg.exceptions.UniqueViolationError):
        await retry_call(broken, max_seconds=60, clock=clock, sleep=clock.sleep)
    assert calls == 1
    assert clock.sleeps == []


def test_full_jitter_spreads_delays_below_the_bound() -> None:
    rng = random.Random(7)
    delays = [Backoff(first=0.5, most=4).delay(10, rng) for _ in range(200)]
    assert max(delays) <= 4
    assert min(delays) < 1 < 3 < max(delays)  # spread over the range, not in step


def test_db_retry_seconds_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHECKMATE_DB_RETRY_SECONDS", raising=False)
    assert Settings().db_retry_seconds == 300
    monkeypatch.setenv("CHECKMATE_DB_RETRY_SECONDS", "12.5")
    assert Settings().db_retry_seconds == 12.5
    monkeypatch.setenv("CHECKMATE_DB_RETRY_SECONDS", "-1")
    with pytest.raises(ValueError):
        Settings()
