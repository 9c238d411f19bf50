"""The admin dashboard in a real browser (headless Chromium + Selenium) against the real app under uvicorn
and a real PostgreSQL: login and refusal, the data overview's counts, a training job triggered from the
page and followed live to done, its version's metrics, activation with confirmation, charts and the
hidden-unit view drawn, the user page, key creation and schedule editing. Screenshots go to
test-artifacts/admin/."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from urllib.parse import quote

import pytest
from admin_harness import LiveServer, Seeded, Worker, screenshot, seed
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as conditions
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

MODEL = "tiny-rbm"
HYPERPARAMETERS = {"num_hidden": 8, "epochs": 10, "batch_size": 8, "learning_rate": 0.05, "patience": 50,
                   "k_schedule": [[0, 1]], "engagement_hidden": 8, "engagement_epochs": 2, "seed": 3}

# Counts the number of painted pixels of a canvas (Chart.js draws into it).
PAINTED = """
const canvas = document.getElementById(arguments[0]);
if (!canvas) return -1;
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let painted = 0;
for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) painted++;
return painted;
"""


@pytest.fixture(scope="module")
def seeded(database_url: str) -> Seeded:
    """The seed data, a model definition and its version 1 (trained by the service's synchronous training
    function, activated), so a job from the page writes version 2 and there is something to switch to."""
    from service.db import Database
    from service.models import service as model_service
    from service.models.training import activate, train_model_version

    data = seed(database_url)
    db = Database(database_url, pool_size=2)
    with db.session_factory() as session:
        definition = model_service.create_definition(session, fields={
            "name": MODEL, "kind": "rbm", "orientation": "user", "hyperparameters": HYPERPARAMETERS,
            "holdout_fraction": 0.2, "description": "browser-test model", "schedule_interval_seconds": None,
            "schedule_cron": None, "trigger_new_ratings": False, "gate": {}})
        # Version 1 quickly (two epochs), then the definition the page's job trains.
        model_service.update_definition(session, name=MODEL, changes={
            "hyperparameters": {**HYPERPARAMETERS, "epochs": 2}})
        session.commit()
        definition_id = definition.id
    version = train_model_version(session_factory=db.session_factory, definition_id=definition_id, rating_scale=5)
    activate(session_factory=db.session_factory, version_id=version.id)
    with db.session_factory() as session:
        model_service.update_definition(session, name=MODEL, changes={"hyperparameters": HYPERPARAMETERS})
        session.commit()
    db.dispose()
    return data


@pytest.fixture(scope="module")
def site(live_server: LiveServer, worker: Worker, seeded: Seeded, browser) -> LiveServer:
    # The server and the worker start in the background while the seed and the browser are prepared.
    live_server.wait_ready()
    return live_server


def wait(driver, seconds: float = 10) -> WebDriverWait:
    return WebDriverWait(driver, seconds, poll_frequency=0.1)


def text_of(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def submit(driver, button_id: str) -> None:
    """Click a form's submit button and wait until the answer page has replaced the current one (reading
    elements straight after the click can still find the old page)."""
    old_page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, button_id).click()
    wait(driver).until(conditions.staleness_of(old_page))


def log_in(driver, site: LiveServer, key: str, next_path: str = "/admin/") -> None:
    driver.get(f"{site.url}/admin/login?next={quote(next_path, safe='')}")
    field = driver.find_element(By.ID, "api_key")
    field.clear()
    field.send_keys(key)
    submit(driver, "login")


def painted(driver, canvas_id: str) -> int:
    wait(driver).until(lambda d: d.execute_script(PAINTED, canvas_id) != 0)
    return driver.execute_script(PAINTED, canvas_id)


def get_status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def raw_get(url: str, cookie: str | None = None) -> tuple[int, dict[str, str]]:
    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


# ---- who gets in ---------------------------------------------------------------------------------

def test_everything_under_admin_refuses_anyone_without_a_session(site: LiveServer, browser) -> None:
    for path in ("/admin/", "/admin/models", f"/admin/models/{MODEL}", "/admin/jobs", "/admin/users",
                 "/admin/users/user-000", "/admin/keys", "/admin/versions/1"):
        status, headers = raw_get(site.url + path)
        assert status == 303 and headers["location"].startswith("/admin/login?next="), (path, status)
    assert raw_get(site.url + "/admin/api/jobs/1")[0] == 401
    # A forged or tampered cookie is no session.
    status, _ = raw_get(site.url + "/admin/", cookie="rbmrec_admin=eyJrZXlfaWQiOiAxfQ==.forged.signature")
    assert status == 303
    browser.delete_all_cookies()
    browser.get(site.url + "/admin/models")
    assert "/admin/login" in browser.current_url
    assert browser.find_element(By.ID, "api_key").is_displayed()


def test_login_refuses_a_read_key_and_a_wrong_key(site: LiveServer, seeded: Seeded, browser) -> None:
    browser.delete_all_cookies()
    log_in(browser, site, seeded.read_key)
    # The click submits the form; wait for the answer page rather than reading the old one.
    wait(browser).until(conditions.presence_of_element_located((By.ID, "login-error")))
    assert "needs an admin key" in text_of(browser, "login-error")
    browser.get(site.url + "/admin/")
    assert "/admin/login" in browser.current_url
    log_in(browser, site, "rbm_not-a-key")
    wait(browser).until(conditions.presence_of_element_located((By.ID, "login-error")))
    assert "Unknown or revoked" in text_of(browser, "login-error")
    # The read key still works where it belongs: the REST API.
    assert get_status(site.url + "/v1/models", {"X-API-Key": seeded.read_key}) == 200


# ---- data overview --------------------------------------------------------------------------------

def test_login_lands_on_the_overview_with_the_right_counts(site: LiveServer, seeded: Seeded, browser) -> None:
    browser.delete_all_cookies()
    log_in(browser, site, seeded.admin_key)
    wait(browser).until(conditions.presence_of_element_located((By.ID, "count-ratings")))
    assert browser.current_url == site.url + "/admin/"
    assert text_of(browser, "count-users") == f"{seeded.users:,}"
    assert text_of(browser, "count-items") == f"{seeded.items:,}"
    assert text_of(browser, "count-ratings") == f"{seeded.ratings:,}"
    # The histogram chart holds exactly the seeded counts, and is drawn.
    chart = browser.execute_script("const c = Chart.getChart('chart-histogram');"
                                   "return [c.data.labels, c.data.datasets[0].data];")
    assert dict(zip(map(int, chart[0]), chart[1], strict=True)) == seeded.histogram
    assert painted(browser, "chart-histogram") > 1000
    assert painted(browser, "chart-per-day") > 1000
    per_day = browser.execute_script("return Chart.getChart('chart-per-day').data.datasets[0].data;")
    assert sum(per_day) == seeded.ratings and len(per_day) <= 10
    most = browser.find_elements(By.CSS_SELECTOR, "#most-rated tr td.num")
    assert int(most[0].text) == max(seeded.item_counts.values())
    least = browser.find_elements(By.CSS_SELECTOR, "#least-rated tr td.num")
    assert int(least[0].text) == min(seeded.item_counts.values())
    screenshot(browser, "overview")


# ---- training, versions, activation -----------------------------------------------------------------

def _versions(database_url: str) -> dict[int, tuple[bool, dict]]:
    from service.models.models import ModelVersion

    engine = create_engine(database_url)
    with Session(engine) as session:
        rows = session.execute(select(ModelVersion.version, ModelVersion.is_active, ModelVersion.metrics)).all()
    engine.dispose()
    return {v: (active, metrics) for v, active, metrics in rows}


def test_a_training_job_triggered_from_the_page_runs_live_to_done(site: LiveServer, seeded: Seeded, browser,
                                                                  worker, database_url: str) -> None:
    log_in(browser, site, seeded.admin_key, f"/admin/models/{MODEL}")
    browser.find_element(By.ID, "train").click()
    wait(browser).until(conditions.presence_of_element_located((By.ID, "job-status")))
    assert "/admin/jobs/" in browser.current_url
    seen: list[tuple[str, str]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            state = (text_of(browser, "job-status"), text_of(browser, "job-percent"))
        except Exception:  # the page reloads itself when a new chart appears or the job ends
            time.sleep(0.05)
            continue
        if not seen or seen[-1] != state:
            seen.append(state)
        if state[0] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)
    assert seen[-1][0] == "succeeded", (seen, worker.log())
    statuses = [s for s, _ in seen]
    assert statuses[0] in ("queued", "running") and "running" in statuses, seen
    # The page followed the job live: progress only ever rises while it runs. (On a quiet machine ten tiny epochs
    # can finish between two polls, so an intermediate percentage is not required; the per-epoch curves below
    # show that every epoch's metrics were written while the job ran.)
    percents = [int(p.rstrip("%")) for _, p in seen]
    assert percents == sorted(percents), seen
    # Per-epoch curves drawn from the job's stored metrics.
    for canvas in ("curve-reconstruction", "curve-rmse", "curve-free_energy"):
        assert painted(browser, canvas) > 500, canvas
    epochs = browser.execute_script("return Chart.getChart('curve-rmse').data.labels.length;")
    assert epochs == HYPERPARAMETERS["epochs"]
    screenshot(browser, "job")
    assert "v2" in text_of(browser, "job-version")
    assert 2 in _versions(database_url)


def test_the_new_version_shows_its_metrics_and_can_be_activated(site: LiveServer, seeded: Seeded, browser,
                                                                database_url: str) -> None:
    before = _versions(database_url)
    assert set(before) == {1, 2}
    browser.get(f"{site.url}/admin/models/{MODEL}")
    for number, (_, metrics) in before.items():
        cells = browser.find_elements(By.CSS_SELECTOR, f"#version-{number} td.metric")
        rmse, mae = float(cells[0].text), float(cells[1].text)
        assert abs(rmse - metrics["rmse"]) < 1e-3 * max(1.0, metrics["rmse"]), (number, rmse, metrics["rmse"])
        assert abs(mae - metrics["mae"]) < 1e-3 * max(1.0, metrics["mae"])
    assert painted(browser, "chart-versions") > 500
    screenshot(browser, "model")
    inactive = next(number for number, (active, _) in before.items() if not active)
    submit(browser, f"activate-{inactive}")
    assert f"v{inactive}" in text_of(browser, "confirm-question")
    assert not _versions(database_url)[inactive][0], "the confirmation page must not activate anything"
    submit(browser, "confirm")
    wait(browser).until(conditions.presence_of_element_located((By.ID, f"version-{inactive}")))
    assert "active" in browser.find_element(By.CSS_SELECTOR, f"#version-{inactive} .badge").text
    after = _versions(database_url)
    assert after[inactive][0] and sum(active for active, _ in after.values()) == 1
    # The REST API serves the activated version now.
    request = urllib.request.Request(f"{site.url}/v1/users/user-001/recommendations?model={MODEL}",
                                     headers={"X-API-Key": seeded.read_key})
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(request, timeout=10) as response:
            served = json.load(response)["version"]
        if served == inactive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert served == inactive


def test_inside_a_version_hidden_units_and_histograms_render(site: LiveServer, seeded: Seeded, browser) -> None:
    browser.get(f"{site.url}/admin/models/{MODEL}")
    browser.find_element(By.CSS_SELECTOR, "#version-2 a").click()
    units = browser.find_elements(By.CSS_SELECTOR, "#hidden-units .unit")
    assert len(units) == HYPERPARAMETERS["num_hidden"]
    for unit in units:
        items = unit.find_elements(By.TAG_NAME, "li")
        assert len(items) == 6 and all("item-" in li.text for li in items)
    for canvas in ("hist-weight", "hist-visible_bias", "hist-hidden_bias"):
        assert painted(browser, canvas) > 500, canvas
    weights = browser.execute_script("return Chart.getChart('hist-weight').data.datasets[0].data;")
    # 24 items x 5 ratings x 8 hidden units, every weight counted once.
    assert sum(weights) == seeded.items * 5 * HYPERPARAMETERS["num_hidden"]
    screenshot(browser, "version")


# ---- a user, keys, schedules ------------------------------------------------------------------------

def test_the_user_page_shows_ratings_recommendations_and_reconstructions(site: LiveServer, seeded: Seeded,
                                                                          browser) -> None:
    user = "user-004"
    browser.get(f"{site.url}/admin/users/{user}")
    real = seeded.user_ratings[user]
    rows = browser.find_elements(By.CSS_SELECTOR, "#ratings tr")[1:]
    shown = {row.find_elements(By.TAG_NAME, "td")[0].text: int(row.find_elements(By.TAG_NAME, "td")[2].text)
             for row in rows}
    assert shown == real
    recommended = [r.find_elements(By.TAG_NAME, "td")[1].text
                   for r in browser.find_elements(By.CSS_SELECTOR, "#recommendations tr")[1:]]
    assert len(recommended) == 10 and not set(recommended) & set(real), "rated items are excluded"
    reconstructed = browser.find_elements(By.CSS_SELECTOR, "#reconstructions tr")[1:]
    assert len(reconstructed) == len(real) // 2
    for row in reconstructed:
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        assert int(cells[2]) == real[cells[0]]
        assert all(1 <= int(s) <= 5 for s in cells[3:]) and len(cells[3:]) == 4
    screenshot(browser, "user")


def test_an_admin_creates_a_key_and_edits_a_schedule(site: LiveServer, seeded: Seeded, browser,
                                                     database_url: str) -> None:
    browser.get(f"{site.url}/admin/keys")
    browser.find_element(By.ID, "key-name").send_keys("from-the-dashboard")
    submit(browser, "create-key")
    key = text_of(browser, "new-key")
    assert key.startswith("rbm_")
    assert get_status(site.url + "/v1/models", {"X-API-Key": key}) == 200
    assert get_status(site.url + f"/v1/models/{MODEL}/jobs", {"X-API-Key": key}) == 200
    # Role read: the admin-only REST routes refuse it.
    request = urllib.request.Request(f"{site.url}/v1/models/{MODEL}/jobs", data=b"{}", method="POST",
                                     headers={"X-API-Key": key, "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403

    browser.get(f"{site.url}/admin/models/{MODEL}")
    browser.find_element(By.ID, "cron").send_keys("not a cron")
    submit(browser, "save-schedule")
    assert "not a valid cron" in browser.find_element(By.CSS_SELECTOR, ".flash.error").text
    browser.find_element(By.ID, "cron").clear()
    browser.find_element(By.ID, "interval_seconds").send_keys("3600")
    browser.find_element(By.ID, "trigger_new_ratings").click()
    submit(browser, "save-schedule")
    assert "saved" in browser.find_element(By.CSS_SELECTOR, ".flash").text
    assert "every 3,600 s" in text_of(browser, "schedule") and "on new ratings" in text_of(browser, "schedule")
    from service.models.models import ModelDefinition

    engine = create_engine(database_url)
    with Session(engine) as session:
        definition = session.scalar(select(ModelDefinition).where(ModelDefinition.name == MODEL))
        assert (definition.schedule_interval_seconds, definition.schedule_cron, definition.trigger_new_ratings) == \
            (3600, None, True)
    engine.dispose()


def test_pages_are_fast_and_logging_out_ends_the_session(site: LiveServer, seeded: Seeded, browser) -> None:
    for path in ("/admin/", "/admin/models", f"/admin/models/{MODEL}", "/admin/jobs", "/admin/versions/2",
                 "/admin/users/user-004", "/admin/keys"):
        browser.get(site.url + path)
        navigation = browser.execute_script(
            "const n = performance.getEntriesByType('navigation')[0]; return n.responseEnd - n.requestStart;")
        assert navigation < 1000, (path, navigation)
    screenshot(browser, "keys")
    browser.get(site.url + "/admin/jobs")
    screenshot(browser, "jobs")
    submit(browser, "logout")
    assert "/admin/login" in browser.current_url
    browser.get(site.url + "/admin/")
    assert "/admin/login" in browser.current_url
