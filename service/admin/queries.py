"""Read-side queries for the dashboard's aggregates: every count, histogram and top-N is computed by
the database (GROUP BY, LIMIT), never by loading rating rows into Python. The data overview is cached
for a few seconds per process, keyed by the cheap (row count estimate, last ingest) pair it shows."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Date, cast, func, select
from sqlalchemy.orm import Session

from service.auth.models import ApiKey
from service.catalog.models import Item, User
from service.models.models import ModelDefinition, ModelVersion, TrainingJob
from service.ratings.models import Rating


@dataclass
class ItemCount:
    item_id: int
    external_id: str
    title: str | None
    ratings: int
    mean: float


@dataclass
class DataOverview:
    users: int
    items: int
    ratings: int
    histogram: list[tuple[int, int]]
    per_day: list[tuple[date, int]]
    most_rated: list[ItemCount]
    least_rated: list[ItemCount]
    last_ingested_at: datetime | None
    computed_at: float = field(default_factory=time.time)


def _day(session: Session) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.timezone("UTC", Rating.rated_at), Date)
    return func.date(Rating.rated_at)


def _top_items(session: Session, *, descending: bool, limit: int) -> list[ItemCount]:
    count = func.count().label("n")
    per_item = (select(Rating.item_id, count, func.avg(Rating.value).label("mean"))
                .group_by(Rating.item_id)
                .order_by(count.desc() if descending else count.asc(), Rating.item_id)
                .limit(limit).subquery())
    rows = session.execute(
        select(per_item.c.item_id, Item.external_id, Item.title, per_item.c.n, per_item.c.mean)
        .join(Item, Item.id == per_item.c.item_id)
        .order_by(per_item.c.n.desc() if descending else per_item.c.n.asc(), per_item.c.item_id))
    return [ItemCount(r.item_id, r.external_id, r.title, int(r.n), float(r.mean)) for r in rows]


def data_overview(session: Session, *, top: int = 10) -> DataOverview:
    histogram = [(int(v), int(n)) for v, n in session.execute(
        select(Rating.value, func.count()).group_by(Rating.value).order_by(Rating.value))]
    day = _day(session).label("day")
    per_day = [(d if isinstance(d, date) else date.fromisoformat(str(d)), int(n)) for d, n in session.execute(
        select(day, func.count()).group_by(day).order_by(day))]
    return DataOverview(
        users=session.scalar(select(func.count()).select_from(User)) or 0,
        items=session.scalar(select(func.count()).select_from(Item)) or 0,
        ratings=sum(n for _, n in histogram),
        histogram=histogram,
        per_day=per_day,
        most_rated=_top_items(session, descending=True, limit=top),
        least_rated=_top_items(session, descending=False, limit=top),
        last_ingested_at=session.scalar(select(func.max(Rating.ingested_at))),
    )


class _OverviewCache:
    """The data overview for ``ttl`` seconds, dropped early when ratings were ingested since."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._lock = threading.Lock()
        self._value: DataOverview | None = None

    def get(self, session: Session) -> DataOverview:
        last = session.scalar(select(func.max(Rating.ingested_at)))
        with self._lock:
            value = self._value
        if value is not None and value.last_ingested_at == last and time.time() - value.computed_at < self.ttl:
            return value
        value = data_overview(session)
        with self._lock:
            self._value = value
        return value

    def clear(self) -> None:
        with self._lock:
            self._value = None


overview_cache = _OverviewCache(ttl=30.0)


def version_counts(session: Session) -> dict[int, tuple[int, int | None]]:
    """definition id -> (number of versions, active version number or None)."""
    rows = session.execute(select(ModelVersion.model_definition_id, func.count(),
                                  func.max(ModelVersion.version).filter(ModelVersion.is_active))
                           .group_by(ModelVersion.model_definition_id))
    return {d: (int(n), a) for d, n, a in rows}


def jobs(session: Session, *, definition_id: int | None = None, limit: int = 50) -> list[tuple[TrainingJob, str]]:
    query = (select(TrainingJob, ModelDefinition.name).join(ModelDefinition,
                                                            ModelDefinition.id == TrainingJob.model_definition_id)
             .order_by(TrainingJob.id.desc()).limit(limit))
    if definition_id is not None:
        query = query.where(TrainingJob.model_definition_id == definition_id)
    return [(job, name) for job, name in session.execute(query)]


def job(session: Session, job_id: int) -> tuple[TrainingJob, str] | None:
    row = session.execute(select(TrainingJob, ModelDefinition.name)
                          .join(ModelDefinition, ModelDefinition.id == TrainingJob.model_definition_id)
                          .where(TrainingJob.id == job_id)).first()
    return (row[0], row[1]) if row else None


def version_number(session: Session, version_id: int | None) -> int | None:
    if version_id is None:
        return None
    return session.scalar(select(ModelVersion.version).where(ModelVersion.id == version_id))


def api_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id.desc())))


def user_by_external_id(session: Session, external_id: str) -> User | None:
    return session.scalar(select(User).where(User.external_id == external_id))


def search_users(session: Session, prefix: str, *, limit: int = 50) -> list[tuple[User, int]]:
    """Users whose external id starts with ``prefix`` (all when empty), with their rating counts."""
    n = select(func.count()).where(Rating.user_id == User.id).correlate(User).scalar_subquery()
    query = select(User, n).order_by(User.id).limit(limit)
    if prefix:
        query = query.where(User.external_id.startswith(prefix, autoescape=True))
    return [(u, int(c)) for u, c in session.execute(query)]


def user_ratings(session: Session, user_id: int, *, limit: int = 500) -> list[tuple[str, str | None, int, datetime]]:
    rows = session.execute(select(Item.external_id, Item.title, Rating.value, Rating.rated_at)
                           .join(Item, Item.id == Rating.item_id).where(Rating.user_id == user_id)
                           .order_by(Rating.rated_at.desc(), Item.id).limit(limit))
    return [(r[0], r[1], int(r[2]), r[3]) for r in rows]


def user_rating_count(session: Session, user_id: int) -> int:
    return session.scalar(select(func.count()).select_from(Rating).where(Rating.user_id == user_id)) or 0


def items_by_ids(session: Session, ids: list[int]) -> dict[int, tuple[str, str | None]]:
    if not ids:
        return {}
    return {i: (e, t) for i, e, t in session.execute(select(Item.id, Item.external_id, Item.title)
                                                      .where(Item.id.in_(ids)))}
