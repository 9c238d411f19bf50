"""Users and items: create (single and batch), read, list with pagination, delete; auth and bad input."""

from __future__ import annotations

import pytest


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["status"] == status and body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize("kind", ["users", "items"])
def test_create_read_list_delete(client, admin, kind):
    extra = {"title": "The Film"} if kind == "items" else {}
    created = client.post(f"/v1/{kind}", json={"id": "x1", "attributes": {"a": 1}, **extra}, headers=admin)
    assert created.status_code == 201
    assert created.json()["id"] == "x1" and created.json()["attributes"] == {"a": 1}
    batch = client.post(f"/v1/{kind}/batch", json={kind: [{"id": f"y{i}"} for i in range(5)]}, headers=admin)
    assert batch.status_code == 201 and batch.json() == {"created": 5}
    got = client.get(f"/v1/{kind}/x1", headers=admin).json()
    assert got["id"] == "x1" and (kind == "users" or got["title"] == "The Film")
    page = client.get(f"/v1/{kind}?limit=4&offset=0", headers=admin).json()
    assert page["total"] == 6 and [r["id"] for r in page["data"]] == ["x1", "y0", "y1", "y2"]
    assert page["next_offset"] == 4
    last = client.get(f"/v1/{kind}?limit=4&offset=4", headers=admin).json()
    assert [r["id"] for r in last["data"]] == ["y3", "y4"] and last["next_offset"] is None
    assert client.delete(f"/v1/{kind}/x1", headers=admin).status_code == 204
    _error(client.get(f"/v1/{kind}/x1", headers=admin), 404)
    _error(client.delete(f"/v1/{kind}/x1", headers=admin), 404)


@pytest.mark.parametrize("kind", ["users", "items"])
def test_conflicts_and_atomic_batch(client, admin, kind):
    assert client.post(f"/v1/{kind}", json={"id": "dup"}, headers=admin).status_code == 201
    error = _error(client.post(f"/v1/{kind}", json={"id": "dup"}, headers=admin), 409)
    assert "dup" in error["message"]
    # One existing id in a batch: 409 and none of the batch is created.
    _error(client.post(f"/v1/{kind}/batch", json={kind: [{"id": "new1"}, {"id": "dup"}]}, headers=admin), 409)
    _error(client.get(f"/v1/{kind}/new1", headers=admin), 404)
    # The same id twice in one batch: 422 naming both rows.
    error = _error(client.post(f"/v1/{kind}/batch", json={kind: [{"id": "z"}, {"id": "z"}]}, headers=admin), 422)
    assert "rows 0 and 1" in error["message"]


@pytest.mark.parametrize("kind", ["users", "items"])
def test_bad_input(client, admin, kind):
    error = _error(client.post(f"/v1/{kind}", json={"id": ""}, headers=admin), 422)
    assert error["details"][0]["loc"] == ["body", "id"]
    _error(client.post(f"/v1/{kind}", json={"id": "a/b"}, headers=admin), 422)
    error = _error(client.post(f"/v1/{kind}", json={"id": "ok", "surprise": 1}, headers=admin), 422)
    assert error["details"][0]["loc"] == ["body", "surprise"]
    _error(client.post(f"/v1/{kind}", content=b"{not json", headers={**admin, "Content-Type": "application/json"}), 422)
    _error(client.post(f"/v1/{kind}/batch", json={kind: []}, headers=admin), 422)
    # More rows than MAX_BATCH_ROWS (50 in the tests): 413.
    _error(client.post(f"/v1/{kind}/batch", json={kind: [{"id": f"r{i}"} for i in range(51)]}, headers=admin), 413)
    _error(client.get(f"/v1/{kind}?limit=0", headers=admin), 422)
    _error(client.get(f"/v1/{kind}?limit=101", headers=admin), 422)
    _error(client.get(f"/v1/{kind}?offset=-1", headers=admin), 422)


@pytest.mark.parametrize("kind", ["users", "items"])
def test_auth(client, admin, reader, kind):
    _error(client.get(f"/v1/{kind}"), 401)
    _error(client.get(f"/v1/{kind}", headers={"X-API-Key": "rbm_not-a-key"}), 401)
    assert client.get(f"/v1/{kind}", headers=reader).status_code == 200
    _error(client.post(f"/v1/{kind}", json={"id": "r"}, headers=reader), 403)
    _error(client.post(f"/v1/{kind}/batch", json={kind: [{"id": "r"}]}, headers=reader), 403)
    assert client.post(f"/v1/{kind}", json={"id": "r"}, headers=admin).status_code == 201
    _error(client.delete(f"/v1/{kind}/r", headers=reader), 403)
    _error(client.delete(f"/v1/{kind}/r"), 401)


def test_unknown_route_and_method_use_the_error_shape(client, admin):
    _error(client.get("/v1/nothing-here", headers=admin), 404)
    _error(client.put("/v1/users", headers=admin), 405)
