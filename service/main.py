"""The FastAPI application: ``create_app()`` wires settings, database, the model cache, routers, the one
error shape and the metrics middleware. ``rbmrec serve`` runs it under uvicorn (``app_factory``)."""

from __future__ import annotations

import importlib.util
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.requests import Request

from service.auth.service import KeyCache
from service.config import Settings, get_settings
from service.db import Database
from service.errors import ApiError, error_body, install_error_handlers
from service.ops.metrics import MetricsMiddleware, ServiceMetrics

log = logging.getLogger(__name__)


class SchemaNotReady(RuntimeError):
    """The database schema is not at the migrations' head."""


def scoring_device(settings: Settings) -> str:
    if settings.device:
        return settings.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def create_app(settings: Settings | None = None, *, database: Database | None = None) -> FastAPI:
    settings = settings or get_settings()
    db = database or Database(settings.database_url, pool_size=settings.database_pool_size, echo=settings.database_echo)
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import torch

        torch.set_num_threads(settings.torch_threads)
        if settings.check_migrations:
            from service.migrate import current_revision, head_revision

            revision, head = current_revision(db.engine), head_revision()
            if revision != head:
                raise SchemaNotReady(f"database schema is at {revision}, migrations head is {head}: run `rbmrec db upgrade`")
        yield
        if database is None:
            db.dispose()

    app = FastAPI(title="rbmrec", version="1", lifespan=lifespan,
                  description="Recommendations, rating predictions and sampled reconstructions from Boltzmann machines. "
                              "Send an API key in `X-API-Key` (role `read` or `admin`).")
    from service.serving.cache import ModelCache

    app.state.settings = settings
    app.state.db = db
    app.state.metrics = metrics
    app.state.key_cache = KeyCache(settings.api_key_cache_seconds)
    app.state.model_cache = ModelCache(db.session_factory, refresh_seconds=settings.model_refresh_seconds,
                                       device=scoring_device(settings), metrics=metrics,
                                       scoring_concurrency=settings.scoring_concurrency)

    install_error_handlers(app)

    @app.exception_handler(IntegrityError)
    async def _integrity(request: Request, exc: IntegrityError):
        # A race that a service-level check could not see (two writers creating the same id): a conflict.
        from fastapi.responses import JSONResponse

        return JSONResponse(error_body(409, "conflict", "the request conflicts with existing data; retry"), status_code=409)

    @app.exception_handler(OperationalError)
    async def _database_down(request: Request, exc: OperationalError):
        from fastapi.responses import JSONResponse

        log.warning("database error: %s", exc)
        return JSONResponse(error_body(503, "unavailable", "the database is unavailable"), status_code=503)

    from service.catalog.routes import router as catalog_router
    from service.models.routes import router as models_router
    from service.ops.routes import router as ops_router
    from service.ratings.routes import router as ratings_router
    from service.serving.routes import router as serving_router

    for router in (ops_router, catalog_router, ratings_router, serving_router, models_router):
        app.include_router(router)
    app.include_router(importlib.import_module("service.jobs.routes").router)  # schedules (service/jobs)
    _mount_admin(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


class BodyLimitMiddleware:
    """Any request body above MAX_UPLOAD_BYTES gets 413 in the error shape: at once when Content-Length says so,
    else as soon as the streamed body passes the limit (raised inside the route, so the error handler renders it)."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                from fastapi.responses import JSONResponse

                response = JSONResponse(error_body(413, "payload_too_large",
                                                   f"request body of {int(value)} bytes exceeds the limit of {self.limit} bytes"),
                                        status_code=413)
                await response(scope, receive, send)
                return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise ApiError(413, f"request body exceeds the limit of {self.limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


def _mount_admin(app: FastAPI) -> None:
    """The dashboard (service/admin, its own issue) mounts itself when present: ``service.admin.mount(app)``."""
    if importlib.util.find_spec("service.admin") is None:
        return
    admin = importlib.import_module("service.admin")
    if hasattr(admin, "mount"):
        admin.mount(app)


def app_factory() -> FastAPI:
    return create_app()
