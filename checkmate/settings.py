"""Every setting of CheckMate, read from CHECKMATE_* environment variables in one place."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The most rows any single list or batch call may ever touch, whatever the operator configures:
# past this a batch should be split by the caller, not held in one transaction.
HARD_MAX_RESULTS = 100_000


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHECKMATE_", extra="ignore")

    database_url: str | None = Field(
        None, description="PostgreSQL URL; unset starts an embedded server under data_dir."
    )
    store_url: str | None = Field(
        None,
        description="file:///path, memory:// or s3://bucket/prefix; unset = data_dir/store.",
    )
    data_dir: Path = Field(
        Path(".checkmate"), description="Embedded database (pg/), default store and logs."
    )
    lock_timeout: float = Field(
        60.0, gt=0, description="Seconds until a lock's heartbeat is stale."
    )
    max_results_cap: int = Field(
        10_000, ge=1, le=HARD_MAX_RESULTS,
        description="Most tasks one list or batch call may select (at most 100,000).",
    )
    event_retention: timedelta = Field(
        timedelta(days=7),
        description="Status events older than this are pruned (seconds or ISO 8601, e.g. P7D).",
    )
    task_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated modules that register task kinds."
    )
    db_pool_size: int = Field(10, ge=1, description="Database pool size per process.")
    store_concurrency: int = Field(64, ge=1, description="Store requests in flight per batch.")
    batch_chunk_size: int = Field(5_000, ge=1, description="Rows per batch UPDATE statement.")
    cors_origins: list[str] = Field(
        default_factory=list,
        description=(
            'Browser origins besides the API\'s own that may call it, a JSON list such as '
            '["https://console.example.com"] ("*": any); empty = same origin only.'
        ),
    )
    db_retry_seconds: float = Field(
        300.0,
        ge=0,
        description="How long a worker's database call retries a lost connection before it "
        "gives up: longer than a failover or a restart.",
    )

    # --- access and abuse limits (README: "Access control" and "Limits") --------------------
    token_cache_ttl: float = Field(
        2.0, gt=0, le=60, description="Seconds a process trusts its snapshot of the tokens."
    )
    stage_cache_size: int = Field(
        10_000, ge=0, description="COMPLETED tasks whose stage metadata is kept in memory."
    )
    compiled_reads: bool = Field(
        True, description="Answer plain-column reads with SQL-built JSON (schema.compiled)."
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest HTTP request body.")
    max_query_depth: int = Field(10, ge=1, description="Deepest field nesting of an operation.")
    max_aliases: int = Field(30, ge=0, description="Most aliased fields in one document.")
    max_query_tokens: int = Field(5_000, ge=100, description="Most lexical tokens per document.")
    max_subscriptions_per_connection: int = Field(
        100, ge=1, description="Operations in flight on one websocket."
    )
    statement_timeout: float = Field(
        30.0, ge=0, description="Seconds any SQL statement of the API may run (0: no limit)."
    )
    introspection: bool = Field(True, description="Answer __schema/__type queries.")

    @field_validator("event_retention", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> object:
        # Like LOCK_TIMEOUT, a plain number means seconds; ISO 8601 durations work too.
        if isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
            return float(value)
        return value

    @field_validator("task_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        # As browsers send Origin: lowercase scheme and host, no default port, no path.
        normalized = []
        for origin in value:
            if origin == "*":
                normalized.append(origin)
                continue
            try:
                parts = urlsplit(origin.strip())
                port = parts.port
            except ValueError:
                parts, port = None, None
            if (
                parts is None
                or parts.scheme.lower() not in ("http", "https")
                or not parts.hostname
                or parts.path not in ("", "/")
                or parts.query
                or parts.fragment
                or parts.username
            ):
                raise ValueError(
                    f"{origin!r} is not an origin: write scheme://host[:port], e.g. "
                    "https://console.example.com, or *"
                )
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            default = {"http": 80, "https": 443}[parts.scheme.lower()]
            suffix = f":{port}" if port is not None and port != default else ""
            normalized.append(f"{parts.scheme.lower()}://{host}{suffix}")
        return normalized

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
