"""The ``model_definitions``, ``model_versions`` and ``training_jobs`` tables.

A definition names a model and how to train it (kind, orientation, hyperparameters, schedule, gate);
each training run that completes writes one version (artifact bytes, index maps, metrics, the data
snapshot it saw); at most one version per definition is active (a partial unique index)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, BigId, JsonType, UTCDateTime, utcnow

FkId = BigInteger().with_variant(Integer(), "sqlite")

MODEL_KINDS = ("rbm", "dbm", "bm")
ORIENTATIONS = ("user", "item")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
JOB_TRIGGERS = ("manual", "schedule", "new_ratings")
VERSION_STATUSES = ("ready", "rejected", "failed")


class ModelDefinition(Base):
    __tablename__ = "model_definitions"
    __table_args__ = (
        CheckConstraint("kind IN ('rbm', 'dbm', 'bm')", name="kind"),
        CheckConstraint("orientation IN ('user', 'item')", name="orientation"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    orientation: Mapped[str] = mapped_column(String(16))
    # Everything RatingModelConfig takes besides kind and orientation (num_hidden, epochs, ...).
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    # Fraction of each user's ratings held out for the evaluation every version carries.
    holdout_fraction: Mapped[float] = mapped_column(Float, default=0.1)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Schedule (read by the worker): a fixed interval, or a cron expression, and/or "retrain on new ratings".
    schedule_interval_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    schedule_cron: Mapped[str | None] = mapped_column(String(100), nullable=True)
    trigger_new_ratings: Mapped[bool] = mapped_column(Boolean, default=False)
    # N of "retrain when N new ratings have arrived since the last run" (migration j001, service/jobs).
    new_ratings_threshold: Mapped[int | None] = mapped_column(Integer, nullable=True)
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Gate settings (read by the worker): when a new version may replace the active one.
    gate: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_definition_id", "version"),
        CheckConstraint("status IN ('ready', 'rejected', 'failed')", name="status"),
        # At most one active version per definition.
        Index("uq_model_versions_active", "model_definition_id", unique=True,
              postgresql_where=text("is_active"), sqlite_where=text("is_active")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    model_definition_id: Mapped[int] = mapped_column(FkId, ForeignKey("model_definitions.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="ready")
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    # rbm_core's RatingModel.to_bytes(): torch tensors + a JSON header, loaded with weights_only (no pickle).
    artifact: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    artifact_size: Mapped[int] = mapped_column(Integer, default=0)
    # Dense index -> internal users.id / items.id, as JSON lists (position = index in the model).
    user_index: Mapped[list[int]] = mapped_column(JsonType, deferred=True)
    item_index: Mapped[list[int]] = mapped_column(JsonType, deferred=True)
    num_users: Mapped[int] = mapped_column(Integer, default=0)
    num_items: Mapped[int] = mapped_column(Integer, default=0)
    config: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    # Held-out evaluation and training summary (rmse, mae, baselines, epochs, seconds, ...).
    metrics: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    # The data snapshot it was trained on.
    rating_count: Mapped[int] = mapped_column(BigInteger, default=0)
    last_rating_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    training_job_id: Mapped[int | None] = mapped_column(
        FkId, ForeignKey("training_jobs.id", ondelete="SET NULL", use_alter=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class TrainingJob(Base):
    __tablename__ = "training_jobs"
    __table_args__ = (
        CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name="status"),
        CheckConstraint("trigger IN ('manual', 'schedule', 'new_ratings')", name="trigger"),
        Index("ix_training_jobs_status_created_at", "status", "created_at"),
        Index("ix_training_jobs_model_definition_id", "model_definition_id"),
        Index("ix_training_jobs_status_lease_expires_at", "status", "lease_expires_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    model_definition_id: Mapped[int] = mapped_column(FkId, ForeignKey("model_definitions.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    trigger: Mapped[str] = mapped_column(String(16), default="manual")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    # One dict per finished epoch, as reported by the training callback.
    metrics: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, default=list)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    model_version_id: Mapped[int | None] = mapped_column(
        FkId, ForeignKey("model_versions.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Set by the running worker's heartbeat; past it the job counts as abandoned (migration j001, service/jobs).
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
