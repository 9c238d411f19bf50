"""General Boltzmann machine: a visible and a hidden layer with visible-visible, hidden-hidden and
visible-hidden weights, E(v,h) = -½vᵀW_vv v - ½hᵀW_hh h - vᵀW h - bᵀv - cᵀh, sampled by single-site
Gibbs sweeps and trained by the two-phase (clamped minus free) rule. Also holds the exact
enumeration helpers and the two-phase estimator shared with the deep Boltzmann machine."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rbm_core.estimators import NegativePhase
from rbm_core.partition import MAX_ENUMERATED_STATES, joint_distribution
from rbm_core.samplers import BlockGibbs, ChainState, SingleSiteGibbs
from rbm_core.units import BernoulliUnits, SoftmaxUnits, Units, units_from_spec


@dataclass(frozen=True)
class BMConfig:
    """Shape of a general Boltzmann machine.

    ``visible`` is ``"bernoulli"`` or ``"softmax"`` (``num_values`` = K). ``visible_visible`` and
    ``hidden_hidden`` switch the lateral weight matrices on or off: both off is an RBM, one of
    them on is a semi-restricted Boltzmann machine.
    """

    num_visible: int
    num_hidden: int
    visible: str = "bernoulli"
    num_values: int = 2
    visible_visible: bool = True
    hidden_hidden: bool = True
    init_std: float = 0.01

    def __post_init__(self) -> None:
        if self.num_visible < 1 or self.num_hidden < 1:
            raise ValueError("num_visible and num_hidden must be positive")
        if self.visible not in ("bernoulli", "softmax"):
            raise ValueError(f"unknown visible unit kind {self.visible!r}; expected 'bernoulli' or 'softmax'")
        if self.visible == "softmax" and self.num_values < 2:
            raise ValueError("softmax units need num_values >= 2")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MeanFieldResult:
    """Fully factorised q(h|v): ``means`` has one ``(batch, n_l)`` tensor per hidden layer.
    ``residual`` is the largest |sigmoid(field) - mean| seen in the last iteration."""

    means: tuple[Tensor, ...]
    iterations: int
    converged: bool
    residual: float


def _upper_mask(units: Units, dtype: torch.dtype, device) -> Tensor:
    """Strict upper triangle at the level of *units*: (unit(p) < unit(q)) for flat indices p, q.
    For softmax units this also zeroes each unit's own K x K block."""
    k = units.num_values if isinstance(units, SoftmaxUnits) else 1
    unit_of = torch.arange(units.flat_size, device=device) // k
    return (unit_of.unsqueeze(1) < unit_of.unsqueeze(0)).to(dtype)


def _flat_mask(units: Units, v: Tensor, mask: Tensor | None) -> Tensor | None:
    """Observed-unit mask in flat layout, or None when every unit is observed."""
    if mask is None:
        mask = units.mask(v)
    if mask is None:
        return None
    if isinstance(units, SoftmaxUnits):
        return mask.unsqueeze(-1).expand(-1, -1, units.num_values).reshape(v.shape[0], -1)
    return mask


def _weighted_outer(a: Tensor, b: Tensor, weights: Tensor | None) -> Tensor:
    """Σ_n w_n a_n b_nᵀ (w = 1/N by default): an expectation of a pairwise statistic."""
    if weights is None:
        return a.t() @ b / a.shape[0]
    return (a * weights.unsqueeze(-1)).t() @ b


def _weighted_mean(a: Tensor, weights: Tensor | None) -> Tensor:
    return a.mean(0) if weights is None else weights @ a


def _set_grad(param: nn.Parameter, grad: Tensor) -> None:
    if param.grad is None:
        param.grad = grad.clone()
    else:
        param.grad.copy_(grad)


def _entropy(p: Tensor) -> Tensor:
    """Binary entropy of independent Bernoulli means, summed: shape ``(batch,)``."""
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)).sum(-1)


