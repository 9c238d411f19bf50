"""Queries on users and items (the same for both: a table with an external id)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from service.catalog.models import Item, User

Entity = type[User] | type[Item]


def get_by_external_id(session: Session, model: Entity, external_id: str):
    return session.scalar(select(model).where(model.external_id == external_id))


def id_of(session: Session, model: Entity, external_id: str) -> int | None:
    return session.scalar(select(model.id).where(model.external_id == external_id))


def existing_external_ids(session: Session, model: Entity, external_ids: Iterable[str]) -> set[str]:
    ids = list(set(external_ids))
    found: set[str] = set()
    for start in range(0, len(ids), 5000):
        found.update(session.scalars(select(model.external_id).where(model.external_id.in_(ids[start:start + 5000]))))
    return found


def page(session: Session, model: Entity, *, limit: int, offset: int) -> tuple[Sequence, int]:
    rows = session.scalars(select(model).order_by(model.id).limit(limit).offset(offset)).all()
    total = session.scalar(select(func.count()).select_from(model)) or 0
    return rows, total


def delete_by_id(session: Session, model: Entity, row_id: int) -> None:
    session.execute(delete(model).where(model.id == row_id))


def external_ids_for(session: Session, model: Entity, ids: Iterable[int]) -> dict[int, tuple[str, str | None]]:
    """internal id -> (external id, title or None) for the given internal ids."""
    ids = list(ids)
    if not ids:
        return {}
    title = model.title if model is Item else None
    columns = [model.id, model.external_id] + ([title] if title is not None else [])
    out: dict[int, tuple[str, str | None]] = {}
    for start in range(0, len(ids), 5000):
        for row in session.execute(select(*columns).where(model.id.in_(ids[start:start + 5000]))):
            out[row[0]] = (row[1], row[2] if title is not None else None)
    return out
