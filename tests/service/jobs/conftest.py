"""Fixtures for the worker tests: a PostgreSQL database of their own, built by the Alembic migrations and
emptied before each test (workers run as real subprocesses, so a test cannot hide inside a rolled-back
transaction), and worker subprocesses that are killed at the end of each test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from jobtools import DEFAULT_SERVER, WorkerProcess
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.db import Database


def _server_url() -> str:
    url = os.environ.get("TEST_DATABASE_URL", DEFAULT_SERVER)
    return url.replace("postgresql://", "postgresql+psycopg://", 1) if url.startswith("postgresql://") else url


@pytest.fixture(autouse=True)
def one_thread():
    """The tests' models are tiny: intra-op threads only add overhead (a lot of it on a busy machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def jobs_database_url() -> Iterator[str]:
    server = make_url(_server_url())
    name = f"rbmrec_jobs_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # fail loudly: these tests need a real PostgreSQL
        pytest.fail(f"no PostgreSQL reachable at {server.render_as_string(hide_password=True)}: {exc}")
    url = server.set(database=name).render_as_string(hide_password=False)
    from service.migrate import upgrade

    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def db(jobs_database_url: str) -> Iterator[Database]:
    database = Database(jobs_database_url, pool_size=2)
    with database.engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE training_jobs, model_versions, model_definitions, ratings, users, items "
                "RESTART IDENTITY CASCADE"
            )
        )
    yield database
    database.dispose()


@pytest.fixture
def start_worker(jobs_database_url: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(*args: str, url: str | None = None) -> WorkerProcess:
        worker = WorkerProcess(url or jobs_database_url, tmp_path / f"worker{len(started)}.log", *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:  # SIGKILL: the database is emptied before the next test anyway
        if worker.process.poll() is None:
            worker.kill()
        worker.log.close()