class BoltzmannMachine(nn.Module):
    """General (or semi-restricted) Boltzmann machine with Bernoulli hidden units.

    Parameters (V = flat visible size, ``num_visible * K`` for softmax units; H hidden units):
    ``weight`` ``(V, H)``, ``visible_bias`` ``(V,)``, ``hidden_bias`` ``(H,)``, and when switched
    on ``visible_lateral_free`` ``(V, V)`` and ``hidden_lateral_free`` ``(H, H)``.

    **How the constraints are enforced.** The lateral matrices are *parametrised*: the stored
    parameter is an unconstrained matrix A, and the weights used everywhere are the properties
    ``visible_lateral`` / ``hidden_lateral`` = U + Uᵀ with U = A ⊙ M, M the strict upper triangle
    at the level of units. So W_vv and W_hh are symmetric with a zero diagonal by construction,
    whatever an optimizer does to A; for softmax units each unit's own K x K block is zero too,
    so lateral weights join (unit, value) pairs of *different* units only. Entries of A outside
    M receive zero gradient and never matter. Each upper entry of A is one free weight
    w_ij = w_ji, whose log-likelihood gradient is ⟨x_i x_j⟩_data - ⟨x_i x_j⟩_model.

    Layered interface: ``layers`` = (visible, hidden), ``field(index, state)`` = each unit's
    field given *all other* units (lateral inputs included), ``energy(state)``. With lateral
    weights on, a layer's units are not independent given the other layer, so ``BlockGibbs`` is
    invalid (``layers_conditionally_independent`` is False); sample with ``SingleSiteGibbs``.

    Learning: ``TwoPhaseEstimator`` runs the clamped phase (visible fixed to the data, mean-field
    or Gibbs over the hidden units) and the free phase (persistent single-site Gibbs chains);
    ``gradient_step`` writes ΔW ∝ ⟨xᵢxⱼ⟩_clamped - ⟨xᵢxⱼ⟩_free into ``.grad`` (as the gradient of
    the negative log-likelihood, i.e. with the opposite sign).

    Prediction with missing values: ``visible_mean_given(v, mask, steps)`` returns
    p(v_i = k | observed v) by mean-field over the hidden units, missing units excluded.
    """

    kind = "bm"

    def __init__(
        self,
        config: BMConfig,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.visible: Units = units_from_spec(config.visible, config.num_visible, config.num_values)
        self.hidden = BernoulliUnits(config.num_hidden)
        v_size, h_size = self.visible.flat_size, self.hidden.flat_size

        def init(*shape: int) -> nn.Parameter:
            w = torch.randn(shape, generator=generator, dtype=dtype) * config.init_std
            return nn.Parameter(w.to(device))

        self.weight = init(v_size, h_size)
        self.visible_bias = nn.Parameter(torch.zeros(v_size, dtype=dtype, device=device))
        self.hidden_bias = nn.Parameter(torch.zeros(h_size, dtype=dtype, device=device))
        self.visible_lateral_free = init(v_size, v_size) if config.visible_visible else None
        self.hidden_lateral_free = init(h_size, h_size) if config.hidden_hidden else None
        self.register_buffer("_visible_upper", _upper_mask(self.visible, dtype, device), persistent=False)
        self.register_buffer("_hidden_upper", _upper_mask(self.hidden, dtype, device), persistent=False)

    # -- constrained lateral weights -----------------------------------------------------------
    @property
    def visible_lateral(self) -> Tensor | None:
        """W_vv ``(V, V)``: symmetric, zero diagonal (and zero within a softmax unit's block)."""
        if self.visible_lateral_free is None:
            return None
        upper = self.visible_lateral_free * self._visible_upper
        return upper + upper.t()

    @property
    def hidden_lateral(self) -> Tensor | None:
        """W_hh ``(H, H)``: symmetric with a zero diagonal."""
        if self.hidden_lateral_free is None:
            return None
        upper = self.hidden_lateral_free * self._hidden_upper
        return upper + upper.t()

    @property
    def layers_conditionally_independent(self) -> bool:
        """True when no lateral weights exist, so block Gibbs is a valid sampler."""
        return self.visible_lateral_free is None and self.hidden_lateral_free is None

    # -- layered-model interface ---------------------------------------------------------------
    @property
    def layers(self) -> tuple[Units, BernoulliUnits]:
        return (self.visible, self.hidden)

    def field(self, index: int, state: Sequence[Tensor]) -> Tensor:
        """Each unit's field given all other units: layer 0 in the visible state shape,
        layer 1 ``(batch, H)``. (An inverse temperature is applied by the unit types.)"""
        v_flat, h = self.visible.flatten(state[0]), state[1]
        if index == 0:
            out = torch.addmm(self.visible_bias, h, self.weight.t())
            lateral = self.visible_lateral
            if lateral is not None:
                out = out + v_flat @ lateral
            return self.visible.unflatten(out)
        if index == 1:
            out = torch.addmm(self.hidden_bias, v_flat, self.weight)
            lateral = self.hidden_lateral
            if lateral is not None:
                out = out + h @ lateral
            return out
        raise IndexError(index)

    def site_field_function(self) -> Callable[[int, int, Sequence[Tensor]], Tensor]:
        """For ``SingleSiteGibbs``: f(index, unit, layers) -> that unit's field, ``(batch,)`` or
        ``(batch, K)``, with the constrained matrices built once per sweep."""
        k = self.visible.num_values if isinstance(self.visible, SoftmaxUnits) else 1
        softmax = isinstance(self.visible, SoftmaxUnits)
        w, b, c = self.weight, self.visible_bias, self.hidden_bias
        w_vv, w_hh = self.visible_lateral, self.hidden_lateral
        flatten = self.visible.flatten

        def site_field(index: int, unit: int, layers: Sequence[Tensor]) -> Tensor:
            v_flat, h = flatten(layers[0]), layers[1]
            if index == 0:
                cols = slice(unit * k, (unit + 1) * k)
                out = b[cols] + h @ w[cols].t()
                if w_vv is not None:
                    out = out + v_flat @ w_vv[:, cols]
                return out if softmax else out[:, 0]
            out = c[unit] + v_flat @ w[:, unit]
            if w_hh is not None:
                out = out + h @ w_hh[:, unit]
            return out

        return site_field

    def energy(self, state: Sequence[Tensor]) -> Tensor:
        """E(v, h) per sample, shape ``(batch,)``."""
        return self.bilinear_energy(state, state)

    def bilinear_energy(self, left: Sequence[Tensor], right: Sequence[Tensor]) -> Tensor:
        """The symmetric bilinear form whose diagonal is the energy: E(x, x) = E(x).

        E(a, m) = -½aᵥᵀW_vv mᵥ - ½aₕᵀW_hh mₕ - ½(aᵥᵀW mₕ + mᵥᵀW aₕ) - ½bᵀ(aᵥ+mᵥ) - ½cᵀ(aₕ+mₕ).
        Its parameter gradient at (sample, conditional means) is the Rao-Blackwellised statistic."""
        av, ah = self.visible.flatten(left[0]), left[1]
        mv, mh = self.visible.flatten(right[0]), right[1]
        out = -0.5 * (((av @ self.weight) * mh).sum(-1) + ((mv @ self.weight) * ah).sum(-1))
        out = out - 0.5 * ((av + mv) @ self.visible_bias + (ah + mh) @ self.hidden_bias)
        if self.visible_lateral_free is not None:
            out = out - 0.5 * ((av @ self.visible_lateral) * mv).sum(-1)
        if self.hidden_lateral_free is not None:
            out = out - 0.5 * ((ah @ self.hidden_lateral) * mh).sum(-1)
        return out

    def conditional_mean(self, index: int, state: Sequence[Tensor], beta: float | Tensor = 1.0) -> Tensor:
        """Per-unit conditional E[x_i | all other units] for every unit of layer ``index``
        (sigmoid for Bernoulli, the K probabilities for softmax units)."""
        mask = self.visible.mask(state[0]) if index == 0 else None
        return self.layers[index].mean(self.field(index, state), beta, mask)

    def free_energy(self, v: Tensor, beta: float | Tensor = 1.0) -> Tensor:
        """F(v) with the hidden units summed out; only when ``hidden_hidden`` is off."""
        if self.hidden_lateral_free is not None:
            raise NotImplementedError("the free energy needs the hidden units independent given v")
        v_flat = self.visible.flatten(v)
        visible_term = v_flat @ self.visible_bias
        if self.visible_lateral_free is not None:
            visible_term = visible_term + 0.5 * ((v_flat @ self.visible_lateral) * v_flat).sum(-1)
        if isinstance(beta, Tensor) or beta != 1.0:
            visible_term = visible_term * beta
        hidden_field = torch.addmm(self.hidden_bias, v_flat, self.weight)
        return -visible_term - self.hidden.log_partition(hidden_field, beta)

    def encode(self, data: Tensor) -> Tensor:
        """Validate raw data and return a visible state on the model's device and dtype."""
        return self.visible.encode(data.to(self.weight.device), self.weight.dtype)

    # -- mean-field inference ------------------------------------------------------------------
    def hidden_mean_field(
        self,
        v: Tensor,
        *,
        max_iter: int = 100,
        tol: float = 1e-6,
        damping: float = 0.5,
        beta: float | Tensor = 1.0,
        init: Tensor | None = None,
    ) -> MeanFieldResult:
        """q(h|v) = Π σ(μⱼ) from the fixed point μ = σ(β(c + Wᵀv + W_hh μ)) by damped parallel
        updates μ ← damping·μ + (1 - damping)·σ(·), stopping when the largest residual
        |σ(·) - μ| falls below ``tol`` or after ``max_iter`` iterations. Without hidden-hidden
        weights the posterior factorises and one update gives it exactly. Missing visible
        units (all-zero softmax rows) contribute nothing."""
        hidden_input = torch.addmm(self.hidden_bias, self.visible.flatten(v), self.weight)
        w_hh = self.hidden_lateral
        if w_hh is None:
            return MeanFieldResult((self.hidden.mean(hidden_input, beta),), 1, True, 0.0)
        mu = self.hidden.mean(hidden_input, beta) if init is None else init
        residual, iterations = float("inf"), 0
        for step in range(1, max_iter + 1):
            iterations = step
            target = self.hidden.mean(hidden_input + mu @ w_hh, beta)
            residual = float((target - mu).detach().abs().max()) if mu.numel() else 0.0
            mu = damping * mu + (1 - damping) * target
            if residual < tol:
                break
        return MeanFieldResult((mu,), iterations, residual < tol, residual)

    def positive_phase(self, v: Tensor, **mean_field: Any) -> ChainState:
        """Clamped phase by mean-field: a state ``(v, μ)`` for the statistics."""
        with torch.no_grad():
            result = self.hidden_mean_field(v, **mean_field)
        return ChainState((v, *result.means), self.visible.mask(v))

    def visible_mean_given(
        self,
        v: Tensor,
        mask: Tensor | None = None,
        steps: int = 50,
        *,
        tol: float = 1e-6,
        damping: float = 0.5,
    ) -> Tensor:
        """p(v_i = k | observed v) for every visible unit (``(batch, n, K)`` for softmax units,
        p(v_i = 1 | ·) ``(batch, n)`` for Bernoulli), by mean-field over the hidden units given
        the *observed* units only (``mask`` True = observed; by default the non-zero softmax
        rows), then each unit's conditional given the observed units and the hidden means.
        For observed units this is the reconstruction distribution."""
        with torch.no_grad():
            flat_mask = _flat_mask(self.visible, v, mask)
            v_flat = self.visible.flatten(v)
            v_obs = v_flat if flat_mask is None else v_flat * flat_mask.to(v_flat.dtype)
            v_obs = self.visible.unflatten(v_obs)
            mu = self.hidden_mean_field(v_obs, max_iter=steps, tol=tol, damping=damping).means[0]
            return self.visible.mean(self.field(0, (v_obs, mu)))

    # -- learning ------------------------------------------------------------------------------
    def statistics(self, state: Sequence[Tensor] | ChainState, weights: Tensor | None = None) -> dict[str, Tensor]:
        """Expected sufficient statistics ⟨-∂E/∂θ⟩ for each parameter name: ⟨v hᵀ⟩, ⟨v⟩, ⟨h⟩ and
        M ⊙ ⟨v vᵀ⟩, M ⊙ ⟨h hᵀ⟩ (pairs of different units). ``state`` is a sequence (v, h) of
        states or means, or a ``ChainState`` whose ``means`` are every unit's conditional mean
        given the others: then ½(x mᵀ + m xᵀ) replaces x xᵀ (Rao-Blackwellised, unbiased for
        i ≠ j). ``weights`` ``(batch,)`` summing to 1 (default uniform), for exact expectations."""
        if isinstance(state, ChainState):
            layers = state.layers
            means = state.means if state.means is not None and all(m is not None for m in state.means) else layers
        else:
            layers = means = tuple(state)
        av, ah = self.visible.flatten(layers[0]), layers[1]
        mv, mh = self.visible.flatten(means[0]), means[1]
        stats = {
            "weight": 0.5 * (_weighted_outer(av, mh, weights) + _weighted_outer(mv, ah, weights)),
            "visible_bias": 0.5 * (_weighted_mean(av, weights) + _weighted_mean(mv, weights)),
            "hidden_bias": 0.5 * (_weighted_mean(ah, weights) + _weighted_mean(mh, weights)),
        }
        if self.visible_lateral_free is not None:
            outer = _weighted_outer(av, mv, weights)
            stats["visible_lateral_free"] = 0.5 * (outer + outer.t()) * self._visible_upper
        if self.hidden_lateral_free is not None:
            outer = _weighted_outer(ah, mh, weights)
            stats["hidden_lateral_free"] = 0.5 * (outer + outer.t()) * self._hidden_upper
        return stats

    @torch.no_grad()
    def two_phase_grads(
        self,
        clamped: Sequence[Tensor] | ChainState,
        free: Sequence[Tensor] | ChainState,
        clamped_weights: Tensor | None = None,
        free_weights: Tensor | None = None,
    ) -> None:
        """Write the two-phase rule into ``.grad`` as a gradient of the negative log-likelihood:
        grad θ = ⟨s_θ⟩_free - ⟨s_θ⟩_clamped (so an optimizer step moves θ by +lr·(clamped - free))."""
        positive = self.statistics(clamped, clamped_weights)
        negative = self.statistics(free, free_weights)
        for name, param in self.named_parameters():
            _set_grad(param, negative[name] - positive[name])

    def gradient_step(self, positive: Tensor, negative: NegativePhase) -> None:
        """Trainer hook. Uses the clamped phase the ``TwoPhaseEstimator`` put in
        ``negative.info["clamped"]``; without one (and without lateral weights, so that any
        block-Gibbs chain is valid) runs the mean-field clamped phase itself. The free
        statistics use the chains' states with every unit's conditional mean given the rest."""
        clamped = negative.info.get("clamped")
        if clamped is None:
            if not self.layers_conditionally_independent:
                raise ValueError("train a BoltzmannMachine with lateral weights with TwoPhaseEstimator")
            clamped = self.positive_phase(positive)
        # Recomputed from the final state whatever sampler made it: block Gibbs leaves the visible
        # means one half-step stale, which would bias the Rao-Blackwellised pair statistics.
        self.two_phase_grads(clamped, with_conditional_means(self, negative.state))

    def contrastive_loss(
        self,
        positive: Sequence[Tensor] | ChainState,
        negative: Sequence[Tensor] | ChainState,
        positive_weights: Tensor | None = None,
        negative_weights: Tensor | None = None,
    ) -> Tensor:
        """Autograd surrogate with the two-phase gradient: ⟨E⟩_clamped - ⟨E⟩_free (the free
        states detached), using the bilinear form at (state, means) where means are given.
        ``positive`` may be a bare visible tensor (the mean-field clamped phase is run);
        ``negative`` must hold the hidden units too (a ``ChainState`` or ``(v, h)``)."""
        positive, negative = _complete_phases(self, positive, negative)
        return _weighted_energy(self, positive, positive_weights) - _weighted_energy(
            self, negative, negative_weights, detach=True
        )

    # -- exact answers for tiny models ---------------------------------------------------------
    def exact_log_partition(self) -> Tensor:
        return enumerated_log_partition(self)

    def exact_log_likelihood(self, v: Tensor) -> Tensor:
        return enumerated_log_marginal(self, v) - enumerated_log_partition(self)

    def exact_posterior(self, v: Tensor) -> tuple[list[Tensor], Tensor]:
        return enumerated_posterior(self, v)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"visible={c.visible}({c.num_visible}, K={c.num_values}), hidden={c.num_hidden}, "
            f"visible_visible={c.visible_visible}, hidden_hidden={c.hidden_hidden}"
        )


