"""The admin dashboard: server-rendered pages (Jinja2, Chart.js served locally) over the service's
own tables and service functions, mounted under ``/admin`` and open only to admin API keys."""

from __future__ import annotations

import logging
import os
import secrets
import threading
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from service.admin.auth import CsrfFailed, LoginRequired
from service.admin.internals import InsideCache
from service.admin.pages import render_error, router
from service.admin.queries import OverviewCache
from service.errors import ApiError

HERE = Path(__file__).parent
SESSION_COOKIE = "rbmrec_admin"
log = logging.getLogger(__name__)


def _session_secret() -> str:
    secret = os.environ.get("ADMIN_SESSION_SECRET", "")
    if not secret:
        # Fine for one process; with several API processes behind a balancer they must share it.
        log.warning("ADMIN_SESSION_SECRET is not set: admin sessions are valid in this process only")
        secret = secrets.token_urlsafe(32)
    return secret


def create_admin_app(parent: FastAPI, *, mount_path: str = "/admin") -> FastAPI:
    """The dashboard as an ASGI sub-app; mount it with ``parent.mount(mount_path, ...)``."""
    app = FastAPI(title="rbmrec admin", docs_url=None, redoc_url=None, openapi_url=None)
    # Share the parent's state (database, key cache, model cache) so the service's dependencies work here;
    # the dashboard's own caches live there too, one set per app (and so per database).
    app.state = parent.state
    parent.state.admin_overview = OverviewCache(ttl=30.0)
    parent.state.admin_inside = InsideCache(size=16)
    parent.state.admin_model_warmed = threading.Event()
    app.add_middleware(SessionMiddleware, secret_key=_session_secret(), session_cookie=SESSION_COOKIE,
                       max_age=8 * 3600, path=mount_path, same_site="strict",
                       https_only=os.environ.get("ADMIN_COOKIE_SECURE", "") in ("1", "true", "yes"))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(router)

    def _wants_json(request: Request) -> bool:
        return request.url.path.startswith(f"{request.scope.get('root_path', '')}/api/")

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        if _wants_json(request) or request.method != "GET":
            return JSONResponse({"error": {"status": 401, "code": "unauthorized", "message": "log in first",
                                           "details": []}}, status_code=401)
        base = request.scope.get("root_path", "")
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{base}/login?next={quote(target, safe='')}", status_code=303)

    @app.exception_handler(CsrfFailed)
    async def _csrf(request: Request, exc: CsrfFailed) -> Response:
        return render_error(request, 403, "Forbidden", "The form was stale or forged (no valid CSRF token). "
                            "Reload the page and try again.")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return render_error(request, exc.status, exc.code.replace("_", " ").capitalize(), exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return render_error(request, exc.status_code, "Error", str(exc.detail))

    return app


def mount(parent: FastAPI, path: str = "/admin") -> None:
    """Called by ``service.main.create_app``: serve the dashboard under ``path``."""
    parent.mount(path, create_admin_app(parent, mount_path=path), name="admin")


__all__ = ["create_admin_app", "mount"]
