"""Parallel tempering (replica exchange) for any layered Boltzmann machine, and the PT
gradient estimator that the generic trainer can use as its negative-phase sampler.

R replicas of every chain run at inverse temperatures 1 = β₁ > … > β_R ≥ 0. One PT step first
proposes swaps between neighbouring replicas (pairs (1,2), (3,4), … on even steps and (2,3),
(4,5), … on odd steps), each accepted with probability min(1, exp((βᵢ − βⱼ)(E(xᵢ) − E(xⱼ)))),
then advances every replica by the inner sampler at its own β. Both moves leave the product
distribution Πᵣ p_βᵣ invariant, so the β = 1 replicas sample the model itself.

The R·C chains live in one ``ChainState`` (replica-major rows: replica r holds rows
r·C … (r+1)·C − 1) with a per-row ``beta``, so one batched Gibbs step updates all replicas.
Swaps only exchange rows within a column c, which keeps softmax masks consistent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from rbm_core.estimators import NegativePhase, PersistentContrastiveDivergence
from rbm_core.samplers import BlockGibbs, ChainState, SingleSiteGibbs


def geometric_ladder(num_replicas: int, beta_min: float) -> Tensor:
    """β_r = beta_min ** (r / (R − 1)), r = 0 … R − 1: 1 = β₁ > … > β_R = beta_min (float64)."""
    if num_replicas < 1:
        raise ValueError("num_replicas must be at least 1")
    if num_replicas == 1:
        return torch.ones(1, dtype=torch.float64)
    if not 0.0 < beta_min < 1.0:
        raise ValueError("a geometric ladder needs 0 < beta_min < 1 (give the ladder explicitly to reach 0)")
    exponents = torch.arange(num_replicas, dtype=torch.float64) / (num_replicas - 1)
    return torch.pow(torch.tensor(beta_min, dtype=torch.float64), exponents)


def check_ladder(betas: Sequence[float] | Tensor) -> Tensor:
    """Validate a PT ladder: starts at 1, strictly decreasing, ends ≥ 0. Returns float64 (R,)."""
    ladder = torch.as_tensor(betas, dtype=torch.float64).flatten().cpu()
    if ladder.numel() < 1:
        raise ValueError("the temperature ladder is empty")
    if not bool(torch.isfinite(ladder).all()):
        raise ValueError("the temperature ladder must be finite")
    if abs(float(ladder[0]) - 1.0) > 1e-12:
        raise ValueError(f"the ladder must start at beta = 1, got {float(ladder[0])}")
    if ladder.numel() > 1 and not bool((ladder[1:] < ladder[:-1]).all()):
        raise ValueError("the ladder must be strictly decreasing")
    if float(ladder[-1]) < 0.0:
        raise ValueError("inverse temperatures must be >= 0")
    return ladder


@dataclass(frozen=True)
class TemperingState:
    """PT chains and their diagnostics.

    ``chains`` holds R·C chains, replica-major; ``betas`` ``(R,)`` the ladder; ``walkers``
    ``(R, C)`` which walker (an id in 0 … R·C − 1, fixed at start) sits in each slot;
    ``last_end`` ``(R·C,)`` per walker: 0 = it was at β₁ more recently than at β_R, 1 = it
    reached β_R after β₁, −1 = not yet at β₁; ``accepted`` / ``attempted`` ``(R − 1,)`` swap
    counts per neighbouring pair; ``round_trips`` completed journeys β₁ → β_R → β₁ (all walkers
    together); ``steps`` PT steps so far.
    """

    chains: ChainState
    betas: Tensor
    walkers: Tensor
    last_end: Tensor
    accepted: Tensor
    attempted: Tensor
    round_trips: int = 0
    steps: int = 0

    @property
    def num_replicas(self) -> int:
        return self.betas.numel()

    @property
    def num_chains(self) -> int:
        """Chains per replica (C)."""
        return self.chains.num_chains // self.num_replicas

    def replica(self, index: int = 0) -> ChainState:
        """The C chains at β_index (index 0: the β = 1 replica, which samples the model)."""
        c = self.num_chains
        return self.chains.index(slice(index * c, (index + 1) * c))

    @property
    def swap_rates(self) -> Tensor:
        """Accepted / attempted swaps per neighbouring pair so far, ``(R − 1,)`` (NaN if none tried)."""
        return self.accepted / self.attempted


class ParallelTempering:
    """Replica-exchange sampler: ``init(model, visible) -> TemperingState`` and
    ``step(model, state) -> (state, info)``.

    ``betas`` is an explicit ladder (1 = β₁ > … > β_R ≥ 0); otherwise a geometric ladder of
    ``num_replicas`` down to ``beta_min``. ``sampler`` is the move made at each β (block Gibbs
    where a layer's units are independent given the other layers, else single-site Gibbs):
    any object with ``init(model, visible, generator, beta=...)`` and ``step(model, state,
    generator)`` that honours the chain state's per-row ``beta``. ``gibbs_steps`` inner steps
    follow each round of swaps.
    """

    def __init__(
        self,
        betas: Sequence[float] | Tensor | None = None,
        *,
        num_replicas: int = 10,
        beta_min: float = 0.1,
        sampler: Any | None = None,
        gibbs_steps: int = 1,
    ) -> None:
        self.betas = check_ladder(betas) if betas is not None else geometric_ladder(num_replicas, beta_min)
        if gibbs_steps < 1:
            raise ValueError("gibbs_steps must be at least 1")
        self.sampler = sampler
        self.gibbs_steps = gibbs_steps

    def inner_sampler(self, model) -> Any:
        """The move made at each β: the one given, else block Gibbs where each layer's units are
        independent given the others (RBM, DBM), else single-site Gibbs (general BM)."""
        if self.sampler is not None:
            return self.sampler
        return BlockGibbs() if getattr(model, "layers_conditionally_independent", True) else SingleSiteGibbs()

    def init(self, model, visible: Tensor, generator: torch.Generator | None = None) -> TemperingState:
        """Start C chains per replica, every replica clamped at the same encoded ``visible``
        ``(C, …)``; the hidden layers are drawn at each replica's own β."""
        with torch.no_grad():
            num_replicas, num_chains = self.betas.numel(), visible.shape[0]
            device = visible.device
            betas = self.betas.to(device=device, dtype=visible.dtype)
            row_beta = betas.repeat_interleave(num_chains)
            stacked = visible.repeat((num_replicas,) + (1,) * (visible.dim() - 1))
            chains = self.inner_sampler(model).init(model, stacked, generator, beta=row_beta)
            walkers = torch.arange(num_replicas * num_chains, device=device).reshape(num_replicas, num_chains)
            last_end = torch.full((num_replicas * num_chains,), -1, dtype=torch.long, device=device)
            last_end[walkers[0]] = 0
            pairs = max(num_replicas - 1, 0)
            zeros = torch.zeros(pairs, dtype=torch.float64, device=device)
            return TemperingState(chains, self.betas.to(device), walkers, last_end, zeros, zeros.clone())

    def step(
        self, model, state: TemperingState, generator: torch.Generator | None = None
    ) -> tuple[TemperingState, dict[str, Any]]:
        """One round of neighbour swaps, then ``gibbs_steps`` moves of every replica at its β.

        ``info``: ``swap_accepted`` ``(R − 1,)`` this step's acceptance fraction per pair (NaN
        for the pairs not proposed this step), ``swap_rates`` the running rates, ``round_trips``.
        """
        with torch.no_grad():
            state, accepted_now = self.swap(model, state, generator)
            sampler = self.inner_sampler(model)
            chains = state.chains
            for _ in range(self.gibbs_steps):
                chains, _ = sampler.step(model, chains, generator)
            state = replace(state, chains=chains)
        info = {"swap_accepted": accepted_now, "swap_rates": state.swap_rates, "round_trips": state.round_trips}
        return state, info

    def run(
        self, model, state: TemperingState, num_steps: int, generator: torch.Generator | None = None
    ) -> TemperingState:
        for _ in range(num_steps):
            state, _ = self.step(model, state, generator)
        return state

    def swap(
        self, model, state: TemperingState, generator: torch.Generator | None = None
    ) -> tuple[TemperingState, Tensor]:
        """Propose the even (or odd) neighbour swaps of this step and apply the accepted ones."""
        num_replicas, num_chains = state.num_replicas, state.num_chains
        pairs = num_replicas - 1
        accepted_now = torch.full((max(pairs, 0),), math.nan, dtype=torch.float64, device=state.betas.device)
        if pairs < 1:
            return replace(state, steps=state.steps + 1), accepted_now
        chains = state.chains
        device = chains.visible.device
        first = torch.arange(state.steps % 2, pairs, 2, device=device)  # lower member of each pair
        if first.numel() == 0:
            return replace(state, steps=state.steps + 1), accepted_now
        energy = model.energy(chains.layers).to(torch.float64).reshape(num_replicas, num_chains)
        betas = state.betas.to(device=device, dtype=torch.float64)
        log_ratio = (betas[first] - betas[first + 1]).unsqueeze(-1) * (energy[first] - energy[first + 1])
        uniform = torch.rand(log_ratio.shape, generator=generator, dtype=chains.visible.dtype, device=device)
        accept = torch.log(uniform).to(torch.float64) < log_ratio  # (P, C)

        slots = torch.arange(num_replicas * num_chains, device=device).reshape(num_replicas, num_chains)
        source = slots.clone()
        source[first] = torch.where(accept, slots[first + 1], slots[first])
        source[first + 1] = torch.where(accept, slots[first], slots[first + 1])
        rows = source.reshape(-1)
        means = None if chains.means is None else tuple(None if m is None else m[rows] for m in chains.means)
        # Rows move, betas stay with the slot: the state at β_p and the one at β_{p+1} trade places.
        moved = ChainState(
            tuple(x[rows] for x in chains.layers),
            None if chains.mask is None else chains.mask[rows],
            chains.beta,
            means,
        )
        walkers = state.walkers.reshape(-1)[rows].reshape(num_replicas, num_chains)

        # Round trips: a walker completes one when it is back at β₁ after going β₁ → β_R.
        last_end = state.last_end.clone()
        top, bottom = walkers[0], walkers[-1]
        round_trips = state.round_trips + int((last_end[top] == 1).sum())
        last_end[top] = 0
        last_end[bottom] = torch.where(last_end[bottom] == 0, 1, last_end[bottom])

        rate = accept.to(torch.float64).mean(-1)
        accepted_now[first] = rate
        accepted = state.accepted.clone()
        attempted = state.attempted.clone()
        accepted[first] += accept.to(torch.float64).sum(-1)
        attempted[first] += num_chains
        new_state = TemperingState(
            moved, state.betas, walkers, last_end, accepted, attempted, round_trips, state.steps + 1
        )
        return new_state, accepted_now


class ParallelTemperingEstimator(PersistentContrastiveDivergence):
    """PT negative phase for the trainer (Desjardins et al. 2010): ``num_chains`` persistent
    chains per replica, ``k`` PT steps per parameter update. The negative phase is the β = 1
    replica, whose chain state (with its Rao-Blackwellised means at β = 1) feeds the model's
    gradient exactly as PCD's does; ``info`` carries ``swap_rates`` ``(R − 1,)`` (running),
    ``swap_accepted`` (this update) and ``round_trips`` (and, for a general BM with lateral
    weights, ``clamped``: its mean-field clamped phase, which its ``gradient_step`` needs).
    The default ladder (10 replicas down to β = 0.5) suits large models such as MNIST RBMs,
    whose energies are large enough that wider gaps between neighbours swap rarely."""

    persistent = True

    def __init__(
        self,
        k: int | Callable[[int], int] = 1,
        num_chains: int | None = None,
        betas: Sequence[float] | Tensor | None = None,
        *,
        num_replicas: int = 10,
        beta_min: float = 0.5,
        sampler: Any | None = None,
    ) -> None:
        super().__init__(k, num_chains)
        self.tempering = ParallelTempering(betas, num_replicas=num_replicas, beta_min=beta_min, sampler=sampler)
        self.state: TemperingState | None = None  # type: ignore[assignment]

    def negative_phase(self, model, positive: Tensor, generator: torch.Generator | None = None) -> NegativePhase:
        if self.state is None or self.state.chains.visible.device != positive.device:
            self.state = self.tempering.init(model, self._initial_visible(model, positive, generator), generator)
        info: dict[str, Any] = {}
        for _ in range(self.k):
            self.state, info = self.tempering.step(model, self.state, generator)
        if not getattr(model, "layers_conditionally_independent", True) and hasattr(model, "positive_phase"):
            # A general BM with lateral weights needs its clamped phase supplied (mean-field).
            info = {**info, "clamped": model.positive_phase(positive)}
        return NegativePhase(self.state.replica(0), info)
