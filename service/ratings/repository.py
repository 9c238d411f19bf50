"""Queries on ratings."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from service.catalog.models import Item, User
from service.ratings.models import Rating


def _insert(session: Session, table):
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(table)


def ensure_ids(session: Session, model: type[User] | type[Item], external_id: str) -> int:
    """The internal id for ``external_id``, creating the row if needed (safe under concurrency)."""
    session.execute(_insert(session, model).values(external_id=external_id, created_at=datetime.now().astimezone())
                    .on_conflict_do_nothing(index_elements=["external_id"]))
    return session.scalar(select(model.id).where(model.external_id == external_id))


def upsert(session: Session, *, user_id: int, item_id: int, value: int, rated_at: datetime, now: datetime) -> None:
    statement = _insert(session, Rating).values(user_id=user_id, item_id=item_id, value=value, rated_at=rated_at,
                                                ingested_at=now)
    session.execute(statement.on_conflict_do_update(
        index_elements=["user_id", "item_id"],
        set_={"value": statement.excluded.value, "rated_at": statement.excluded.rated_at,
              "ingested_at": statement.excluded.ingested_at}))


def for_user(session: Session, *, user_id: int, limit: int, offset: int):
    rows = session.execute(
        select(Item.external_id, Rating.value, Rating.rated_at).join(Item, Item.id == Rating.item_id)
        .where(Rating.user_id == user_id).order_by(Rating.item_id).limit(limit).offset(offset)).all()
    total = session.scalar(select(func.count()).select_from(Rating).where(Rating.user_id == user_id)) or 0
    return rows, total


def pairs_for_user(session: Session, *, user_id: int) -> list[tuple[int, int]]:
    """(item internal id, value) of all the user's ratings: one indexed query (the primary key's prefix)."""
    return [(r[0], r[1]) for r in session.execute(
        select(Rating.item_id, Rating.value).where(Rating.user_id == user_id))]


def user_pairs(session: Session, *, external_id: str) -> tuple[int | None, list[tuple[int, int]]]:
    """(users.id or None if unknown, [(item id, value), ...] by item id) in one round trip: users LEFT JOIN ratings.
    The order is fixed so that sums over a user's ratings, hence scores, do not depend on the query plan."""
    rows = session.execute(
        select(User.id, Rating.item_id, Rating.value).outerjoin(Rating, Rating.user_id == User.id)
        .where(User.external_id == external_id).order_by(Rating.item_id)).all()
    if not rows:
        return None, []
    return rows[0][0], [(r[1], r[2]) for r in rows if r[1] is not None]


# user_pairs as driver SQL (psycopg placeholders), for user_pairs_read.
_USER_PAIRS_SQL = ("SELECT u.id, r.item_id, r.value FROM users u LEFT JOIN ratings r ON r.user_id = u.id "
                   "WHERE u.external_id = %s ORDER BY r.item_id")


def user_pairs_read(database, *, external_id: str) -> tuple[int | None, list[tuple[int, int]]]:
    """``user_pairs`` for a read-only request, outside any session: on PostgreSQL one statement on a pooled
    connection switched to autocommit for the read (no BEGIN, no COMMIT or reset ROLLBACK: one round trip,
    no ORM). A connection that fails is discarded, and the read retried once on a fresh one (a server restart
    costs no request); a second failure is the usual OperationalError (503)."""
    if not database.is_postgresql:
        with database.session_factory() as session:
            return user_pairs(session, external_id=external_id)
    for attempt in (1, 2):
        connection = database.engine.raw_connection()
        try:
            driver = connection.driver_connection
            driver.autocommit = True
            try:
                rows = driver.execute(_USER_PAIRS_SQL, (external_id,)).fetchall()
            finally:
                driver.autocommit = False  # the pool's other users expect transactions
        except database.engine.dialect.loaded_dbapi.OperationalError as exc:
            connection.invalidate(exc)
            if attempt == 2:
                raise OperationalError(_USER_PAIRS_SQL, (external_id,), exc) from exc
            continue
        finally:
            connection.close()
        if not rows:
            return None, []
        return rows[0][0], [(r[1], r[2]) for r in rows if r[1] is not None]
    raise AssertionError("unreachable")


def delete_one(session: Session, *, user_id: int, item_id: int) -> int:
    return session.execute(delete(Rating).where(Rating.user_id == user_id, Rating.item_id == item_id)).rowcount
