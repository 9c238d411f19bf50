"""The connection pool without pool_pre_ping: a pooled connection the server has dropped is replaced before it is
handed out (its socket turned readable), and the recommendations' autocommit read retries on a fresh connection
when a dropped one gets past that check."""

from __future__ import annotations

import time

from sqlalchemy import event, text

from service import db as db_module
from service.db import Database
from service.ratings.repository import user_pairs_read


def _backend_pid(database: Database) -> int:
    with database.engine.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()


def _terminate(database: Database, pid: int) -> None:
    with database.engine.connect() as conn:  # another pooled connection (the pool hands out the idle one first)
        other = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        assert other != pid
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        for _ in range(100):  # the backend exits asynchronously
            if not conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}).scalar():
                break
            time.sleep(0.05)


def _holding_two(database: Database) -> None:
    """Make the pool hold two idle connections."""
    with database.engine.connect() as a, database.engine.connect() as b:
        a.execute(text("SELECT 1"))
        b.execute(text("SELECT 1"))


def _count_invalidations(database: Database) -> list:
    invalidated: list = []
    event.listen(database.engine, "invalidate", lambda *args: invalidated.append(args))
    return invalidated


def test_a_dropped_pooled_connection_is_replaced_without_an_error(service_database_url):
    database = Database(service_database_url, pool_size=2)
    try:
        _holding_two(database)
        pid = _backend_pid(database)
        _terminate(database, pid)
        invalidated = _count_invalidations(database)
        # Both pooled connections at once, so the dropped one is among them: it is pinged, found dead, replaced.
        with database.engine.connect() as a, database.session_factory() as b:
            pids = {a.execute(text("SELECT pg_backend_pid()")).scalar_one(),
                    b.execute(text("SELECT pg_backend_pid()")).scalar_one()}
        assert pid not in pids and len(pids) == 2 and len(invalidated) == 1
    finally:
        database.dispose()


def test_the_autocommit_read_retries_on_a_fresh_connection(service_database_url, monkeypatch, clean):
    database = Database(service_database_url, pool_size=2)
    try:
        with database.engine.begin() as conn:
            user = conn.execute(text("INSERT INTO users (external_id, created_at) VALUES ('x', now()) "
                                     "RETURNING id")).scalar()
        assert user_pairs_read(database, external_id="x") == (user, [])
        _holding_two(database)
        pid = _backend_pid(database)
        _terminate(database, pid)
        monkeypatch.setattr(db_module, "_has_input", lambda _connection: False)  # the check misses the drop
        invalidated = _count_invalidations(database)
        assert user_pairs_read(database, external_id="x") == (user, [])
        assert len(invalidated) == 1  # the dropped connection was used, failed, and the read ran again
        assert user_pairs_read(database, external_id="nobody") == (None, [])
        # The pooled connections are back in transactional mode after the autocommit read.
        with database.session_factory() as session:
            session.execute(text("SELECT 1"))
            assert session.connection().connection.driver_connection.autocommit is False
    finally:
        database.dispose()
