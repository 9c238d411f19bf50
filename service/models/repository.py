"""Queries on model definitions, versions and jobs."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.models.models import ModelDefinition, ModelVersion, TrainingJob


def definition_by_name(session: Session, name: str, *, for_update: bool = False) -> ModelDefinition | None:
    query = select(ModelDefinition).where(ModelDefinition.name == name)
    return session.scalar(query.with_for_update() if for_update else query)


def definitions(session: Session) -> list[ModelDefinition]:
    return list(session.scalars(select(ModelDefinition).order_by(ModelDefinition.name)))


def active_versions_by_definition(session: Session) -> dict[int, int]:
    """definition id -> active version number."""
    return dict(session.execute(select(ModelVersion.model_definition_id, ModelVersion.version)
                                .where(ModelVersion.is_active)).all())


def versions(session: Session, definition_id: int) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).where(ModelVersion.model_definition_id == definition_id)
                                .order_by(ModelVersion.version.desc())))


def version(session: Session, definition_id: int, number: int) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.model_definition_id == definition_id,
                                                     ModelVersion.version == number))


def next_version_number(session: Session, definition_id: int) -> int:
    current = session.scalar(select(func.max(ModelVersion.version))
                             .where(ModelVersion.model_definition_id == definition_id))
    return (current or 0) + 1


def deactivate_others(session: Session, definition_id: int, keep_id: int) -> None:
    session.execute(update(ModelVersion).where(ModelVersion.model_definition_id == definition_id,
                                               ModelVersion.is_active, ModelVersion.id != keep_id)
                    .values(is_active=False))


def open_job(session: Session, definition_id: int) -> TrainingJob | None:
    return session.scalar(select(TrainingJob).where(TrainingJob.model_definition_id == definition_id,
                                                    TrainingJob.status.in_(("queued", "running"))).limit(1))


def jobs(session: Session, definition_id: int, limit: int = 50) -> list[TrainingJob]:
    return list(session.scalars(select(TrainingJob).where(TrainingJob.model_definition_id == definition_id)
                                .order_by(TrainingJob.id.desc()).limit(limit)))


def version_numbers(session: Session, ids: list[int]) -> dict[int, int]:
    if not ids:
        return {}
    return dict(session.execute(select(ModelVersion.id, ModelVersion.version).where(ModelVersion.id.in_(ids))).all())
