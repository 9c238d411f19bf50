"""Read-side queries for the dashboard's aggregates: every count, histogram and top-N is computed by
the database (GROUP BY, one row per group), never by loading rating rows into Python. The overview is cached
per process and refreshed in the background (see ``OverviewCache``)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Date, cast, func, select, tuple_
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


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _rating_groups(session: Session) -> tuple[list[tuple[int, int]], list[tuple[date, int]], dict[int, tuple[int, float]]]:
    """(histogram, ratings per day, item id -> (count, mean)). PostgreSQL: one scan of the ratings with
    GROUPING SETS; elsewhere three GROUP BYs."""
    day = _day(session).label("day")
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(
            select(func.grouping(Rating.value, day, Rating.item_id).label("g"), Rating.value, day, Rating.item_id,
                   func.count().label("n"), func.sum(Rating.value).label("total"))
            .group_by(func.grouping_sets(tuple_(Rating.value), tuple_(day), tuple_(Rating.item_id)))).all()
        # GROUPING(value, day, item_id) is a bit mask of the columns *not* grouped: 3 = by value, 5 = by day, 6 = by item.
        histogram = sorted((int(r.value), int(r.n)) for r in rows if r.g == 3)
        per_day = sorted((_as_date(r.day), int(r.n)) for r in rows if r.g == 5)
        per_item = {int(r.item_id): (int(r.n), float(r.total) / int(r.n)) for r in rows if r.g == 6}
        return histogram, per_day, per_item
    histogram = [(int(v), int(n)) for v, n in session.execute(
        select(Rating.value, func.count()).group_by(Rating.value).order_by(Rating.value))]
    per_day = [(_as_date(d), int(n)) for d, n in session.execute(select(day, func.count()).group_by(day).order_by(day))]
    per_item = {int(i): (int(n), float(m)) for i, n, m in session.execute(
        select(Rating.item_id, func.count(), func.avg(Rating.value)).group_by(Rating.item_id))}
    return histogram, per_day, per_item


def _item_counts(session: Session, ranked: list[tuple[int, tuple[int, float]]]) -> list[ItemCount]:
    names = items_by_ids(session, [i for i, _ in ranked])
    return [ItemCount(i, names[i][0], names[i][1], n, mean) for i, (n, mean) in ranked if i in names]


def data_overview(session: Session, *, top: int = 10) -> DataOverview:
    last = session.scalar(select(func.max(Rating.ingested_at)))
    histogram, per_day, per_item = _rating_groups(session)
    most = sorted(per_item.items(), key=lambda kv: (-kv[1][0], kv[0]))[:top]
    least = sorted(per_item.items(), key=lambda kv: (kv[1][0], kv[0]))[:top]
    return DataOverview(
        users=session.scalar(select(func.count()).select_from(User)) or 0,
        items=session.scalar(select(func.count()).select_from(Item)) or 0,
        ratings=sum(n for _, n in histogram),
        histogram=histogram,
        per_day=per_day,
        most_rated=_item_counts(session, most),
        least_rated=_item_counts(session, least),
        last_ingested_at=last,
    )


class OverviewCache:
    """The data overview, recomputed when ratings were ingested since or after ``ttl`` seconds. A stale
    value is served at once while one background thread recomputes it (stale-while-revalidate); the login
    page starts the first computation (``warm``), so even the first overview rarely waits for it."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._lock = threading.Lock()
        self._value: DataOverview | None = None
        self._thread: threading.Thread | None = None

    def _compute(self, session_factory: Any) -> DataOverview:
        with session_factory() as session:
            value = data_overview(session)
        with self._lock:
            self._value = value
        return value

    def _refresh_in_background(self, session_factory: Any) -> threading.Thread:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return self._thread
            self._thread = threading.Thread(target=self._compute, args=(session_factory,),
                                            name="admin-overview-refresh", daemon=True)
            self._thread.start()
            return self._thread

    def warm(self, session_factory: Any) -> None:
        if self._value is None:
            self._refresh_in_background(session_factory)

    def get(self, session: Session, session_factory: Any) -> tuple[DataOverview, bool]:
        """(overview, whether a newer one is being computed)."""
        last = session.scalar(select(func.max(Rating.ingested_at)))
        with self._lock:
            value = self._value
        if value is None:
            self._refresh_in_background(session_factory).join()
            with self._lock:
                value = self._value
            return (value if value is not None else self._compute(session_factory)), False
        if value.last_ingested_at == last and time.time() - value.computed_at < self.ttl:
            return value, False
        self._refresh_in_background(session_factory)
        return value, True

    def clear(self) -> None:
        with self._lock:
            self._value = None




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
