"""Request and response bodies for ratings."""

from __future__ import annotations

from datetime import datetime

from pydantic import AwareDatetime, BaseModel, Field

from service.catalog.schemas import ExternalId, Strict


class RatingValue(Strict):
    rating: int = Field(description="1..RATING_SCALE")
    timestamp: AwareDatetime | None = Field(default=None, description="when the user rated; default now")


class RatingIn(RatingValue):
    user: ExternalId
    item: ExternalId


class RatingBatch(Strict):
    ratings: list[RatingIn] = Field(min_length=1)


class RatingOut(BaseModel):
    user: str
    item: str
    rating: int
    timestamp: datetime


class LoadOut(BaseModel):
    rows: int = Field(description="rows received")
    ratings_written: int = Field(description="ratings inserted or updated (a (user, item) given twice counts once)")
    users_created: int
    items_created: int
