"""A scheduled MovieLens-1M retrain, end to end: schedule due -> enqueued -> claimed -> trained -> gated -> active.

Builds a fresh PostgreSQL database (``rbmrec_bench_retrain`` on the server of ``BENCH_DATABASE_URL``, default the
local one), imports ratings.dat with ``rbmrec import`` (COPY), defines a model with a daily schedule whose next run
is due in a few seconds, and starts one ``rbmrec worker``. The first scheduled run makes version 1 (no active
version yet); the schedule is then made due again, and the second run is a real retrain: the gate scores version 1
on the new run's held-out ratings before activating version 2. Timings come from the job and version rows.

    .venv/bin/python benchmarks/bench_retrain.py --ratings /work/shared/data/ml-1m/ratings.dat
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from service.db import Database  # noqa: E402
from service.jobs.queue import db_now  # noqa: E402
from service.models.models import ModelDefinition, ModelVersion, TrainingJob  # noqa: E402

# The configuration of the README's figures, pinned so that later changes of the library's defaults do not change it.
HYPERPARAMETERS = {
    "num_hidden": 100,
    "epochs": 10,
    "batch_size": 32,
    "learning_rate": 0.05,
    "lr_decay": 0.97,
    "momentum": 0.9,
    "initial_momentum": 0.5,
    "weight_decay": 0.001,
    "k_schedule": [[0, 1]],
    "layout": "sparse",
    "averaging": 0.0,
    "shared_weights": False,
    "ranking": "rating",
}


def fresh_database(server_url: str, name: str) -> str:
    admin = create_engine(make_url(server_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    from service.migrate import upgrade

    upgrade(url)
    return url


def wait_for_job(db: Database, definition_id: int, after_id: int, timeout: float) -> TrainingJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.session_factory() as session:
            job = session.scalars(
                select(TrainingJob)
                .where(TrainingJob.model_definition_id == definition_id, TrainingJob.id > after_id)
                .order_by(TrainingJob.id)
            ).first()
            if job is not None and job.status in ("succeeded", "failed", "cancelled"):
                return job
        time.sleep(0.5)
    raise TimeoutError(f"no finished run within {timeout:.0f} s")


def make_due(db: Database, definition_id: int, in_seconds: float):
    with db.session_factory.begin() as session:
        due = db_now(session) + timedelta(seconds=in_seconds)
        session.get(ModelDefinition, definition_id).next_run_at = due
        return due


def report(db: Database, job: TrainingJob, due) -> dict:
    with db.session_factory() as session:
        version = session.get(ModelVersion, job.model_version_id) if job.model_version_id else None
        row = {
            "job": job.id,
            "status": job.status,
            "error": job.error,
            "due_to_enqueued_s": (job.created_at - due).total_seconds(),
            "enqueued_to_claimed_s": (job.started_at - job.created_at).total_seconds(),
            "claimed_to_finished_s": (job.finished_at - job.started_at).total_seconds(),
        }
        if version is not None:
            m = version.metrics
            row.update(
                {
                    "version": version.version,
                    "active": version.is_active,
                    "reason": version.reason,
                    "enqueued_to_active_s": (version.activated_at - job.created_at).total_seconds()
                    if version.activated_at
                    else None,
                    "snapshot_s": round(m["snapshot_seconds"], 2),
                    "train_s": round(m["train_seconds"], 2),
                    "epochs": m["epochs_run"],
                    "ratings": version.rating_count,
                    "held_out_rmse": round(m["rmse"], 4),
                    "baseline_item_mean_rmse": round(m["baseline_item_mean_rmse"], 4),
                    "gate": m.get("gate", {}).get("reason"),
                }
            )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", default="/work/shared/data/ml-1m/ratings.dat")
    parser.add_argument(
        "--server",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--database", default="rbmrec_bench_retrain")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="override a hyperparameter")
    parser.add_argument("--orientation", default="user", choices=["user", "item"])
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    hyperparameters = dict(HYPERPARAMETERS)
    for item in args.set:
        key, _, raw = item.partition("=")
        hyperparameters[key] = json.loads(raw)

    url = fresh_database(args.server, args.database)
    env = {**os.environ, "DATABASE_URL": url, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    imported = subprocess.run(
        [sys.executable, "-m", "service.cli", "import", args.ratings],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    print(f"import: {imported.stdout.strip()} ({time.perf_counter() - started:.1f} s)", flush=True)

    db = Database(url, pool_size=2)
    with db.session_factory.begin() as session:
        definition = ModelDefinition(
            name="ml1m",
            kind="rbm",
            orientation=args.orientation,
            hyperparameters=hyperparameters,
            holdout_fraction=0.1,
            gate={},
            schedule_interval_seconds=86400,
        )
        session.add(definition)
        session.flush()
        definition_id = definition.id
    print(f"model ml1m: {args.orientation}-based RBM {json.dumps(hyperparameters)}, daily schedule", flush=True)

    log_path = ROOT / "var" / "bench_retrain_worker.log"
    log_path.parent.mkdir(exist_ok=True)
    with open(log_path, "w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "service.worker", "--poll-seconds", "1"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            results = []
            last_job = 0
            for run in ("first scheduled run (no active version)", "scheduled retrain (gate vs version 1)"):
                due = make_due(db, definition_id, 5.0)
                job = wait_for_job(db, definition_id, last_job, args.timeout)
                last_job = job.id
                row = report(db, job, due)
                results.append(row)
                print(f"{run}: {json.dumps(row)}", flush=True)
        finally:
            worker.terminate()
            worker.wait(timeout=60)
    db.dispose()
    if not args.keep:
        admin = create_engine(make_url(args.server).set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)'))
        admin.dispose()
    print(json.dumps({"hyperparameters": hyperparameters, "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
