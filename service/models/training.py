"""Training one model version synchronously: read one consistent snapshot of the ratings, build the dense
index maps, hold out part of each user's ratings, train with ``rbm_core.ratings``, evaluate on the held-out
part, and write the version (not activated: the caller or the worker's gate decides). Called by the worker
and by ``rbmrec train``; never inside a request."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.models import repository
from service.models.models import ModelDefinition, ModelVersion
from service.models.service import rating_config
from service.ratings.models import Rating

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, dict[str, float]], None]


class TrainingCancelled(Exception):
    """``should_stop()`` turned true; no version was written."""


class NoRatings(ValueError):
    """There is nothing to train on."""


@dataclass
class Snapshot:
    user_index: np.ndarray   # dense index -> users.id
    item_index: np.ndarray   # dense index -> items.id
    users: np.ndarray        # dense user index per rating
    items: np.ndarray
    values: np.ndarray
    rating_count: int
    last_rating_at: datetime | None


def read_snapshot(session: Session) -> Snapshot:
    """All ratings as of one instant: on PostgreSQL the caller's transaction is REPEATABLE READ, so the count,
    the newest ingestion time and the rows agree even while ratings keep arriving."""
    count, last = session.execute(select(func.count(), func.max(Rating.ingested_at))).one()
    if session.get_bind().dialect.name == "postgresql":
        driver = session.connection().connection.driver_connection
        with driver.cursor() as cursor:
            cursor.execute("SELECT user_id, item_id, value FROM ratings")
            rows = cursor.fetchall()
    else:
        rows = session.execute(select(Rating.user_id, Rating.item_id, Rating.value)).all()
    data = np.array(rows, dtype=np.int64).reshape(-1, 3)
    user_index, users = np.unique(data[:, 0], return_inverse=True)
    item_index, items = np.unique(data[:, 1], return_inverse=True)
    if last is not None and last.tzinfo is None:
        last = last.replace(tzinfo=UTC)
    return Snapshot(user_index, item_index, users.reshape(-1), items.reshape(-1), data[:, 2], int(count), last)


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt()) if a.numel() else math.nan


def evaluate(model: Any, train: Any, test: Any) -> dict[str, float]:
    """Held-out RMSE / MAE of the expected rating, and two baselines on the same ratings (the training mean,
    and each item's training mean shrunk toward it), so a gate can compare versions and sanity-check."""
    if len(test) == 0:
        return {"num_test": 0}
    probs = model.predict_pairs(test.users, test.items, train)
    values = torch.arange(1, train.num_values + 1, dtype=torch.float64)
    expected = probs.double() @ values
    truth = test.ratings.double()
    global_mean = float(train.ratings.double().mean())
    sums = torch.zeros(train.num_items, dtype=torch.float64).index_add_(0, train.items, train.ratings.double())
    counts = torch.bincount(train.items, minlength=train.num_items).double()
    item_mean = (sums + 5.0 * global_mean) / (counts + 5.0)
    return {
        "rmse": _rmse(expected, truth),
        "mae": float((expected - truth).abs().mean()),
        "accuracy": float(((probs.argmax(-1) + 1) == test.ratings).double().mean()),
        "baseline_global_mean_rmse": _rmse(torch.full_like(truth, global_mean), truth),
        "baseline_item_mean_rmse": _rmse(item_mean[test.items], truth),
        "num_test": float(len(test)),
    }


def read_consistent_snapshot(session_factory: sessionmaker) -> Snapshot:
    """``read_snapshot`` in its own transaction: REPEATABLE READ on PostgreSQL (SQLite reads see a single
    snapshot per transaction anyway)."""
    with session_factory() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        snapshot = read_snapshot(session)
        session.rollback()
        return snapshot


@dataclass
class Fit:
    """A trained model with the split it was trained and held out on."""

    model: Any
    matrix: Any  # rbm_core.ratings.RatingMatrix of the whole snapshot
    train: Any
    test: Any
    config: Any  # rbm_core.ratings.RatingModelConfig


def fit_snapshot(snapshot: Snapshot, config: Any, *, holdout: float, scale: int, device: str | None = None,
                 callback: Callable[[int, dict[str, float]], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, name: str = "") -> Fit:
    """Hold out ``holdout`` of each user's ratings (seeded by the config) and train on the rest; the
    held-out part drives early stopping. The worker and ``rbmrec train`` both train through this."""
    from rbm_core.ratings import RatingMatrix, split_per_user, train_rating_model

    matrix = RatingMatrix(torch.from_numpy(snapshot.users), torch.from_numpy(snapshot.items),
                          torch.from_numpy(snapshot.values), len(snapshot.user_index), len(snapshot.item_index),
                          num_values=scale)
    train, test = split_per_user(matrix, test_fraction=holdout, seed=config.seed)
    log.info("model %s: training on %d ratings (%d held out), %d users x %d items", name, len(train), len(test),
             matrix.num_users, matrix.num_items)
    model = train_rating_model(train, config, validation=test if len(test) else None, device=device,
                               callback=callback, should_stop=should_stop)
    return Fit(model, matrix, train, test, config)


def fit_metrics(fit: Fit, *, holdout: float, snapshot_seconds: float, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The held-out evaluation and a training summary, as stored in ``model_versions.metrics``. A
    non-finite held-out RMSE or MAE is an error, never a stored figure."""
    metrics: dict[str, Any] = evaluate(fit.model, fit.train, fit.test)
    for key in ("rmse", "mae"):
        value = metrics.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            raise RuntimeError(f"held-out {key} is {value}")
    metrics.update({
        "num_train": len(fit.train), "num_users": fit.matrix.num_users, "num_items": fit.matrix.num_items,
        "epochs_run": len(fit.model.history), "train_seconds": fit.model.train_seconds,
        "snapshot_seconds": snapshot_seconds, "history": history,
        # The held-out ratings also drive early stopping (restoring the best epoch), so rmse is slightly optimistic.
        "evaluation": f"per-user holdout {holdout:g}, seed {fit.config.seed}",
    })
    return metrics


def add_version(session: Session, *, definition_id: int, fit: Fit, snapshot: Snapshot, metrics: dict[str, Any],
                artifact: bytes, status: str, reason: str | None, job_id: int | None) -> ModelVersion:
    """Insert the version row (not active) in the caller's transaction, which must hold the definition's row
    lock: it serialises version numbering per definition."""
    version = ModelVersion(
        model_definition_id=definition_id, version=repository.next_version_number(session, definition_id),
        status=status, is_active=False, artifact=artifact, artifact_size=len(artifact),
        user_index=snapshot.user_index.tolist(), item_index=snapshot.item_index.tolist(),
        num_users=fit.matrix.num_users, num_items=fit.matrix.num_items, config=fit.config.to_dict(),
        metrics=metrics, rating_count=snapshot.rating_count, last_rating_at=snapshot.last_rating_at, reason=reason,
        training_job_id=job_id, created_at=datetime.now(UTC))
    session.add(version)
    session.flush()
    return version


def train_model_version(*, session_factory: sessionmaker, definition_id: int, job_id: int | None = None,
                        progress_callback: ProgressCallback | None = None,
                        should_stop: Callable[[], bool] | None = None, device: str | None = None,
                        reason: str | None = None, rating_scale: int | None = None) -> ModelVersion:
    """Train and store a new version of ``definition_id`` (status "ready", not active). Returns the row
    (detached); its ``metrics`` hold the held-out evaluation (``rmse``, ``mae``, baselines) and a training
    summary. ``progress_callback(epoch, total_epochs, metrics)`` is called after every epoch;
    ``should_stop()`` is polled after every epoch, and when it turns true ``TrainingCancelled`` is raised and
    nothing is written. Raises ``NoRatings`` when there are none, ``ValueError`` for a bad definition."""
    from service.config import get_settings

    started = time.perf_counter()
    with session_factory() as session:
        definition = session.get(ModelDefinition, definition_id)
        if definition is None:
            raise ValueError(f"model definition {definition_id} does not exist")
        name, kind, orientation = definition.name, definition.kind, definition.orientation
        hyperparameters, holdout = dict(definition.hyperparameters or {}), definition.holdout_fraction
    snapshot = read_consistent_snapshot(session_factory)
    if snapshot.rating_count == 0:
        raise NoRatings(f"model {name!r}: there are no ratings to train on")
    config = rating_config(kind=kind, orientation=orientation, hyperparameters=hyperparameters)
    snapshot_seconds = time.perf_counter() - started

    def callback(epoch: int, metrics: dict[str, float]) -> None:
        if progress_callback is not None:
            progress_callback(epoch, config.epochs, metrics)

    fit = fit_snapshot(snapshot, config, holdout=holdout, scale=rating_scale or get_settings().rating_scale,
                       device=device, callback=callback, should_stop=should_stop, name=name)
    if should_stop is not None and should_stop():
        raise TrainingCancelled(f"model {name!r}: training was cancelled")
    metrics = fit_metrics(fit, holdout=holdout, snapshot_seconds=snapshot_seconds, history=fit.model.history)
    artifact = fit.model.to_bytes()

    with session_factory() as session, session.begin():
        if session.get(ModelDefinition, definition_id, with_for_update=True) is None:
            raise ValueError(f"model definition {definition_id} was deleted during training")
        version = add_version(session, definition_id=definition_id, fit=fit, snapshot=snapshot, metrics=metrics,
                              artifact=artifact, status="ready", reason=reason, job_id=job_id)
    log.info("model %s: version %d written (rmse %.4f, %.1f s)", name, version.version, metrics.get("rmse", math.nan),
             time.perf_counter() - started)
    return version


def activate(*, session_factory: sessionmaker, version_id: int) -> ModelVersion:
    """Activate a version in its own transaction (for the worker and the CLI)."""
    from service.models.service import activate_version

    with session_factory() as session, session.begin():
        version = session.get(ModelVersion, version_id)
        if version is None:
            raise ValueError(f"model version {version_id} does not exist")
        return activate_version(session, definition_id=version.model_definition_id, version_id=version_id)
