"""The ``rbmrec`` commands against PostgreSQL (import through COPY, all or nothing) and a smoke test of the
embedded SQLite mode end to end (migrate, import, key, train, serve a recommendation)."""

from __future__ import annotations

import json

from service_support import TINY, planted_ratings
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from service.cli import main
from service.config import Settings
from service.ratings.models import Rating


def _write_movielens(path, rows, timestamp=978300760):
    path.write_text("".join(f"{u}::{i}::{v}::{timestamp + n}\n" for n, (u, i, v) in enumerate(rows)))


def test_import_movielens_and_csv_into_postgresql(tmp_path, database, service_database_url, clean, capsys):
    rows = [("1", "10", 5), ("1", "20", 3), ("2", "10", 4), ("1", "10", 2)]  # (1, 10) twice: the last wins
    ratings = tmp_path / "ratings.dat"
    _write_movielens(ratings, rows)
    assert main(["--database-url", service_database_url, "import", str(ratings)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "movielens" and report["rows"] == 4 and report["ratings_written"] == 3
    assert report["users_created"] == 2 and report["items_created"] == 2
    with database.engine.connect() as conn:
        got = conn.execute(text("SELECT u.external_id, i.external_id, r.value, extract(epoch FROM r.rated_at) "
                                "FROM ratings r JOIN users u ON u.id = r.user_id JOIN items i ON i.id = r.item_id "
                                "ORDER BY 1, 2")).all()
    assert [(u, i, v, int(t)) for u, i, v, t in got] == [("1", "10", 2, 978300763), ("1", "20", 3, 978300761),
                                                        ("2", "10", 4, 978300762)]
    titles = tmp_path / "movies.dat"
    titles.write_text("10::Heat (1995)::Action|Crime\n20::Babe (1995)::Children's\n")
    csv = tmp_path / "more.csv"
    csv.write_text("user,item,rating,timestamp\n3,20,4,2001-01-01T00:00:00Z\n")
    assert main(["--database-url", service_database_url, "import", str(csv), "--titles", str(titles)]) == 0
    with database.engine.connect() as conn:
        assert conn.execute(text("SELECT title FROM items WHERE external_id = '10'")).scalar() == "Heat (1995)"
        assert conn.execute(text("SELECT count(*) FROM ratings")).scalar() == 4


def test_import_is_all_or_nothing(tmp_path, database, service_database_url, clean, capsys):
    bad = tmp_path / "bad.dat"
    bad.write_text("1::10::5::1\n1::11::4::2\n2::10::6::3\n")
    assert main(["--database-url", service_database_url, "import", str(bad)]) == 1
    assert "line 3" in capsys.readouterr().err
    with database.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Rating)) == 0
    tab = tmp_path / "u.data"
    tab.write_text("1\t10\t5\t1\n")
    assert main(["--database-url", service_database_url, "import", str(tab), "--no-create-missing"]) == 1
    assert "not found" in capsys.readouterr().err


