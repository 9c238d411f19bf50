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

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.auth.service import create_api_key
from service.config import Settings
from service.db import Database
from service.migrate import upgrade
from service.models import service as registry
from service.models.training import activate, train_model_version
from service.ratings.loader import load_rows

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TABLES = "ratings, model_versions, training_jobs, model_definitions, users, items, api_keys"

# Learns the planted tastes below in about a second.
TINY = {"num_hidden": 6, "epochs": 20, "batch_size": 4, "learning_rate": 0.3, "momentum": 0.5,
        "k_schedule": [[0, 1]], "ranking": "rating", "patience": 1000, "averaging": 0.0}


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


def planted_ratings(num_users: int = 40, items_per_group: int = 8, per_user: int = 8, seed: int = 0):
    """Two taste groups: group g rates its own items 4-5 and the other group's 1-2. Users ``u000``...,
    items ``a00``... (group 0) and ``b00``... (group 1)."""
    rng = np.random.default_rng(seed)
    items = [f"a{j:02d}" for j in range(items_per_group)] + [f"b{j:02d}" for j in range(items_per_group)]
    rows = []
    for u in range(num_users):
        group = u % 2
        for j in rng.choice(len(items), size=per_user, replace=False):
            own = (j < items_per_group) == (group == 0)
            value = int(rng.integers(4, 6)) if own else int(rng.integers(1, 3))
            rows.append((f"u{u:03d}", items[j], value))
    return rows


def load_planted(database: Database, rows=None) -> list[tuple[str, str, int]]:
    rows = rows if rows is not None else planted_ratings()
    with database.engine.begin() as conn:
        load_rows(conn, ((n, u, i, v, None) for n, (u, i, v) in enumerate(rows)))
    return rows


def define_and_train(database: Database, name: str = "tiny", *, hyperparameters: dict | None = None,
                     orientation: str = "user", activate_it: bool = True):
    with database.session_factory() as session, session.begin():
        from service.models import repository

        definition = repository.definition_by_name(session, name)
        if definition is None:
            definition = registry.create_definition(session, fields={
                "name": name, "kind": "rbm", "orientation": orientation,
                "hyperparameters": hyperparameters or TINY, "holdout_fraction": 0.2, "description": None,
                "schedule_interval_seconds": None, "schedule_cron": None, "trigger_new_ratings": False, "gate": {}})
        elif hyperparameters is not None:
            definition.hyperparameters = hyperparameters
        definition_id = definition.id
    version = train_model_version(session_factory=database.session_factory, definition_id=definition_id, device="cpu")
    if activate_it:
        activate(session_factory=database.session_factory, version_id=version.id)
    return version


@pytest.fixture
def trained(database: Database, clean: None):
    """The planted data and an active tiny user-based model named ``tiny``."""
    rows = load_planted(database)
    return rows, define_and_train(database)