def _complete_phases(model, positive, negative):
    """A bare visible tensor is a valid clamped phase (mean-field fills in the hidden units)
    but not a free phase: the free statistics need the chains' hidden states."""
    if isinstance(negative, Tensor):
        raise TypeError(
            f"{type(model).__name__}.contrastive_loss needs the free phase's full chain state (v, h, ...), "
            "not visible samples alone; train through the model's gradient_step (the Trainer's default)"
        )
    if isinstance(positive, Tensor):
        positive = model.positive_phase(positive)
    return positive, negative


def _weighted_energy(model, state, weights: Tensor | None, detach: bool = False) -> Tensor:
    if isinstance(state, ChainState):
        layers = state.layers
        means = state.means if state.means is not None and all(m is not None for m in state.means) else None
    else:
        layers, means = tuple(state), None
    if detach:
        layers = tuple(x.detach() for x in layers)
        means = None if means is None else tuple(m.detach() for m in means)
    energy = model.energy(layers) if means is None else model.bilinear_energy(layers, means)
    # The weights are probabilities of fixed states: constants of the surrogate.
    return energy.mean() if weights is None else weights.detach() @ energy


def with_conditional_means(model, state: ChainState) -> ChainState:
    """The same chain state with ``means`` set to every unit's conditional mean given all the
    other units of the state (what the Rao-Blackwellised statistics need)."""
    with torch.no_grad():
        beta = 1.0 if state.beta is None else state.beta
        means = tuple(
            units.mean(model.field(i, state.layers), beta, state.mask if i == 0 else None)
            for i, units in enumerate(model.layers)
        )
    return state.with_layers(state.layers, means)


