"""Model definitions, versions with metrics, activation and rollback (the older version's scores come back),
training jobs; the training function's snapshot and evaluation."""

from __future__ import annotations

import pytest
from service_support import TINY, define_and_train, load_planted
from test_catalog import _error

from rbm_core.ratings import RatingModel
from service.models.training import NoRatings, train_model_version

DEFINITION = {"name": "m1", "kind": "rbm", "orientation": "user", "hyperparameters": {"num_hidden": 8, "epochs": 2}}


def test_create_list_show_patch_delete_definition(client, admin, reader):
    created = client.post("/v1/models", json={**DEFINITION, "schedule_cron": "0 3 * * *", "gate": {"max_rmse": 1.0}},
                          headers=admin)
    assert created.status_code == 201, created.text
    assert created.json()["active_version"] is None and created.json()["schedule_cron"] == "0 3 * * *"
    assert [m["name"] for m in client.get("/v1/models", headers=reader).json()] == ["m1"]
    assert client.get("/v1/models/m1", headers=reader).json()["hyperparameters"] == {"num_hidden": 8, "epochs": 2}
    patched = client.patch("/v1/models/m1", json={"hyperparameters": {"num_hidden": 4}, "trigger_new_ratings": True},
                           headers=admin)
    assert patched.status_code == 200 and patched.json()["hyperparameters"] == {"num_hidden": 4}
    assert patched.json()["trigger_new_ratings"] is True
    assert client.get("/v1/models/m1/versions", headers=reader).json() == []
    assert client.delete("/v1/models/m1", headers=admin).status_code == 204
    _error(client.get("/v1/models/m1", headers=reader), 404)


def test_definition_bad_input_and_conflict(client, admin, reader):
    assert client.post("/v1/models", json=DEFINITION, headers=admin).status_code == 201
    _error(client.post("/v1/models", json=DEFINITION, headers=admin), 409)
    error = _error(client.post("/v1/models", json={**DEFINITION, "name": "m2", "hyperparameters": {"num_hiden": 3}},
                               headers=admin), 422)
    assert "num_hiden" in error["message"]
    error = _error(client.post("/v1/models", json={**DEFINITION, "name": "m2", "hyperparameters": {"epochs": "many"}},
                               headers=admin), 422)
    assert "epochs" in error["message"]
    _error(client.post("/v1/models", json={**DEFINITION, "name": "m2", "hyperparameters": {"kind": "dbm"}}, headers=admin), 422)
    _error(client.post("/v1/models", json={**DEFINITION, "name": "m2", "kind": "gan"}, headers=admin), 422)
    _error(client.post("/v1/models", json={**DEFINITION, "name": "bad name!"}, headers=admin), 422)
    _error(client.post("/v1/models", json={**DEFINITION, "name": "m2", "schedule_cron": "every day"}, headers=admin), 422)
    _error(client.post("/v1/models", json={**DEFINITION, "name": "m2", "holdout_fraction": 1.5}, headers=admin), 422)
    _error(client.patch("/v1/models/m1", json={"hyperparameters": {"nope": 1}}, headers=admin), 422)
    _error(client.patch("/v1/models/ghost", json={"description": "x"}, headers=admin), 404)
    _error(client.post("/v1/models", json={**DEFINITION, "name": "m3"}, headers=reader), 403)
    _error(client.post("/v1/models", json={**DEFINITION, "name": "m3"}), 401)
    _error(client.get("/v1/models"), 401)


def test_training_writes_a_version_with_snapshot_and_metrics(database, client, reader, trained):
    rows, version = trained
    assert version.version == 1 and version.status == "ready"
    assert version.rating_count == len(rows) and version.last_rating_at is not None
    metrics = version.metrics
    assert metrics["num_train"] + metrics["num_test"] == len(rows)
    # The planted tastes are learnable: the model beats the global-mean baseline on held-out ratings.
    assert metrics["rmse"] < metrics["baseline_global_mean_rmse"]
    listed = client.get("/v1/models/tiny/versions", headers=reader).json()
    assert len(listed) == 1 and listed[0]["is_active"] and listed[0]["rating_count"] == len(rows)
    assert client.get("/v1/models/tiny", headers=reader).json()["active_version"] == 1
    assert client.get("/v1/models/tiny/versions/1", headers=reader).json()["metrics"]["rmse"] == metrics["rmse"]
    _error(client.get("/v1/models/tiny/versions/7", headers=reader), 404)
    _error(client.get("/v1/models/nope/versions", headers=reader), 404)
    # The artifact loads back without pickle and knows every user and item of the snapshot.
    with database.session_factory() as session:
        from service.models.models import ModelVersion

        stored = session.get(ModelVersion, version.id)
        model = RatingModel.from_bytes(stored.artifact)
        assert model.num_users == len(stored.user_index) == len({u for u, _, _ in rows})
        assert model.num_items == len(stored.item_index) == len({i for _, i, _ in rows})


