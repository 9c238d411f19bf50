"""The ``ratings`` table: one row per (user, item)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, SmallInteger
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, UTCDateTime, utcnow

RatingUserId = BigInteger().with_variant(Integer(), "sqlite")


class Rating(Base):
    __tablename__ = "ratings"
    __table_args__ = (
        Index("ix_ratings_item_id", "item_id"),
        Index("ix_ratings_ingested_at", "ingested_at"),
    )

    user_id: Mapped[int] = mapped_column(RatingUserId, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    item_id: Mapped[int] = mapped_column(RatingUserId, ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    # 1..settings.rating_scale, checked by the service (the scale is configuration, not schema).
    value: Mapped[int] = mapped_column(SmallInteger)
    # When the user rated (theirs to give, e.g. MovieLens timestamps) ...
    rated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # ... and when the row last reached this database: what "new ratings since the last model" compares to.
    ingested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
