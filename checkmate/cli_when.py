"""WHEN arguments of `checkmate tasks`: ISO times or relative ones (`90s`, `15m`, `2h`, `3d`,
`1w`: that long ago)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(value: str, now: datetime | None = None) -> datetime:
    """An aware datetime; an ISO time without an offset is taken as UTC. ValueError says what
    is accepted."""
    match = _RELATIVE.match(value)
    if match:
        amount, unit = float(match.group(1)), _UNITS[match.group(2).lower()]
        return (now or datetime.now(UTC)) - timedelta(**{unit: amount})
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"{value!r} is neither an ISO time (2026-01-31T12:00:00Z) nor a relative one "
            "(90s, 15m, 2h, 3d, 1w)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def age(moment: str | None, now: datetime | None = None) -> str:
    """`3m12s ago` for an ISO time from a record; `-` for none."""
    if not moment:
        return "-"
    seconds = int(((now or datetime.now(UTC)) - datetime.fromisoformat(moment)).total_seconds())
    if seconds < 0:
        return "in the future"
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if hours or days:
        parts.append(f"{hours}h")
    if not days:
        parts.append(f"{minutes}m" if hours or minutes else "")
        if not hours:
            parts.append(f"{secs}s")
    return "".join(parts) + " ago"
