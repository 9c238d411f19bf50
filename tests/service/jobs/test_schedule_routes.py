"""``/v1/models/{name}/schedule`` through the API (the service's app, keys and database fixtures)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def _model(client, admin, name="m1"):
    response = client.post("/v1/models", json={"name": name, "hyperparameters": {"epochs": 2}}, headers=admin)
    assert response.status_code == 201, response.text


def test_edit_read_and_clear_a_schedule(client, admin, reader):
    _model(client, admin)
    before = datetime.now(UTC)
    body = client.put("/v1/models/m1/schedule", json={"interval_seconds": 3600}, headers=admin).json()
    assert body["interval_seconds"] == 3600 and body["cron"] is None
    next_run = datetime.fromisoformat(body["next_run_at"])
    assert before + timedelta(minutes=59) < next_run < datetime.now(UTC) + timedelta(minutes=61)
    body = client.put(
        "/v1/models/m1/schedule",
        json={"cron": "0 3 * * *", "trigger_new_ratings": True, "new_ratings_threshold": 500},
        headers=admin,
    ).json()
    assert body["interval_seconds"] is None and body["new_ratings_threshold"] == 500
    next_run = datetime.fromisoformat(body["next_run_at"])
    assert (next_run.hour, next_run.minute) == (3, 0) and next_run > before
    assert client.get("/v1/models/m1/schedule", headers=reader).json() == body
    assert client.get("/v1/models/m1", headers=reader).json()["schedule_cron"] == "0 3 * * *"
    cleared = client.delete("/v1/models/m1/schedule", headers=admin).json()
    assert cleared["cron"] is None and cleared["next_run_at"] is None and not cleared["trigger_new_ratings"]


def test_patching_a_models_schedule_recomputes_its_next_run(client, admin, reader):
    _model(client, admin)
    client.put("/v1/models/m1/schedule", json={"interval_seconds": 86400}, headers=admin)
    before = datetime.now(UTC)
    patched = client.patch("/v1/models/m1", json={"schedule_interval_seconds": 600}, headers=admin)
    assert patched.status_code == 200, patched.text
    next_run = datetime.fromisoformat(client.get("/v1/models/m1/schedule", headers=reader).json()["next_run_at"])
    assert before + timedelta(minutes=9) < next_run < datetime.now(UTC) + timedelta(minutes=11)
    client.patch("/v1/models/m1", json={"schedule_interval_seconds": None}, headers=admin)
    assert client.get("/v1/models/m1/schedule", headers=reader).json()["next_run_at"] is None


def test_schedule_errors(client, admin, reader):
    _model(client, admin)
    assert client.put("/v1/models/m1/schedule", json={"interval_seconds": 3600}, headers=reader).status_code == 403
    assert client.put("/v1/models/m1/schedule", json={"interval_seconds": 3600}).status_code == 401
    assert client.put("/v1/models/ghost/schedule", json={}, headers=admin).status_code == 404
    for bad, field in [
        ({"cron": "every day"}, "cron"),
        ({"interval_seconds": 5}, "interval_seconds"),
        ({"new_ratings_threshold": 0}, "new_ratings_threshold"),
        ({"interval_seconds": 3600, "cron": "0 3 * * *"}, "body"),
        ({"intervall_seconds": 3600}, "intervall_seconds"),
    ]:
        response = client.put("/v1/models/m1/schedule", json=bad, headers=admin)
        assert response.status_code == 422, (bad, response.text)
        assert field in response.text