def test_no_ratings_no_training(database, clean):
    from service.models import service as registry

    with database.session_factory() as session, session.begin():
        definition = registry.create_definition(session, fields={
            "name": "empty", "kind": "rbm", "orientation": "user", "hyperparameters": TINY, "holdout_fraction": 0.1,
            "description": None, "schedule_interval_seconds": None, "schedule_cron": None,
            "trigger_new_ratings": False, "gate": {}})
        definition_id = definition.id
    with pytest.raises(NoRatings):
        train_model_version(session_factory=database.session_factory, definition_id=definition_id)


def test_progress_callback_and_cancellation(database, clean):
    load_planted(database)
    seen = []
    define_and_train(database, "p", activate_it=False)
    from service.models import repository

    with database.session_factory() as session:
        definition_id = repository.definition_by_name(session, "p").id
    version = train_model_version(session_factory=database.session_factory, definition_id=definition_id,
                                  progress_callback=lambda e, total, m: seen.append((e, total, m["valid_rmse"])))
    assert version.version == 2 and [s[0] for s in seen] == list(range(TINY["epochs"]))
    assert all(total == TINY["epochs"] for _, total, _ in seen)
    from service.models.training import TrainingCancelled

    with pytest.raises(TrainingCancelled):
        train_model_version(session_factory=database.session_factory, definition_id=definition_id,
                            should_stop=lambda: True)
    with database.session_factory() as session:
        assert [v.version for v in repository.versions(session, definition_id)] == [2, 1]


def test_rollback_serves_the_older_versions_scores(database, client, admin, reader, trained):
    rows, first = trained
    url = "/v1/users/u000/recommendations?n=16&exclude_rated=false"
    before = client.get(url, headers=reader).json()
    assert before["version"] == 1
    second = define_and_train(database, hyperparameters={**TINY, "seed": 5, "num_hidden": 3}, activate_it=False)
    assert second.version == 2
    activated = client.post("/v1/models/tiny/versions/2/activate", headers=admin)
    assert activated.status_code == 200 and activated.json()["is_active"]
    during = client.get(url, headers=reader).json()
    assert during["version"] == 2
    assert [i["score"] for i in during["items"]] != [i["score"] for i in before["items"]]
    versions = {v["version"]: v["is_active"] for v in client.get("/v1/models/tiny/versions", headers=reader).json()}
    assert versions == {1: False, 2: True}
    assert client.post("/v1/models/tiny/versions/1/activate", headers=admin).status_code == 200
    after = client.get(url, headers=reader).json()
    assert after["version"] == 1 and after["items"] == before["items"]
    _error(client.post("/v1/models/tiny/versions/9/activate", headers=admin), 404)
    _error(client.post("/v1/models/tiny/versions/1/activate", headers=reader), 403)


def test_activation_reaches_another_process_without_restart(database, settings, client, admin, reader, trained):
    """A second app (standing for another API process; they share only the database) polls the active version."""
    from fastapi.testclient import TestClient

    from service.main import create_app

    other = create_app(settings.model_copy(update={"model_refresh_seconds": 0}), database=database)
    with TestClient(other) as other_client:
        assert other_client.get("/v1/users/u001/recommendations", headers=reader).json()["version"] == 1
        define_and_train(database, hyperparameters={**TINY, "seed": 3}, activate_it=False)
        client.post("/v1/models/tiny/versions/2/activate", headers=admin)
        assert other_client.get("/v1/users/u001/recommendations", headers=reader).json()["version"] == 2


def test_jobs(client, admin, reader):
    client.post("/v1/models", json=DEFINITION, headers=admin)
    job = client.post("/v1/models/m1/jobs", headers=admin)
    assert job.status_code == 201
    body = job.json()
    assert body["status"] == "queued" and body["trigger"] == "manual" and body["model"] == "m1"
    _error(client.post("/v1/models/m1/jobs", headers=admin), 409)  # one open job per model
    assert client.get(f"/v1/jobs/{body['id']}", headers=reader).json()["status"] == "queued"
    assert [j["id"] for j in client.get("/v1/models/m1/jobs", headers=reader).json()] == [body["id"]]
    cancelled = client.post(f"/v1/jobs/{body['id']}/cancel", headers=admin).json()
    assert cancelled["status"] == "cancelled" and cancelled["cancel_requested"]
    _error(client.post(f"/v1/jobs/{body['id']}/cancel", headers=admin), 409)
    assert client.post("/v1/models/m1/jobs", json={"max_attempts": 2}, headers=admin).json()["max_attempts"] == 2
    _error(client.post("/v1/models/ghost/jobs", headers=admin), 404)
    _error(client.get("/v1/jobs/999999", headers=reader), 404)
    _error(client.get("/v1/jobs/abc", headers=reader), 422)
    _error(client.post("/v1/models/m1/jobs", json={"max_attempts": 0}, headers=admin), 422)
    _error(client.post("/v1/models/m1/jobs", headers=reader), 403)
    _error(client.get("/v1/jobs/1"), 401)


def test_at_most_one_active_version_per_model(database, trained):
    """The partial unique index refuses a second active version even if code forgot to deactivate."""
    from sqlalchemy.exc import IntegrityError

    from service.models.models import ModelVersion

    second = define_and_train(database, hyperparameters={**TINY, "epochs": 1}, activate_it=False)
    with database.session_factory() as session:
        session.get(ModelVersion, second.id).is_active = True
        with pytest.raises(IntegrityError):
            session.commit()
