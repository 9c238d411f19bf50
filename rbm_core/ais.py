"""Annealed importance sampling (Neal 2001) for the log partition function of an RBM or a DBM,
and the average log-likelihood estimates built on it (Salakhutdinov & Murray 2008;
Salakhutdinov & Hinton 2009).

The path runs from a tractable base model A (visible biases b_A fitted to the data's base
rates, no weights; every other layer uniform) to the model B through

    p*_β(x_even) = exp((1 − β) b_Aᵀv) · Σ_{x_odd} exp(−β E_B(x))

where the odd layers (RBM: the hidden layer; DBM: h¹, h³, …) are summed out in closed form,
since in a layered model with only adjacent connections they are independent given the even
layers. Each run draws x from the base, then alternates a weight update log p*_{β_k} −
log p*_{β_{k−1}} with one block-Gibbs transition that leaves p_{β_k} invariant; then
Z_B / Z_A ≈ mean of the importance weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rbm_core.models.dbm import DBM
from rbm_core.models.rbm import RBM, base_rate_bias


def ais_ladder(num_betas: int = 14_500) -> Tensor:
    """A ladder 0 = β₀ < … < β_K = 1 of ``num_betas`` + 1 points (float64), spaced as in
    Salakhutdinov & Murray (2008): 500 steps on [0, 0.5], 4,000 on [0.5, 0.9] and 10,000 on
    [0.9, 1] of every 14,500, i.e. denser where the distribution changes fastest."""
    if num_betas < 3:
        raise ValueError("AIS needs at least 3 intermediate temperatures")
    low = max(1, round(num_betas * 500 / 14_500))
    mid = max(1, round(num_betas * 4_000 / 14_500))
    high = num_betas - low - mid
    parts = [
        torch.linspace(0.0, 0.5, low + 1, dtype=torch.float64)[:-1],
        torch.linspace(0.5, 0.9, mid + 1, dtype=torch.float64)[:-1],
        torch.linspace(0.9, 1.0, high + 1, dtype=torch.float64),
    ]
    return torch.cat(parts)


@dataclass(frozen=True)
class AISResult:
    """An AIS estimate of log Z.

    ``log_z`` = log Z_A + log mean(w); ``std_error`` the standard error of log Ẑ (delta method,
    std(w) / (√M · mean(w))); ``lower`` / ``upper`` = log(Ẑ ∓ ``num_std``·σ̂), the
    log-mean-exp bounds reported by Salakhutdinov & Murray (``lower`` is −inf when Ẑ − 3σ̂ ≤ 0);
    ``log_weights`` ``(M,)`` the runs' log importance weights (float64).
    """

    log_z: float
    std_error: float
    lower: float
    upper: float
    log_z_base: float
    log_weights: Tensor
    num_betas: int
    num_std: float = 3.0

    @property
    def num_runs(self) -> int:
        return self.log_weights.numel()

    @property
    def effective_sample_size(self) -> float:
        """(Σw)² / Σw²: how many of the M runs effectively carry the estimate."""
        w = torch.exp(self.log_weights - self.log_weights.max())
        return float(w.sum() ** 2 / (w * w).sum())


@dataclass(frozen=True)
class LikelihoodEstimate:
    """Average log-likelihood of a data set under an AIS estimate of log Z: ``mean`` with the
    ``std_error`` of log Ẑ and the bounds that follow from ``log_z.lower`` / ``upper``.
    For a DBM ``mean`` is itself a lower bound (mean-field bound on log p*(v) minus log Ẑ)."""

    mean: float
    std_error: float
    lower: float
    upper: float
    log_z: AISResult
    mean_log_unnormalized: float


def summarize_log_weights(log_weights: Tensor, log_z_base: float, num_betas: int, num_std: float = 3.0) -> AISResult:
    """Turn AIS log weights into the estimate, its standard error and the ±``num_std``σ̂ bounds."""
    log_weights = log_weights.detach().to(torch.float64).cpu()
    if not bool(torch.isfinite(log_weights).all()):
        raise FloatingPointError("AIS produced non-finite log weights")
    runs = log_weights.numel()
    top = log_weights.max()
    w = torch.exp(log_weights - top)
    mean_w = w.mean()
    log_z = float(log_z_base + top + torch.log(mean_w))
    rel_se = float(w.std(unbiased=True) / (math.sqrt(runs) * mean_w)) if runs > 1 else math.inf
    lower_factor = 1.0 - num_std * rel_se
    lower = log_z + math.log(lower_factor) if lower_factor > 0 else -math.inf
    upper = log_z + math.log1p(num_std * rel_se)
    return AISResult(log_z, rel_se, lower, upper, float(log_z_base), log_weights, num_betas, num_std)


def _parameters_like(model) -> Tensor:
    return next(iter(model.parameters()))


def _even_energy(model, layers: Sequence[Tensor], odd: Sequence[int]) -> Tensor:
    """E(x) with the odd layers at zero: the even layers' own terms, per sample (for an RBM and
    a DBM just their bias terms, since even layers never touch each other)."""
    if isinstance(model, RBM):
        return -(model.visible.flatten(layers[0]) @ model.visible_bias)
    if isinstance(model, DBM):
        return -sum(model._flat(i, layers[i]) @ model.biases[i] for i in range(0, len(layers), 2))
    zeroed = [torch.zeros_like(x) if i in odd else x for i, x in enumerate(layers)]
    return model.energy(zeroed)


@torch.no_grad()
def ais_log_partition(
    model,
    *,
    betas: Sequence[float] | Tensor | None = None,
    num_betas: int = 14_500,
    num_runs: int = 100,
    base_data: Tensor | None = None,
    base_bias: Tensor | None = None,
    generator: torch.Generator | None = None,
    num_std: float = 3.0,
) -> AISResult:
    """Estimate log Z of an RBM (Bernoulli or softmax visible units) or a DBM by AIS.

    ``betas``: the ladder 0 = β₀ < … < β_K = 1 (default ``ais_ladder(num_betas)``).
    ``num_runs``: independent runs M (all advanced together as one batch).
    ``base_data``: encoded visible data ``(N, …)`` whose base rates give the base model's
    visible biases b_A (the usual choice); or give ``base_bias`` (flat ``(V,)``); with neither
    the base is uniform. The model must connect only adjacent layers.
    """
    if not getattr(model, "layers_conditionally_independent", True):
        raise ValueError("AIS here needs a layered model with adjacent connections only (RBM, DBM)")
    ladder = torch.as_tensor(ais_ladder(num_betas) if betas is None else betas, dtype=torch.float64).flatten()
    if ladder.numel() < 2 or float(ladder[0]) != 0.0 or float(ladder[-1]) != 1.0:
        raise ValueError("the AIS ladder must run from 0 to 1")
    if not bool((ladder[1:] > ladder[:-1]).all()):
        raise ValueError("the AIS ladder must be strictly increasing")
    param = _parameters_like(model)
    dtype, device = param.dtype, param.device
    layers_units = list(model.layers)
    visible = layers_units[0]
    odd = [i for i in range(1, len(layers_units), 2)]
    even = [i for i in range(len(layers_units)) if i % 2 == 0]

    if base_bias is None:
        if base_data is None:
            base_bias = torch.zeros(visible.flat_size, dtype=dtype, device=device)
        else:
            base_bias = base_rate_bias(visible, base_data.to(device=device, dtype=dtype))
    base_bias = base_bias.to(device=device, dtype=dtype).reshape(visible.flat_size)
    base_field = visible.unflatten(base_bias.unsqueeze(0))  # (1, …) in the visible state shape

    # log Z of the β = 0 end: the base visible model times uniform other layers (2 states each).
    log_z_base = float(visible.log_partition(base_field.to(torch.float64)).squeeze(0))
    for units in layers_units[1:]:
        zero = torch.zeros(units.state_shape(1), dtype=torch.float64, device=device)
        log_z_base += float(units.log_partition(zero).squeeze(0))

    # Draw the runs from the base: v from its base rates, other even layers uniform.
    state: list[Tensor] = [visible.sample(base_field.expand(visible.state_shape(num_runs)), generator=generator)]
    for units in layers_units[1:]:
        state.append(units.random_state(num_runs, generator, dtype, device))

    log_w = torch.zeros(num_runs, dtype=torch.float64, device=device)
    betas_list = ladder.tolist()
    for k in range(1, len(betas_list)):
        beta_prev, beta = betas_list[k - 1], betas_list[k]
        odd_fields = {i: model.field(i, state) for i in odd}
        # log p*_β(x) = −β E_B(x_even, odd=0) + (1 − β) b_Aᵀv + Σ_odd log Σ_{x_i} exp(β <field_i, x_i>)
        linear = -_even_energy(model, state, odd).to(torch.float64)
        linear = linear - visible.flatten(state[0]).to(torch.float64) @ base_bias.to(torch.float64)
        log_w += (beta - beta_prev) * linear
        for i, field in odd_fields.items():
            f64 = field.to(torch.float64)
            log_w += layers_units[i].log_partition(f64, beta) - layers_units[i].log_partition(f64, beta_prev)
        if k == len(betas_list) - 1:
            break
        # One block-Gibbs transition leaving p_β invariant: odd layers | even, then even | odd.
        for i, field in odd_fields.items():
            state[i] = layers_units[i].sample(field, beta, generator=generator)
        for i in even:
            field = model.field(i, state) * beta
            if i == 0:
                field = field + (1.0 - beta) * base_field
            state[i] = layers_units[i].sample(field, generator=generator)
    return summarize_log_weights(log_w, log_z_base, len(betas_list) - 1, num_std)


def log_unnormalized_bound(model, data: Tensor, **mean_field) -> Tensor:
    """Per-sample log p*(v) (RBM: exact, −F(v)) or a lower bound on it (DBM: the mean-field
    bound −E(v, μ) + H(q), with ``mean_field`` options for the model's ``mean_field``),
    shape ``(batch,)``."""
    if hasattr(model, "free_energy"):
        return -model.free_energy(data)
    if hasattr(model, "mean_field_lower_bound"):
        return model.mean_field_lower_bound(data, 0.0, **mean_field)
    raise TypeError(f"{type(model).__name__} provides neither free_energy nor a mean-field bound")


@torch.no_grad()
def ais_log_likelihood(
    model,
    data: Tensor,
    result: AISResult | None = None,
    *,
    mean_field: dict | None = None,
    **ais_options,
) -> LikelihoodEstimate:
    """Average log-likelihood of encoded ``data`` (fully observed) under an AIS estimate of log Z:
    mean log p*(v) − log Ẑ (for a DBM, the mean-field bound on log p*(v): a lower bound, as in
    Salakhutdinov & Hinton 2009). Pass an existing ``result`` or options for ``ais_log_partition``;
    ``mean_field`` holds options for a DBM's mean-field (``max_iter``, ``tol``, ``damping``)."""
    mask = model.layers[0].mask(data)
    if mask is not None and not bool(mask.all()):
        raise ValueError("AIS log-likelihood needs fully observed data (no missing softmax units)")
    if result is None:
        result = ais_log_partition(model, **ais_options)
    values = []
    for start in range(0, data.shape[0], 4096):
        chunk = data[start : start + 4096]
        values.append(log_unnormalized_bound(model, chunk, **(mean_field or {})).to(torch.float64))
    mean_unnorm = float(torch.cat(values).mean())
    return LikelihoodEstimate(
        mean=mean_unnorm - result.log_z,
        std_error=result.std_error,
        lower=mean_unnorm - result.upper,
        upper=mean_unnorm - result.lower,
        log_z=result,
        mean_log_unnormalized=mean_unnorm,
    )
