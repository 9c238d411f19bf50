"""Training jobs: a lease per running job (the worker's heartbeat extends it; an expired lease marks the
job abandoned) and the rating threshold N of a definition's "retrain after N new ratings" trigger.

Revision ID: j001
Revises: 0001
Create Date: 2026-12-03
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "j001"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("training_jobs") as batch:
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_training_jobs_status_lease_expires_at", "training_jobs", ["status", "lease_expires_at"])
    with op.batch_alter_table("model_definitions") as batch:
        batch.add_column(sa.Column("new_ratings_threshold", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_definitions") as batch:
        batch.drop_column("new_ratings_threshold")
    op.drop_index("ix_training_jobs_status_lease_expires_at", table_name="training_jobs")
    with op.batch_alter_table("training_jobs") as batch:
        batch.drop_column("lease_expires_at")
