"""Request and response bodies for model definitions, versions and training jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from service.catalog.schemas import Strict

ModelName = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class DefinitionIn(Strict):
    name: ModelName
    kind: Literal["rbm", "dbm", "bm"] = "rbm"
    orientation: Literal["user", "item"] = "user"
    hyperparameters: dict[str, Any] = Field(default_factory=dict,
                                            description="RatingModelConfig fields: num_hidden, epochs, learning_rate, ...")
    holdout_fraction: float = Field(default=0.1, gt=0, lt=1, description="share of each user's ratings held out for evaluation")
    description: str | None = None
    schedule_interval_seconds: int | None = Field(default=None, ge=60)
    schedule_cron: str | None = Field(default=None, max_length=100)
    trigger_new_ratings: bool = False
    gate: dict[str, Any] = Field(default_factory=dict)


class DefinitionPatch(Strict):
    hyperparameters: dict[str, Any] | None = None
    holdout_fraction: float | None = Field(default=None, gt=0, lt=1)
    description: str | None = None
    schedule_interval_seconds: int | None = Field(default=None, ge=60)
    schedule_cron: str | None = Field(default=None, max_length=100)
    trigger_new_ratings: bool | None = None
    gate: dict[str, Any] | None = None


class VersionOut(BaseModel):
    model: str
    version: int
    status: str
    is_active: bool
    metrics: dict[str, Any]
    config: dict[str, Any]
    num_users: int
    num_items: int
    rating_count: int
    last_rating_at: datetime | None
    artifact_size: int
    reason: str | None
    training_job_id: int | None
    created_at: datetime
    activated_at: datetime | None


class DefinitionOut(BaseModel):
    name: str
    kind: str
    orientation: str
    hyperparameters: dict[str, Any]
    holdout_fraction: float
    description: str | None
    schedule_interval_seconds: int | None
    schedule_cron: str | None
    trigger_new_ratings: bool
    next_run_at: datetime | None
    gate: dict[str, Any]
    active_version: int | None
    created_at: datetime


class JobIn(Strict):
    max_attempts: int = Field(default=3, ge=1, le=20)


class JobOut(BaseModel):
    id: int
    model: str
    status: str
    trigger: str
    progress: float
    metrics: list[dict[str, Any]]
    error: str | None
    attempts: int
    max_attempts: int
    worker_id: str | None
    cancel_requested: bool
    model_version: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
