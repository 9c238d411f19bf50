"""The least-squares blend of rating models: it recovers a planted combination, its support-dependent weights
pick the better model for each kind of pair, and it refuses malformed input."""

import pytest
import torch

from rbm_core.ratings import RatingMatrix
from rbm_core.ratings.blend import RatingBlend


def known_matrix(g, num_users=30, num_items=20):
    observed = torch.rand(num_users, num_items, generator=g) < torch.linspace(0.05, 0.9, num_items)
    users, items = observed.nonzero(as_tuple=True)
    return RatingMatrix(users, items, torch.randint(1, 6, (len(users),), generator=g), num_users, num_items)


def test_blend_recovers_a_planted_linear_combination():
    g = torch.Generator().manual_seed(0)
    known = known_matrix(g)
    users, items = torch.randint(0, 30, (500,), generator=g), torch.randint(0, 20, (500,), generator=g)
    expected = 1 + 4 * torch.rand(500, 2, generator=g, dtype=torch.float64)
    target = 0.3 * expected[:, 0] + 0.6 * expected[:, 1] + 0.2
    blend = RatingBlend.fit(expected, target, users, items, known, ridge=0.0)
    assert torch.allclose(blend.predict(expected, users, items, known), target.clamp(1, 5), atol=1e-8)


def test_support_dependent_weights_beat_any_fixed_member():
    # model 0 is exact on items with many ratings and noisy on the others, model 1 the reverse
    g = torch.Generator().manual_seed(1)
    known = known_matrix(g)
    counts = torch.bincount(known.items, minlength=20)
    users, items = torch.randint(0, 30, (4000,), generator=g), torch.randint(0, 20, (4000,), generator=g)
    truth = 1 + 4 * torch.rand(4000, generator=g, dtype=torch.float64)
    popular = (counts[items] >= counts.median()).to(torch.float64)
    noise = torch.randn(4000, 2, generator=g, dtype=torch.float64)
    expected = torch.stack([truth + (1 - popular) * noise[:, 0], truth + popular * noise[:, 1]], 1)
    blend = RatingBlend.fit(expected, truth, users, items, known)
    error = ((blend.predict(expected, users, items, known) - truth) ** 2).mean().sqrt()
    best_member = min(((expected[:, m] - truth) ** 2).mean().sqrt() for m in range(2))
    best_mean = ((expected.mean(1) - truth) ** 2).mean().sqrt()
    assert error < 0.8 * min(best_member, best_mean)


def test_blend_refuses_malformed_input():
    g = torch.Generator().manual_seed(2)
    known = known_matrix(g)
    users, items = torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="one row per rating"):
        RatingBlend.fit(torch.ones(4, 2), torch.ones(3), users, items, known)
    with pytest.raises(ValueError, match="non-finite"):
        RatingBlend.fit(torch.tensor([[1.0, float("nan")]] * 3), torch.ones(3), users, items, known)
    blend = RatingBlend.fit(torch.rand(3, 2) + 2, torch.ones(3) * 3, users, items, known)
    with pytest.raises(ValueError, match="pairs, 2"):
        blend.predict(torch.ones(3, 3), users, items, known)
