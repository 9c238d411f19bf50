"""Recommendations, predictions and sampled reconstructions: what the API answers equals what the stored
model computes from the user's ratings; fold-in for users the model never saw; the popularity fallback."""

from __future__ import annotations

import torch
from service_support import TINY, define_and_train
from test_catalog import _error

from rbm_core.ratings import RatingModel
from service.models.models import ModelVersion


def _stored_model(database, version_id: int):
    with database.session_factory() as session:
        row = session.get(ModelVersion, version_id)
        item_index = {int(internal): i for i, internal in enumerate(row.item_index)}
        return RatingModel.from_bytes(row.artifact), item_index


def _known(database, item_index, user: str):
    """The user's ratings of the items the version knows, in item id order."""
    from sqlalchemy import text

    with database.engine.connect() as conn:
        rows = conn.execute(text("SELECT r.item_id, r.value FROM ratings r JOIN users u ON u.id = r.user_id "
                                 "WHERE u.external_id = :u ORDER BY r.item_id"), {"u": user}).all()
    rows = [(i, v) for i, v in rows if i in item_index]
    return torch.tensor([item_index[i] for i, _ in rows]), torch.tensor([v for _, v in rows])


def _item_names(database) -> dict[int, str]:
    from sqlalchemy import text

    with database.engine.connect() as conn:
        return dict(conn.execute(text("SELECT id, external_id FROM items")).all())


def test_recommendations_equal_the_models_ranking(database, client, reader, trained):
    rows, version = trained
    model, item_index = _stored_model(database, version.id)
    names = _item_names(database)
    by_index = {i: names[internal] for internal, i in item_index.items()}
    item_idx, ratings = _known(database, item_index, "u000")
    expected = model.recommend(item_idx, ratings, n=5, offset=2, exclude_known=True)
    answer = client.get("/v1/users/u000/recommendations?n=5&offset=2", headers=reader)
    assert answer.status_code == 200
    body = answer.json()
    assert body["source"] == "model" and body["model"] == "tiny" and body["version"] == 1
    assert [i["item"] for i in body["items"]] == [by_index[i] for i, _, _ in expected]
    for got, (_, score, mean) in zip(body["items"], expected, strict=True):
        assert abs(got["score"] - score) < 1e-5 and abs(got["expected_rating"] - mean) < 1e-5
    rated = {i for u, i, _ in rows if u == "u000"}
    all_items = client.get("/v1/users/u000/recommendations?n=100", headers=reader).json()["items"]
    assert not rated & {i["item"] for i in all_items} and len(all_items) == 16 - len(rated)
    with_rated = client.get("/v1/users/u000/recommendations?n=100&exclude_rated=false", headers=reader).json()["items"]
    assert rated <= {i["item"] for i in with_rated} and len(with_rated) == 16
    named = client.get("/v1/users/u000/recommendations?model=tiny", headers=reader).json()
    assert named["model"] == "tiny" and len(named["items"]) == min(10, 16 - len(rated))


def test_served_recommendations_are_the_models_exactly(database, client, admin, reader, trained):
    """The hot path (one autocommit read, its own JSON rendering) serves the model's own ``recommend`` to the
    last bit: items, order, score and expected rating, with engagement ranking (the pruned pass at small n, the
    full pass at large n), for training users and a folded-in one, user- and item-based."""
    engagement = {**TINY, "ranking": "engagement", "engagement_hidden": 4, "engagement_epochs": 3}
    versions = {name: define_and_train(database, name, hyperparameters=engagement, orientation=orientation)
                for name, orientation in (("engaged", "user"), ("engaged_items", "item"))}
    # "late" arrived after training, and also rated an item the versions do not know (left out of the scoring).
    client.post("/v1/ratings/batch", json={"ratings": [{"user": "late", "item": "b01", "rating": 5},
                                                       {"user": "late", "item": "new", "rating": 4},
                                                       {"user": "late", "item": "a03", "rating": 2}]}, headers=admin)
    names = _item_names(database)
    for (name, version), orientation in zip(versions.items(), ("user", "item"), strict=True):
        model, item_index = _stored_model(database, version.id)
        assert model.config.ranking == "engagement" and model.engagement is not None
        by_index = {i: names[internal] for internal, i in item_index.items()}
        users = {internal: i for i, internal in enumerate(_stored_users(database, version.id))}
        for user in ("u000", "u007", "late"):
            item_idx, ratings = _known(database, item_index, user)
            user_index = users.get(_user_id(database, user)) if orientation == "item" else None
            assert (user_index is None) == (user == "late") or orientation == "user"
            for n, offset, exclude in ((3, 0, True), (2, 1, True), (10, 0, True), (3, 0, False)):
                expected = model.recommend(item_idx, ratings, n=n, offset=offset, exclude_known=exclude,
                                           user_index=user_index)
                body = client.get(f"/v1/users/{user}/recommendations?model={name}&n={n}&offset={offset}"
                                  f"&exclude_rated={str(exclude).lower()}", headers=reader).json()
                assert body["source"] == ("fold_in" if user == "late" else "model")
                assert [(i["item"], i["score"], i["expected_rating"]) for i in body["items"]] == \
                    [(by_index[i], score, mean) for i, score, mean in expected], (name, user, n, offset, exclude)


