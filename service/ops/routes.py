"""``/health/live``, ``/health/ready`` and ``/metrics`` (no key needed)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from service.migrate import current_revision, head_revision

router = APIRouter(tags=["operations"])


@router.get("/health/live")
def live():
    return {"status": "ok"}


@router.get("/health/ready")
def ready(request: Request):
    """Ready when the database answers, the schema is at the migrations' head, and the active model (if any)
    is loaded; 503 otherwise, with the failing check named."""
    state = request.app.state
    checks: dict[str, object] = {}
    ok = True
    try:
        with state.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
        revision, head = current_revision(state.db.engine), head_revision()
        checks["migrations"] = "ok" if revision == head else f"at {revision}, head is {head}"
        ok = revision == head
    except Exception as exc:  # any failure to reach the database means "not ready", never a 500
        checks["database"] = f"unreachable: {type(exc).__name__}"
        ok = False
    if ok:
        try:
            checks["models"] = state.model_cache.readiness()
        except Exception as exc:
            checks["models"] = f"failed to load: {exc}"
            ok = False
    return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics")
def metrics(request: Request):
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
