"""Model definitions, versions, activation (rollback is activating an older version) and job requests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from service.errors import ApiError, not_found
from service.models import repository
from service.models.models import ModelDefinition, ModelVersion, TrainingJob

ACTIVATION_CHANNEL = "rbmrec_model_activated"


def rating_config(*, kind: str, orientation: str, hyperparameters: dict[str, Any]):
    """The rbm_core RatingModelConfig for a definition; 422 naming the bad key or value."""
    from rbm_core.ratings import RatingModelConfig

    reserved = sorted({"kind", "orientation"} & set(hyperparameters))
    if reserved:
        raise ApiError(422, f"hyperparameters: {', '.join(reserved)} are set on the definition itself",
                       details=[{"loc": ["body", "hyperparameters", k], "msg": "not allowed here"} for k in reserved])
    try:
        return RatingModelConfig.from_dict({"kind": kind, "orientation": orientation, **hyperparameters})
    except ValueError as exc:
        raise ApiError(422, f"hyperparameters: {exc}",
                       details=[{"loc": ["body", "hyperparameters"], "msg": str(exc)}]) from None


def _check_cron(expression: str | None) -> None:
    if expression is None:
        return
    from croniter import croniter

    if not croniter.is_valid(expression):
        raise ApiError(422, f"schedule_cron {expression!r} is not a valid cron expression",
                       details=[{"loc": ["body", "schedule_cron"], "msg": "invalid cron expression"}])


def get_definition(session: Session, *, name: str, for_update: bool = False) -> ModelDefinition:
    definition = repository.definition_by_name(session, name, for_update=for_update)
    if definition is None:
        raise not_found("model", name)
    return definition


def create_definition(session: Session, *, fields: dict[str, Any]) -> ModelDefinition:
    rating_config(kind=fields["kind"], orientation=fields["orientation"], hyperparameters=fields["hyperparameters"])
    _check_cron(fields.get("schedule_cron"))
    if repository.definition_by_name(session, fields["name"]) is not None:
        raise ApiError(409, f"model {fields['name']!r} already exists")
    definition = ModelDefinition(**fields)
    session.add(definition)
    session.flush()
    return definition


def update_definition(session: Session, *, name: str, changes: dict[str, Any]) -> ModelDefinition:
    definition = get_definition(session, name=name, for_update=True)
    if "hyperparameters" in changes and changes["hyperparameters"] is not None:
        rating_config(kind=definition.kind, orientation=definition.orientation,
                      hyperparameters=changes["hyperparameters"])
    _check_cron(changes.get("schedule_cron"))
    for key, value in changes.items():
        setattr(definition, key, value)
    if {"schedule_interval_seconds", "schedule_cron"} & changes.keys():
        # a changed time schedule starts from now, as PUT .../schedule does (not from the old slot)
        from service.jobs.queue import db_now
        from service.jobs.scheduler import next_run_after

        definition.next_run_at = next_run_after(interval_seconds=definition.schedule_interval_seconds,
                                                cron=definition.schedule_cron, after=db_now(session))
    definition.updated_at = datetime.now(UTC)
    session.flush()
    return definition


def delete_definition(session: Session, *, name: str) -> None:
    session.delete(get_definition(session, name=name))
    session.flush()


def get_version(session: Session, *, name: str, number: int) -> tuple[ModelDefinition, ModelVersion]:
    definition = get_definition(session, name=name)
    found = repository.version(session, definition.id, number)
    if found is None:
        raise not_found(f"version of model {name!r}", number)
    return definition, found


def activate_version(session: Session, *, definition_id: int, version_id: int) -> ModelVersion:
    """Make ``version_id`` the active version of its definition (deactivating the previous one) and NOTIFY;
    the caller commits. Serialised per definition by a row lock on the definition."""
    definition = session.get(ModelDefinition, definition_id, with_for_update=True)
    found = session.get(ModelVersion, version_id)
    if definition is None or found is None or found.model_definition_id != definition_id:
        raise not_found("model version", version_id)
    if found.status == "failed":
        raise ApiError(409, f"version {found.version} of model {definition.name!r} failed and cannot be activated")
    repository.deactivate_others(session, definition_id, found.id)
    session.flush()
    found.is_active = True
    found.activated_at = datetime.now(UTC)
    session.flush()
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, :payload)"), {
            "channel": ACTIVATION_CHANNEL,
            "payload": json.dumps({"model": definition.name, "version": found.version, "version_id": found.id})})
    return found


def enqueue_job(session: Session, *, name: str, trigger: str = "manual", max_attempts: int = 3) -> TrainingJob:
    """Queue a training job for the worker; 409 while one is already queued or running for this model."""
    definition = get_definition(session, name=name, for_update=True)
    existing = repository.open_job(session, definition.id)
    if existing is not None:
        raise ApiError(409, f"model {name!r} already has job {existing.id} {existing.status}")
    job = TrainingJob(model_definition_id=definition.id, status="queued", trigger=trigger, max_attempts=max_attempts,
                      progress=0.0, metrics=[], attempts=0, cancel_requested=False)
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, *, job_id: int) -> TrainingJob:
    job = session.get(TrainingJob, job_id)
    if job is None:
        raise not_found("job", job_id)
    return job


def cancel_job(session: Session, *, job_id: int) -> TrainingJob:
    """A queued job is cancelled at once; a running one is asked to stop (the worker polls cancel_requested)."""
    job = session.get(TrainingJob, job_id, with_for_update=True)
    if job is None:
        raise not_found("job", job_id)
    if job.status in ("succeeded", "failed", "cancelled"):
        raise ApiError(409, f"job {job_id} already {job.status}")
    job.cancel_requested = True
    if job.status == "queued":
        job.status = "cancelled"
        job.finished_at = datetime.now(UTC)
    session.flush()
    return job
