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
    counts = np.asarray(torch.as_tensor(observed_counts).double().cpu(), dtype=np.float64)
    probs = np.asarray(torch.as_tensor(expected_probs).double().cpu(), dtype=np.float64)
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
