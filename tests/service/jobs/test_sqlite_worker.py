"""The embedded SQLite database: one worker runs a scheduled job end to end."""

from __future__ import annotations

from datetime import timedelta

from jobtools import add_ratings, create_definition, jobs, planted_ratings, versions

from service.db import Database, utcnow
from service.migrate import upgrade
from service.worker import Worker, WorkerConfig


def test_one_worker_on_sqlite_runs_a_due_schedule(tmp_path):
    url = f"sqlite:///{tmp_path / 'rbmrec.sqlite3'}"
    upgrade(url)
    db = Database(url)
    try:
        add_ratings(db, planted_ratings(40, 30, 12, seed=0))
        definition = create_definition(db, schedule_interval_seconds=3600, next_run_at=utcnow() - timedelta(seconds=1))
        worker = Worker(db, WorkerConfig(lease_seconds=30, rating_scale=5))
        outcome = worker.run_once()
        assert outcome is not None and outcome.status == "succeeded" and outcome.activated, outcome
        [run] = jobs(db, definition)
        assert run.trigger == "schedule" and run.status == "succeeded" and run.progress == 1.0
        assert len(run.metrics) == 8 and "valid_rmse" in run.metrics[-1]
        [version] = versions(db, definition)
        assert version.is_active and version.metrics["rmse"] < version.metrics["baseline_item_mean_rmse"]
        assert worker.run_once() is None  # not due again for an hour
    finally:
        db.dispose()
