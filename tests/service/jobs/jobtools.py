"""Helpers of the worker tests: small planted-taste rating data, rows written directly, waiting, and
worker subprocesses (``python -m service.worker``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from sqlalchemy import select

from service.catalog.models import Item, User
from service.db import Database
from service.models.models import ModelDefinition, ModelVersion, TrainingJob
from service.ratings.models import Rating

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

# A tiny model that still learns the planted tastes (held-out RMSE ~0.9 against ~1.5 for the global mean)
# in well under a second; SLOW is the same model trained long enough (a few seconds) to act on mid-run.
TINY = {
    "num_hidden": 4,
    "epochs": 8,
    "batch_size": 4,
    "learning_rate": 0.3,
    "momentum": 0.5,
    "k_schedule": [[0, 1]],
    "ranking": "rating",
    "patience": 1000,
    # pinned, so that a change of the library's defaults cannot make the test model stop learning
    "averaging": 0.0,
    "shared_weights": False,
    "layout": "sparse",
}
SLOW = {**TINY, "epochs": 500}


def planted_ratings(num_users: int, num_items: int, per_user: int, seed: int) -> list[tuple[int, int, int]]:
    """(user, item, rating) with two taste groups: group g likes items of parity g (4-5 stars), dislikes the
    rest (1-2 stars)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for user in range(num_users):
        group = user % 2
        items = torch.randperm(num_items, generator=gen)[:per_user].tolist()
        for item in items:
            likes = item % 2 == group
            noise = int(torch.randint(0, 2, (1,), generator=gen))
            rows.append((user, item, (4 + noise) if likes else (1 + noise)))
    return rows


def add_ratings(db: Database, rows: list[tuple[int, int, int]]) -> None:
    """Insert (user, item, value) rows, creating users ``u<n>`` and items ``i<n>`` as needed."""
    with db.session_factory.begin() as session:
        users = {u.external_id: u.id for u in session.scalars(select(User))}
        items = {i.external_id: i.id for i in session.scalars(select(Item))}
        for user, item, _ in rows:
            for key, table, cache in ((f"u{user}", User, users), (f"i{item}", Item, items)):
                if key not in cache:
                    row = table(external_id=key)
                    session.add(row)
                    session.flush()
                    cache[key] = row.id
        for user, item, value in rows:
            session.merge(Rating(user_id=users[f"u{user}"], item_id=items[f"i{item}"], value=value))


def create_definition(db: Database, name: str = "tiny", **fields) -> int:
    with db.session_factory.begin() as session:
        definition = ModelDefinition(
            name=name,
            kind="rbm",
            orientation="user",
            hyperparameters=fields.pop("hyperparameters", TINY),
            holdout_fraction=fields.pop("holdout_fraction", 0.2),
            gate=fields.pop("gate", {}),
            **fields,
        )
        session.add(definition)
        session.flush()
        return definition.id


def enqueue(db: Database, definition_id: int, **fields) -> int:
    with db.session_factory.begin() as session:
        job = TrainingJob(model_definition_id=definition_id, status="queued", trigger="manual", **fields)
        session.add(job)
        session.flush()
        return job.id


def job(db: Database, job_id: int) -> TrainingJob:
    with db.session_factory() as session:
        return session.get(TrainingJob, job_id)


def jobs(db: Database, definition_id: int) -> list[TrainingJob]:
    with db.session_factory() as session:
        return list(
            session.scalars(
                select(TrainingJob).where(TrainingJob.model_definition_id == definition_id).order_by(TrainingJob.id)
            )
        )


def versions(db: Database, definition_id: int) -> list[ModelVersion]:
    with db.session_factory() as session:
        return list(
            session.scalars(
                select(ModelVersion)
                .where(ModelVersion.model_definition_id == definition_id)
                .order_by(ModelVersion.version)
            )
        )


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class WorkerProcess:
    def __init__(self, url: str, log_path: Path, *args: str):
        self.log_path = log_path
        env = {**os.environ, "DATABASE_URL": url, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.worker", "--poll-seconds", "0.2", *args],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode
