"""``/v1/users`` and ``/v1/items``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from service.auth.dependencies import AdminAccess, ReadAccess
from service.catalog import repository, service
from service.catalog.models import Item, User
from service.catalog.schemas import (
    BatchCreated,
    ItemBatch,
    ItemIn,
    ItemOut,
    Page,
    UserBatch,
    UserIn,
    UserOut,
    item_out,
    user_out,
)
from service.db import SessionDep
from service.errors import ApiError

router = APIRouter(prefix="/v1")

Limit = Annotated[int, Query(ge=1, le=100_000, description="page size (at most MAX_PAGE_SIZE)")]
Offset = Annotated[int, Query(ge=0)]


def check_batch_size(request: Request, count: int) -> None:
    limit = request.app.state.settings.max_batch_rows
    if count > limit:
        raise ApiError(413, f"batch of {count} rows exceeds the limit of {limit} (use the CSV upload or rbmrec import)")


def check_page_size(request: Request, limit: int) -> None:
    if limit > request.app.state.settings.max_page_size:
        raise ApiError(422, f"limit must be at most {request.app.state.settings.max_page_size}",
                       details=[{"loc": ["query", "limit"], "msg": "too large"}])


def _page(rows, total: int, limit: int, offset: int, convert) -> dict:
    next_offset = offset + len(rows) if offset + len(rows) < total else None
    return {"data": [convert(r) for r in rows], "total": total, "limit": limit, "offset": offset,
            "next_offset": next_offset}


# Users ---------------------------------------------------------------------------------------------------------

@router.post("/users", status_code=status.HTTP_201_CREATED, response_model=UserOut, tags=["users"])
def create_user(body: UserIn, session: SessionDep, _: AdminAccess):
    return user_out(service.create_many(session, model=User, rows=[body.model_dump()])[0])


@router.post("/users/batch", status_code=status.HTTP_201_CREATED, response_model=BatchCreated, tags=["users"])
def create_users(body: UserBatch, request: Request, session: SessionDep, _: AdminAccess):
    check_batch_size(request, len(body.users))
    return BatchCreated(created=len(service.create_many(session, model=User, rows=[u.model_dump() for u in body.users])))


@router.get("/users", response_model=Page[UserOut], tags=["users"])
def list_users(request: Request, session: SessionDep, _: ReadAccess, limit: Limit = 100, offset: Offset = 0):
    check_page_size(request, limit)
    rows, total = repository.page(session, User, limit=limit, offset=offset)
    return _page(rows, total, limit, offset, user_out)


@router.get("/users/{user_id}", response_model=UserOut, tags=["users"])
def get_user(user_id: str, session: SessionDep, _: ReadAccess):
    return user_out(service.get(session, model=User, external_id=user_id))


@router.delete("/users/{user_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["users"])
def delete_user(user_id: str, session: SessionDep, _: AdminAccess):
    service.delete(session, model=User, external_id=user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# Items ---------------------------------------------------------------------------------------------------------

@router.post("/items", status_code=status.HTTP_201_CREATED, response_model=ItemOut, tags=["items"])
def create_item(body: ItemIn, session: SessionDep, _: AdminAccess):
    return item_out(service.create_many(session, model=Item, rows=[body.model_dump()])[0])


@router.post("/items/batch", status_code=status.HTTP_201_CREATED, response_model=BatchCreated, tags=["items"])
def create_items(body: ItemBatch, request: Request, session: SessionDep, _: AdminAccess):
    check_batch_size(request, len(body.items))
    return BatchCreated(created=len(service.create_many(session, model=Item, rows=[i.model_dump() for i in body.items])))


@router.get("/items", response_model=Page[ItemOut], tags=["items"])
def list_items(request: Request, session: SessionDep, _: ReadAccess, limit: Limit = 100, offset: Offset = 0):
    check_page_size(request, limit)
    rows, total = repository.page(session, Item, limit=limit, offset=offset)
    return _page(rows, total, limit, offset, item_out)


@router.get("/items/{item_id}", response_model=ItemOut, tags=["items"])
def get_item(item_id: str, session: SessionDep, _: ReadAccess):
    return item_out(service.get(session, model=Item, external_id=item_id))


@router.delete("/items/{item_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["items"])
def delete_item(item_id: str, session: SessionDep, _: AdminAccess):
    service.delete(session, model=Item, external_id=item_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
