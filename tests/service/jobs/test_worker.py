"""Workers as real subprocesses (``python -m service.worker``) against PostgreSQL: one run per due schedule
with two workers, SIGKILL mid-job, the gate, divergence, snapshots, cancellation and a database outage."""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta

import pytest
from jobtools import (
    SLOW,
    TINY,
    add_ratings,
    create_definition,
    enqueue,
    job,
    jobs,
    planted_ratings,
    versions,
    wait_for,
)
from sqlalchemy import func, select

from service.jobs import queue
from service.models.models import ModelDefinition
from service.models.service import cancel_job
from service.ratings.models import Rating
from service.worker import Worker, WorkerConfig

# Generous: these only bound how long a failing test hangs; the machine may be shared and slow.
PATIENCE = 240

DATA = dict(num_users=40, num_items=30, per_user=12)


def _seed(db, seed: int = 0) -> int:
    rows = planted_ratings(DATA["num_users"], DATA["num_items"], DATA["per_user"], seed)
    add_ratings(db, rows)
    return len(rows)


def _set_hyperparameters(db, definition_id: int, hyperparameters: dict) -> None:
    with db.session_factory.begin() as session:
        session.get(ModelDefinition, definition_id).hyperparameters = hyperparameters


def _first_version(db, definition_id: int) -> None:
    """A good active version 1, trained in-process."""
    enqueue(db, definition_id)
    outcome = Worker(db, WorkerConfig(lease_seconds=30, rating_scale=5)).run_once()
    assert outcome.status == "succeeded" and outcome.activated, outcome


def _active(db, definition_id: int):
    return [(v.version, v.status) for v in versions(db, definition_id) if v.is_active]


def _running_with_progress(db, job_id: int):
    found = job(db, job_id)
    return found.status == "running" and found.progress > 0 and len(found.metrics) > 0


def test_two_workers_and_one_due_schedule_make_exactly_one_run(db, start_worker):
    _seed(db)
    definition = create_definition(db, schedule_interval_seconds=3600)
    workers = [start_worker(), start_worker()]
    wait_for(lambda: all("started" in w.output() for w in workers), PATIENCE, "both workers to be polling")
    with db.session_factory.begin() as session:  # due one second from now, with both workers ticking
        soon = queue.db_now(session) + timedelta(seconds=1)
        session.get(ModelDefinition, definition).next_run_at = soon
    [run] = wait_for(
        lambda: [j for j in jobs(db, definition) if j.status == "succeeded"], PATIENCE, "the scheduled run"
    )
    time.sleep(1.0)  # both workers tick a few more times past the due time
    assert all(w.process.poll() is None and "started" in w.output() for w in workers)
    assert len(jobs(db, definition)) == 1, [w.output() for w in workers]
    assert run.trigger == "schedule" and run.attempts == 1
    assert _active(db, definition) == [(1, "ready")]
    with db.session_factory() as session:
        assert session.get(ModelDefinition, definition).next_run_at > soon + timedelta(minutes=59)


def test_sigkill_mid_job_is_recovered_and_the_active_version_is_untouched(db, start_worker):
    _seed(db)
    definition = create_definition(db)
    _first_version(db, definition)
    _set_hyperparameters(db, definition, SLOW)
    job_id = enqueue(db, definition)
    doomed = start_worker("--lease-seconds", "2", "--heartbeat-seconds", "0.3")
    wait_for(lambda: _running_with_progress(db, job_id), PATIENCE, "the job to be running with progress")
    doomed.kill()
    stale = job(db, job_id)
    assert stale.status == "running" and stale.attempts == 1
    assert [(v.version, v.is_active) for v in versions(db, definition)] == [(1, True)]  # nothing half-written
    rescuer = start_worker("--lease-seconds", "2", "--heartbeat-seconds", "0.3")
    requeued = wait_for(lambda: job(db, job_id).attempts == 2, PATIENCE, "the job to be reaped and claimed again")
    assert requeued
    assert _active(db, definition) == [(1, "ready")]  # still the old version while the retry runs
    done = wait_for(lambda: job(db, job_id).status == "succeeded" and job(db, job_id), PATIENCE, "the retry to finish")
    assert "attempt 1 of 3 abandoned" in done.error and "requeued" in done.error
    assert [(v.version, v.is_active) for v in versions(db, definition)] == [(1, False), (2, True)]
    assert versions(db, definition)[1].training_job_id == job_id
    assert "abandoned" in rescuer.output()


