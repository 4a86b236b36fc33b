"""The error every CheckMate layer raises for a refused or failed operation.

It lives below the service so that `checkmate.db` and `checkmate.events` can raise it
(an unreachable database is UNAVAILABLE wherever it is met) without importing the service.
"""

from __future__ import annotations


class ServiceError(Exception):
    """An operation refused or failed as a whole; `code` says which kind of error it is."""

    BAD_USER_INPUT = "BAD_USER_INPUT"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL_SERVER_ERROR"
    # The events after a subscription's afterEventId were pruned: reload, then subscribe anew.
    EVENTS_PRUNED = "EVENTS_PRUNED"

    def __init__(self, message: str, code: str = BAD_USER_INPUT) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
