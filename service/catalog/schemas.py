"""Request and response bodies for users and items."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

T = TypeVar("T")

# Callers' ids: 1-255 characters, no slash (they appear in paths) and no control characters.
ExternalId = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^/\x00-\x1f\x7f]+$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserIn(Strict):
    id: ExternalId
    attributes: dict[str, Any] | None = None


class UserOut(BaseModel):
    id: str
    attributes: dict[str, Any] | None
    created_at: datetime


class ItemIn(Strict):
    id: ExternalId
    title: Annotated[str, StringConstraints(max_length=10_000)] | None = None
    attributes: dict[str, Any] | None = None


class ItemOut(BaseModel):
    id: str
    title: str | None
    attributes: dict[str, Any] | None
    created_at: datetime


class UserBatch(Strict):
    users: list[UserIn] = Field(min_length=1)


class ItemBatch(Strict):
    items: list[ItemIn] = Field(min_length=1)


class BatchCreated(BaseModel):
    created: int


class Page(BaseModel, Generic[T]):
    data: list[T]
    total: int
    limit: int
    offset: int
    next_offset: int | None


def user_out(row: Any) -> UserOut:
    return UserOut(id=row.external_id, attributes=row.attributes, created_at=row.created_at)


def item_out(row: Any) -> ItemOut:
    return ItemOut(id=row.external_id, title=row.title, attributes=row.attributes, created_at=row.created_at)
