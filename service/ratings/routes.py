"""``/v1/ratings`` and ``/v1/users/{user_id}/ratings``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from service.auth.dependencies import AdminAccess, ReadAccess
from service.catalog import service as catalog
from service.catalog.models import User
from service.catalog.routes import Limit, Offset, _page, check_batch_size, check_page_size
from service.catalog.schemas import Page
from service.db import SessionDep
from service.errors import ApiError
from service.ratings import repository, service
from service.ratings.loader import RatingLoader
from service.ratings.parsing import CsvRowParser
from service.ratings.schemas import LoadOut, RatingBatch, RatingIn, RatingOut, RatingValue

router = APIRouter(prefix="/v1", tags=["ratings"])

CreateMissing = Annotated[bool, Query(description="create users and items not seen before (else 404)")]


@router.put("/users/{user_id}/ratings/{item_id}", response_model=RatingOut)
def put_rating(user_id: str, item_id: str, body: RatingValue, request: Request, session: SessionDep,
               _: AdminAccess, create_missing: CreateMissing = True):
    rated_at = service.upsert_one(session, user=user_id, item=item_id, value=body.rating, rated_at=body.timestamp,
                                  scale=request.app.state.settings.rating_scale, create_missing=create_missing)
    return RatingOut(user=user_id, item=item_id, rating=body.rating, timestamp=rated_at)


@router.post("/ratings", response_model=RatingOut)
def post_rating(body: RatingIn, request: Request, session: SessionDep, _: AdminAccess,
                create_missing: CreateMissing = True):
    rated_at = service.upsert_one(session, user=body.user, item=body.item, value=body.rating, rated_at=body.timestamp,
                                  scale=request.app.state.settings.rating_scale, create_missing=create_missing)
    return RatingOut(user=body.user, item=body.item, rating=body.rating, timestamp=rated_at)


@router.post("/ratings/batch", response_model=LoadOut)
def post_ratings_batch(body: RatingBatch, request: Request, session: SessionDep, _: AdminAccess,
                       create_missing: CreateMissing = True):
    """Applied atomically: one bad row and nothing is written."""
    check_batch_size(request, len(body.ratings))
    result = service.apply_batch(session, rows=[r.model_dump() for r in body.ratings],
                                 scale=request.app.state.settings.rating_scale, create_missing=create_missing)
    return LoadOut(**result.__dict__)


@router.post("/ratings/csv", response_model=LoadOut, openapi_extra={
    "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}})
async def upload_ratings_csv(request: Request, session: SessionDep, _: AdminAccess,
                             create_missing: CreateMissing = True):
    """Body: CSV ``user,item,rating[,timestamp]`` (optional header line), streamed; all or nothing, and an
    error names the failing line. Timestamps: unix seconds or ISO 8601."""
    settings = request.app.state.settings
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"upload of {declared} bytes exceeds the limit of {limit} bytes")
    parser = CsvRowParser(settings.rating_scale)
    connection = await run_in_threadpool(session.connection)
    loader = await run_in_threadpool(lambda: RatingLoader(connection, create_missing=create_missing))
    received = 0
    pending: list = []
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise ApiError(413, f"upload exceeds the limit of {limit} bytes")
        pending.extend(parser.feed(chunk))
        if len(pending) >= 20_000:
            await run_in_threadpool(loader.add, pending)
            pending = []
    pending.extend(parser.finish())
    await run_in_threadpool(loader.add, pending)
    if loader.rows == 0:
        raise ApiError(422, "the upload holds no rating rows", details=[{"loc": ["body"], "msg": "empty"}])
    result = await run_in_threadpool(loader.apply)
    return LoadOut(**result.__dict__)


@router.get("/users/{user_id}/ratings", response_model=Page[RatingOut])
def list_user_ratings(user_id: str, request: Request, session: SessionDep, _: ReadAccess,
                      limit: Limit = 100, offset: Offset = 0):
    check_page_size(request, limit)
    internal = catalog.require_id(session, model=User, external_id=user_id)
    rows, total = repository.for_user(session, user_id=internal, limit=limit, offset=offset)
    return _page(rows, total, limit, offset,
                 lambda r: RatingOut(user=user_id, item=r[0], rating=r[1], timestamp=r[2]))


@router.delete("/users/{user_id}/ratings/{item_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_rating(user_id: str, item_id: str, session: SessionDep, _: AdminAccess):
    service.delete_one(session, user=user_id, item=item_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
