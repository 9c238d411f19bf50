"""The dashboard's routes: thin handlers that read through ``queries`` / ``inspect`` and act through the
service's own functions (the same ones the REST API calls), rendering Jinja2 templates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from service.admin import charts, queries, views
from service.admin.auth import check_csrf, csrf_token, current_admin, log_in, log_out
from service.admin.deps import get_db
from service.auth.models import ApiKey

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


def render(request: Request, name: str, *, admin: ApiKey | None, section: str = "", status: int = 200,
           **context: Any) -> HTMLResponse:
    flashes = request.session.pop("flashes", []) if "session" in request.scope else []
    return templates.TemplateResponse(request, name, {
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

@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "") -> HTMLResponse:
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
    data = queries.overview_cache.get(db)
    histogram = charts.bar([str(v) for v, _ in data.histogram], [n for _, n in data.histogram],
                           label="ratings", x_title="rating", y_title="ratings")
    per_day = charts.lines([d.isoformat() for d, _ in data.per_day], {"ratings per day": [n for _, n in data.per_day]},
                           x_title="day", y_title="ratings", points=len(data.per_day) < 60)
    return render(request, "overview.html", admin=admin, section="Overview", data=data,
                  histogram=histogram, per_day=per_day)
