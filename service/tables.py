"""Imports every table module so ``Base.metadata`` is complete (Alembic, tests)."""

from service.auth.models import ApiKey
from service.catalog.models import Item, User
from service.db import Base
from service.models.models import ModelDefinition, ModelVersion, TrainingJob
from service.ratings.models import Rating

__all__ = ["Base", "ApiKey", "User", "Item", "Rating", "ModelDefinition", "ModelVersion", "TrainingJob"]
