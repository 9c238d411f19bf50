"""The worker process (``rbmrec worker``): runs queued and scheduled training jobs outside the API.

Each loop: requeue or fail jobs whose lease expired, enqueue due schedules, claim one queued job and run
it. Any number of workers may run, on any machines; they share nothing but the database. The first
SIGTERM/SIGINT lets the current job finish and then exits; a second one exits at once (the job's lease
then expires and another worker retries it)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from service.db import Database
from service.jobs import queue, scheduler
from service.jobs.execution import Outcome, retry_db, run_job

log = logging.getLogger("rbmrec.worker")


@dataclass(frozen=True)
class WorkerConfig:
    poll_seconds: float = 2.0
    # A running job whose lease is not renewed for this long is taken as abandoned.
    lease_seconds: float = 30.0
    # How often the lease is renewed (and live progress written); default a quarter of the lease.
    heartbeat_seconds: float | None = None
    # Whether this worker also enqueues due schedules (any number of workers may; each run is enqueued once).
    schedule: bool = True
    device: str | None = None
    rating_scale: int | None = None


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(self, database: Database, config: WorkerConfig = WorkerConfig(), worker_id: str | None = None):
        self.database = database
        self.config = config
        self.worker_id = worker_id or default_worker_id()
        self.stopping = threading.Event()
        self.jobs_run = 0

    @property
    def heartbeat_seconds(self) -> float:
        return self.config.heartbeat_seconds or max(0.2, self.config.lease_seconds / 4)

    def maintenance(self) -> None:
        """Reap abandoned jobs and enqueue due schedules (short transactions)."""
        factory = self.database.session_factory
        with factory.begin() as session:
            for reaped in queue.reap_abandoned(session):
                log.warning("job %d -> %s: %s", reaped.job_id, reaped.status, reaped.error)
        if self.config.schedule:
            with factory.begin() as session:
                for job in scheduler.enqueue_due(session):
                    log.info("enqueued job %d for model definition %d (%s)", job.job_id, job.definition_id, job.trigger)

    def claim(self) -> queue.Claim | None:
        with self.database.session_factory.begin() as session:
            return queue.claim_next(session, worker_id=self.worker_id, lease_seconds=self.config.lease_seconds)

    def run_once(self) -> Outcome | None:
        """One loop iteration; returns the outcome of the job it ran, or None when there was none. Waits
        (reconnecting) while the database is unreachable."""
        retry_db(self.maintenance, what="worker maintenance", give_up=self.stopping.is_set)
        claim = retry_db(self.claim, what="claiming a job", give_up=self.stopping.is_set)
        if claim is None:
            return None
        log.info("worker %s claimed job %d (attempt %d)", self.worker_id, claim.job_id, claim.attempt)
        outcome = run_job(
            session_factory=self.database.session_factory,
            claim=claim,
            lease_seconds=self.config.lease_seconds,
            heartbeat_seconds=self.heartbeat_seconds,
            device=self.config.device,
            rating_scale=self.config.rating_scale,
        )
        self.jobs_run += 1
        log.info("job %d: %s%s", claim.job_id, outcome.status, f" ({outcome.reason})" if outcome.reason else "")
        return outcome

    def run(self, *, max_jobs: int | None = None, exit_when_idle: bool = False) -> int:
        """Loop until stopped (or ``max_jobs`` jobs ran, or no job was waiting with ``exit_when_idle``)."""
        log.info(
            "worker %s started (lease %.0f s, heartbeat %.1f s)",
            self.worker_id,
            self.config.lease_seconds,
            self.heartbeat_seconds,
        )
        from service.jobs.execution import DatabaseUnavailable

        while not self.stopping.is_set():
            try:
                outcome = self.run_once()
            except DatabaseUnavailable:
                break
            if max_jobs is not None and self.jobs_run >= max_jobs:
                break
            if outcome is None:
                if exit_when_idle:
                    break
                self.stopping.wait(self.config.poll_seconds)
        log.info("worker %s stopped after %d job(s)", self.worker_id, self.jobs_run)
        return self.jobs_run

    def install_signal_handlers(self) -> None:
        def handler(signum, frame):  # noqa: ARG001
            if self.stopping.is_set():
                log.warning("second signal: exiting now")
                os._exit(130)
            log.info("signal %d: finishing the current job, then exiting (again to exit now)", signum)
            self.stopping.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def wait_for_schema(database: Database, stopping: threading.Event) -> None:
    """Wait until the database is reachable and its schema is at the migrations' head."""
    from service.migrate import current_revision, head_revision

    delay = 1.0
    while not stopping.is_set():
        try:
            current = current_revision(database.engine)
        except Exception as exc:  # unreachable: keep waiting
            log.warning("database unreachable (%s); retrying in %.0f s", str(exc).splitlines()[0], delay)
        else:
            if current == head_revision():
                return
            log.warning(
                "schema at %s, migrations at %s: run `rbmrec db upgrade`; retrying in %.0f s",
                current,
                head_revision(),
                delay,
            )
        time.sleep(delay)
        delay = min(delay * 2, 30.0)


