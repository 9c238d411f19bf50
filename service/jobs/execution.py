"""Running one claimed training job: the lease keeper (heartbeats, live progress, cancellation), the
consistent snapshot, training, the held-out evaluation of both the new and the active version on the same
ratings, and one final fenced transaction that writes the version, applies the gate and closes the job.

Nothing of a run is visible before that last transaction commits, and it commits only while the job is
still this worker's (``queue.lock_if_owned``): a worker that was presumed dead and replaced writes nothing.
Losing the database (a restart, a network cut) makes every step wait and reconnect (``retry_db``)."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.jobs import queue
from service.jobs.gate import GateConfig, GateDecision, decide, pair_errors
from service.models.models import ModelDefinition, ModelVersion

log = logging.getLogger(__name__)
T = TypeVar("T")


class DatabaseUnavailable(RuntimeError):
    pass


class JobLost(Exception):
    """The job was reaped (our lease expired) while we ran it: write nothing."""


def is_connection_error(exc: BaseException) -> bool:
    """True for errors that mean "the database is unreachable right now" (retry), not bad SQL or data."""
    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def retry_db(
    action: Callable[[], T],
    *,
    what: str,
    give_up: Callable[[], bool] | None = None,
    first_delay: float = 0.5,
    max_delay: float = 10.0,
) -> T:
    """Run ``action`` (which opens its own session) until it gets through; while the database is unreachable,
    wait with exponential backoff. ``give_up()`` turning true raises ``DatabaseUnavailable``."""
    delay = first_delay
    while True:
        try:
            return action()
        except (OperationalError, DBAPIError) as exc:
            if not is_connection_error(exc):
                raise
            if give_up is not None and give_up():
                raise DatabaseUnavailable(f"{what}: database unreachable") from exc
            log.warning("%s: database unreachable (%s); retrying in %.1f s", what, str(exc).splitlines()[0], delay)
            time.sleep(delay)
            delay = min(max_delay, delay * 2)


class Lease(threading.Thread):
    """Keeps a running job's lease alive from a background thread and carries the live progress to the
    job row (one short transaction per beat). ``should_stop()`` turns true when cancellation was
    requested or the job stopped being ours."""

    def __init__(self, session_factory: sessionmaker, claim: queue.Claim, *, lease_seconds: float, interval: float):
        super().__init__(name=f"lease-job-{claim.job_id}", daemon=True)
        self.session_factory = session_factory
        self.claim = claim
        self.lease_seconds = lease_seconds
        self.interval = interval
        self.owned = True
        self.cancel_requested = False
        self._lock = threading.Lock()
        self._progress: tuple[float, list[dict[str, Any]]] | None = None
        self._wake = threading.Event()
        self._stopped = threading.Event()

    def should_stop(self) -> bool:
        return self.cancel_requested or not self.owned

    def report(self, progress: float, metrics: list[dict[str, Any]]) -> None:
        """Queue a progress write and wake the thread to write it now."""
        with self._lock:
            self._progress = (progress, [dict(m) for m in metrics])
        self._wake.set()

    def beat(self) -> None:
        with self._lock:
            pending, self._progress = self._progress, None
        try:
            with self.session_factory.begin() as session:
                beat = queue.heartbeat(session, claim=self.claim, lease_seconds=self.lease_seconds)
                if beat.owned and pending is not None:
                    queue.record_progress(session, claim=self.claim, progress=pending[0], metrics=pending[1])
        except Exception as exc:  # the lease thread must outlive any one failed beat
            if is_connection_error(exc):
                log.warning("job %d: heartbeat failed, database unreachable; will retry", self.claim.job_id)
            else:
                log.exception("job %d: heartbeat failed; will retry", self.claim.job_id)
            with self._lock:
                if self._progress is None:
                    self._progress = pending  # keep it for the next beat
            return
        if self._stopped.is_set():
            return  # the job ended meanwhile: its final status is not a lost lease
        if not beat.owned and self.owned:
            log.error("job %d: lease lost (the job was reaped or reassigned); stopping", self.claim.job_id)
        self.owned = beat.owned
        self.cancel_requested = beat.cancel_requested

    def run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stopped.is_set():
                break
            self.beat()
            self._stopped.wait(0.2)  # at most five progress writes a second, however short the epochs

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        self.join(timeout=30)


@dataclass
class Outcome:
    status: str  # succeeded | failed | cancelled | lost
    version: int | None = None
    activated: bool = False
    reason: str | None = None


@dataclass
class _Definition:
    name: str
    kind: str
    orientation: str
    hyperparameters: dict[str, Any]
    holdout: float
    gate: dict[str, Any]


def _load_definition(session_factory: sessionmaker, definition_id: int) -> _Definition:
    with session_factory() as session:
        d = session.get(ModelDefinition, definition_id)
        if d is None:
            raise ValueError(f"model definition {definition_id} does not exist")
        return _Definition(
            d.name, d.kind, d.orientation, dict(d.hyperparameters or {}), d.holdout_fraction, dict(d.gate or {})
        )


def _active_version(session: Session, definition_id: int) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion).where(ModelVersion.model_definition_id == definition_id, ModelVersion.is_active.is_(True))
    ).one_or_none()


def _read_incumbent(session_factory: sessionmaker, definition_id: int) -> tuple[dict, bytes, list, list] | None:
    """The active version's identity and stored metrics, artifact and index maps (None: no active version)."""
    with session_factory() as session:
        active = _active_version(session, definition_id)
        if active is None:
            return None
        info = {"version": active.version, "id": active.id, "stored": dict(active.metrics or {})}
        return info, active.artifact, list(active.user_index), list(active.item_index)


