"""``/v1/models`` (definitions, versions, activation, jobs) and ``/v1/jobs``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from service.auth.dependencies import AdminAccess, ReadAccess
from service.db import SessionDep
from service.models import repository, service
from service.models.models import ModelDefinition, ModelVersion, TrainingJob
from service.models.schemas import DefinitionIn, DefinitionOut, DefinitionPatch, JobIn, JobOut, VersionOut

router = APIRouter(prefix="/v1", tags=["models"])


def definition_out(definition: ModelDefinition, active: int | None) -> DefinitionOut:
    return DefinitionOut(
        name=definition.name, kind=definition.kind, orientation=definition.orientation,
        hyperparameters=definition.hyperparameters or {}, holdout_fraction=definition.holdout_fraction,
        description=definition.description, schedule_interval_seconds=definition.schedule_interval_seconds,
        schedule_cron=definition.schedule_cron, trigger_new_ratings=definition.trigger_new_ratings,
        next_run_at=definition.next_run_at, gate=definition.gate or {}, active_version=active,
        created_at=definition.created_at)


def version_out(name: str, version: ModelVersion) -> VersionOut:
    return VersionOut(
        model=name, version=version.version, status=version.status, is_active=version.is_active,
        metrics=version.metrics or {}, config=version.config or {}, num_users=version.num_users,
        num_items=version.num_items, rating_count=version.rating_count, last_rating_at=version.last_rating_at,
        artifact_size=version.artifact_size, reason=version.reason, training_job_id=version.training_job_id,
        created_at=version.created_at, activated_at=version.activated_at)


def job_out(name: str, job: TrainingJob, version_number: int | None) -> JobOut:
    return JobOut(
        id=job.id, model=name, status=job.status, trigger=job.trigger, progress=job.progress,
        metrics=job.metrics or [], error=job.error, attempts=job.attempts, max_attempts=job.max_attempts,
        worker_id=job.worker_id, cancel_requested=job.cancel_requested, model_version=version_number,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        heartbeat_at=job.heartbeat_at)


def _job_response(session, job: TrainingJob) -> JobOut:
    definition = session.get(ModelDefinition, job.model_definition_id)
    number = repository.version_numbers(session, [job.model_version_id]).get(job.model_version_id) \
        if job.model_version_id else None
    return job_out(definition.name, job, number)


@router.post("/models", status_code=status.HTTP_201_CREATED, response_model=DefinitionOut)
def create_model(body: DefinitionIn, session: SessionDep, _: AdminAccess):
    return definition_out(service.create_definition(session, fields=body.model_dump()), None)


@router.get("/models", response_model=list[DefinitionOut])
def list_models(session: SessionDep, _: ReadAccess):
    active = repository.active_versions_by_definition(session)
    return [definition_out(d, active.get(d.id)) for d in repository.definitions(session)]


@router.get("/models/{name}", response_model=DefinitionOut)
def get_model(name: str, session: SessionDep, _: ReadAccess):
    definition = service.get_definition(session, name=name)
    return definition_out(definition, repository.active_versions_by_definition(session).get(definition.id))


@router.patch("/models/{name}", response_model=DefinitionOut)
def patch_model(name: str, body: DefinitionPatch, session: SessionDep, _: AdminAccess):
    definition = service.update_definition(session, name=name, changes=body.model_dump(exclude_unset=True))
    return definition_out(definition, repository.active_versions_by_definition(session).get(definition.id))


@router.delete("/models/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_model(name: str, request: Request, session: SessionDep, _: AdminAccess):
    service.delete_definition(session, name=name)
    request.app.state.model_cache.invalidate()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/models/{name}/versions", response_model=list[VersionOut])
def list_versions(name: str, session: SessionDep, _: ReadAccess):
    definition = service.get_definition(session, name=name)
    return [version_out(name, v) for v in repository.versions(session, definition.id)]


@router.get("/models/{name}/versions/{version}", response_model=VersionOut)
def get_version(name: str, version: int, session: SessionDep, _: ReadAccess):
    return version_out(name, service.get_version(session, name=name, number=version)[1])


@router.post("/models/{name}/versions/{version}/activate", response_model=VersionOut)
def activate(name: str, version: int, request: Request, session: SessionDep, _: AdminAccess):
    """Serve this version from now on (also the way to roll back to an older one)."""
    definition, found = service.get_version(session, name=name, number=version)
    activated = service.activate_version(session, definition_id=definition.id, version_id=found.id)
    session.commit()
    request.app.state.model_cache.invalidate()
    return version_out(name, activated)


@router.post("/models/{name}/jobs", status_code=status.HTTP_201_CREATED, response_model=JobOut)
def enqueue_job(name: str, session: SessionDep, _: AdminAccess, body: JobIn | None = None):
    """Queue a training run; the worker process picks it up."""
    job = service.enqueue_job(session, name=name, max_attempts=(body or JobIn()).max_attempts)
    return job_out(name, job, None)


@router.get("/models/{name}/jobs", response_model=list[JobOut])
def list_jobs(name: str, session: SessionDep, _: ReadAccess):
    definition = service.get_definition(session, name=name)
    found = repository.jobs(session, definition.id)
    numbers = repository.version_numbers(session, [j.model_version_id for j in found if j.model_version_id])
    return [job_out(name, j, numbers.get(j.model_version_id)) for j in found]


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: int, session: SessionDep, _: ReadAccess):
    return _job_response(session, service.get_job(session, job_id=job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: int, session: SessionDep, _: AdminAccess):
    return _job_response(session, service.cancel_job(session, job_id=job_id))