# -- exact enumeration for tiny layered models (layer 0 visible) -----------------------------------
def _product_states(units_list: Sequence[Units], dtype: torch.dtype, device) -> list[Tensor]:
    per_layer = [units.all_states(dtype, device) for units in units_list]
    counts = [len(s) for s in per_layer]
    total = 1
    for c in counts:
        total *= c
    if total > MAX_ENUMERATED_STATES:
        raise ValueError(f"{total} hidden configurations are too many to enumerate")
    grids = torch.meshgrid(*[torch.arange(c, device=device) for c in counts], indexing="ij")
    return [states[g.reshape(-1)] for states, g in zip(per_layer, grids, strict=True)]


def _joint_energies(model, v: Tensor) -> tuple[list[Tensor], Tensor]:
    """Every hidden configuration (all layers above the visible one) and E(v_b, h_s) ``(B, S)``."""
    param = next(model.parameters())
    hidden = _product_states(model.layers[1:], param.dtype, param.device)
    num_hidden_states, batch = hidden[0].shape[0], v.shape[0]
    v_rep = v.repeat_interleave(num_hidden_states, 0)
    h_rep = [h.repeat((batch,) + (1,) * (h.dim() - 1)) for h in hidden]
    return hidden, model.energy([v_rep, *h_rep]).reshape(batch, num_hidden_states)


