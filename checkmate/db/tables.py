"""Table definitions; the Alembic migrations must produce exactly this schema (tested)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

from checkmate.models import StageStatus

metadata = MetaData()

_STATUSES = ", ".join(f"'{status.value}'" for status in StageStatus)

tasks = Table(
    "tasks",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("name", Text, nullable=False),
    Column("queue", Text, nullable=False, server_default=text("'default'")),
    Column("tags", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    Column("status", Text, nullable=False, server_default=text("'CREATED'")),
    Column("stage", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("error", Text),
    Column("cleaned", Boolean, nullable=False, server_default=text("false")),
    Column("cleaned_at", DateTime(timezone=True)),
    Column("worker", Text),
    CheckConstraint(f"status IN ({_STATUSES})", name="tasks_status_check"),
    # Every listing is ordered by (created_at, id), so each filter's index ends with both:
    # one B-tree serves ASC and DESC and keyset pagination alike.
    Index("tasks_created_at_id_idx", "created_at", "id"),
    Index("tasks_status_created_at_id_idx", "status", "created_at", "id"),
    Index("tasks_queue_created_at_id_idx", "queue", "created_at", "id"),
    Index("tasks_name_created_at_id_idx", "name", "created_at", "id"),
    Index("tasks_cleaned_created_at_id_idx", "cleaned", "created_at", "id"),
    Index("tasks_tags_idx", "tags", postgresql_using="gin"),
    # Workers claim the oldest QUEUED task of their queues; this stays tiny however large tasks is.
    Index(
        "tasks_queued_claim_idx",
        "queue",
        "created_at",
        postgresql_where=text("status = 'QUEUED'"),
    ),
)

status_events = Table(
    "status_events",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("task_id", UUID(as_uuid=True), nullable=False),
    Column("status", Text, nullable=False),
    Column("previous_status", Text),
    Column("stage", Text),
    Column("queue", Text, nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Index("status_events_changed_at_idx", "changed_at"),
    Index("status_events_task_id_idx", "task_id"),
)

# API tokens: only the SHA-256 of each token is kept (see checkmate.access). A revoked token's row
# stays (audit rows name it); a name is unique among the tokens not revoked.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("name", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("token_hash", Text, nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("last_used_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    CheckConstraint("role IN ('viewer', 'operator')", name="api_tokens_role_check"),
    Index(
        "api_tokens_active_name_idx",
        "name",
        unique=True,
        postgresql_where=text("revoked_at IS NULL"),
    ),
)

# One row per real (non-dry-run) mutation, written in the transaction of its effect.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("selection", JSONB, nullable=False),
    Column("reason", Text),
    Column("succeeded", ARRAY(UUID(as_uuid=True)), nullable=False),
    Column("failed", ARRAY(UUID(as_uuid=True)), nullable=False),
    # auditLog pages newest first by (at, id), filtered by time and optionally actor or action.
    Index("audit_log_at_id_idx", "at", "id"),
    Index("audit_log_actor_at_id_idx", "actor", "at", "id"),
    Index("audit_log_action_at_id_idx", "action", "at", "id"),
)

EVENTS_CHANNEL = "checkmate_events"
QUEUED_CHANNEL = "checkmate_queued"