def _stored_users(database, version_id: int) -> list[int]:
    with database.session_factory() as session:
        return [int(u) for u in session.get(ModelVersion, version_id).user_index]


def _user_id(database, user: str) -> int:
    from sqlalchemy import text

    with database.engine.connect() as conn:
        return conn.execute(text("SELECT id FROM users WHERE external_id = :u"), {"u": user}).scalar_one()


def test_the_planted_taste_shows(client, reader, trained):
    """Group-0 users (even numbers) love the a-items: most of their top-4 unrated items are a-items."""
    hits = total = 0
    for user in ("u000", "u002", "u004", "u006", "u008", "u010"):
        items = client.get(f"/v1/users/{user}/recommendations?n=4", headers=reader).json()["items"]
        hits += sum(i["item"].startswith("a") for i in items)
        total += len(items)
    assert hits / total >= 0.75, (hits, total)


def test_fold_in_and_popularity(database, client, admin, reader, trained):
    rows, version = trained
    model, item_index = _stored_model(database, version.id)
    # A user who arrived after training: scored from their ratings (fold-in), same as the model computes.
    client.post("/v1/ratings/batch", json={"ratings": [{"user": "late", "item": "b01", "rating": 5},
                                                       {"user": "late", "item": "a01", "rating": 1}]}, headers=admin)
    body = client.get("/v1/users/late/recommendations?n=3", headers=reader).json()
    assert body["source"] == "fold_in" and len(body["items"]) == 3
    item_idx, ratings = _known(database, item_index, "late")
    expected = model.recommend(item_idx, ratings, n=3)
    assert [round(i["score"], 5) for i in body["items"]] == [round(s, 5) for _, s, _ in expected]
    # A user with no ratings: the most-rated items, labelled.
    client.post("/v1/users", json={"id": "newbie"}, headers=admin)
    body = client.get("/v1/users/newbie/recommendations?n=3", headers=reader).json()
    assert body["source"] == "popularity"
    popular = model.popular_items(3)
    by_index = {item_index[internal]: name for internal, name in _item_names(database).items()}
    assert [(i["item"], i["score"]) for i in body["items"]] == [(by_index[i], c) for i, c in popular]
    # Popularity = ratings in the training part of the snapshot: non-increasing, and at most the full counts.
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    full = {}
    for _, item, _ in rows:
        full[item] = full.get(item, 0) + 1
    assert all(i["score"] <= full[i["item"]] for i in body["items"])


def test_ad_hoc_recommendations(database, client, reader, trained):
    rows, version = trained
    model, item_index = _stored_model(database, version.id)
    names = {v: k for k, v in _item_names(database).items()}
    request = {"ratings": [{"item": "a00", "rating": 5}, {"item": "b00", "rating": 1}], "n": 4}
    body = client.post("/v1/recommendations", json=request, headers=reader).json()
    assert body["source"] == "fold_in" and body["user"] is None
    expected = model.recommend(torch.tensor([item_index[names["a00"]], item_index[names["b00"]]]),
                               torch.tensor([5, 1]), n=4)
    assert [round(i["score"], 5) for i in body["items"]] == [round(s, 5) for _, s, _ in expected]
    assert {"a00", "b00"}.isdisjoint(i["item"] for i in body["items"])
    empty = client.post("/v1/recommendations", json={"n": 2}, headers=reader).json()
    assert empty["source"] == "popularity" and len(empty["items"]) == 2
    _error(client.post("/v1/recommendations", json={"ratings": [{"item": "zz", "rating": 3}]}, headers=reader), 404)
    _error(client.post("/v1/recommendations", json={"ratings": [{"item": "a00", "rating": 9}]}, headers=reader), 422)
    _error(client.post("/v1/recommendations", json={"ratings": [{"item": "a00", "rating": 3}] * 2}, headers=reader), 422)
    _error(client.post("/v1/recommendations", json={"n": 0}, headers=reader), 422)
    _error(client.post("/v1/recommendations", json={"n": 2, "model": "ghost"}, headers=reader), 404)
    _error(client.post("/v1/recommendations", json={"n": 2}), 401)


