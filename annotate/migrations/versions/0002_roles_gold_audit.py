"""Roles, token expiry and revocation, named admins, gold items, adjudications, the audit log.

Existing rows get the server defaults: members become role 'annotator', the one admin of a
first-release database is named 'admin', projects get gold_rate 0; tasks are not gold (NULL).
Only columns are added and tables created, so SQLite never has to copy a table (batch mode
would do it, were it needed).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("admins") as batch:
        batch.add_column(sa.Column("name", sa.String(length=200), server_default="admin", nullable=False))
        batch.add_column(sa.Column("expires_at", TZ, nullable=True))
        batch.add_column(sa.Column("revoked_at", TZ, nullable=True))
        batch.create_index("ix_admins_name", ["name"], unique=True)
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("gold_rate", sa.Float(), server_default="0", nullable=False))
    with op.batch_alter_table("annotators") as batch:
        batch.add_column(sa.Column("role", sa.String(length=16), server_default="annotator", nullable=False))
        batch.add_column(sa.Column("expires_at", TZ, nullable=True))
        batch.add_column(sa.Column("revoked_at", TZ, nullable=True))
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("gold", sa.String(length=16), nullable=True))
    op.create_table(
        "adjudications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("reviewer_id", sa.Integer(), nullable=True),
        sa.Column("reviewer", sa.String(length=200), nullable=False),
        sa.Column("choice", sa.String(length=16), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.ForeignKeyConstraint(["reviewer_id"], ["annotators.id"]),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id"),
    )
    op.create_index("ix_adjudications_reviewer_id", "adjudications", ["reviewer_id"], unique=False)
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", TZ, nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"], unique=False)
    op.create_index("ix_audit_log_project_id", "audit_log", ["project_id"], unique=False)


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (PostgreSQL; SQLite >= 3.35): a batch copy of a table that
    # other tables reference fails on SQLite with foreign keys on.
    op.drop_table("audit_log")
    op.drop_table("adjudications")
    op.drop_column("tasks", "gold")
    for col in ("revoked_at", "expires_at", "role"):
        op.drop_column("annotators", col)
    op.drop_column("projects", "gold_rate")
    op.drop_index("ix_admins_name", table_name="admins")
    for col in ("revoked_at", "expires_at", "name"):
        op.drop_column("admins", col)
