"""Deep Boltzmann machine: a visible layer and L >= 2 Bernoulli hidden layers with weights between
adjacent layers only, E = -Σ_l x_lᵀ W_l x_{l+1} - Σ_l b_lᵀ x_l. Mean-field posterior and its lower
bound on log p(v), persistent block-Gibbs negative phase, and greedy layer-wise pretraining."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rbm_core.estimators import NegativePhase
from rbm_core.models.bm import (
    MeanFieldResult,
    _complete_phases,
    _entropy,
    _flat_mask,
    _set_grad,
    _weighted_energy,
    _weighted_mean,
    _weighted_outer,
    enumerated_log_marginal,
    enumerated_log_partition,
    enumerated_posterior,
    with_conditional_means,
)
from rbm_core.models.rbm import RBM, RBMConfig
from rbm_core.samplers import ChainState
from rbm_core.units import BernoulliUnits, Units, units_from_spec


@dataclass(frozen=True)
class DBMConfig:
    """Shape of a DBM: ``num_visible`` visible units (``"bernoulli"`` or ``"softmax"`` with
    ``num_values`` = K) and ``hidden_sizes`` = (n_1, …, n_L), L >= 2."""

    num_visible: int
    hidden_sizes: tuple[int, ...]
    visible: str = "bernoulli"
    num_values: int = 2
    init_std: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(int(n) for n in self.hidden_sizes))
        if len(self.hidden_sizes) < 2:
            raise ValueError("a DBM needs at least two hidden layers (one hidden layer is an RBM)")
        if self.num_visible < 1 or any(n < 1 for n in self.hidden_sizes):
            raise ValueError("layer sizes must be positive")
        if self.visible not in ("bernoulli", "softmax"):
            raise ValueError(f"unknown visible unit kind {self.visible!r}; expected 'bernoulli' or 'softmax'")
        if self.visible == "softmax" and self.num_values < 2:
            raise ValueError("softmax units need num_values >= 2")

    def to_dict(self) -> dict:
        return asdict(self)


class DBM(nn.Module):
    """Deep Boltzmann machine with Bernoulli hidden layers.

    Parameters: ``weights[l]`` ``(n_l, n_{l+1})`` between layer l and l+1 (layer 0 visible, flat
    size ``num_visible * K`` for softmax), ``biases[l]`` ``(n_l,)``. A state is a tuple of L+1
    layer tensors ``(v, h¹, …, h^L)``.

    - ``layers``, ``field(index, state)``, ``energy(state)``: the layered interface, so
      ``BlockGibbs`` (odd layers given even ones, then even given odd) samples it exactly.
    - ``mean_field(v)``: damped fixed-point mean-field q(h¹,…,h^L|v) = Π_l Π_j Bern(μ_lj);
      ``mean_field_lower_bound(v, log_partition)`` = -E(v, μ) + H(q) - log Z <= log p(v).
    - ``gradient_step(positive, negative)``: Trainer hook: mean-field positive phase minus the
      persistent chains' statistics (use ``PersistentContrastiveDivergence`` or
      ``TwoPhaseEstimator``).
    - ``greedy_pretrain(dbm, data)``: layer-wise RBM pretraining with the doubling correction.
    - ``visible_mean_given(v, mask, steps)``: p(v_i = k | observed v) by mean-field over the
      hidden layers, missing visible units excluded from the hidden inputs.
    """

    kind = "dbm"
    layers_conditionally_independent = True

    def __init__(
        self,
        config: DBMConfig,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.visible: Units = units_from_spec(config.visible, config.num_visible, config.num_values)
        self.hidden_layers = tuple(BernoulliUnits(n) for n in config.hidden_sizes)
        sizes = [self.visible.flat_size, *config.hidden_sizes]
        self.weights = nn.ParameterList(
            nn.Parameter((torch.randn(a, b, generator=generator, dtype=dtype) * config.init_std).to(device))
            for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(n, dtype=dtype, device=device)) for n in sizes)

    @property
    def num_hidden_layers(self) -> int:
        return len(self.hidden_layers)

    # -- layered-model interface ---------------------------------------------------------------
    @property
    def layers(self) -> tuple[Units, ...]:
        return (self.visible, *self.hidden_layers)

    def _flat(self, index: int, x: Tensor) -> Tensor:
        return self.visible.flatten(x) if index == 0 else x

    def field(self, index: int, state: Sequence[Tensor]) -> Tensor:
        """Input of layer ``index`` from its neighbours: b_l + W_{l-1}ᵀx_{l-1} + W_l x_{l+1}."""
        if not 0 <= index < len(self.layers):
            raise IndexError(index)
        out = self.biases[index]
        if index > 0:
            out = out + self._flat(index - 1, state[index - 1]) @ self.weights[index - 1]
        if index < len(self.weights):
            out = out + state[index + 1] @ self.weights[index].t()
        if index == 0:
            return self.visible.unflatten(out)
        return out

    def energy(self, state: Sequence[Tensor]) -> Tensor:
        """E(v, h¹, …, h^L) per sample, shape ``(batch,)``."""
        flat = [self._flat(i, x) for i, x in enumerate(state)]
        out = -sum(x @ b for x, b in zip(flat, self.biases, strict=True))
        for layer, w in enumerate(self.weights):
            out = out - ((flat[layer] @ w) * flat[layer + 1]).sum(-1)
        return out

    def even_free_energy(self, state: Sequence[Tensor], beta: float | Tensor = 1.0) -> Tensor:
        """F_β(x_0, x_2, …) = -log Σ_{odd layers} exp(-β E), per sample ``(batch,)``: the odd
        layers (h¹, h³, …) summed out analytically, since given the even layers they are
        independent. Entries of ``state`` at odd positions are ignored. (The quantity AIS for
        a DBM anneals, as in Salakhutdinov & Hinton 2009.)"""
        layers = list(state)
        out = 0.0
        for layer in range(0, len(layers), 2):
            bias_term = self._flat(layer, layers[layer]) @ self.biases[layer]
            out = out - (bias_term * beta if isinstance(beta, Tensor) or beta != 1.0 else bias_term)
        for layer in range(1, len(layers), 2):
            layers[layer] = torch.zeros_like(layers[layer])  # the field of an odd layer depends on even layers only
        for layer in range(1, len(layers), 2):
            out = out - self.layers[layer].log_partition(self.field(layer, layers), beta)
        return out

    def encode(self, data: Tensor) -> Tensor:
        """Validate raw data and return a visible state on the model's device and dtype."""
        return self.visible.encode(data.to(self.weights[0].device), self.weights[0].dtype)

    # -- mean-field inference ------------------------------------------------------------------
    def mean_field(
        self,
        v: Tensor,
        *,
        max_iter: int = 100,
        tol: float = 1e-6,
        damping: float = 0.0,
        beta: float | Tensor = 1.0,
        init: Sequence[Tensor] | None = None,
    ) -> MeanFieldResult:
        """Fully factorised q(h|v) by damped fixed-point updates of μ_l = σ(β·field_l(v, μ)).

        Start: ``init``, else one bottom-up pass with each layer's input from below doubled
        (standing in for the missing top-down input; the top layer's is not doubled). Each
        iteration updates the odd hidden layers given their neighbours, then the even ones
        (each half-step is exact coordinate ascent of the mean-field free energy when
        ``damping`` = 0), as μ ← damping·μ + (1 - damping)·σ(·). Stops once the largest
        residual |σ(·) - μ| of an iteration is below ``tol``, or after ``max_iter`` iterations.
        Missing visible units (all-zero softmax rows) give no input."""
        num_layers = len(self.layers)
        state: list[Tensor] = [v]
        if init is not None:
            state.extend(init)
        else:
            x = self.visible.flatten(v)
            for layer in range(1, num_layers):
                scale = 2.0 if layer < num_layers - 1 else 1.0
                x = self.hidden_layers[layer - 1].mean(self.biases[layer] + scale * (x @ self.weights[layer - 1]), beta)
                state.append(x)
        residual, iterations = float("inf"), 0
        for step in range(1, max_iter + 1):
            iterations = step
            residual = 0.0
            for parity in (1, 0):
                for layer in range(2 if parity == 0 else 1, num_layers, 2):
                    target = self.hidden_layers[layer - 1].mean(self.field(layer, state), beta)
                    residual = max(residual, float((target - state[layer]).detach().abs().max()))
                    state[layer] = target if damping == 0.0 else damping * state[layer] + (1 - damping) * target
            if residual < tol:
                break
        return MeanFieldResult(tuple(state[1:]), iterations, residual < tol, residual)

    def mean_field_residual(self, v: Tensor, means: Sequence[Tensor]) -> Tensor:
        """max |σ(field_l(v, μ)) - μ_l| over layers and units: zero at an exact fixed point."""
        state = [v, *means]
        return max(
            (units.mean(self.field(layer, state)) - state[layer]).abs().max()
            for layer, units in enumerate(self.layers)
            if layer > 0
        )

    def mean_field_lower_bound(
        self, v: Tensor, log_partition: Tensor | float, result: MeanFieldResult | None = None, **mean_field: Any
    ) -> Tensor:
        """Variational lower bound per sample ``(batch,)``:
        log p(v) >= Σ_h q(h)(-E(v,h)) + H(q) - log Z = -E(v, μ) + Σ_l H(μ_l) - log Z,
        exact because E is linear in each layer and q factorises. Equality iff q = p(h|v).
        ``log_partition``: exact (``exact_log_partition``) or an AIS estimate."""
        if result is None:
            result = self.mean_field(v, **mean_field)
        entropy = sum(_entropy(mu) for mu in result.means)
        return -self.energy([v, *result.means]) + entropy - log_partition

    def positive_phase(self, v: Tensor, **mean_field: Any) -> ChainState:
        """Clamped phase by mean-field: the state ``(v, μ¹, …, μ^L)`` for the statistics."""
        with torch.no_grad():
            result = self.mean_field(v, **mean_field)
        return ChainState((v, *result.means), self.visible.mask(v))

    def visible_mean_given(
        self,
        v: Tensor,
        mask: Tensor | None = None,
        steps: int = 50,
        *,
        tol: float = 1e-6,
        damping: float = 0.0,
    ) -> Tensor:
        """p(v_i = k | observed v) (``(batch, n, K)`` softmax, ``(batch, n)`` Bernoulli): mean-field
        over the hidden layers given the observed units only (``mask`` True = observed; default
        the non-zero softmax rows), then σ/softmax of b + W¹μ¹ for every visible unit."""
        with torch.no_grad():
            flat_mask = _flat_mask(self.visible, v, mask)
            v_flat = self.visible.flatten(v)
            v_obs = self.visible.unflatten(v_flat if flat_mask is None else v_flat * flat_mask.to(v_flat.dtype))
            means = self.mean_field(v_obs, max_iter=steps, tol=tol, damping=damping).means
            return self.visible.mean(self.field(0, (v_obs, *means)))

    # -- learning ------------------------------------------------------------------------------
    def statistics(self, state: Sequence[Tensor] | ChainState, weights: Tensor | None = None) -> dict[str, Tensor]:
        """⟨-∂E/∂θ⟩ per parameter name: ⟨x_l x_{l+1}ᵀ⟩ and ⟨x_l⟩. From a ``ChainState`` with
        ``means``, each odd layer is replaced by its conditional mean given its (even)
        neighbours, which is unbiased for every term since adjacent layers have opposite parity."""
        flat = [self._flat(i, x) for i, x in enumerate(_as_layers(state))]
        stats = {
            f"weights.{layer}": _weighted_outer(flat[layer], flat[layer + 1], weights)
            for layer in range(len(self.weights))
        }
        stats.update({f"biases.{layer}": _weighted_mean(x, weights) for layer, x in enumerate(flat)})
        return stats

    @torch.no_grad()
    def two_phase_grads(
        self,
        clamped: Sequence[Tensor] | ChainState,
        free: Sequence[Tensor] | ChainState,
        clamped_weights: Tensor | None = None,
        free_weights: Tensor | None = None,
    ) -> None:
        """Write ⟨s⟩_free - ⟨s⟩_clamped into ``.grad`` (the negative log-likelihood gradient when
        the expectations are exact)."""
        positive = self.statistics(clamped, clamped_weights)
        negative = self.statistics(free, free_weights)
        for name, param in self.named_parameters():
            _set_grad(param, negative[name] - positive[name])

    def gradient_step(self, positive: Tensor, negative: NegativePhase) -> None:
        """Trainer hook: clamped statistics from ``negative.info["clamped"]`` when the
        ``TwoPhaseEstimator`` supplied them, else from a mean-field positive phase; free
        statistics from the persistent chains."""
        clamped = negative.info.get("clamped")
        if clamped is None:
            clamped = self.positive_phase(positive)
        # Odd layers' conditional means recomputed from the final state, so the statistics do
        # not depend on what a sampler (block Gibbs, tempering swaps) left in ``means``.
        self.two_phase_grads(clamped, with_conditional_means(self, negative.state))

    def contrastive_loss(
        self,
        positive: Sequence[Tensor] | ChainState,
        negative: Sequence[Tensor] | ChainState,
        positive_weights: Tensor | None = None,
        negative_weights: Tensor | None = None,
    ) -> Tensor:
        """Autograd surrogate ⟨E⟩_clamped - ⟨E⟩_free (full states or mean-field means).
        ``positive`` may be a bare visible tensor (mean-field positive phase); ``negative``
        must hold every layer (a ``ChainState`` or a tuple)."""
        positive, negative = _complete_phases(self, positive, negative)
        return _weighted_energy(self, _as_layers(positive), positive_weights) - _weighted_energy(
            self, _as_layers(negative), negative_weights, detach=True
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
        return f"visible={c.visible}({c.num_visible}, K={c.num_values}), hidden={c.hidden_sizes}"


def _as_layers(state: Sequence[Tensor] | ChainState) -> tuple[Tensor, ...]:
    """The layers the statistics use (odd layers by their conditional means) as a plain tuple."""
    if not isinstance(state, ChainState):
        return tuple(state)
    layers = list(state.layers)
    if state.means is not None:
        for layer in range(1, len(layers), 2):
            if state.means[layer] is not None:
                layers[layer] = state.means[layer]
    return tuple(layers)


# -- greedy layer-wise pretraining ----------------------------------------------------------------
class _ScaledRBM(RBM):
    """An RBM whose bottom-up input is multiplied by ``up`` and top-down input by ``down``:
    p(h|v) = σ(c + up·Wᵀv), p(v|h) = σ/softmax(b + down·Wh). The learning rule is unchanged
    (⟨v hᵀ⟩_data - ⟨v hᵀ⟩_model), as in Salakhutdinov & Hinton's DBM code."""

    def __init__(self, config: RBMConfig, up: float, down: float, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.up, self.down = up, down

    def hidden_field(self, v: Tensor) -> Tensor:
        return self.hidden_bias + self.up * (self.visible.flatten(v) @ self.weight)

    def visible_field(self, h: Tensor) -> Tensor:
        return self.visible.unflatten(self.visible_bias + self.down * (h @ self.weight.t()))


def greedy_pretrain(
    dbm: DBM,
    data: Tensor,
    *,
    epochs: int = 10,
    learning_rate: float = 0.05,
    k: int = 1,
    batch_size: int = 100,
    generator: torch.Generator | None = None,
    **trainer_kwargs: Any,
) -> list[RBM]:
    """Initialise ``dbm`` from a stack of RBMs trained greedily by CD-k (Salakhutdinov & Hinton
    2009; 2012, "An efficient learning procedure for DBMs"). Returns the trained RBMs.

    In the DBM every hidden layer below the top gets input from two neighbours, but in a stack
    each RBM layer sees one. The correction, exactly as done here:
    - first RBM (v, h¹): bottom-up input doubled, p(h¹|v) = σ(c + 2Wᵀv), p(v|h¹) = σ(b + Wh¹);
    - top RBM (h^{L-1}, h^L): top-down input doubled, p(h^{L-1}|h^L) = σ(b + 2W h^L),
      p(h^L|h^{L-1}) = σ(c + Wᵀh^{L-1});
    - middle RBMs (L >= 3): plain RBMs, whose weights are halved when put into the DBM (the
      same as doubling both directions during pretraining);
    - each RBM is trained on binary samples of the previous RBM's hidden units given its data,
      drawn with that RBM's own (doubled where applicable) bottom-up conditional;
    - DBM weights: W¹ and W^L as learned, middle ones halved; biases: the visible bias of the
      first RBM, the top hidden bias of the top RBM, and for each layer in between the mean of
      the two biases it had (hidden bias in the RBM below, visible bias in the RBM above).
    ``trainer_kwargs`` go to ``Trainer`` (momentum, callbacks, …).
    """
    from rbm_core.estimators import ContrastiveDivergence
    from rbm_core.training import Trainer

    param = dbm.weights[0]
    c = dbm.config
    sizes = [c.num_visible, *c.hidden_sizes]
    num_rbms = len(sizes) - 1
    rbms: list[RBM] = []
    current = data
    for layer in range(num_rbms):
        visible_kind = c.visible if layer == 0 else "bernoulli"
        config = RBMConfig(sizes[layer], sizes[layer + 1], visible_kind, c.num_values if layer == 0 else 2, c.init_std)
        up = 2.0 if layer == 0 else 1.0
        down = 2.0 if layer == num_rbms - 1 else 1.0
        rbm = _ScaledRBM(config, up, down, dtype=param.dtype, device=param.device, generator=generator)
        encoded = rbm.encode(current)
        rbm.init_visible_bias_from_data(current)
        Trainer(
            rbm,
            ContrastiveDivergence(k),
            learning_rate=learning_rate,
            batch_size=batch_size,
            epochs=epochs,
            generator=generator,
            **trainer_kwargs,
        ).fit(current)
        rbms.append(rbm)
        with torch.no_grad():
            current = rbm.sample_hidden(encoded, generator=generator)
    with torch.no_grad():
        for layer, rbm in enumerate(rbms):
            scale = 1.0 if layer in (0, num_rbms - 1) else 0.5
            dbm.weights[layer].copy_(scale * rbm.weight)
        dbm.biases[0].copy_(rbms[0].visible_bias)
        dbm.biases[num_rbms].copy_(rbms[-1].hidden_bias)
        for layer in range(1, num_rbms):
            dbm.biases[layer].copy_(0.5 * (rbms[layer - 1].hidden_bias + rbms[layer].visible_bias))
    return rbms
