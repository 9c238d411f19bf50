"""The dashboard's routes: thin handlers that read through ``queries`` / ``inspect`` and act through the
service's own functions (the same ones the REST API calls), rendering Jinja2 templates."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy.orm import Session

from service.admin import charts, queries, views
from service.admin.auth import check_csrf, csrf_token, current_admin, log_in, log_out
from service.admin.deps import get_db
from service.auth import service as auth_service
from service.auth.models import ApiKey
from service.errors import ApiError, not_found
from service.models import repository as model_repository
from service.models import service as model_service
from service.models.models import ModelDefinition, ModelVersion
from service.models.schemas import DefinitionPatch
from service.serving import service as serving

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["fmt"] = views.fmt
templates.env.filters["chart"] = charts.to_json
templates.env.globals["VERSION_COLUMNS"] = views.VERSION_COLUMNS
templates.env.globals["version_row"] = views.version_row
templates.env.globals["flat_metrics"] = views.flat_metrics

router = APIRouter()
Db = Annotated[Session, Depends(get_db)]
Admin = Annotated[ApiKey, Depends(current_admin)]


def base_path(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def render(request: Request, template: str, /, *, admin: ApiKey | None, section: str = "", status: int = 200,
           **context: Any) -> HTMLResponse:
    flashes = request.session.pop("flashes", []) if "session" in request.scope else []
    return templates.TemplateResponse(request, template, {
        "base": base_path(request), "csrf": csrf_token(request) if "session" in request.scope else "",
        "admin": admin, "section": section, "flashes": flashes, "title": context.pop("title", section), **context,
    }, status_code=status)


def render_error(request: Request, status: int, title: str, message: str) -> HTMLResponse:
    return render(request, "error.html", admin=None, status=status, title=title, message=message)


def flash(request: Request, text: str, kind: str = "") -> None:
    request.session.setdefault("flashes", []).append([kind, text])


def redirect(request: Request, path: str) -> RedirectResponse:
    return RedirectResponse(base_path(request) + path, status_code=303)


def _safe_next(request: Request, target: str) -> str:
    # Only paths inside the dashboard: never an absolute URL (open redirect).
    base = base_path(request)
    if target.startswith(base + "/") and not target.startswith("//") and "://" not in target:
        return target
    return base + "/"


# ---- login --------------------------------------------------------------------------------------

def _warm_model(state: Any) -> None:
    """Load the most recently activated model into the service's model cache, once per app, in the
    background (the first user page would otherwise wait for it)."""
    warmed: threading.Event = state.admin_model_warmed
    if warmed.is_set() or getattr(state, "model_cache", None) is None:
        return
    warmed.set()

    def run() -> None:
        try:
            state.model_cache.get(None)
        except Exception:  # noqa: BLE001 - no active model yet, or a broken one: the pages report it
            warmed.clear()

    threading.Thread(target=run, name="admin-model-warm", daemon=True).start()


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "") -> HTMLResponse:
    # Start aggregating the data overview and loading the active model while the admin types the key.
    request.app.state.admin_overview.warm(request.app.state.db.session_factory)
    _warm_model(request.app.state)
    return render(request, "login.html", admin=None, title="Log in", next=next, error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    raw_key = str(form.get("api_key", "")).strip()
    target = _safe_next(request, str(form.get("next", "")))
    state = request.app.state
    principal = state.key_cache.lookup(state.db.session_factory, raw_key) if raw_key else None
    if principal is None:
        return render(request, "login.html", admin=None, status=401, title="Log in", next=target,
                      error="Unknown or revoked API key.")
    if not principal.is_admin:
        return render(request, "login.html", admin=None, status=403, title="Log in", next=target,
                      error=f"Key {principal.name!r} has role {principal.role!r}: the dashboard needs an admin key.")
    log_in(request, principal.key_id)
    return RedirectResponse(target, status_code=303)


@router.post("/logout")
async def logout(request: Request) -> Response:
    form = await request.form()
    check_csrf(request, form)
    log_out(request)
    return redirect(request, "/login")


# ---- data overview ------------------------------------------------------------------------------

@router.get("/", response_class=HTMLResponse)
def overview(request: Request, admin: Admin, db: Db) -> HTMLResponse:
    data, refreshing = request.app.state.admin_overview.get(db, request.app.state.db.session_factory)
    histogram = charts.bar([str(v) for v, _ in data.histogram], [n for _, n in data.histogram],
                           label="ratings", x_title="rating", y_title="ratings")
    per_day = charts.lines([d.isoformat() for d, _ in data.per_day], {"ratings per day": [n for _, n in data.per_day]},
                           x_title="day", y_title="ratings", points=len(data.per_day) < 60)
    return render(request, "overview.html", admin=admin, section="Overview", data=data, refreshing=refreshing,
                  age=time.time() - data.computed_at, histogram=histogram, per_day=per_day)


# ---- models and versions ------------------------------------------------------------------------

@router.get("/models", response_class=HTMLResponse)
def models(request: Request, admin: Admin, db: Db) -> HTMLResponse:
    return render(request, "models.html", admin=admin, section="Models",
                  definitions=model_repository.definitions(db), counts=queries.version_counts(db))


@router.get("/models/{name}", response_class=HTMLResponse)
def model(name: str, request: Request, admin: Admin, db: Db) -> HTMLResponse:
    definition = model_service.get_definition(db, name=name)
    found = model_repository.versions(db, definition.id)
    active = next((v for v in found if v.is_active), None)
    metric_chart = None
    ordered = sorted(found, key=lambda v: v.version)
    series = {header: [views.pick(v.metrics, names) for v in ordered] for header, names in views.VERSION_COLUMNS[:2]}
    series["baseline (item mean) RMSE"] = [views.pick(v.metrics, ("baseline_item_mean_rmse",)) for v in ordered]
    series = {k: s for k, s in series.items() if any(x is not None for x in s)}
    if series and len(ordered) >= 1:
        metric_chart = charts.lines([f"v{v.version}" for v in ordered], series, x_title="version")
    return render(request, "model.html", admin=admin, section="Models", title=name, d=definition, versions=found,
                  active=active, metric_chart=metric_chart, jobs=queries.jobs(db, definition_id=definition.id))


@router.post("/models/{name}/train")
async def train(name: str, request: Request, admin: Admin, db: Db) -> Response:
    check_csrf(request, await request.form())
    job = model_service.enqueue_job(db, name=name, trigger="manual")
    db.commit()
    flash(request, f"Training job #{job.id} queued for {name}; a worker will pick it up.")
    return redirect(request, f"/jobs/{job.id}")


@router.post("/models/{name}/schedule")
async def edit_schedule(name: str, request: Request, admin: Admin, db: Db) -> Response:
    form = await request.form()
    check_csrf(request, form)
    interval = str(form.get("interval_seconds", "")).strip()
    cron = str(form.get("cron", "")).strip()
    try:
        patch = DefinitionPatch(schedule_interval_seconds=int(interval) if interval else None,
                                schedule_cron=cron or None, trigger_new_ratings=form.get("trigger_new_ratings") == "1")
    except (ValueError, ValidationError) as exc:
        flash(request, f"Schedule not saved: {_first_error(exc)}", "error")
        return redirect(request, f"/models/{quote(name)}")
    try:
        model_service.update_definition(db, name=name, changes=patch.model_dump(exclude_unset=True))
    except ApiError as exc:
        if exc.status == 404:
            raise
        flash(request, f"Schedule not saved: {exc.message}", "error")
        return redirect(request, f"/models/{quote(name)}")
    flash(request, f"Schedule of {name} saved.")
    return redirect(request, f"/models/{quote(name)}")


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"{'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg', '')}"
    return str(exc)


def _version_and_name(db: Session, version_id: int) -> tuple[ModelVersion, ModelDefinition]:
    version = db.get(ModelVersion, version_id)
    if version is None:
        raise not_found("model version", version_id)
    return version, db.get(ModelDefinition, version.model_definition_id)


@router.get("/versions/{version_id}", response_class=HTMLResponse)
def version(version_id: int, request: Request, admin: Admin, db: Db) -> HTMLResponse:
    found, definition = _version_and_name(db, version_id)
    inside = request.app.state.admin_inside.get(db, found)
    history = (found.metrics or {}).get("history")
    curves = _curves(history if isinstance(history, list) else [])
    return render(request, "version.html", admin=admin, section="Models", title=f"{definition.name} v{found.version}",
                  v=found, name=definition.name, inside=inside, curves=curves)


@router.get("/versions/{version_id}/activate", response_class=HTMLResponse)
def confirm_activate(version_id: int, request: Request, admin: Admin, db: Db) -> HTMLResponse:
    found, definition = _version_and_name(db, version_id)
    active = next((v for v in model_repository.versions(db, definition.id) if v.is_active), None)
    question = (f"Serve version v{found.version} of {definition.name} from now on"
                + (f", replacing the active version v{active.version}?" if active else "?")
                + " Every API process switches to it within seconds.")
    return render(request, "confirm.html", admin=admin, section="Models", title=f"Activate {definition.name} "
                  f"v{found.version}", question=question, action=f"{base_path(request)}/versions/{version_id}/activate",
                  confirm_label=f"Activate v{found.version}", cancel_url=f"{base_path(request)}/models/{definition.name}")


@router.post("/versions/{version_id}/activate")
async def activate(version_id: int, request: Request, admin: Admin, db: Db) -> Response:
    form = await request.form()
    check_csrf(request, form)
    found, definition = _version_and_name(db, version_id)
    if form.get("confirm") != "yes":
        return redirect(request, f"/versions/{version_id}/activate")
    model_service.activate_version(db, definition_id=definition.id, version_id=found.id)
    db.commit()
    cache = getattr(request.app.state, "model_cache", None)
    if cache is not None:
        cache.invalidate()
    flash(request, f"{definition.name} v{found.version} is now active.")
    return redirect(request, f"/models/{quote(definition.name)}")


# ---- jobs ---------------------------------------------------------------------------------------

def _curves(epochs: list[dict[str, Any]]) -> dict[str, Any]:
    curves = views.job_curves(epochs)
    for group in curves["groups"]:
        group["chart"] = charts.lines(curves["epoch"], group["series"], x_title="epoch")
    return curves


def _signature(curves: dict[str, Any]) -> str:
    return "|".join(f"{g['key']}:{','.join(g['series'])}" for g in curves["groups"])


@router.get("/jobs", response_class=HTMLResponse)
def jobs(request: Request, admin: Admin, db: Db) -> HTMLResponse:
    return render(request, "jobs.html", admin=admin, section="Jobs", jobs=queries.jobs(db, limit=100))


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job(job_id: int, request: Request, admin: Admin, db: Db) -> HTMLResponse:
    found = queries.job(db, job_id)
    if found is None:
        raise not_found("job", job_id)
    job, name = found
    curves = _curves(job.metrics or [])
    duration = None
    if job.started_at and job.finished_at:
        duration = f"{(job.finished_at - job.started_at).total_seconds():.1f} s"
    return render(request, "job.html", admin=admin, section="Jobs", title=f"Job #{job.id}", job=job, name=name,
                  curves=curves, curves_signature=_signature(curves), duration=duration,
                  version_number=queries.version_number(db, job.model_version_id))


@router.get("/api/jobs/{job_id}")
def job_json(job_id: int, admin: Admin, db: Db) -> JSONResponse:
    found = queries.job(db, job_id)
    if found is None:
        raise not_found("job", job_id)
    job, _ = found
    curves = _curves(job.metrics or [])
    return JSONResponse({
        "id": job.id, "status": job.status, "progress": job.progress or 0.0,
        "percent": f"{(job.progress or 0.0) * 100:.0f}%", "epochs": len(job.metrics or []),
        "signature": _signature(curves),
        "curves": {"epoch": curves["epoch"], **{g["key"]: list(g["series"].values()) for g in curves["groups"]}},
    })


@router.get("/jobs/{job_id}/cancel", response_class=HTMLResponse)
def confirm_cancel(job_id: int, request: Request, admin: Admin, db: Db) -> HTMLResponse:
    found = queries.job(db, job_id)
    if found is None:
        raise not_found("job", job_id)
    job, name = found
    return render(request, "confirm.html", admin=admin, section="Jobs", title=f"Cancel job #{job_id}",
                  question=f"Cancel training job #{job_id} of {name} ({job.status})? The active version stays as it is.",
                  action=f"{base_path(request)}/jobs/{job_id}/cancel", confirm_label="Cancel the job",
                  cancel_url=f"{base_path(request)}/jobs/{job_id}")


@router.post("/jobs/{job_id}/cancel")
async def cancel(job_id: int, request: Request, admin: Admin, db: Db) -> Response:
    form = await request.form()
    check_csrf(request, form)
    if form.get("confirm") == "yes":
        model_service.cancel_job(db, job_id=job_id)
        flash(request, f"Job #{job_id}: cancellation requested.")
    return redirect(request, f"/jobs/{job_id}")


# ---- API keys -----------------------------------------------------------------------------------

@router.get("/keys", response_class=HTMLResponse)
def keys(request: Request, admin: Admin, db: Db) -> HTMLResponse:
    return render(request, "keys.html", admin=admin, section="API keys", keys=queries.api_keys(db), new_key=None)


@router.post("/keys", response_class=HTMLResponse)
async def create_key(request: Request, admin: Admin, db: Db) -> HTMLResponse:
    form = await request.form()
    check_csrf(request, form)
    name = str(form.get("name", "")).strip()[:200]
    if not name:
        flash(request, "A key needs a name.", "error")
        return render(request, "keys.html", admin=admin, section="API keys", keys=queries.api_keys(db), new_key=None)
    row, key = auth_service.create_api_key(db, name=name, role=str(form.get("role", "read")))
    db.commit()
    # Shown in this response only: never put into the (readable) session cookie or a redirect.
    return render(request, "keys.html", admin=admin, section="API keys", keys=queries.api_keys(db), new_key=key,
                  new_key_name=row.name, new_key_role=row.role)


# ---- users --------------------------------------------------------------------------------------

RECONSTRUCTED_ITEMS = 12
RECONSTRUCTION_SAMPLES = 4


@router.get("/users", response_class=HTMLResponse)
def users(request: Request, admin: Admin, db: Db, q: str = "") -> HTMLResponse:
    return render(request, "users.html", admin=admin, section="Users", q=q, users=queries.search_users(db, q.strip()))


def _reconstruction(db: Session, loaded: Any, known: Any) -> dict[str, Any] | None:
    """Hide up to RECONSTRUCTED_ITEMS of the user's rated items, clamp the rest, and sample the hidden ones
    with the serving code's reconstruction, so the samples can be set next to the real ratings."""
    count = int(known.item_idx.numel())
    if count == 0:
        return None
    hidden = min(RECONSTRUCTED_ITEMS, max(1, count // 2))
    keep = slice(0, count - hidden)
    hide = slice(count - hidden, count)
    clamped = serving.Known(known.user, known.item_idx[keep], known.ratings[keep], known.user_index, known.source)
    internal = [int(loaded.item_ids[int(i)]) for i in known.item_idx[hide]]
    names = queries.items_by_ids(db, internal)
    externals = [names[i][0] for i in internal]
    result = serving.reconstruct(db, loaded, clamped, items=externals, steps=1, samples=RECONSTRUCTION_SAMPLES, seed=0)
    rows = [{"item": external, "title": names[i][1], "real": int(real),
             "samples": [s["ratings"].get(external, "–") for s in result["samples"]]}
            for external, i, real in zip(externals, internal, known.ratings[hide].tolist(), strict=True)]
    return {"rows": rows, "samples": len(result["samples"]), "steps": result["steps"], "seed": result["seed"],
            "free_energies": [s["free_energy"] for s in result["samples"]]}


@router.get("/users/{external_id:path}", response_class=HTMLResponse)
def user(external_id: str, request: Request, admin: Admin, db: Db, model: str | None = None) -> HTMLResponse:
    found = queries.user_by_external_id(db, external_id)
    if found is None:
        raise not_found("user", external_id)
    context: dict[str, Any] = {"recommendations": [], "reconstruction": None, "model_name": model,
                               "version_number": None, "rec_source": None, "model_error": None}
    try:
        loaded = request.app.state.model_cache.get(model)
        context.update(model_name=loaded.name, version_number=loaded.version)
        known = serving.known_for_user(db, loaded, external_id)
        answer = serving.recommend(db, loaded, known, n=10, offset=0, exclude_rated=True)
        context["rec_source"] = answer["source"]
        context["recommendations"] = [{"item": r["item"], "title": r["title"], "score": r["score"],
                                       "expected": r["expected_rating"]} for r in answer["items"]]
        context["reconstruction"] = _reconstruction(db, loaded, known)
    except ApiError as exc:
        context["model_error"] = exc.message
    return render(request, "user.html", admin=admin, section="Users", title=external_id, user=found,
                  ratings=queries.user_ratings(db, found.id, limit=200),
                  rating_count=queries.user_rating_count(db, found.id),
                  definitions=model_repository.definitions(db), **context)
