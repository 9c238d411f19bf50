"""A least-squares blend of several rating models' expected ratings, fitted on held-out ratings (the way the
Netflix-prize teams combined their RBMs and other models). Each model's weight may depend on how many ratings the
user and the item have, log(1 + count), so that a model that is better for heavily rated items counts more there."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rbm_core.ratings.data import RatingMatrix


def _features(expected: Tensor, users: Tensor, items: Tensor, known: RatingMatrix) -> Tensor:
    """``(P, 3M + 3)``, on the CPU in float64: each model's expected rating, alone and times log(1 + the user's /
    the item's count of ratings in ``known``), then a constant and the two log counts. (Fitted on validation
    pairs predicted from the fitting part, applied to test pairs predicted from the whole training part: the
    counts are then about 11 % higher, as the members' inputs are richer.)"""
    expected = expected.to(torch.float64).cpu()
    user_support = torch.log1p(torch.bincount(known.users.cpu(), minlength=known.num_users).to(torch.float64))
    item_support = torch.log1p(torch.bincount(known.items.cpu(), minlength=known.num_items).to(torch.float64))
    user_support, item_support = user_support[users.cpu()], item_support[items.cpu()]
    return torch.cat([expected, expected * user_support[:, None], expected * item_support[:, None],
                      torch.ones_like(user_support)[:, None], user_support[:, None], item_support[:, None]], 1)


@dataclass(frozen=True)
class RatingBlend:
    """``coefficients`` ``(3M + 3,)`` over the features of ``_features``; predictions are clipped to 1..K."""

    coefficients: Tensor
    num_values: int = 5

    @classmethod
    def fit(cls, expected: Tensor, ratings: Tensor, users: Tensor, items: Tensor, known: RatingMatrix,
            num_values: int = 5, ridge: float = 1e-3) -> RatingBlend:
        """Least squares (with a small ridge) of ``ratings`` ``(P,)`` on the models' ``expected`` ``(P, M)`` for
        the held-out pairs (``users``, ``items``); ``known``: the ratings the models predicted them from."""
        if (expected.dim() != 2 or expected.shape[0] == 0
                or not expected.shape[0] == ratings.shape[0] == users.shape[0] == items.shape[0]):
            raise ValueError(f"expected must be (pairs, models) with one row per rating, user and item, got "
                             f"{tuple(expected.shape)} for {ratings.shape[0]} ratings")
        if not bool(torch.isfinite(expected).all()):
            raise ValueError("expected ratings contain a non-finite value")
        x = _features(expected, users, items, known)
        gram = x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype)
        coefficients = torch.linalg.solve(gram, x.T @ ratings.to(torch.float64).cpu())
        return cls(coefficients, num_values)

    def predict(self, expected: Tensor, users: Tensor, items: Tensor, known: RatingMatrix) -> Tensor:
        """Blended expected ratings ``(P,)`` (float64, on the CPU)."""
        if expected.dim() != 2 or 3 * expected.shape[1] + 3 != self.coefficients.numel() \
                or not expected.shape[0] == users.shape[0] == items.shape[0]:
            raise ValueError(f"expected must be (pairs, {(self.coefficients.numel() - 3) // 3}) for this blend")
        return (_features(expected, users, items, known) @ self.coefficients).clamp(1.0, float(self.num_values))
