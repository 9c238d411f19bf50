"""Helpers shared by the test suites: exact-answer checks for samplers and small models."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats


def chi_squared_pvalue(observed_counts, expected_probs, min_expected: float = 5.0) -> float:
    """p-value of Pearson's chi-squared goodness-of-fit test of ``observed_counts`` (one count per
    category) against the exact probabilities ``expected_probs``.

    Categories whose expected count is below ``min_expected`` are pooled into one (the chi-squared
    approximation needs about five expected counts per cell). A sampler passes at false-alarm rate
    ``alpha`` when the p-value exceeds ``alpha``; a correct sampler fails with probability ``alpha``."""
    counts = torch.as_tensor(observed_counts).detach().double().cpu().numpy()
    probs = torch.as_tensor(expected_probs).detach().double().cpu().numpy()
    if counts.shape != probs.shape:
        raise ValueError(f"{counts.shape} counts against {probs.shape} probabilities")
    if abs(probs.sum() - 1.0) > 1e-9:
        raise ValueError(f"expected probabilities sum to {probs.sum()}, not 1")
    total = counts.sum()
    expected = probs * total
    small = expected < min_expected
    if small.any():
        counts = np.append(counts[~small], counts[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
        if expected[-1] == 0:
            if counts[-1] > 0:
                return 0.0  # a sample where the exact probability is zero
            counts, expected = counts[:-1], expected[:-1]
    if len(counts) < 2:
        return 1.0
    return float(stats.chisquare(counts, expected).pvalue)


def state_indices(samples: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """Index into ``states`` (all configurations, ``(S, ...)``) of each sample ``(N, ...)``;
    raises if a sample is not among the states."""
    flat_samples = samples.reshape(samples.shape[0], -1).double()
    flat_states = states.reshape(states.shape[0], -1).double()
    distance = torch.cdist(flat_samples, flat_states)
    best = distance.argmin(1)
    if bool((distance.gather(1, best.unsqueeze(1)) > 1e-6).any()):
        raise AssertionError("a sample is not a valid state")
    return best


def counts_over_states(samples: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """Histogram of ``samples`` over the enumerated ``states``."""
    return torch.bincount(state_indices(samples, states), minlength=states.shape[0])


def tiny_rbm(num_visible: int, num_hidden: int, visible: str = "bernoulli", num_values: int = 2, seed: int = 0, scale: float = 1.0):
    """A small float64 RBM with random parameters of order ``scale`` (strong enough that its
    distribution is far from uniform), for exact enumeration."""
    from rbm_core import RBM, RBMConfig

    model = RBM(RBMConfig(num_visible, num_hidden, visible, num_values), dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64) * scale)
    return model


def submodel_without_visible_units(model, keep: list[int]):
    """The softmax RBM restricted to the visible units ``keep`` (the others' weights dropped)."""
    from rbm_core import RBM, RBMConfig

    c = model.config
    sub = RBM(RBMConfig(len(keep), c.num_hidden, c.visible, c.num_values), dtype=model.weight.dtype)
    rows = torch.tensor([u * c.num_values + k for u in keep for k in range(c.num_values)])
    with torch.no_grad():
        sub.weight.copy_(model.weight[rows])
        sub.visible_bias.copy_(model.visible_bias[rows])
        sub.hidden_bias.copy_(model.hidden_bias)
    return sub
