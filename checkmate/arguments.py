"""Validation of every argument of the public service methods, before any database work.

A wrong value is a ServiceError (BAD_USER_INPUT) that names the argument and what it accepts;
nothing falls back to a default. Strings must be valid text for PostgreSQL and the store: no NUL
character and no lone surrogate (neither encodes as UTF-8). Enum-like strings (`sort`, statuses)
match case-insensitively: "desc", "DESC" and SortOrder's member are the same; "sideways" is an
error.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, TypedDict
from uuid import UUID

from checkmate.errors import bad_argument
from checkmate.models import SortOrder, StageStatus, TaskFilter

# Deepest nesting of params (objects and lists) accepted: deeper ones are not pipeline settings
# and would exhaust the recursion of the JSON encoders.
MAX_PARAMS_DEPTH = 32
# Integers in params must fit a signed 64-bit integer: the store's JSON encoder (orjson) and
# most JSON readers hold no more.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_SORTS: dict[str, SortOrder] = {"asc": "asc", "desc": "desc"}
_STATUSES = ", ".join(status.value for status in StageStatus)

TaskIds = Sequence[str | UUID] | str | UUID | None


class FilterArgs(TypedDict, total=False):
    """The filter keywords of `list` and the batch actions (all must hold)."""

    status: StageStatus | str | None
    statuses: Sequence[StageStatus | str] | None
    queue: str | None
    tags: Sequence[str] | None
    since: datetime | None
    until: datetime | None
    cleaned: bool | None
    name: str | None


_FILTER_KEYWORDS = frozenset(FilterArgs.__annotations__)
# The fields of a TaskFilter: the keywords and the ids (given as task_ids to the methods).
FILTER_FIELDS = _FILTER_KEYWORDS | {"ids"}


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def text(name: str, value: Any, *, path: str = "", empty: bool = True) -> str:
    """A str PostgreSQL and UTF-8 can hold: no NUL, no lone surrogate."""
    if not isinstance(value, str):
        raise bad_argument(name, f"must be a string (got {_shown(value)})", path)
    if "\x00" in value:
        raise bad_argument(name, "must not contain a NUL character (\\u0000)", path)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise bad_argument(
                name, "must be valid Unicode text (it holds a lone surrogate)", path
            ) from None
    if not empty and not value:
        raise bad_argument(name, "must not be empty", path)
    return value


def optional_text(name: str, value: Any) -> str | None:
    return None if value is None else text(name, value)


def flag(name: str, value: Any) -> bool:
    """A real bool: 0, "false" or None are not taken for one (dry_run=0 must not run for real)."""
    if not isinstance(value, bool):
        raise bad_argument(name, f"must be True or False (got {_shown(value)})")
    return value


def optional_flag(name: str, value: Any) -> bool | None:
    return None if value is None else flag(name, value)


def sort_order(value: Any, name: str = "sort") -> SortOrder:
    found = _SORTS.get(value.lower()) if isinstance(value, str) else None
    if found is None:
        raise bad_argument(name, f"must be 'asc' or 'desc' (got {_shown(value)})")
    return found


def max_results(value: Any, cap: int, name: str = "max_results") -> int:
    """None means the cap; anything outside 1..cap is an error, not a truncation."""
    if value is None:
        return cap
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_argument(name, f"must be an integer between 1 and {cap} (got {_shown(value)})")
    if value < 1 or value > cap:
        raise bad_argument(name, f"must be between 1 and {cap} (got {value})")
    return value


def stage_status(name: str, value: Any) -> StageStatus:
    if isinstance(value, StageStatus):
        return value
    if isinstance(value, str):
        try:
            return StageStatus(value.upper())
        except ValueError:
            pass
    raise bad_argument(name, f"must be one of {_STATUSES} (got {_shown(value)})")


def _sequence(name: str, value: Any) -> Sequence[Any]:
    # A bare string is a sequence too: tags="nightly" must not become 8 one-letter tags.
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | frozenset | set):
        raise bad_argument(name, f"must be a list (got {_shown(value)})")
    return list(value)


def stage_statuses(name: str, value: Any) -> tuple[StageStatus, ...] | None:
    if value is None:
        return None
    return tuple(stage_status(name, item) for item in _sequence(name, value))


def texts(name: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(text(name, item, path=f"[{i}]") for i, item in enumerate(_sequence(name, value)))


def moment(name: str, value: Any) -> datetime | None:
    """A datetime with a UTC offset: a naive one would be read in the server's zone, silently."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise bad_argument(name, f"must be a datetime (got {_shown(value)})")
    if value.tzinfo is None or value.utcoffset() is None:
        raise bad_argument(name, f"must have a UTC offset (got {value.isoformat()})")
    return value


