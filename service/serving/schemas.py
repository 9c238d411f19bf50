"""Request and response bodies for recommendations, predictions and reconstructions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from service.catalog.schemas import ExternalId, Strict


class KnownRating(Strict):
    item: ExternalId
    rating: int


class AdHocRecommendationIn(Strict):
    ratings: list[KnownRating] = Field(default_factory=list, max_length=100_000)
    n: int = Field(default=10, ge=1)
    offset: int = Field(default=0, ge=0)
    model: str | None = None
    exclude_rated: bool = True


class RecommendedItem(BaseModel):
    item: str
    title: str | None
    score: float
    expected_rating: float


class RecommendationsOut(BaseModel):
    user: str | None
    model: str
    version: int
    source: Literal["model", "fold_in", "popularity"] = Field(
        description="model: a user the version was trained on; fold_in: a user (or ad-hoc set) it was not "
                    "trained on, scored from their ratings; popularity: no usable ratings, most-rated items")
    n: int
    offset: int
    items: list[RecommendedItem]


class PredictionsIn(Strict):
    items: list[ExternalId] = Field(min_length=1, max_length=1000)
    ratings: list[KnownRating] = Field(default_factory=list, max_length=100_000)
    model: str | None = None


class Prediction(BaseModel):
    item: str
    probabilities: list[float] = Field(description="p(rating = k) for k = 1..K")
    expected_rating: float
    known_to_model: bool


class PredictionsOut(BaseModel):
    user: str | None
    model: str
    version: int
    source: Literal["model", "fold_in", "popularity"]
    predictions: list[Prediction]


class ReconstructionIn(Strict):
    items: list[ExternalId] = Field(min_length=1, max_length=1000,
                                    description="items to sample ratings for (the known ratings stay clamped)")
    ratings: list[KnownRating] = Field(default_factory=list, max_length=100_000,
                                       description="ad-hoc known ratings (POST /v1/reconstructions only)")
    steps: int = Field(default=1, ge=1)
    samples: int = Field(default=1, ge=1)
    seed: int | None = Field(default=None, ge=0, le=2**62)
    model: str | None = None


class ReconstructionSample(BaseModel):
    ratings: dict[str, int]
    free_energy: float


class ReconstructionOut(BaseModel):
    user: str | None
    model: str
    version: int
    steps: int
    seed: int | None
    ignored_items: list[str] = Field(description="requested items the model does not know (no sample drawn)")
    samples: list[ReconstructionSample]