def _score_incumbent(session_factory: sessionmaker, claim: queue.Claim, snapshot, train, test, candidate) -> dict:
    """Both versions' errors on the held-out ratings whose user and item the active version knows."""
    from rbm_core.ratings import RatingMatrix, RatingModel

    found = retry_db(
        lambda: _read_incumbent(session_factory, claim.definition_id),
        what=f"job {claim.job_id}: reading the active version",
    )
    if found is None:
        return {"version": None}
    info, artifact, user_index, item_index = found
    try:
        incumbent = RatingModel.from_bytes(artifact)
    except Exception as exc:  # a broken active artifact must not block a good new version
        info["error"] = f"active version could not be loaded: {exc}"
        return info
    user_map = np.full(int(snapshot.user_index.max()) + 1, -1, dtype=np.int64)
    old_users = np.asarray(user_index, dtype=np.int64)
    keep = old_users < len(user_map)
    user_map[old_users[keep]] = np.nonzero(keep)[0]
    item_map = np.full(int(snapshot.item_index.max()) + 1, -1, dtype=np.int64)
    old_items = np.asarray(item_index, dtype=np.int64)
    keep = old_items < len(item_map)
    item_map[old_items[keep]] = np.nonzero(keep)[0]
    # new dense index -> internal id -> the active version's dense index (-1: unknown to it)
    to_old_user = torch.from_numpy(user_map[snapshot.user_index])
    to_old_item = torch.from_numpy(item_map[snapshot.item_index])

    def mapped(ratings):
        users, items = to_old_user[ratings.users], to_old_item[ratings.items]
        known = (users >= 0) & (items >= 0)
        return known, users[known], items[known], ratings.ratings[known]

    shared, test_users, test_items, truth = mapped(test)
    info["pairs"] = int(shared.sum())
    if info["pairs"] == 0:
        return info
    known, users, items, values = mapped(train)
    context = RatingMatrix(users, items, values, len(user_index), len(item_index), num_values=train.num_values)
    info["incumbent"] = pair_errors(incumbent.predict_pairs(test_users, test_items, context), truth)
    new_probs = candidate.predict_pairs(test.users[shared], test.items[shared], train)
    info["candidate"] = pair_errors(new_probs, truth)
    return info


def gate_decision(gate: GateConfig, metrics: dict[str, Any], incumbent: dict[str, Any]) -> GateDecision:
    metric = gate.metric
    if incumbent.get("version") is None:
        return decide(gate, candidate=metrics.get(metric), incumbent=None, incumbent_version=None)
    if incumbent.get("pairs", 0) >= gate.min_pairs and "incumbent" in incumbent:
        return decide(
            gate,
            candidate=incumbent["candidate"][metric],
            incumbent=incumbent["incumbent"][metric],
            incumbent_version=incumbent["version"],
            pairs=incumbent["pairs"],
        )
    # Too few shared held-out ratings (the catalogue changed a lot): compare the stored evaluations.
    return decide(
        gate,
        candidate=metrics.get(metric),
        incumbent=incumbent.get("stored", {}).get(metric),
        incumbent_version=incumbent["version"],
        pairs=int(metrics.get("num_test", 0)),
        basis="each version's own held-out ratings (too few shared ones)",
    )


def run_job(
    *,
    session_factory: sessionmaker,
    claim: queue.Claim,
    lease_seconds: float,
    heartbeat_seconds: float,
    device: str | None = None,
    rating_scale: int | None = None,
) -> Outcome:
    """Run a claimed job to a final state; never raises for a failure of the job itself."""
    lease = Lease(session_factory, claim, lease_seconds=lease_seconds, interval=heartbeat_seconds)
    lease.start()
    try:
        return _run(session_factory, claim, lease, device, rating_scale)
    except JobLost:
        return Outcome("lost", reason="the job stopped being ours (lease expired and it was reaped)")
    except Exception as exc:
        from rbm_core.training import TrainingDiverged

        if isinstance(exc, TrainingDiverged):
            reason = f"training diverged: {exc}"
        elif _is_sampling_blowup(exc):
            reason = f"training diverged (non-finite probabilities while sampling): {exc}"
        else:
            reason = f"{type(exc).__name__}: {exc}"
            log.error("job %d failed:\n%s", claim.job_id, traceback.format_exc())
        return _close(session_factory, claim, lease, "failed", reason)
    finally:
        lease.stop()


