"""Creating, reading and deleting users and items."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service.catalog import repository
from service.catalog.models import Item, User
from service.errors import ApiError, not_found

_NAMES = {User: "user", Item: "item"}


def get(session: Session, *, model: repository.Entity, external_id: str):
    row = repository.get_by_external_id(session, model, external_id)
    if row is None:
        raise not_found(_NAMES[model], external_id)
    return row


def require_id(session: Session, *, model: repository.Entity, external_id: str) -> int:
    row_id = repository.id_of(session, model, external_id)
    if row_id is None:
        raise not_found(_NAMES[model], external_id)
    return row_id


def create_many(session: Session, *, model: repository.Entity, rows: list[dict[str, Any]]) -> list:
    """Insert all rows or none: 422 for an id twice in the batch, 409 for an id that exists."""
    name = _NAMES[model]
    seen: dict[str, int] = {}
    for position, row in enumerate(rows):
        if row["id"] in seen:
            raise ApiError(422, f"{name} id {row['id']!r} appears twice in the batch (rows {seen[row['id']]} and {position})",
                           details=[{"loc": ["body", f"{name}s", position, "id"], "msg": "duplicate id"}])
        seen[row["id"]] = position
    existing = repository.existing_external_ids(session, model, seen)
    if existing:
        first = sorted(existing)[0]
        raise ApiError(409, f"{name} {first!r} already exists" + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""),
                       details=[{"loc": ["body", f"{name}s", seen[i], "id"], "msg": "already exists"} for i in sorted(existing)[:100]])
    objects = []
    for row in rows:
        fields = {"external_id": row["id"], "attributes": row.get("attributes")}
        if model is Item:
            fields["title"] = row.get("title")
        objects.append(model(**fields))
    session.add_all(objects)
    session.flush()
    return objects


def delete(session: Session, *, model: repository.Entity, external_id: str) -> None:
    """Deleting a user (or item) deletes their ratings (ON DELETE CASCADE)."""
    repository.delete_by_id(session, model, require_id(session, model=model, external_id=external_id))
