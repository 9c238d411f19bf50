"""Fixtures of the service tests: one PostgreSQL database per test run, built by the Alembic migrations and
dropped at the end; every table emptied before each test; an app per test (fresh caches) on that database;
API keys; a small rating data set with planted tastes and a tiny model trained on it.

``TEST_DATABASE_URL`` names the server (any database on it that we may connect to and CREATE DATABASE from);
default ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``. An unreachable server fails the tests
with that message, it does not skip them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from service_support import TINY, define_and_train, load_planted, planted_ratings  # noqa: F401
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.auth.service import create_api_key
from service.config import Settings
from service.db import Database
from service.migrate import upgrade

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TABLES = "ratings, model_versions, training_jobs, model_definitions, users, items, api_keys"


def _server_url() -> str:
    url = os.environ.get("TEST_DATABASE_URL", DEFAULT_SERVER)
    return Settings(database_url=url).database_url  # normalises postgres:// and postgresql:// to psycopg


@pytest.fixture(scope="session")
def service_database_url() -> Iterator[str]:
    server = _server_url()
    name = f"rbmrec_service_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any failure here means "no database to test against"
        admin.dispose()
        pytest.fail(f"cannot reach the test PostgreSQL server at {make_url(server).render_as_string(hide_password=True)} "
                    f"({type(exc).__name__}: {exc}). Start it (scripts/test-services.sh) or point TEST_DATABASE_URL "
                    f"at one.", pytrace=False)
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def database(service_database_url: str) -> Iterator[Database]:
    db = Database(service_database_url, pool_size=5)
    yield db
    db.dispose()


@pytest.fixture
def settings(service_database_url: str) -> Settings:
    return Settings(database_url=service_database_url, model_refresh_seconds=0, api_key_cache_seconds=0,
                    max_batch_rows=50, max_upload_bytes=4096, max_page_size=100, device="cpu")


@pytest.fixture
def clean(database: Database) -> None:
    with database.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))


@pytest.fixture
def app(settings: Settings, database: Database, clean: None):
    from service.main import create_app

    return create_app(settings, database=database)


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=True) as test_client:
        yield test_client


def _key(database: Database, role: str) -> dict[str, str]:
    with database.session_factory() as session, session.begin():
        _, key = create_api_key(session, name=f"test-{role}", role=role)
    return {"X-API-Key": key}


@pytest.fixture
def admin(database: Database, clean: None) -> dict[str, str]:
    return _key(database, "admin")


@pytest.fixture
def reader(database: Database, clean: None) -> dict[str, str]:
    return _key(database, "read")


@pytest.fixture
def trained(database: Database, clean: None):
    """The planted data and an active tiny user-based model named ``tiny``."""
    rows = load_planted(database)
    return rows, define_and_train(database)