def enumerated_log_partition(model) -> Tensor:
    """Exact log Z of a small layered model by enumerating the joint (differentiable)."""
    layers, _ = joint_distribution(model)
    return torch.logsumexp(-model.energy(layers), 0)


def enumerated_log_marginal(model, v: Tensor) -> Tensor:
    """log Σ_h exp(-E(v, h)) per fully observed sample, ``(batch,)`` (differentiable)."""
    return torch.logsumexp(-_joint_energies(model, v)[1], 1)


def enumerated_posterior(model, v: Tensor) -> tuple[list[Tensor], Tensor]:
    """Exact p(h¹, h², … | v): every hidden configuration (one tensor per hidden layer, ``S``
    rows) and the log-posterior ``(batch, S)``."""
    hidden, energies = _joint_energies(model, v)
    return hidden, -energies - torch.logsumexp(-energies, 1, keepdim=True)


# -- two-phase learning for the trainer ------------------------------------------------------------
class TwoPhaseEstimator:
    """The two phases of Boltzmann-machine learning (Ackley, Hinton & Sejnowski 1985, with
    persistent free chains as in Salakhutdinov 2008), for ``BoltzmannMachine`` and ``DBM``.

    - Clamped phase, the visible units fixed to the batch: ``clamped="mean_field"`` runs the
      model's ``positive_phase`` (damped mean-field, ``max_iter``/``tol``/``damping``);
      ``clamped="gibbs"`` starts the hidden units from mean-field means, samples, and runs
      ``clamped_sweeps`` single-site Gibbs sweeps over the hidden layers only.
    - Free phase: ``num_chains`` persistent chains (started from the first batch, topped up
      with random states), advanced ``free_sweeps`` sweeps per update by ``sampler``: by default
      block Gibbs where the model's layers are conditionally independent (RBM-like BM, DBM),
      else single-site Gibbs.

    ``negative_phase`` returns the free chains with ``info["clamped"]`` holding the clamped
    phase; the model's ``gradient_step`` turns both into ⟨·⟩_clamped - ⟨·⟩_free.
    """

    persistent = True

    def __init__(
        self,
        free_sweeps: int | Callable[[int], int] = 1,
        num_chains: int | None = None,
        *,
        clamped: str = "mean_field",
        clamped_sweeps: int = 5,
        max_iter: int = 50,
        tol: float = 1e-5,
        damping: float = 0.5,
        sampler: Any = None,
    ) -> None:
        if clamped not in ("mean_field", "gibbs"):
            raise ValueError(f"clamped must be 'mean_field' or 'gibbs', not {clamped!r}")
        self._k = free_sweeps
        self.k = free_sweeps(0) if callable(free_sweeps) else free_sweeps
        self.num_chains = num_chains
        self.clamped = clamped
        self.clamped_sweeps = clamped_sweeps
        self.mean_field = {"max_iter": max_iter, "tol": tol, "damping": damping}
        self.sampler = sampler
        self.state: ChainState | None = None

    def set_epoch(self, epoch: int) -> None:
        self.k = self._k(epoch) if callable(self._k) else self._k

    def reset(self) -> None:
        self.state = None

    def _sampler(self, model):
        if self.sampler is not None:
            return self.sampler
        return BlockGibbs() if getattr(model, "layers_conditionally_independent", True) else SingleSiteGibbs()

    def clamped_phase(self, model, positive: Tensor, generator: torch.Generator | None = None) -> ChainState:
        state = model.positive_phase(positive, **self.mean_field)
        if self.clamped == "mean_field":
            return state
        with torch.no_grad():
            hidden = [
                units.sample(None, generator=generator, mean=mu)
                for units, mu in zip(model.layers[1:], state.layers[1:], strict=True)
            ]
            state = ChainState((positive, *hidden), state.mask)
            sweeper = SingleSiteGibbs(layers=range(1, len(model.layers)))
            state = sweeper.run(model, state, self.clamped_sweeps, generator)
            # The visible units are clamped: their "conditional mean" is the data itself.
            return state.with_layers(state.layers, (positive, *state.means[1:]))

    def negative_phase(self, model, positive: Tensor, generator: torch.Generator | None = None) -> NegativePhase:
        sampler = self._sampler(model)
        if self.state is None or self.state.visible.device != positive.device:
            self.state = sampler.init(model, self._initial_visible(model, positive, generator), generator)
        self.state = sampler.run(model, self.state, self.k, generator)
        return NegativePhase(self.state, {"clamped": self.clamped_phase(model, positive, generator)})

    def _initial_visible(self, model, positive: Tensor, generator) -> Tensor:
        n = self.num_chains or positive.shape[0]
        if n <= positive.shape[0]:
            return positive[:n].clone()
        extra = model.layers[0].random_state(n - positive.shape[0], generator, positive.dtype, positive.device)
        return torch.cat([positive, extra])
