"""Ratings: one upsert, atomic JSON batches, streamed atomic CSV uploads naming the failing line, a user's
ratings, deletes (a user's delete removes their ratings); auth and bad input."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from test_catalog import _error

from service.ratings.models import Rating


def _count(database) -> int:
    with database.session_factory() as session:
        return session.scalar(select(func.count()).select_from(Rating))


def test_upsert_one_and_read_back(client, admin):
    put = client.put("/v1/users/u1/ratings/i1", json={"rating": 4, "timestamp": "2020-01-02T03:04:05Z"}, headers=admin)
    assert put.status_code == 200 and put.json()["rating"] == 4
    again = client.put("/v1/users/u1/ratings/i1", json={"rating": 2}, headers=admin)
    assert again.status_code == 200
    assert client.post("/v1/ratings", json={"user": "u1", "item": "i2", "rating": 5}, headers=admin).status_code == 200
    page = client.get("/v1/users/u1/ratings", headers=admin).json()
    assert page["total"] == 2
    assert [(r["item"], r["rating"]) for r in page["data"]] == [("i1", 2), ("i2", 5)]
    # The user and the items were created on the way.
    assert client.get("/v1/items/i2", headers=admin).status_code == 200


def test_upsert_keeps_the_given_timestamp(client, admin):
    client.put("/v1/users/u1/ratings/i1", json={"rating": 3, "timestamp": "2020-01-02T03:04:05+00:00"}, headers=admin)
    row = client.get("/v1/users/u1/ratings", headers=admin).json()["data"][0]
    assert datetime.fromisoformat(row["timestamp"]) == datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_single_rating_bad_input(client, admin):
    _error(client.put("/v1/users/u1/ratings/i1", json={"rating": 6}, headers=admin), 422)
    _error(client.put("/v1/users/u1/ratings/i1", json={"rating": 0}, headers=admin), 422)
    error = _error(client.put("/v1/users/u1/ratings/i1", json={"rating": "five"}, headers=admin), 422)
    assert error["details"][0]["loc"] == ["body", "rating"]
    _error(client.put("/v1/users/u1/ratings/i1", json={"rating": 3, "timestamp": "yesterday"}, headers=admin), 422)
    _error(client.put("/v1/users/u1/ratings/i1", json={"rating": 3, "timestamp": "2020-01-01T00:00:00"}, headers=admin), 422)
    _error(client.put("/v1/users/u1/ratings/i1?create_missing=false", json={"rating": 3}, headers=admin), 404)


def test_json_batch_is_atomic(client, admin, database):
    rows = [{"user": "u1", "item": "i1", "rating": 5}, {"user": "u2", "item": "i1", "rating": 3},
            {"user": "u2", "item": "i1", "rating": 1}]
    result = client.post("/v1/ratings/batch", json={"ratings": rows}, headers=admin)
    assert result.status_code == 200
    # (u2, i1) twice: the last one wins.
    assert result.json() == {"rows": 3, "ratings_written": 2, "users_created": 2, "items_created": 1}
    assert client.get("/v1/users/u2/ratings", headers=admin).json()["data"][0]["rating"] == 1
    before = _count(database)
    bad = rows[:2] + [{"user": "u3", "item": "i9", "rating": 4}, {"user": "u3", "item": "i8", "rating": 9}]
    error = _error(client.post("/v1/ratings/batch", json={"ratings": bad}, headers=admin), 422)
    assert error["details"][0]["loc"] == ["body", "ratings", 3, "rating"]
    assert _count(database) == before
    _error(client.get("/v1/users/u3", headers=admin), 404)  # nothing of the bad batch left behind
    error = _error(client.post("/v1/ratings/batch", json={"ratings": [{"user": "u1", "item": "i1"}]}, headers=admin), 422)
    assert error["details"][0]["loc"] == ["body", "ratings", 0, "rating"]
    _error(client.post("/v1/ratings/batch", json={"ratings": [rows[0]] * 51}, headers=admin), 413)
    # create_missing=false: an unknown user is a 404 naming the row, and nothing is written.
    error = _error(client.post("/v1/ratings/batch?create_missing=false",
                               json={"ratings": [rows[0], {"user": "ghost", "item": "i1", "rating": 2}]}, headers=admin), 404)
    assert "ghost" in error["message"]
    assert _count(database) == before


def test_csv_upload(client, admin, database):
    body = b"user,item,rating,timestamp\nu1,i1,4,978300760\nu1,i2,5\r\n\"u,2\",i1,3,2001-01-01T00:00:00Z\n"
    result = client.post("/v1/ratings/csv", content=body, headers={**admin, "Content-Type": "text/csv"})
    assert result.status_code == 200, result.text
    assert result.json() == {"rows": 3, "ratings_written": 3, "users_created": 2, "items_created": 2}
    first = client.get("/v1/users/u1/ratings", headers=admin).json()["data"][0]
    assert datetime.fromisoformat(first["timestamp"]) == datetime.fromtimestamp(978300760, UTC)
    assert client.get("/v1/users/u,2/ratings", headers=admin).json()["total"] == 1


def test_csv_upload_is_atomic_and_names_the_line(client, admin, database):
    before = _count(database)
    lines = [b"user,item,rating"] + [f"n{i},i{i},3".encode() for i in range(200)] + [b"n999,i1,seven"]
    error = _error(client.post("/v1/ratings/csv", content=b"\n".join(lines), headers=admin), 422)
    assert error["message"].startswith("line 202:") and error["details"][0]["loc"] == ["body", "line", 202]
    assert _count(database) == before
    _error(client.get("/v1/users/n0", headers=admin), 404)
    for body, line in [(b"u1,i1\n", 1), (b"u1,i1,4\nu2,i2,4,notatime\n", 2), (b"u1,i1,4\n,i2,4\n", 2),
                       (b"u1,i1,4\nu1,i1,4,5,6\n", 2), (b"u1,i1,\xff\n", 1), (b"u1,i1,4.5\n", 1)]:
        error = _error(client.post("/v1/ratings/csv", content=body, headers=admin), 422)
        assert error["message"].startswith(f"line {line}:"), (body, error)
    _error(client.post("/v1/ratings/csv", content=b"", headers=admin), 422)
    _error(client.post("/v1/ratings/csv", content=b"user,item,rating\n", headers=admin), 422)
    assert _count(database) == before


def test_csv_upload_too_large(client, admin, database):
    body = b"".join(f"big{i},item{i},3\n".encode() for i in range(400))  # > 4096 bytes (the tests' limit)
    _error(client.post("/v1/ratings/csv", content=body, headers=admin), 413)

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for i in range(0, len(body), 1000):
            yield body[i:i + 1000]

    _error(client.post("/v1/ratings/csv", content=chunks(), headers=admin), 413)
    assert _count(database) == 0


def test_delete_rating_and_user_cascade(client, admin, database):
    client.post("/v1/ratings/batch", json={"ratings": [{"user": "u1", "item": "i1", "rating": 5},
                                                        {"user": "u1", "item": "i2", "rating": 4},
                                                        {"user": "u2", "item": "i1", "rating": 2}]}, headers=admin)
    assert client.delete("/v1/users/u1/ratings/i1", headers=admin).status_code == 204
    _error(client.delete("/v1/users/u1/ratings/i1", headers=admin), 404)
    _error(client.delete("/v1/users/nobody/ratings/i1", headers=admin), 404)
    assert client.delete("/v1/users/u1", headers=admin).status_code == 204
    assert _count(database) == 1
    _error(client.get("/v1/users/u1/ratings", headers=admin), 404)
    assert client.delete("/v1/items/i1", headers=admin).status_code == 204
    assert _count(database) == 0


def test_ratings_auth(client, admin, reader):
    _error(client.put("/v1/users/u1/ratings/i1", json={"rating": 4}, headers=reader), 403)
    _error(client.put("/v1/users/u1/ratings/i1", json={"rating": 4}), 401)
    _error(client.post("/v1/ratings/batch", json={"ratings": [{"user": "u", "item": "i", "rating": 4}]}, headers=reader), 403)
    _error(client.post("/v1/ratings/csv", content=b"u,i,4\n", headers=reader), 403)
    _error(client.post("/v1/ratings/csv", content=b"u,i,4\n"), 401)
    client.put("/v1/users/u1/ratings/i1", json={"rating": 4}, headers=admin)
    assert client.get("/v1/users/u1/ratings", headers=reader).status_code == 200
    _error(client.get("/v1/users/u1/ratings"), 401)
    _error(client.delete("/v1/users/u1/ratings/i1", headers=reader), 403)


def test_oversized_json_body(client, admin, database):
    rows = [{"user": f"user-with-a-long-name-{i}", "item": f"item-{i}", "rating": 3} for i in range(49)]
    body = {"ratings": rows, "padding": "x" * 5000}  # over the tests' 4096-byte limit before any validation
    _error(client.post("/v1/ratings/batch", json=body, headers=admin), 413)
    assert _count(database) == 0