def task_id(value: Any, name: str = "task_id") -> UUID:
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        text(name, value)
        try:
            return UUID(value)
        except ValueError:
            pass
    raise bad_argument(name, f"must be a task id, a UUID (got {_shown(value)})")


def task_ids(value: TaskIds, name: str = "task_ids") -> tuple[UUID, ...] | None:
    """None, one id or a list of ids; each id once, in the order given."""
    if value is None:
        return None
    if isinstance(value, str | UUID):
        value = [value]
    items = _sequence(name, value)
    # dict keeps the first occurrence of each id, in the order given.
    return tuple(dict.fromkeys(task_id(item, name) for item in items))


def task_filter(
    ids: Any = None,
    *,
    status: Any = None,
    statuses: Any = None,
    queue: Any = None,
    tags: Any = None,
    since: Any = None,
    until: Any = None,
    cleaned: Any = None,
    name: Any = None,
) -> TaskFilter:
    """A TaskFilter from unchecked values; each wrong one is named."""
    return TaskFilter.model_construct(
        ids=task_ids(ids, "ids"),
        status=None if status is None else stage_status("status", status),
        statuses=stage_statuses("statuses", statuses),
        queue=optional_text("queue", queue),
        tags=texts("tags", tags),
        since=moment("since", since),
        until=moment("until", until),
        cleaned=optional_flag("cleaned", cleaned),
        name=optional_text("name", name),
    )


def checked_filter(given: TaskFilter | None) -> TaskFilter:
    """A filter built elsewhere (e.g. by the GraphQL layer), checked like keyword filters."""
    if given is None:
        return TaskFilter()
    if not isinstance(given, TaskFilter):
        raise bad_argument("task_filter", f"must be a TaskFilter (got {_shown(given)})")
    return task_filter(**dict(given))


def filter_keywords(keywords: Mapping[str, Any]) -> dict[str, Any]:
    """The filter keywords a method got; an unknown one is a TypeError, as for any function."""
    unknown = sorted(set(keywords) - _FILTER_KEYWORDS)
    if unknown:
        allowed = ", ".join(sorted(_FILTER_KEYWORDS))
        raise TypeError(f"unexpected keyword argument {unknown[0]!r} (filters: {allowed})")
    return dict(keywords)


def one_of(name: str, value: Any, allowed: Collection[str]) -> None:
    """Each item of `value` is one of `allowed`."""
    for item in _sequence(name, value):
        if item not in allowed:
            raise bad_argument(
                name, f"must hold only {', '.join(sorted(allowed))} (got {_shown(item)})"
            )


def params(value: Any, name: str = "params") -> dict[str, Any]:
    """A JSON object the store and PostgreSQL's jsonb can hold, checked at every depth."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_argument(name, f"must be a JSON object (got {_shown(value)})")
    _json_value(name, value, "", 0)
    return value


def _json_value(name: str, value: Any, path: str, depth: int) -> None:
    if depth > MAX_PARAMS_DEPTH:
        raise bad_argument(name, f"nests deeper than {MAX_PARAMS_DEPTH} levels", path)
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        text(name, value, path=path)
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise bad_argument(
                name, "must hold integers within a signed 64-bit range (-2^63 to 2^63-1)", path
            )
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise bad_argument(name, f"must hold finite numbers (got {value})", path)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise bad_argument(name, f"keys must be strings (got {_shown(key)})", path)
            text(name, key, path=f"{path} (a key)")
            _json_value(name, item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _json_value(name, item, f"{path}[{index}]", depth + 1)
    else:
        raise bad_argument(name, f"must hold only JSON values (got {_shown(value)})", path)

