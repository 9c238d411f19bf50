"""Liveness, readiness (database, migrations at head, active model loaded) and Prometheus metrics."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app


def test_live_ready_metrics(client, reader, trained):
    assert client.get("/health/live").json() == {"status": "ok"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["database"] == "ok" and checks["migrations"] == "ok" and checks["models"] == {"tiny": "version 1 loaded"}
    client.get("/v1/users/u000/recommendations", headers=reader)
    client.get("/v1/users/nobody/recommendations", headers=reader)
    text = client.get("/metrics").text
    assert 'rbmrec_http_requests_total{method="GET",route="/v1/users/{user_id}/recommendations",status="200"} 1.0' in text
    assert 'rbmrec_http_requests_total{method="GET",route="/v1/users/{user_id}/recommendations",status="404"} 1.0' in text
    assert 'rbmrec_model_version_in_use{model="tiny"} 1.0' in text
    assert "rbmrec_http_request_duration_seconds_bucket" in text


def test_ready_without_a_model(client):
    body = client.get("/health/ready").json()
    assert body["status"] == "ready" and body["checks"]["models"] == {"status": "no active model yet"}


def test_not_ready_when_the_database_is_unreachable():
    settings = Settings(database_url="postgresql+psycopg://postgres@127.0.0.1:1/none", check_migrations=False)
    with TestClient(create_app(settings)) as client:
        response = client.get("/health/ready")
        assert response.status_code == 503 and response.json()["checks"]["database"].startswith("unreachable")
        assert client.get("/health/live").status_code == 200
        # A request that needs the database gets a 503 in the error shape, not a 500.
        failed = client.get("/v1/users", headers={"X-API-Key": "x"})
        assert failed.status_code == 503 and failed.json()["error"]["code"] == "unavailable"


def test_refuses_to_start_on_an_unmigrated_database(tmp_path):
    import pytest

    from service.main import SchemaNotReady

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    with pytest.raises(SchemaNotReady, match="rbmrec db upgrade"):
        with TestClient(create_app(settings)):
            pass
