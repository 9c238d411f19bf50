"""Markov-chain samplers as transitions on an explicit chain state.

A sampler never owns parameters: ``init(model, visible) -> state`` starts chains and
``step(model, state, generator) -> (state, info)`` advances them. Models expose ``layers``
(unit types), ``field(index, state)`` and ``energy(state)``; block Gibbs works for any
layered model whose layers only connect to neighbours (RBM, DBM).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from rbm_core.units import Units


class LayeredModel(Protocol):
    layers: Sequence[Units]

    def field(self, index: int, state: Sequence[Tensor]) -> Tensor: ...

    def energy(self, state: Sequence[Tensor]) -> Tensor: ...


@dataclass(frozen=True)
class ChainState:
    """States of a batch of chains: one tensor per layer (layer 0 is visible), the visible
    mask (softmax units; ``None`` when all units are observed) and a per-chain inverse
    temperature (``None`` means 1)."""

    layers: tuple[Tensor, ...]
    mask: Tensor | None = None
    beta: Tensor | None = None
    # Conditional means from the latest update of each layer (None where not yet updated):
    # Rao-Blackwellised statistics for the gradient, at no extra cost.
    means: tuple[Tensor | None, ...] | None = None

    @property
    def visible(self) -> Tensor:
        return self.layers[0]

    @property
    def num_chains(self) -> int:
        return self.layers[0].shape[0]

    def with_layers(self, layers: Sequence[Tensor], means: Sequence[Tensor | None] | None = None) -> ChainState:
        return replace(self, layers=tuple(layers), means=None if means is None else tuple(means))

    def index(self, rows: Tensor | slice) -> ChainState:
        def pick(x: Tensor | None) -> Tensor | None:
            return None if x is None else x[rows]

        return ChainState(
            tuple(x[rows] for x in self.layers),
            pick(self.mask),
            pick(self.beta),
            None if self.means is None else tuple(pick(m) for m in self.means),
        )


def _beta(state: ChainState) -> float | Tensor:
    return 1.0 if state.beta is None else state.beta


def clamped_state(model: LayeredModel, visible: Tensor, beta: Tensor | None = None) -> ChainState:
    """Chains at ``visible`` (an encoded state) with every hidden layer at zero, before any update."""
    zeros = [
        torch.zeros(units.state_shape(visible.shape[0]), dtype=visible.dtype, device=visible.device)
        for units in model.layers[1:]
    ]
    return ChainState((visible, *zeros), model.layers[0].mask(visible), beta)


class BlockGibbs:
    """Alternating block Gibbs. ``init`` clamps the visible layer and samples the hidden layers
    upward; each ``step`` then samples all even layers given the odd ones, then all odd layers
    given the even ones, so a state always holds odd layers drawn given the current even layers.
    For an RBM: init draws h0 ~ p(h|v0); a step draws v ~ p(v|h), then h ~ p(h|v)."""

    def init(
        self,
        model: LayeredModel,
        visible: Tensor,
        generator: torch.Generator | None = None,
        beta: Tensor | None = None,
    ) -> ChainState:
        """Chains clamped at ``visible`` (an encoded state); hidden layers sampled upward."""
        with torch.no_grad():
            state = clamped_state(model, visible, beta)
            state = self._update(model, state, parity=1, generator=generator)
            return self._update(model, state, parity=0, generator=generator, include_visible=False)

    def step(
        self, model: LayeredModel, state: ChainState, generator: torch.Generator | None = None
    ) -> tuple[ChainState, dict[str, Any]]:
        with torch.no_grad():
            state = self._update(model, state, parity=0, generator=generator)
            state = self._update(model, state, parity=1, generator=generator)
        return state, {}

    def run(
        self, model: LayeredModel, state: ChainState, num_steps: int, generator: torch.Generator | None = None
    ) -> ChainState:
        for _ in range(num_steps):
            state, _ = self.step(model, state, generator)
        return state

    @staticmethod
    def _update(
        model: LayeredModel,
        state: ChainState,
        parity: int,
        generator: torch.Generator | None,
        include_visible: bool = True,
    ) -> ChainState:
        layers = list(state.layers)
        means = list(state.means) if state.means is not None else [None] * len(layers)
        beta = _beta(state)
        start = parity if include_visible or parity == 1 else 2
        for index in range(start, len(layers), 2):
            units = model.layers[index]
            mask = state.mask if index == 0 else None
            means[index] = units.mean(model.field(index, layers), beta, mask)
            layers[index] = units.sample(None, mask=mask, generator=generator, mean=means[index])
        return state.with_layers(layers, means)


class SingleSiteGibbs:
    """Sequential single-site Gibbs sweeps: every unit in turn (layer 0's units in order, then
    layer 1's, ...) is redrawn from its exact conditional given all other units' current values.

    Valid for any layered model whose ``field(index, state)`` gives each unit's field given all
    other units (true for an RBM and a DBM, and for a ``BoltzmannMachine`` with lateral
    connections, whose lateral weights have a zero diagonal). Each single-unit update leaves the
    model's distribution invariant, so a fixed-order sweep does too. The units are visited one
    after another (a Python loop, since with full lateral connections the interaction graph is
    complete and no colouring does better); the *batch* of chains is updated in parallel.
    A model may offer ``site_field_function()`` returning ``f(index, unit, layers) -> field`` of
    one unit (``(batch,)`` or ``(batch, K)``) for speed; otherwise the layer's whole field is
    recomputed for each unit.

    After a sweep, ``state.means`` holds every unit's conditional mean given all the *other*
    units of the final state; for i != j, E[mean_i * x_j] = E[x_i * x_j], an unbiased
    (Rao-Blackwellised) estimate of the pairwise statistics.
    ``layers`` restricts the sweep to some layers (e.g. ``(1,)`` for a clamped phase).
    """

    def __init__(self, layers: Sequence[int] | None = None) -> None:
        self.update_layers = None if layers is None else tuple(layers)

    def init(
        self,
        model: LayeredModel,
        visible: Tensor,
        generator: torch.Generator | None = None,
        beta: Tensor | None = None,
    ) -> ChainState:
        """Chains clamped at ``visible``; hidden layers start at zero and get one sweep."""
        with torch.no_grad():
            state = clamped_state(model, visible, beta)
            return self.sweep(model, state, generator, range(1, len(state.layers)))

    def step(
        self, model: LayeredModel, state: ChainState, generator: torch.Generator | None = None
    ) -> tuple[ChainState, dict[str, Any]]:
        return self.sweep(model, state, generator, self.update_layers), {}

    def run(
        self, model: LayeredModel, state: ChainState, num_steps: int, generator: torch.Generator | None = None
    ) -> ChainState:
        for _ in range(num_steps):
            state, _ = self.step(model, state, generator)
        return state

    @staticmethod
    def sweep(
        model: LayeredModel,
        state: ChainState,
        generator: torch.Generator | None = None,
        update_layers: Sequence[int] | None = None,
    ) -> ChainState:
        """One sequential sweep over the units of ``update_layers`` (all layers by default)."""
        with torch.no_grad():
            layers = [x.clone() for x in state.layers]
            beta = _beta(state)
            indices = range(len(layers)) if update_layers is None else update_layers
            site_field = getattr(model, "site_field_function", None)
            field_of = site_field() if site_field is not None else (lambda i, u, xs: model.field(i, xs)[:, u])
            for index in indices:
                units = model.layers[index]
                one = replace(units, size=1)
                mask = state.mask if index == 0 else None
                for unit in range(units.size):
                    field = field_of(index, unit, layers).unsqueeze(1)
                    unit_mask = None if mask is None else mask[:, unit : unit + 1]
                    layers[index][:, unit : unit + 1] = one.sample(field, beta, unit_mask, generator)
            means = tuple(
                units.mean(model.field(i, layers), beta, state.mask if i == 0 else None)
                for i, units in enumerate(model.layers)
            )
            return state.with_layers(layers, means)