def test_recommendation_errors(client, admin, reader, trained):
    _error(client.get("/v1/users/nobody/recommendations", headers=reader), 404)
    _error(client.get("/v1/users/u000/recommendations?model=ghost", headers=reader), 404)
    _error(client.get("/v1/users/u000/recommendations?n=0", headers=reader), 422)
    _error(client.get("/v1/users/u000/recommendations?n=abc", headers=reader), 422)
    _error(client.get("/v1/users/u000/recommendations?n=100000", headers=reader), 422)
    _error(client.get("/v1/users/u000/recommendations?offset=-2", headers=reader), 422)
    _error(client.get("/v1/users/u000/recommendations"), 401)
    _error(client.get("/v1/users/u000/recommendations", headers={"X-API-Key": "wrong"}), 401)
    client.post("/v1/models", json={"name": "untrained", "hyperparameters": {}}, headers=admin)
    error = _error(client.get("/v1/users/u000/recommendations?model=untrained", headers=reader), 404)
    assert "no active version" in error["message"]


def test_no_model_at_all(client, admin, reader):
    client.post("/v1/users", json={"id": "u"}, headers=admin)
    error = _error(client.get("/v1/users/u/recommendations", headers=reader), 404)
    assert error["code"] == "no_active_model"


def test_predictions(database, client, reader, trained):
    rows, version = trained
    model, item_index = _stored_model(database, version.id)
    names = {v: k for k, v in _item_names(database).items()}
    body = client.get("/v1/users/u001/predictions?items=a03,b03,a00", headers=reader).json()
    assert body["source"] == "model" and [p["item"] for p in body["predictions"]] == ["a03", "b03", "a00"]
    item_idx, ratings = _known(database, item_index, "u001")
    exact = model.predict_proba(item_idx, ratings, items=[item_index[names[i]] for i in ("a03", "b03", "a00")])
    for got, row in zip(body["predictions"], exact, strict=True):
        assert len(got["probabilities"]) == 5 and abs(sum(got["probabilities"]) - 1) < 1e-6
        assert max(abs(a - float(b)) for a, b in zip(got["probabilities"], row, strict=True)) < 1e-6
        assert abs(got["expected_rating"] - sum((k + 1) * p for k, p in enumerate(got["probabilities"]))) < 1e-9
    ad_hoc = client.post("/v1/predictions", json={"items": ["a03"], "ratings": [{"item": "b00", "rating": 5}]},
                         headers=reader).json()
    assert ad_hoc["source"] == "fold_in" and ad_hoc["predictions"][0]["known_to_model"]
    _error(client.get("/v1/users/u001/predictions?items=zzz", headers=reader), 404)
    _error(client.get("/v1/users/u001/predictions?items=", headers=reader), 422)
    _error(client.get("/v1/users/u001/predictions", headers=reader), 422)
    _error(client.get("/v1/users/ghost/predictions?items=a00", headers=reader), 404)
    _error(client.post("/v1/predictions", json={"items": []}, headers=reader), 422)
    _error(client.get("/v1/users/u001/predictions?items=a00"), 401)


def test_item_unknown_to_the_model_gets_the_prior(client, admin, reader, trained):
    client.post("/v1/items", json={"id": "brand-new"}, headers=admin)
    body = client.get("/v1/users/u001/predictions?items=brand-new", headers=reader).json()
    assert body["predictions"][0]["known_to_model"] is False
    assert abs(sum(body["predictions"][0]["probabilities"]) - 1) < 1e-9


