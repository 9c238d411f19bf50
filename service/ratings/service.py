"""Writing and reading ratings: one upsert, atomic batches (through the loader), a user's ratings."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session

from service.catalog import service as catalog
from service.catalog.models import Item, User
from service.errors import ApiError, not_found
from service.ratings import repository
from service.ratings.loader import LoadResult, load_rows
from service.ratings.parsing import rows_from_json


def check_value(value: int, scale: int) -> None:
    if not 1 <= value <= scale:
        raise ApiError(422, f"rating {value} is not between 1 and {scale}",
                       details=[{"loc": ["body", "rating"], "msg": f"must be between 1 and {scale}"}])


def upsert_one(session: Session, *, user: str, item: str, value: int, rated_at: datetime | None, scale: int,
               create_missing: bool) -> datetime:
    check_value(value, scale)
    if create_missing:
        user_id = repository.ensure_ids(session, User, user)
        item_id = repository.ensure_ids(session, Item, item)
    else:
        user_id = catalog.require_id(session, model=User, external_id=user)
        item_id = catalog.require_id(session, model=Item, external_id=item)
    now = datetime.now(UTC)
    rated_at = rated_at or now
    repository.upsert(session, user_id=user_id, item_id=item_id, value=value, rated_at=rated_at, now=now)
    return rated_at


def apply_batch(session: Session, *, rows: list[dict], scale: int, create_missing: bool) -> LoadResult:
    """All rows or none: a bad row raises before anything is written, and the request's transaction rolls back."""
    staged = rows_from_json(rows, scale)
    return load_rows(session.connection(), staged, create_missing=create_missing, row_label="ratings")


def delete_one(session: Session, *, user: str, item: str) -> None:
    user_id = catalog.require_id(session, model=User, external_id=user)
    item_id = catalog.require_id(session, model=Item, external_id=item)
    if repository.delete_one(session, user_id=user_id, item_id=item_id) == 0:
        raise not_found("rating of user", f"{user}/{item}")
