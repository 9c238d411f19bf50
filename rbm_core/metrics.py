"""Per-epoch monitoring metrics for the trainer: ``fn(model, train_sample, held_out) -> float``
on encoded visible states. They need only ``free_energy``, ``hidden_mean`` and ``visible_mean``."""

from __future__ import annotations

import torch
from torch import Tensor

from rbm_core.units import BernoulliUnits


@torch.no_grad()
def reconstruction_error(model, data: Tensor, held_out: Tensor | None = None) -> float:
    """Mean squared error between v and its mean-field reconstruction p(v | E[h|v]) over the
    observed units of ``held_out`` if given, else of ``data``."""
    v = held_out if held_out is not None else data
    mask = model.visible.mask(v)
    recon = model.visible_mean(model.hidden_mean(v), mask=mask)
    squared = (recon - v).pow(2)
    if mask is None:
        return float(squared.mean())
    return float(squared.sum() / mask.sum().clamp(min=1))


@torch.no_grad()
def pseudo_log_likelihood(model, data: Tensor, held_out: Tensor | None = None, seed: int = 0) -> float:
    """Stochastic pseudo-log-likelihood per sample of a Bernoulli model: n · log σ(F(ṽ) − F(v))
    with ṽ = v with one random unit flipped."""
    if not isinstance(model.visible, BernoulliUnits):
        raise TypeError("pseudo-log-likelihood is defined here for Bernoulli visible units")
    v = held_out if held_out is not None else data
    gen = torch.Generator(device=v.device).manual_seed(seed)
    index = torch.randint(0, v.shape[1], (v.shape[0],), generator=gen, device=v.device)
    flipped = v.clone()
    rows = torch.arange(v.shape[0], device=v.device)
    flipped[rows, index] = 1 - flipped[rows, index]
    log_cond = torch.nn.functional.logsigmoid(model.free_energy(flipped) - model.free_energy(v))
    return float(v.shape[1] * log_cond.mean())


@torch.no_grad()
def free_energy_gap(model, data: Tensor, held_out: Tensor | None = None) -> float:
    """mean F(held out) − mean F(training sample): grows when the model overfits."""
    if held_out is None:
        return float("nan")
    return float(model.free_energy(held_out).mean() - model.free_energy(data).mean())


def default_metrics(model, with_held_out: bool) -> dict:
    metrics = {"reconstruction_error": reconstruction_error}
    if isinstance(model.visible, BernoulliUnits):
        metrics["pseudo_log_likelihood"] = pseudo_log_likelihood
    if with_held_out:
        metrics["free_energy_gap"] = free_energy_gap
    return metrics
