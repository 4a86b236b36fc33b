"""Prometheus series of the service layer and the workers (module level: one registry per
process). The HTTP series are the server's; the event hub keeps its own (subscribers, lagging
drops, events read) in checkmate.events.

Labels are bounded: actions, modes and outcomes are fixed sets; GraphQL operation names come
from clients, so only the first OPERATION_NAMES_KEPT distinct ones get their own series.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

OPERATIONS = Counter(
    "checkmate_graphql_operations_total",
    "GraphQL operations by operation name, type and outcome (ok or the first error's code).",
    ["operation", "type", "outcome"],
)
BATCH_ACTIONS = Counter(
    "checkmate_batch_actions_total",
    "Batch actions by action, mode (dry or real) and outcome (ok, or the error code raised).",
    ["action", "mode", "outcome"],
)
BATCH_TASKS = Counter(
    "checkmate_batch_tasks_total",
    "Tasks a batch action touched, by action, mode and result (succeeded or failed).",
    ["action", "mode", "result"],
)
EVENTS_FANNED_OUT = Counter(
    "checkmate_events_fanned_out_total",
    "Status events delivered to subscribers (one per event and subscription).",
)
POOL_IN_USE = Gauge(
    "checkmate_db_pool_connections_in_use",
    "Connections of this process's database pool checked out right now.",
)
WORKER_CLAIMS = Counter("checkmate_worker_claims_total", "Tasks this worker claimed.")
WORKER_TASKS = Counter(
    "checkmate_worker_tasks_total",
    "Tasks this worker finished, by outcome (COMPLETED, ERROR, requeued, stopped).",
    ["outcome"],
)
STAGE_SECONDS = Histogram(
    "checkmate_worker_stage_seconds",
    "Wall time of each stage a worker ran, by task kind and outcome.",
    ["kind", "outcome"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
)

OPERATION_NAMES_KEPT = 200
_names: set[str] = set()
_names_lock = threading.Lock()


def operation_label(name: str | None) -> str:
    """The label of a client's operation name: `anonymous`, the name, or `other` once
    OPERATION_NAMES_KEPT distinct names have been seen (a client cannot grow the registry)."""
    if not name:
        return "anonymous"
    name = name[:64]
    with _names_lock:
        if name in _names:
            return name
        if len(_names) < OPERATION_NAMES_KEPT:
            _names.add(name)
            return name
    return "other"


def record_batch(
    action: str, dry_run: bool, outcome: str, succeeded: Sequence[Any] = (),
    failed: Sequence[Any] = (),
) -> None:
    mode = "dry" if dry_run else "real"
    BATCH_ACTIONS.labels(action, mode, outcome).inc()
    if succeeded:
        BATCH_TASKS.labels(action, mode, "succeeded").inc(len(succeeded))
    if failed:
        BATCH_TASKS.labels(action, mode, "failed").inc(len(failed))


def track_pool(engine: Any) -> None:
    """Report `engine`'s checked-out connections (the process's newest engine; held weakly)."""
    pool = weakref.ref(engine.pool)

    def in_use() -> float:
        current = pool()
        checked_out: Callable[[], int] | None = getattr(current, "checkedout", None)
        return float(checked_out()) if checked_out else 0.0

    POOL_IN_USE.set_function(in_use)