def test_the_gate_keeps_a_bad_model_inactive_and_divergence_fails_the_job(db, start_worker):
    _seed(db)
    definition = create_definition(db)
    _first_version(db, definition)
    good_rmse = versions(db, definition)[0].metrics["rmse"]
    worker = start_worker()
    _set_hyperparameters(db, definition, {**TINY, "epochs": 1, "learning_rate": 1e-6})  # barely trained
    weak = enqueue(db, definition)
    wait_for(lambda: job(db, weak).status not in ("queued", "running"), PATIENCE, "the weak run")
    assert job(db, weak).status == "succeeded", job(db, weak).error
    v1, v2 = versions(db, definition)
    assert v1.is_active and not v2.is_active and v2.status == "rejected"
    assert v2.metrics["rmse"] > good_rmse * 1.01
    assert v2.reason.startswith("kept inactive by the gate: RMSE") and "active version 1" in v2.reason
    _set_hyperparameters(db, definition, {**TINY, "learning_rate": 1e4})  # the parameters blow up
    diverging = enqueue(db, definition)
    wait_for(lambda: job(db, diverging).status not in ("queued", "running"), PATIENCE, "the diverging run")
    failed = job(db, diverging)
    assert failed.status == "failed" and failed.error.startswith("training diverged"), failed.error
    assert "non-finite" in failed.error
    assert len(versions(db, definition)) == 2 and _active(db, definition) == [(1, "ready")]
    assert worker.process.poll() is None  # a failed job does not take the worker down


def test_ratings_arriving_during_training_wait_for_the_next_run(db, start_worker):
    before = _seed(db)
    definition = create_definition(db, hyperparameters=SLOW)
    first = enqueue(db, definition)
    worker = start_worker("--lease-seconds", "10")
    wait_for(lambda: _running_with_progress(db, first), PATIENCE, "the first run to be training")
    late = [(1000 + u, i, 5 if i % 2 == 0 else 1) for u in range(5) for i in range(10)]
    add_ratings(db, late)
    assert job(db, first).status == "running"  # the new ratings really arrived mid-run
    wait_for(lambda: job(db, first).status == "succeeded", PATIENCE, "the first run")
    [v1] = versions(db, definition)
    assert v1.rating_count == before and v1.num_users == DATA["num_users"]
    _set_hyperparameters(db, definition, TINY)
    second = enqueue(db, definition)
    wait_for(lambda: job(db, second).status == "succeeded", PATIENCE, "the second run")
    v2 = versions(db, definition)[1]
    with db.session_factory() as session:
        total = session.execute(select(func.count()).select_from(Rating)).scalar_one()
    assert v2.rating_count == before + len(late) == total and v2.num_users == DATA["num_users"] + 5
    worker.stop()


@pytest.mark.slow
def test_cancelling_a_running_job_leaves_the_active_version(db, start_worker):
    _seed(db)
    definition = create_definition(db)
    _first_version(db, definition)
    _set_hyperparameters(db, definition, {**SLOW, "epochs": 5000})
    job_id = enqueue(db, definition)
    start_worker("--lease-seconds", "5", "--heartbeat-seconds", "0.3")
    wait_for(lambda: _running_with_progress(db, job_id), PATIENCE, "the job to be running")
    with db.session_factory.begin() as session:
        cancel_job(session, job_id=job_id)
    cancelled = wait_for(
        lambda: job(db, job_id).status == "cancelled" and job(db, job_id), PATIENCE, "the cancellation"
    )
    assert "cancelled on request" in cancelled.error and cancelled.progress < 0.5
    assert [(v.version, v.is_active) for v in versions(db, definition)] == [(1, True)]


class _Proxy:
    """A TCP forwarder to PostgreSQL that can be cut (all connections dropped, new ones refused)."""

    def __init__(self, target_port: int = 5432):
        self.target_port = target_port
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.connections: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.is_up = False

    def up(self) -> None:
        self.is_up = True
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(16)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        self.is_up = False
        # close() alone does not wake the thread blocked in accept(): the socket kept listening and
        # the next connection got through the "cut" proxy; shutdown() does wake it
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for conn in self.connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self.connections.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if not self.is_up:  # accepted as the proxy went down
                client.close()
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            self.connections += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.mark.slow
def test_a_database_outage_mid_job_is_waited_out(db, start_worker, jobs_database_url):
    _seed(db)
    definition = create_definition(db, hyperparameters=SLOW)
    job_id = enqueue(db, definition)
    proxy = _Proxy()
    proxy.up()
    through_proxy = jobs_database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    assert through_proxy != jobs_database_url
    worker = start_worker("--lease-seconds", "20", "--heartbeat-seconds", "0.3", url=through_proxy)
    wait_for(lambda: _running_with_progress(db, job_id), PATIENCE, "the job to be running")
    proxy.down()
    wait_for(lambda: "database unreachable" in worker.output(), PATIENCE, "the worker to notice the outage")
    time.sleep(2.0)
    proxy.up()
    try:
        done = wait_for(
            lambda: job(db, job_id).status == "succeeded" and job(db, job_id), PATIENCE, "the job to finish"
        )
    except AssertionError:
        print(worker.output())
        raise
    assert done.attempts == 1 and done.error is None  # the same attempt carried on: nothing was lost
    assert _active(db, definition) == [(1, "ready")]
    # the worker keeps serving the queue afterwards
    _set_hyperparameters(db, definition, TINY)
    again = enqueue(db, definition)
    wait_for(lambda: job(db, again).status == "succeeded", PATIENCE, "a job after the outage")
    proxy.down()