def test_reconstructions(database, client, reader, trained):
    rows, version = trained
    model, item_index = _stored_model(database, version.id)
    names = {v: k for k, v in _item_names(database).items()}
    request = {"items": ["a05", "b05", "a06"], "steps": 3, "samples": 4, "seed": 11}
    body = client.post("/v1/users/u002/reconstructions", json=request, headers=reader).json()
    assert body["steps"] == 3 and body["seed"] == 11 and len(body["samples"]) == 4 and body["ignored_items"] == []
    item_idx, ratings = _known(database, item_index, "u002")
    samples, free_energy = model.reconstruct(item_idx, ratings, items=[item_index[names[i]] for i in request["items"]],
                                             steps=3, num_samples=4, seed=11)
    for s, got in enumerate(body["samples"]):
        assert got["ratings"] == {item: int(samples[s, j]) for j, item in enumerate(request["items"])}
        assert abs(got["free_energy"] - float(free_energy[s])) < 1e-4
    again = client.post("/v1/users/u002/reconstructions", json=request, headers=reader).json()
    assert again["samples"] == body["samples"]  # same seed, same samples
    ad_hoc = client.post("/v1/reconstructions", json={**request, "ratings": [{"item": "a00", "rating": 5}]},
                         headers=reader).json()
    assert ad_hoc["user"] is None and len(ad_hoc["samples"]) == 4
    _error(client.post("/v1/users/u002/reconstructions", json={**request, "samples": 0}, headers=reader), 422)
    _error(client.post("/v1/users/u002/reconstructions", json={**request, "samples": 101}, headers=reader), 422)
    _error(client.post("/v1/users/u002/reconstructions", json={**request, "steps": 0}, headers=reader), 422)
    _error(client.post("/v1/users/u002/reconstructions", json={**request, "items": []}, headers=reader), 422)
    _error(client.post("/v1/users/u002/reconstructions", json={**request, "items": ["nope"]}, headers=reader), 404)
    _error(client.post("/v1/users/ghost/reconstructions", json=request, headers=reader), 404)
    _error(client.post("/v1/users/u002/reconstructions", json={**request, "ratings": [{"item": "a00", "rating": 5}]},
                       headers=reader), 422)
    _error(client.post("/v1/users/u002/reconstructions", json=request), 401)


def test_item_based_model_serves_known_and_folded_in_users(database, client, admin, reader, trained):
    define_and_train(database, "items", orientation="item")
    known = client.get("/v1/users/u003/recommendations?model=items&n=3", headers=reader).json()
    assert known["source"] == "model" and len(known["items"]) == 3
    client.post("/v1/ratings/batch", json={"ratings": [{"user": "fresh", "item": "a01", "rating": 5}]}, headers=admin)
    folded = client.get("/v1/users/fresh/recommendations?model=items&n=3", headers=reader).json()
    assert folded["source"] == "fold_in" and len(folded["items"]) == 3


def test_unloadable_artifact_is_a_503_not_a_500(database, client, reader, trained):
    rows, version = trained
    with database.engine.begin() as conn:
        from sqlalchemy import text

        conn.execute(text("UPDATE model_versions SET artifact = :junk WHERE id = :id"), {"junk": b"not a model", "id": version.id})
    error = _error(client.get("/v1/users/u000/recommendations", headers=reader), 503)
    assert error["code"] == "model_unavailable" and "cannot be loaded" in error["message"]
    assert client.get("/health/ready").status_code == 503


def test_item_names_are_cached_for_their_max_age(database, client, reader, trained):
    from sqlalchemy import text

    first = client.get("/v1/users/u000/recommendations?n=3", headers=reader).json()["items"]
    loaded = client.app.state.model_cache.get("tiny")
    loaded.names_max_age = 3600.0  # as a served process with a long refresh interval
    first = client.get("/v1/users/u000/recommendations?n=3", headers=reader).json()["items"]
    with database.engine.begin() as conn:
        conn.execute(text("UPDATE items SET title = 'renamed' WHERE external_id = :e"), {"e": first[0]["item"]})
    cached = client.get("/v1/users/u000/recommendations?n=3", headers=reader).json()["items"]
    assert cached == first  # named from the cache, no query
    loaded.names_max_age = 0.0  # the entry has aged: the query runs again
    fresh = client.get("/v1/users/u000/recommendations?n=3", headers=reader).json()["items"]
    assert fresh[0]["title"] == "renamed" and [i["item"] for i in fresh] == [i["item"] for i in first]
