"""Initial schema: users, items, ratings, API keys, model definitions, model versions, training jobs.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Ts = sa.DateTime(timezone=True)
NOW = sa.text("CURRENT_TIMESTAMP")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("external_id", sa.String(255), nullable=False),
        sa.Column("attributes", Json, nullable=True),
        sa.Column("created_at", Ts, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("external_id", name="uq_users_external_id"),
    )
    op.create_table(
        "items",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("external_id", sa.String(255), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("attributes", Json, nullable=True),
        sa.Column("created_at", Ts, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name="pk_items"),
        sa.UniqueConstraint("external_id", name="uq_items_external_id"),
    )
    op.create_table(
        "ratings",
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("item_id", BigId, nullable=False),
        sa.Column("value", sa.SmallInteger(), nullable=False),
        sa.Column("rated_at", Ts, nullable=False, server_default=NOW),
        sa.Column("ingested_at", Ts, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("user_id", "item_id", name="pk_ratings"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_ratings_user_id_users", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name="fk_ratings_item_id_items", ondelete="CASCADE"),
    )
    op.create_index("ix_ratings_item_id", "ratings", ["item_id"])
    op.create_index("ix_ratings_ingested_at", "ratings", ["ingested_at"])

    op.create_table(
        "api_keys",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", Ts, nullable=False, server_default=NOW),
        sa.Column("revoked_at", Ts, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
        sa.CheckConstraint("role IN ('admin', 'read')", name="ck_api_keys_role"),
    )

    op.create_table(
        "model_definitions",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("orientation", sa.String(16), nullable=False),
        sa.Column("hyperparameters", Json, nullable=False, server_default=sa.text("'{}'")),
        sa.Column("holdout_fraction", sa.Float(), nullable=False, server_default=sa.text("0.1")),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("schedule_interval_seconds", sa.Integer(), nullable=True),
        sa.Column("schedule_cron", sa.String(100), nullable=True),
        sa.Column("trigger_new_ratings", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("next_run_at", Ts, nullable=True),
        sa.Column("gate", Json, nullable=False, server_default=sa.text("'{}'")),
        sa.Column("created_at", Ts, nullable=False, server_default=NOW),
        sa.Column("updated_at", Ts, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name="pk_model_definitions"),
        sa.UniqueConstraint("name", name="uq_model_definitions_name"),
        sa.CheckConstraint("kind IN ('rbm', 'dbm', 'bm')", name="ck_model_definitions_kind"),
        sa.CheckConstraint("orientation IN ('user', 'item')", name="ck_model_definitions_orientation"),
    )
    op.create_table(
        "training_jobs",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("model_definition_id", BigId, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
        sa.Column("trigger", sa.String(16), nullable=False, server_default="manual"),
        sa.Column("progress", sa.Float(), nullable=False, server_default=sa.text("0")),
        sa.Column("metrics", Json, nullable=False, server_default=sa.text("'[]'")),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("max_attempts", sa.Integer(), nullable=False, server_default=sa.text("3")),
        sa.Column("worker_id", sa.String(200), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("model_version_id", BigId, nullable=True),
        sa.Column("created_at", Ts, nullable=False, server_default=NOW),
        sa.Column("started_at", Ts, nullable=True),
        sa.Column("finished_at", Ts, nullable=True),
        sa.Column("heartbeat_at", Ts, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_training_jobs"),
        sa.ForeignKeyConstraint(["model_definition_id"], ["model_definitions.id"],
                                name="fk_training_jobs_model_definition_id_model_definitions", ondelete="CASCADE"),
        sa.CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
                           name="ck_training_jobs_status"),
        sa.CheckConstraint("trigger IN ('manual', 'schedule', 'new_ratings')", name="ck_training_jobs_trigger"),
    )
    op.create_index("ix_training_jobs_status_created_at", "training_jobs", ["status", "created_at"])
    op.create_index("ix_training_jobs_model_definition_id", "training_jobs", ["model_definition_id"])

    op.create_table(
        "model_versions",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("model_definition_id", BigId, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="ready"),
        sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("artifact", sa.LargeBinary(), nullable=False),
        sa.Column("artifact_size", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("user_index", Json, nullable=False),
        sa.Column("item_index", Json, nullable=False),
        sa.Column("num_users", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("num_items", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("config", Json, nullable=False, server_default=sa.text("'{}'")),
        sa.Column("metrics", Json, nullable=False, server_default=sa.text("'{}'")),
        sa.Column("rating_count", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("last_rating_at", Ts, nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("training_job_id", BigId, nullable=True),
        sa.Column("created_at", Ts, nullable=False, server_default=NOW),
        sa.Column("activated_at", Ts, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_model_versions"),
        sa.UniqueConstraint("model_definition_id", "version", name="uq_model_versions_model_definition_id_version"),
        sa.ForeignKeyConstraint(["model_definition_id"], ["model_definitions.id"],
                                name="fk_model_versions_model_definition_id_model_definitions", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["training_job_id"], ["training_jobs.id"],
                                name="fk_model_versions_training_job_id_training_jobs", ondelete="SET NULL"),
        sa.CheckConstraint("status IN ('ready', 'rejected', 'failed')", name="ck_model_versions_status"),
    )
    # At most one active version per definition.
    op.create_index("uq_model_versions_active", "model_versions", ["model_definition_id"], unique=True,
                    postgresql_where=sa.text("is_active"), sqlite_where=sa.text("is_active"))
    # training_jobs.model_version_id -> model_versions: added after both tables exist (they refer to each other).
    with op.batch_alter_table("training_jobs") as batch:
        batch.create_foreign_key("fk_training_jobs_model_version_id_model_versions", "model_versions",
                                 ["model_version_id"], ["id"], ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("training_jobs") as batch:
        batch.drop_constraint("fk_training_jobs_model_version_id_model_versions", type_="foreignkey")
    op.drop_index("uq_model_versions_active", table_name="model_versions")
    op.drop_table("model_versions")
    op.drop_index("ix_training_jobs_model_definition_id", table_name="training_jobs")
    op.drop_index("ix_training_jobs_status_created_at", table_name="training_jobs")
    op.drop_table("training_jobs")
    op.drop_table("model_definitions")
    op.drop_table("api_keys")
    op.drop_index("ix_ratings_ingested_at", table_name="ratings")
    op.drop_index("ix_ratings_item_id", table_name="ratings")
    op.drop_table("ratings")
    op.drop_table("items")
    op.drop_table("users")
