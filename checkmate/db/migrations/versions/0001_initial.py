"""Task records, status events and the trigger that writes the events.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Statement-level triggers with transition tables: any writer (raw SQL included) produces one
# event row per changed task and ONE notification per statement, whatever the row count.
# The payload is the statement's highest event id. Column-list triggers (UPDATE OF status)
# cannot have transition tables, so the UPDATE trigger compares old and new status itself.
TRIGGER_SQL = [
    """
CREATE FUNCTION checkmate_status_events_on_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    last_event_id bigint;
BEGIN
    WITH inserted AS (
        INSERT INTO status_events (task_id, status, previous_status, stage, queue)
        SELECT n.id, n.status, NULL, n.stage, n.queue FROM new_rows n ORDER BY n.created_at, n.id
        RETURNING id
    )
    SELECT max(id) INTO last_event_id FROM inserted;
    IF last_event_id IS NOT NULL THEN
        PERFORM pg_notify('checkmate_events', last_event_id::text);
        PERFORM pg_notify('checkmate_queued', q.queue)
        FROM (SELECT DISTINCT queue FROM new_rows WHERE status = 'QUEUED') q;
    END IF;
    RETURN NULL;
END
$$
""",
    """
CREATE FUNCTION checkmate_status_events_on_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    last_event_id bigint;
BEGIN
    WITH inserted AS (
        INSERT INTO status_events (task_id, status, previous_status, stage, queue)
        SELECT n.id, n.status, o.status, n.stage, n.queue
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE n.status IS DISTINCT FROM o.status
        ORDER BY n.id
        RETURNING id
    )
    SELECT max(id) INTO last_event_id FROM inserted;
    IF last_event_id IS NOT NULL THEN
        PERFORM pg_notify('checkmate_events', last_event_id::text);
        PERFORM pg_notify('checkmate_queued', q.queue)
        FROM (
            SELECT DISTINCT n.queue FROM new_rows n JOIN old_rows o ON o.id = n.id
            WHERE n.status = 'QUEUED' AND o.status IS DISTINCT FROM 'QUEUED'
        ) q;
    END IF;
    RETURN NULL;
END
$$
""",
    """
CREATE TRIGGER tasks_status_events_insert
AFTER INSERT ON tasks REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION checkmate_status_events_on_insert()
""",
    """
CREATE TRIGGER tasks_status_events_update
AFTER UPDATE ON tasks REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION checkmate_status_events_on_update()
""",
]


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", postgresql.UUID(as_uuid=True), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("queue", sa.Text(), server_default=sa.text("'default'"), nullable=False),
        sa.Column("tags", postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'::text[]"), nullable=False),
        sa.Column("status", sa.Text(), server_default=sa.text("'CREATED'"), nullable=False),
        sa.Column("stage", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cleaned", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("cleaned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('CREATED', 'QUEUED', 'RUNNING', 'COMPLETED', 'ERROR', 'CANCELED')",
            name="tasks_status_check",
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("tasks_created_at_id_idx", "tasks", ["created_at", "id"])
    op.create_index("tasks_status_created_at_id_idx", "tasks", ["status", "created_at", "id"])
    op.create_index("tasks_queue_created_at_id_idx", "tasks", ["queue", "created_at", "id"])
    op.create_index("tasks_name_created_at_id_idx", "tasks", ["name", "created_at", "id"])
    op.create_index("tasks_cleaned_created_at_id_idx", "tasks", ["cleaned", "created_at", "id"])
    op.create_index("tasks_tags_idx", "tasks", ["tags"], postgresql_using="gin")
    op.create_index(
        "tasks_queued_claim_idx",
        "tasks",
        ["queue", "created_at"],
        postgresql_where=sa.text("status = 'QUEUED'"),
    )
    op.create_table(
        "status_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("task_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("previous_status", sa.Text(), nullable=True),
        sa.Column("stage", sa.Text(), nullable=True),
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("status_events_changed_at_idx", "status_events", ["changed_at"])
    op.create_index("status_events_task_id_idx", "status_events", ["task_id"])
    for statement in TRIGGER_SQL:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS tasks_status_events_update ON tasks")
    op.execute("DROP TRIGGER IF EXISTS tasks_status_events_insert ON tasks")
    op.execute("DROP FUNCTION IF EXISTS checkmate_status_events_on_update()")
    op.execute("DROP FUNCTION IF EXISTS checkmate_status_events_on_insert()")
    op.drop_table("status_events")
    op.drop_table("tasks")
