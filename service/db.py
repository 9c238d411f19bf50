"""Engine, session factory, the declarative ``Base`` (with a constraint naming convention so Alembic's
names are stable) and the request-scoped session dependency: it commits on success and rolls back on
error, so service functions only ``flush()``."""

from __future__ import annotations

import select
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import JSON, BigInteger, DateTime, Integer, MetaData, create_engine, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Portable column types: BIGINT identity on PostgreSQL, INTEGER (rowid alias) on SQLite; JSONB on PostgreSQL.
BigId = BigInteger().with_variant(Integer(), "sqlite")
JsonType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator):
    """Timezone-aware datetimes in, timezone-aware UTC datetimes out (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        if value is not None and dialect.name == "sqlite":
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def make_engine(database_url: str, *, pool_size: int = 10, echo: bool = False) -> Engine:
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    engine = create_engine(database_url, echo=echo, pool_size=pool_size, max_overflow=pool_size,
                           pool_recycle=POOL_RECYCLE_SECONDS)
    _ping_when_stale(engine)
    return engine


# pool_pre_ping would cost a round trip on every checkout (one per request). Instead a pooled connection is pinged
# only when it has a reason to be stale: it sat idle longer than PING_AFTER_IDLE_SECONDS, or its socket turned
# readable while idle (the server wrote to an idle connection: it was terminated, or the server shut down). The
# readability check is a zero-timeout select, no round trip. A stale connection is replaced before the caller
# sees it; one that breaks silently in between (no FIN, within the idle window) fails its statement once, and
# SQLAlchemy then discards every connection of the pool opened before it.
PING_AFTER_IDLE_SECONDS = 10.0
POOL_RECYCLE_SECONDS = 1800


def _has_input(dbapi_connection: Any) -> bool:
    fileno = getattr(dbapi_connection, "fileno", None)
    if fileno is None:
        return True  # cannot tell: ping
    try:
        return bool(select.select([fileno()], [], [], 0)[0])
    except Exception:  # noqa: BLE001 - a closed connection has no socket: ping, which fails and replaces it
        return True


def _ping_when_stale(engine: Engine) -> None:
    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None:  # a new connection
            return
        if time.monotonic() - since < PING_AFTER_IDLE_SECONDS and not _has_input(dbapi_connection):
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # any failure: the pool discards the connection and checks out another
            raise DisconnectionError(f"stale pooled connection: {exc}") from exc


class Database:
    """An engine and its session factory; one per process (held by the app or a CLI command)."""

    def __init__(self, database_url: str, *, pool_size: int = 10, echo: bool = False):
        self.url = database_url
        self.engine = make_engine(database_url, pool_size=pool_size, echo=echo)
        self.session_factory = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_postgresql(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def dispose(self) -> None:
        self.engine.dispose()


def get_session(request: Request) -> Iterator[Session]:
    """The request's one commit point."""
    session: Session = request.app.state.db.session_factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# The request's session, committed before the response is sent (scope="function"), so a failed commit
# becomes an error response rather than a silent loss after a 200.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
