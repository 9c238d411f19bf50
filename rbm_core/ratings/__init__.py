"""Collaborative filtering with Boltzmann machines: rating data and splits, softmax-RBM rating
models (user- and item-based, conditional), prediction, ranking, fold-in, evaluation."""

from rbm_core.ratings.data import (
    RatingDataError,
    RatingMatrix,
    load_ratings,
    parse_ratings,
    split_per_user,
    split_random,
)
from rbm_core.ratings.model import (
    RatingModel,
    RatingModelConfig,
    RatingModelError,
    train_rating_model,
)

__all__ = [
    "RatingMatrix",
    "RatingDataError",
    "load_ratings",
    "parse_ratings",
    "split_random",
    "split_per_user",
    "RatingModel",
    "RatingModelConfig",
    "RatingModelError",
    "train_rating_model",
]