def test_sqlite_smoke(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'embedded.sqlite3'}"
    assert main(["--database-url", url, "db", "upgrade"]) == 0
    data = tmp_path / "planted.csv"
    data.write_text("".join(f"{u},{i},{v}\n" for u, i, v in planted_ratings()))
    assert main(["--database-url", url, "import", str(data)]) == 0
    assert main(["--database-url", url, "create-api-key", "--role", "admin", "--name", "smoke"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    sets = [f"--set={k}={json.dumps(v)}" for k, v in TINY.items()]
    assert main(["--database-url", url, "train", "tiny", "--create", *sets]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["version"] == 1 and summary["active"] and summary["rmse"] < summary["baseline_global_mean_rmse"]

    from service.main import create_app

    with TestClient(create_app(Settings(database_url=url, model_refresh_seconds=0))) as client:
        headers = {"X-API-Key": key}
        assert client.get("/health/ready").json()["checks"]["models"] == {"tiny": "version 1 loaded"}
        body = client.get("/v1/users/u000/recommendations?n=3", headers=headers).json()
        assert body["source"] == "model" and len(body["items"]) == 3
        bad = [{"user": "s1", "item": "a00", "rating": 5}, {"user": "s1", "item": "a01", "rating": 0}]
        assert client.post("/v1/ratings/batch", json={"ratings": bad}, headers=headers).status_code == 422
        assert client.get("/v1/users/s1", headers=headers).status_code == 404
        good = client.post("/v1/ratings/csv", content=b"s1,a00,5\ns1,a00,4\n", headers=headers).json()
        assert good["ratings_written"] == 1
        rating = client.get("/v1/users/s1/ratings", headers=headers).json()["data"][0]
        assert rating["rating"] == 4 and rating["timestamp"].endswith("Z")
        assert client.get("/v1/users/s1/recommendations?n=2", headers=headers).json()["source"] == "fold_in"
        assert client.delete("/v1/users/s1", headers=headers).status_code == 204


def test_exclusive_bulk_import_keeps_the_constraints(tmp_path, database, service_database_url, clean, capsys):
    first = tmp_path / "first.dat"
    _write_movielens(first, [("1", "10", 5), ("2", "10", 4)])
    assert main(["--database-url", service_database_url, "import", str(first)]) == 0
    second = tmp_path / "second.dat"
    _write_movielens(second, [("1", "10", 1), ("3", "11", 2), ("3", "11", 3)])
    assert main(["--database-url", service_database_url, "import", str(second), "--exclusive"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["ratings_written"] == 2
    with database.engine.begin() as conn:
        names = set(conn.execute(text("SELECT conname FROM pg_constraint WHERE conrelid = 'ratings'::regclass")).scalars())
        assert names == {"pk_ratings", "fk_ratings_user_id_users", "fk_ratings_item_id_items"}
        indexes = set(conn.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = 'ratings'")).scalars())
        assert indexes == {"pk_ratings", "ix_ratings_item_id", "ix_ratings_ingested_at"}
        assert sorted(conn.execute(text("SELECT value FROM ratings")).scalars()) == [1, 3, 4]
        conn.execute(text("DELETE FROM users WHERE external_id = '3'"))  # the cascade is back in place
        assert conn.execute(text("SELECT count(*) FROM ratings")).scalar() == 2
    bad = tmp_path / "bad.dat"
    bad.write_text("9::10::5::1\n9::12::0::2\n")
    assert main(["--database-url", service_database_url, "import", str(bad), "--exclusive"]) == 1
    with database.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users WHERE external_id = '9'")).scalar() == 0


def test_copy_fast_path_chunks_and_names_lines(database, clean):
    """MovieLens bytes go to COPY in chunks; a bad line is named by its number in the file, whichever chunk."""
    import io

    import pytest

    from service.errors import ApiError
    from service.ratings.loader import RatingLoader

    good = b"".join(f"{u}::{i}::{1 + (u + i) % 5}::{u * 100 + i}\n".encode() for u in range(1, 6) for i in range(1, 5))
    with database.engine.begin() as conn:
        loader = RatingLoader(conn)
        loader.add_delimited_file(io.BytesIO(good + b"5::4::2::9"), separator=b"::", scale=5, chunk_bytes=16)
        result = loader.apply()
    assert result.rows == 21 and result.ratings_written == 20  # the last line repeats (5, 4): it wins
    with database.engine.connect() as conn:
        assert conn.execute(text("SELECT r.value FROM ratings r JOIN users u ON u.id = r.user_id JOIN items i "
                                 "ON i.id = r.item_id WHERE u.external_id = '5' AND i.external_id = '4'")).scalar() == 2
    for bad, line in [(b"1::1::x::1\n", 21), (b"1::1::1\n", 21), (b"1::1::7::1\n", 21), (b"\n", 21),
                      (b"1::a/b::3::1\n", 21)]:
        with database.engine.begin() as conn, pytest.raises(ApiError) as caught:
            RatingLoader(conn).add_delimited_file(io.BytesIO(good + bad), separator=b"::", scale=5, chunk_bytes=16)
        assert caught.value.status == 422 and caught.value.message.startswith(f"line {line}:"), caught.value.message
