"""The one state `checkmate demo` cannot reach through the service, the store or the worker's
statements: a RUNNING record whose last sign of life is in the past (a worker that died long
enough ago for `unlock` to call it lost)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from uuid import UUID

import asyncpg

_BACKDATE = """
UPDATE tasks SET updated_at = now() - $2::interval, started_at = now() - $2::interval
WHERE id = ANY($1::uuid[])
"""


async def backdate_activity(
    conn: asyncpg.Connection, ids: Sequence[UUID], ago: timedelta
) -> None:
    await conn.execute(_BACKDATE, list(ids), ago)
