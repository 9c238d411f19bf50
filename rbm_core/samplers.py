"""Markov-chain samplers as transitions on an explicit chain state.

A sampler never owns parameters: ``init(model, visible) -> state`` starts chains and
``step(model, state, generator) -> (state, info)`` advances them. Models expose ``layers``
(unit types), ``field(index, state)`` and ``energy(state)``; block Gibbs works for any
layered model whose layers only connect to neighbours (RBM, DBM).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol, Sequence

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

    def with_layers(self, layers: Sequence[Tensor], means: Sequence[Tensor | None] | None = None) -> "ChainState":
        return replace(self, layers=tuple(layers), means=None if means is None else tuple(means))

    def index(self, rows: Tensor | slice) -> "ChainState":
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
            mask = model.layers[0].mask(visible)
            layers: list[Tensor] = [visible]
            for units in model.layers[1:]:
                layers.append(torch.zeros(units.state_shape(visible.shape[0]), dtype=visible.dtype, device=visible.device))
            state = ChainState(tuple(layers), mask, beta)
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
