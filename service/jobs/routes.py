"""``/v1/models/{name}/schedule``: read and edit a model's retraining schedule (interval or cron, and the
"N new ratings" trigger). The worker's scheduler reads the same columns; ``next_run_at`` is recomputed on
every edit so a changed schedule takes effect at once."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, status
from pydantic import BaseModel, Field, model_validator

from service.auth.dependencies import AdminAccess, ReadAccess
from service.catalog.schemas import Strict
from service.db import SessionDep
from service.errors import invalid
from service.jobs import queue, scheduler
from service.models.models import ModelDefinition
from service.models.service import get_definition

router = APIRouter(prefix="/v1", tags=["schedules"])


class ScheduleIn(Strict):
    interval_seconds: int | None = Field(default=None, ge=60, description="run every this many seconds")
    cron: str | None = Field(default=None, max_length=100, description='cron expression in UTC, e.g. "0 3 * * *"')
    trigger_new_ratings: bool = Field(default=False, description="also run when enough new ratings arrived")
    new_ratings_threshold: int | None = Field(
        default=None, ge=1, description=f"N of the trigger (default {scheduler.DEFAULT_NEW_RATINGS_THRESHOLD})"
    )
    next_run_at: datetime | None = Field(default=None, description="first run (default: the first slot from now)")

    @model_validator(mode="after")
    def _one_clock(self) -> ScheduleIn:
        if self.interval_seconds is not None and self.cron is not None:
            raise ValueError("give interval_seconds or cron, not both")
        if self.next_run_at is not None and self.next_run_at.tzinfo is None:
            raise ValueError("next_run_at needs a time zone, e.g. 2026-12-04T03:00:00Z")
        return self


class ScheduleOut(BaseModel):
    model: str
    interval_seconds: int | None
    cron: str | None
    trigger_new_ratings: bool
    new_ratings_threshold: int
    next_run_at: datetime | None
    new_ratings_since_last_run: int


def _out(session, definition: ModelDefinition) -> ScheduleOut:
    threshold = definition.new_ratings_threshold or scheduler.DEFAULT_NEW_RATINGS_THRESHOLD
    return ScheduleOut(
        model=definition.name,
        interval_seconds=definition.schedule_interval_seconds,
        cron=definition.schedule_cron,
        trigger_new_ratings=definition.trigger_new_ratings,
        new_ratings_threshold=threshold,
        next_run_at=definition.next_run_at,
        new_ratings_since_last_run=scheduler.new_ratings_since_last_run(session, definition.id, limit=threshold),
    )


@router.get("/models/{name}/schedule", response_model=ScheduleOut)
def get_schedule(name: str, session: SessionDep, _: ReadAccess):
    return _out(session, get_definition(session, name=name))


@router.put("/models/{name}/schedule", response_model=ScheduleOut)
def put_schedule(name: str, body: ScheduleIn, session: SessionDep, _: AdminAccess):
    if body.cron is not None:
        from croniter import croniter

        if not croniter.is_valid(body.cron):
            raise invalid(f"cron {body.cron!r} is not a valid cron expression", ["body", "cron"])
    definition = get_definition(session, name=name, for_update=True)
    definition.schedule_interval_seconds = body.interval_seconds
    definition.schedule_cron = body.cron
    definition.trigger_new_ratings = body.trigger_new_ratings
    definition.new_ratings_threshold = body.new_ratings_threshold
    definition.next_run_at = body.next_run_at or scheduler.next_run_after(
        interval_seconds=body.interval_seconds, cron=body.cron, after=queue.db_now(session)
    )
    session.flush()
    return _out(session, definition)


@router.delete("/models/{name}/schedule", status_code=status.HTTP_200_OK, response_model=ScheduleOut)
def delete_schedule(name: str, session: SessionDep, _: AdminAccess):
    definition = get_definition(session, name=name, for_update=True)
    definition.schedule_interval_seconds = None
    definition.schedule_cron = None
    definition.trigger_new_ratings = False
    definition.next_run_at = None
    session.flush()
    return _out(session, definition)
