"""The queue, the lease, the reaper, the schedules and the gate, in-process against PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from jobtools import add_ratings, create_definition, enqueue, job, jobs, planted_ratings
from sqlalchemy import update

from service.jobs import queue, scheduler
from service.jobs.gate import GateConfig, decide
from service.models.models import ModelDefinition, TrainingJob


def _now(db):
    with db.session_factory() as session:
        return queue.db_now(session)


def _expire(db, job_id):
    with db.session_factory.begin() as session:
        session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id)
            .values(lease_expires_at=datetime(2000, 1, 1, tzinfo=UTC))
        )


def test_skip_locked_claims_hand_out_different_jobs_and_never_wait(db):
    first, second = create_definition(db, "a"), create_definition(db, "b")
    job_a, job_b = enqueue(db, first), enqueue(db, second)
    s1, s2 = db.session_factory(), db.session_factory()
    try:
        claim1 = queue.claim_next(s1, worker_id="w1", lease_seconds=30)  # s1's locks are still held
        claim2 = queue.claim_next(s2, worker_id="w2", lease_seconds=30)  # skips them instead of waiting
        assert {claim1.job_id, claim2.job_id} == {job_a, job_b}
        s1.commit()
        s2.commit()
        with db.session_factory() as s3:
            assert queue.claim_next(s3, worker_id="w3", lease_seconds=30) is None
    finally:
        s1.close()
        s2.close()
    assert job(db, claim1.job_id).worker_id == "w1" and job(db, claim1.job_id).attempts == 1


def test_a_model_never_runs_two_jobs_at_once(db):
    definition = create_definition(db)
    first, second = enqueue(db, definition), enqueue(db, definition)
    with db.session_factory.begin() as session:
        assert queue.claim_next(session, worker_id="w1", lease_seconds=30).job_id == first
    with db.session_factory.begin() as session:
        assert queue.claim_next(session, worker_id="w2", lease_seconds=30) is None
    assert job(db, second).status == "queued"


def test_expired_lease_requeues_then_fails_and_fences_the_old_worker(db):
    definition = create_definition(db)
    job_id = enqueue(db, definition, max_attempts=2)
    with db.session_factory.begin() as session:
        claim = queue.claim_next(session, worker_id="w1", lease_seconds=30)
    with db.session_factory.begin() as session:
        assert queue.heartbeat(session, claim=claim, lease_seconds=30).owned
        assert queue.reap_abandoned(session) == []  # lease still valid
    _expire(db, job_id)
    with db.session_factory.begin() as session:
        [reaped] = queue.reap_abandoned(session)
    assert reaped.status == "queued" and "attempt 1 of 2 abandoned" in reaped.error
    # the old worker comes back: every write it tries is refused
    with db.session_factory.begin() as session:
        assert not queue.heartbeat(session, claim=claim, lease_seconds=30).owned
        assert not queue.record_progress(session, claim=claim, progress=0.5, metrics=[])
        assert queue.lock_if_owned(session, claim=claim) is None
        assert not queue.finish(session, claim=claim, status="succeeded")
    with db.session_factory.begin() as session:
        retry = queue.claim_next(session, worker_id="w2", lease_seconds=30)
    assert retry.job_id == job_id and retry.attempt == 2
    _expire(db, job_id)
    with db.session_factory.begin() as session:
        [reaped] = queue.reap_abandoned(session)
    assert reaped.status == "failed" and "no attempts left" in reaped.error
    final = job(db, job_id)
    assert final.status == "failed" and final.finished_at is not None and final.error == reaped.error


def test_cancel_requested_before_the_lease_expired_ends_cancelled(db):
    job_id = enqueue(db, create_definition(db))
    with db.session_factory.begin() as session:
        claim = queue.claim_next(session, worker_id="w1", lease_seconds=30)
    with db.session_factory.begin() as session:
        session.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(cancel_requested=True))
    with db.session_factory.begin() as session:
        assert queue.heartbeat(session, claim=claim, lease_seconds=30).cancel_requested
    _expire(db, job_id)
    with db.session_factory.begin() as session:
        [reaped] = queue.reap_abandoned(session)
    assert reaped.status == "cancelled"


def test_next_run_after_interval_and_cron():
    at = datetime(2026, 12, 3, 10, 7, 30, tzinfo=UTC)
    assert scheduler.next_run_after(interval_seconds=600, cron=None, after=at) == at + timedelta(minutes=10)
    assert scheduler.next_run_after(interval_seconds=None, cron="*/15 * * * *", after=at) == datetime(
        2026, 12, 3, 10, 15, tzinfo=UTC
    )
    assert scheduler.next_run_after(interval_seconds=None, cron="0 3 * * *", after=at) == datetime(
        2026, 12, 4, 3, 0, tzinfo=UTC
    )
    assert scheduler.next_run_after(interval_seconds=None, cron=None, after=at) is None


def test_concurrent_ticks_enqueue_a_due_run_once_and_missed_runs_collapse(db):
    now = _now(db)
    definition = create_definition(db, schedule_interval_seconds=60, next_run_at=now - timedelta(minutes=5))
    barrier = threading.Barrier(4)
    results: list[int] = []

    def tick():
        with db.session_factory() as session:
            barrier.wait()
            results.append(len(scheduler.enqueue_due(session)))
            session.commit()

    db.engine.pool.dispose()
    threads = [threading.Thread(target=tick) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 1
    [only] = jobs(db, definition)
    assert only.trigger == "schedule" and only.status == "queued"
    with db.session_factory() as session:
        next_run = session.get(ModelDefinition, definition).next_run_at
    assert next_run > now  # five missed slots became one run, the next one is in the future
    # due again while the run is still queued: skipped, and the slot moves on
    with db.session_factory.begin() as session:
        session.get(ModelDefinition, definition).next_run_at = now - timedelta(seconds=1)
    with db.session_factory.begin() as session:
        assert scheduler.enqueue_due(session) == []
        assert session.get(ModelDefinition, definition).next_run_at > now


def test_a_new_schedule_gets_its_first_time_instead_of_running_at_once(db):
    definition = create_definition(db, schedule_cron="0 3 * * *")
    with db.session_factory.begin() as session:
        assert scheduler.enqueue_due(session) == []
        assert session.get(ModelDefinition, definition).next_run_at.hour == 3


def test_new_ratings_trigger_fires_at_the_threshold_and_not_while_a_run_is_open(db):
    add_ratings(db, planted_ratings(10, 10, 5, seed=0))
    definition = create_definition(db, trigger_new_ratings=True, new_ratings_threshold=10)
    with db.session_factory.begin() as session:  # a run that read everything so far
        session.add(TrainingJob(model_definition_id=definition, status="succeeded", started_at=queue.db_now(session)))
    add_ratings(db, [(100, j, 3) for j in range(9)])
    with db.session_factory.begin() as session:
        assert scheduler.new_ratings_since_last_run(session, definition) == 9
        assert scheduler.enqueue_due(session) == []
    add_ratings(db, [(101, 0, 4)])
    with db.session_factory.begin() as session:
        [enqueued] = scheduler.enqueue_due(session)
    assert enqueued.trigger == "new_ratings"
    with db.session_factory.begin() as session:
        assert scheduler.enqueue_due(session) == []  # already queued


def test_gate_settings_and_decisions():
    assert GateConfig.from_dict(None) == GateConfig(metric="rmse", max_regression=0.01)
    with pytest.raises(ValueError, match="unknown gate setting"):
        GateConfig.from_dict({"max_regresion": 0.1})
    with pytest.raises(ValueError, match="metric"):
        GateConfig.from_dict({"metric": "accuracy"})
    gate = GateConfig()
    assert decide(gate, candidate=1.0, incumbent=0.995, incumbent_version=3, pairs=50).passed  # +0.5%
    refused = decide(gate, candidate=1.006, incumbent=0.995, incumbent_version=3, pairs=50)  # +1.1%
    assert not refused.passed and "version 3" in refused.reason
    assert decide(gate, candidate=2.0, incumbent=None, incumbent_version=None).passed
    assert not decide(gate, candidate=float("nan"), incumbent=None, incumbent_version=None).passed
    assert decide(GateConfig(enabled=False), candidate=9.0, incumbent=1.0, incumbent_version=1).passed
    assert decide(GateConfig(max_regression=0.2), candidate=1.1, incumbent=1.0, incumbent_version=1).passed
