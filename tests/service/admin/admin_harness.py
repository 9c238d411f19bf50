"""Harness for the admin dashboard's browser tests: a fresh PostgreSQL database built by the Alembic migrations, the
real app under uvicorn on a free loopback port, and Debian's headless Chromium driven by Selenium.

The database is ``TEST_DATABASE_URL`` (its server, a new database per test module) or the local server at
127.0.0.1:5432; when none is reachable the tests fail with that message rather than skip."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "test-artifacts" / "admin"
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-quic", "--window-size=1366,900"]


def _server_url() -> str:
    from service.config import Settings

    raw = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    return Settings(database_url=raw).database_url  # normalised to the psycopg driver


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A new, migrated database on the test server, dropped afterwards."""
    from service.migrate import upgrade

    server = make_url(_server_url())
    admin_engine = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin_engine.connect() as conn:
            name = f"rbmrec_admin_test_{uuid.uuid4().hex[:10]}"
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - the message is the point
        pytest.fail(f"no PostgreSQL reachable at {server.render_as_string(hide_password=True)} for the admin "
                    f"browser tests (set TEST_DATABASE_URL, or run scripts/test-services.sh): {exc}", pytrace=False)
    url = server.set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    with admin_engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin_engine.dispose()


@dataclass
class Seeded:
    """What the seed wrote, counted independently of the dashboard's SQL."""

    admin_key: str
    read_key: str
    users: int
    items: int
    ratings: int
    histogram: dict[int, int]
    item_counts: dict[str, int]
    user_ratings: dict[str, dict[str, int]] = field(default_factory=dict)


def seed(database_url: str, *, num_users: int = 60, num_items: int = 24, per_user: int = 12) -> Seeded:
    """Ratings with two planted taste groups (users of group g love items of group g, dislike the others)
    spread over ten days, an admin key and a read key."""
    from service.auth.service import create_api_key
    from service.catalog.models import Item, User
    from service.db import Database
    from service.ratings.models import Rating

    rng = random.Random(7)
    db = Database(database_url, pool_size=2)
    histogram: dict[int, int] = {}
    item_counts: dict[str, int] = {}
    per_user_ratings: dict[str, dict[str, int]] = {}
    with db.session_factory() as session:
        users = [User(external_id=f"user-{u:03d}") for u in range(num_users)]
        items = [Item(external_id=f"item-{i:03d}", title=f"Film {i} ({'AB'[i % 2]})") for i in range(num_items)]
        session.add_all(users + items)
        session.flush()
        start = datetime(2024, 3, 1, 12, tzinfo=UTC)
        for u, user in enumerate(users):
            chosen = rng.sample(range(num_items), per_user)
            for i in chosen:
                liked = (i % 2) == (u % 2)
                value = rng.choice([4, 5, 5]) if liked else rng.choice([1, 2, 2, 3])
                session.add(Rating(user_id=user.id, item_id=items[i].id, value=value,
                                   rated_at=start + timedelta(days=rng.randrange(10), minutes=rng.randrange(600))))
                histogram[value] = histogram.get(value, 0) + 1
                item_counts[items[i].external_id] = item_counts.get(items[i].external_id, 0) + 1
                per_user_ratings.setdefault(user.external_id, {})[items[i].external_id] = value
        _, admin_key = create_api_key(session, name="test-admin", role="admin")
        _, read_key = create_api_key(session, name="test-reader", role="read")
        session.commit()
    db.dispose()
    return Seeded(admin_key, read_key, num_users, num_items, num_users * per_user, histogram, item_counts,
                  per_user_ratings)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 90) -> None:
        """The process starts in the background (importing torch takes seconds); block until it answers."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/admin/login", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"the app did not start under uvicorn:\n{self.log()}", pytrace=False)
            time.sleep(0.2)


def _env(database_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DATABASE_URL=database_url, ADMIN_SESSION_SECRET="admin-browser-tests", MODEL_REFRESH_SECONDS="0.2",
               API_KEY_CACHE_SECONDS="0", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def live_server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("uvicorn") / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.main:app_factory", "--factory", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"],
            cwd=ROOT, env=_env(database_url), stdout=log, stderr=subprocess.STDOUT)
    server = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
    yield server
    print(f"---- server log (tail) ----\n{server.log()}")  # shown by pytest when a test failed
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


@dataclass
class Worker:
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def worker(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """The jobs issue's worker as a real process (``python -m service.worker``), writing progress often."""
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.worker", "--poll-seconds", "0.3", "--heartbeat-seconds", "0.3",
             "--no-schedule"], cwd=ROOT, env=_env(database_url), stdout=log, stderr=subprocess.STDOUT)
    worker = Worker(process, log_path)
    yield worker
    print(f"---- worker log (tail) ----\n{worker.log()}")
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.fail("Debian's chromium and chromium-driver are needed for the admin browser tests: "
                    "apt-get install -y chromium chromium-driver (scripts/test-services.sh does it)", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-', dir=tmp_path_factory.getbasetemp())}")
    try:
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
    except WebDriverException as exc:
        pytest.fail(f"headless chromium did not start: {exc.msg}", pytrace=False)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
