"""Schedules stored on the model definitions: an interval or a cron expression (``next_run_at`` holds the
next due time), and/or "retrain when N new ratings have arrived since the last run".

Every worker calls ``enqueue_due`` now and then. The definitions are locked with ``FOR UPDATE SKIP
LOCKED`` and the check "no job of this model queued or running" plus the insert happen under that lock
(the API's enqueue takes the same lock), so each due run is enqueued exactly once however many workers
tick at the same moment. Runs missed while every worker was down collapse into one run at restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import croniter
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from service.jobs.queue import db_now, has_open_job
from service.models.models import ModelDefinition, TrainingJob
from service.ratings.models import Rating

DEFAULT_NEW_RATINGS_THRESHOLD = 1000


def next_run_after(*, interval_seconds: int | None, cron: str | None, after: datetime) -> datetime | None:
    """The first scheduled time strictly after ``after`` (UTC), or None without a time schedule."""
    if cron:
        return croniter(cron, after.astimezone(UTC)).get_next(datetime).astimezone(UTC)
    if interval_seconds:
        return after + timedelta(seconds=interval_seconds)
    return None


def new_ratings_since_last_run(session: Session, definition_id: int, *, limit: int | None = None) -> int:
    """Ratings that reached the database (``ingested_at``) after the latest run of this model started
    reading its snapshot (all ratings when it never ran); counted up to ``limit``."""
    baseline = session.execute(
        select(func.max(TrainingJob.started_at)).where(TrainingJob.model_definition_id == definition_id)
    ).scalar()
    query = select(Rating.user_id)
    if baseline is not None:
        query = query.where(Rating.ingested_at > baseline)
    if limit is not None:
        query = query.limit(limit)
    return session.execute(select(func.count()).select_from(query.subquery())).scalar_one()


@dataclass(frozen=True)
class Enqueued:
    job_id: int
    definition_id: int
    trigger: str


def enqueue_due(session: Session, *, now: datetime | None = None) -> list[Enqueued]:
    """Enqueue one job for each definition whose schedule is due and which has no job queued or running.

    A due time schedule always advances ``next_run_at`` (to the next slot after now), also when the run
    is skipped because one is already queued or running (like a cron job whose previous run is still
    going). The caller commits."""
    now = now or db_now(session)
    definitions = session.scalars(
        select(ModelDefinition)
        .where(
            or_(
                ModelDefinition.schedule_interval_seconds.is_not(None),
                ModelDefinition.schedule_cron.is_not(None),
                ModelDefinition.trigger_new_ratings.is_(True),
            )
        )
        .order_by(ModelDefinition.id)
        .with_for_update(skip_locked=True)
    ).all()
    enqueued = []
    for definition in definitions:
        timed = bool(definition.schedule_interval_seconds or definition.schedule_cron)
        following = next_run_after(
            interval_seconds=definition.schedule_interval_seconds, cron=definition.schedule_cron, after=now
        )
        if timed and definition.next_run_at is None:
            definition.next_run_at = following
        time_due = timed and definition.next_run_at is not None and definition.next_run_at <= now
        if time_due:
            definition.next_run_at = following
        busy = has_open_job(session, definition.id)
        trigger = "schedule" if time_due else None
        if trigger is None and definition.trigger_new_ratings and not busy:
            threshold = definition.new_ratings_threshold or DEFAULT_NEW_RATINGS_THRESHOLD
            if new_ratings_since_last_run(session, definition.id, limit=threshold) >= threshold:
                trigger = "new_ratings"
        if trigger is None or busy:
            continue
        job = TrainingJob(
            model_definition_id=definition.id,
            status="queued",
            trigger=trigger,
            progress=0.0,
            metrics=[],
            attempts=0,
            cancel_requested=False,
        )
        session.add(job)
        session.flush()
        enqueued.append(Enqueued(job.id, definition.id, trigger))
    session.flush()
    return enqueued