def _is_sampling_blowup(exc: BaseException) -> bool:
    """torch's samplers reject NaN probabilities before the trainer's end-of-epoch finiteness check runs."""
    return isinstance(exc, RuntimeError) and "p_in >= 0 && p_in <= 1" in str(exc)


def _close(session_factory: sessionmaker, claim: queue.Claim, lease: Lease, status: str, reason: str) -> Outcome:
    def write() -> bool:
        with session_factory.begin() as session:
            return queue.finish(session, claim=claim, status=status, error=reason)

    owned = retry_db(write, what=f"job {claim.job_id}: closing as {status}")
    if not owned:
        return Outcome("lost", reason=reason)
    log.info("job %d %s: %s", claim.job_id, status, reason)
    return Outcome(status, reason=reason)


def _run(
    session_factory: sessionmaker, claim: queue.Claim, lease: Lease, device: str | None, rating_scale: int | None
) -> Outcome:
    from service.config import get_settings
    from service.errors import ApiError
    from service.models.service import rating_config
    from service.models.training import fit_metrics, fit_snapshot, read_consistent_snapshot

    started = time.perf_counter()
    definition = retry_db(lambda: _load_definition(session_factory, claim.definition_id), what="loading definition")
    try:
        gate = GateConfig.from_dict(definition.gate)
        config = rating_config(
            kind=definition.kind, orientation=definition.orientation, hyperparameters=definition.hyperparameters
        )
    except (ApiError, ValueError) as exc:
        return _close(session_factory, claim, lease, "failed", f"invalid model definition: {exc}")

    snapshot = retry_db(
        lambda: read_consistent_snapshot(session_factory), what=f"job {claim.job_id}: reading the snapshot"
    )
    if snapshot.rating_count == 0:
        return _close(session_factory, claim, lease, "failed", "there are no ratings to train on")
    snapshot_seconds = time.perf_counter() - started
    history: list[dict[str, Any]] = []

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        history.append({k: float(v) for k, v in metrics.items()})
        lease.report(min(1.0, (epoch + 1) / max(config.epochs, 1)), history)

    fit = fit_snapshot(
        snapshot,
        config,
        holdout=definition.holdout,
        scale=rating_scale or get_settings().rating_scale,
        device=device,
        callback=on_epoch,
        should_stop=lease.should_stop,
        name=f"{definition.name} (job {claim.job_id})",
    )
    if not lease.owned:
        raise JobLost()
    if lease.cancel_requested:
        return _close(session_factory, claim, lease, "cancelled", "cancelled on request; no version written")
    metrics = fit_metrics(fit, holdout=definition.holdout, snapshot_seconds=snapshot_seconds, history=history)
    incumbent = _score_incumbent(session_factory, claim, snapshot, fit.train, fit.test, fit.model)
    decision = gate_decision(gate, metrics, incumbent)
    metrics["gate"] = {**decision.as_dict(), "config": gate.__dict__}
    artifact = fit.model.to_bytes()

    def publish() -> Outcome:
        from service.models.service import activate_version
        from service.models.training import add_version

        with session_factory.begin() as session:
            job = queue.lock_if_owned(session, claim=claim)
            if job is None:
                return Outcome("lost")
            session.get(ModelDefinition, claim.definition_id, with_for_update=True)
            if job.cancel_requested:
                queue.finish(session, claim=claim, status="cancelled", error="cancelled on request; no version written")
                return Outcome("cancelled", reason="cancelled on request")
            version = add_version(
                session,
                definition_id=claim.definition_id,
                fit=fit,
                snapshot=snapshot,
                metrics=metrics,
                artifact=artifact,
                status="ready" if decision.passed else "rejected",
                reason=decision.reason,
                job_id=claim.job_id,
            )
            if decision.passed:
                activate_version(session, definition_id=claim.definition_id, version_id=version.id)
            queue.finish(
                session,
                claim=claim,
                status="succeeded",
                model_version_id=version.id,
                progress=1.0,
                metrics=history,
            )
            return Outcome("succeeded", version.version, decision.passed, decision.reason)

    outcome = retry_db(publish, what=f"job {claim.job_id}: writing the version")
    if outcome.status == "lost":
        raise JobLost()
    log.info(
        "job %d: version %s of %s written in %.1f s; %s",
        claim.job_id,
        outcome.version,
        definition.name,
        time.perf_counter() - started,
        outcome.reason,
    )
    return outcome
