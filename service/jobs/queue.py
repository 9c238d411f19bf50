"""The training-job queue in PostgreSQL: claiming a queued job (``FOR UPDATE SKIP LOCKED``), the lease a
running job's worker keeps alive with heartbeats, progress writes, finishing, and reaping abandoned jobs.

Every write by a worker is fenced by its ``Claim`` (job id, worker id, attempt number): once a job has been
reaped and handed to someone else, the old worker's writes match no row and it learns it has lost the job.
The caller owns the transaction (each function only flushes); workers use one short transaction per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, select, text, update
from sqlalchemy.orm import Session, aliased

from service.db import utcnow
from service.models.models import ModelDefinition, TrainingJob

FINAL_STATUSES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one attempt of one job."""

    job_id: int
    definition_id: int
    worker_id: str
    attempt: int


@dataclass(frozen=True)
class Beat:
    owned: bool
    cancel_requested: bool


def db_now(session: Session) -> datetime:
    """The database's clock (PostgreSQL), so workers on several machines agree on lease expiry; the local
    clock on SQLite (one machine)."""
    if session.get_bind().dialect.name == "postgresql":
        return session.execute(text("SELECT clock_timestamp()")).scalar_one()
    return utcnow()


def _owned(claim: Claim):
    return (
        (TrainingJob.id == claim.job_id)
        & (TrainingJob.status == "running")
        & (TrainingJob.worker_id == claim.worker_id)
        & (TrainingJob.attempts == claim.attempt)
    )


def has_open_job(session: Session, definition_id: int, statuses: tuple[str, ...] = ("queued", "running")) -> bool:
    return bool(
        session.execute(
            select(exists().where(TrainingJob.model_definition_id == definition_id, TrainingJob.status.in_(statuses)))
        ).scalar()
    )


def claim_next(session: Session, *, worker_id: str, lease_seconds: float) -> Claim | None:
    """Take the oldest queued job whose model has no running job: mark it running with a lease.

    On PostgreSQL the candidate rows are locked with ``FOR UPDATE SKIP LOCKED``, so concurrent workers
    each see different candidates and never wait on each other; the definition row is then locked (as
    the scheduler and the API's enqueue do) so two jobs of one model never run at once. The final
    ``UPDATE ... WHERE status = 'queued'`` makes the claim safe on SQLite as well, where writers are
    serialised by the database lock instead."""
    other = aliased(TrainingJob)
    running = select(other.id).where(
        other.model_definition_id == TrainingJob.model_definition_id, other.status == "running"
    )
    passed_over: list[int] = []
    for _ in range(20):
        # One candidate at a time: locking several would hide them all from the other workers.
        job = session.scalars(
            select(TrainingJob)
            .where(
                TrainingJob.status == "queued",
                TrainingJob.cancel_requested.is_(False),
                ~running.exists(),
                TrainingJob.id.not_in(passed_over),
            )
            .order_by(TrainingJob.created_at, TrainingJob.id)
            .limit(1)
            .with_for_update(skip_locked=True, of=TrainingJob)
        ).first()
        if job is None:
            return None
        session.get(ModelDefinition, job.model_definition_id, with_for_update=True)
        if has_open_job(session, job.model_definition_id, ("running",)):  # claimed meanwhile by another worker
            passed_over.append(job.id)
            continue
        now = db_now(session)
        result = session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job.id, TrainingJob.status == "queued")
            .values(
                status="running",
                worker_id=worker_id,
                attempts=TrainingJob.attempts + 1,
                started_at=now,
                heartbeat_at=now,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                progress=0.0,
                metrics=[],
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            attempt = session.execute(select(TrainingJob.attempts).where(TrainingJob.id == job.id)).scalar_one()
            return Claim(job.id, job.model_definition_id, worker_id, attempt)
    return None


def heartbeat(session: Session, *, claim: Claim, lease_seconds: float) -> Beat:
    """Extend the lease; tells whether the job is still ours and whether cancellation was requested."""
    now = db_now(session)
    result = session.execute(
        update(TrainingJob)
        .where(_owned(claim))
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return Beat(owned=False, cancel_requested=False)
    cancel = session.execute(select(TrainingJob.cancel_requested).where(TrainingJob.id == claim.job_id)).scalar_one()
    return Beat(owned=True, cancel_requested=bool(cancel))


def record_progress(session: Session, *, claim: Claim, progress: float, metrics: list[dict[str, Any]]) -> bool:
    """Write the progress fraction and the per-epoch metrics so far; False if the job is no longer ours."""
    result = session.execute(
        update(TrainingJob)
        .where(_owned(claim))
        .values(progress=progress, metrics=metrics)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def lock_if_owned(session: Session, *, claim: Claim) -> TrainingJob | None:
    """Lock the job row for the final writes (version, activation, status) if it is still ours."""
    return session.scalars(select(TrainingJob).where(_owned(claim)).with_for_update()).one_or_none()


def finish(
    session: Session,
    *,
    claim: Claim,
    status: str,
    error: str | None = None,
    model_version_id: int | None = None,
    progress: float | None = None,
    metrics: list[dict[str, Any]] | None = None,
) -> bool:
    """Move an owned running job to a final status; False if it is no longer ours."""
    if status not in FINAL_STATUSES:
        raise ValueError(f"not a final status: {status!r}")
    values: dict[str, Any] = {"status": status, "finished_at": db_now(session), "lease_expires_at": None}
    if error is not None or status != "succeeded":
        # A success keeps the note of an earlier abandoned attempt, if any.
        values["error"] = error
    if model_version_id is not None:
        values["model_version_id"] = model_version_id
    if progress is not None:
        values["progress"] = progress
    if metrics is not None:
        values["metrics"] = metrics
    result = session.execute(
        update(TrainingJob).where(_owned(claim)).values(**values).execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


@dataclass(frozen=True)
class Reaped:
    job_id: int
    status: str
    error: str


def reap_abandoned(session: Session) -> list[Reaped]:
    """Running jobs whose lease has expired (their worker died, hung or lost the database for longer than
    the lease): requeued while attempts remain, else failed; cancelled if cancellation was requested."""
    now = db_now(session)
    jobs = session.scalars(
        select(TrainingJob)
        .where(TrainingJob.status == "running", TrainingJob.lease_expires_at < now)
        .with_for_update(skip_locked=True)
    ).all()
    reaped = []
    for job in jobs:
        what = (
            f"attempt {job.attempts} of {job.max_attempts} abandoned: worker {job.worker_id} stopped "
            f"heartbeating (lease expired {job.lease_expires_at.isoformat(timespec='seconds')})"
        )
        if job.cancel_requested:
            status, error = "cancelled", what + "; cancelled as requested"
        elif job.attempts >= job.max_attempts:
            status, error = "failed", what + "; no attempts left"
        else:
            status, error = "queued", what + "; requeued"
        job.status = status
        job.error = error
        job.lease_expires_at = None
        if status == "queued":
            job.worker_id = None
        else:
            job.finished_at = now
        reaped.append(Reaped(job.id, status, error))
    session.flush()
    return reaped