# libpq settings so that a silently vanished server (no RST: a cut cable, a dead VM) shows up as an error
# within about half a minute instead of a read blocked for many minutes; the worker then waits and reconnects.
TCP_TIMEOUTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}


def with_tcp_timeouts(url: str) -> str:
    """``url`` with ``TCP_TIMEOUTS`` added (PostgreSQL only; settings already in the URL win)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return url
    query = {**TCP_TIMEOUTS, **parsed.query}
    return parsed.update_query_dict(query).render_as_string(hide_password=False)


def run_worker(
    *,
    database_url: str | None = None,
    config: WorkerConfig = WorkerConfig(),
    worker_id: str | None = None,
    max_jobs: int | None = None,
    exit_when_idle: bool = False,
) -> int:
    from service.config import get_settings

    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    database = Database(with_tcp_timeouts(database_url or settings.database_url), pool_size=2)
    if config.rating_scale is None:
        config = WorkerConfig(**{**config.__dict__, "rating_scale": settings.rating_scale})
    if config.device is None and settings.device:
        config = WorkerConfig(**{**config.__dict__, "device": settings.device})
    worker = Worker(database, config, worker_id)
    worker.install_signal_handlers()
    try:
        wait_for_schema(database, worker.stopping)
        worker.run(max_jobs=max_jobs, exit_when_idle=exit_when_idle)
    finally:
        database.dispose()
    return 0


def add_command(subparsers) -> None:
    """Register ``rbmrec worker`` on the CLI's subparsers."""
    parser = subparsers.add_parser("worker", help="run training jobs and schedules (any number of workers)")
    parser.add_argument("--database-url", default=None, help="default: DATABASE_URL / the service settings")
    parser.add_argument("--poll-seconds", type=float, default=WorkerConfig.poll_seconds)
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=WorkerConfig.lease_seconds,
        help="a job whose worker has not renewed its lease for this long is taken as abandoned",
    )
    parser.add_argument("--heartbeat-seconds", type=float, default=None, help="default: a quarter of the lease")
    parser.add_argument("--no-schedule", action="store_true", help="run jobs but never enqueue scheduled ones")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--worker-id", default=None)
    parser.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    parser.add_argument("--exit-when-idle", action="store_true", help="exit when no job is waiting")
    parser.set_defaults(func=_command)


def _command(args) -> int:
    config = WorkerConfig(
        poll_seconds=args.poll_seconds,
        lease_seconds=args.lease_seconds,
        heartbeat_seconds=args.heartbeat_seconds,
        schedule=not args.no_schedule,
        device=args.device,
    )
    return run_worker(
        database_url=args.database_url,
        config=config,
        worker_id=args.worker_id,
        max_jobs=args.max_jobs,
        exit_when_idle=args.exit_when_idle,
    )


def main(argv: list[str] | None = None) -> int:
    """``rbmrec worker [options]`` (the CLI passes its arguments through) or ``python -m service.worker``."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="rbmrec")
    add_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["worker", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
