"""Gradient estimators: the negative phase of maximum-likelihood learning.

An estimator turns a positive batch (encoded visible states) into negative-phase chain states;
CD-k restarts its chains at the data, PCD keeps them between calls. The model then turns the
pair into a gradient (``contrastive_grads`` or autograd of ``contrastive_loss``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rbm_core.samplers import BlockGibbs, ChainState


@dataclass
class NegativePhase:
    state: ChainState
    info: dict[str, Any] = field(default_factory=dict)


class ContrastiveDivergence:
    """CD-k: k block-Gibbs steps from the data. ``k`` may be an int or a function of the epoch
    (e.g. 1 → 3 → 5 → 9 during training); the trainer calls ``set_epoch``."""

    persistent = False

    def __init__(self, k: int | Callable[[int], int] = 1, sampler: BlockGibbs | None = None) -> None:
        self._k = k
        self.k = k(0) if callable(k) else k
        self.sampler = sampler or BlockGibbs()

    def set_epoch(self, epoch: int) -> None:
        self.k = self._k(epoch) if callable(self._k) else self._k

    def negative_phase(self, model, positive: Tensor, generator: torch.Generator | None = None) -> NegativePhase:
        fast = getattr(model, "binary_cd_chain", None)
        if fast is not None and type(self.sampler) is BlockGibbs:
            # an RBM with Bernoulli units runs the same chain fused (sparse_binary.binary_chain)
            chain = fast(positive, self.k, generator)
            if chain is not None:
                means = (chain.visible_mean, chain.hidden_mean)
                state = ChainState((chain.visible, chain.hidden), means=means)
                return NegativePhase(state, {"positive_means": (None, chain.positive_hidden), "binary_chain": chain})
        state = self.sampler.init(model, positive, generator)
        positive_means = state.means
        state = self.sampler.run(model, state, self.k, generator)
        return NegativePhase(state, {"positive_means": positive_means})

    def reset(self) -> None:
        pass


class PersistentContrastiveDivergence(ContrastiveDivergence):
    """PCD-k (Tieleman 2008): ``num_chains`` fantasy particles carried across updates; started
    from the first batch (or random states when ``num_chains`` exceeds it)."""

    persistent = True

    def __init__(self, k: int | Callable[[int], int] = 1, num_chains: int | None = None, sampler: BlockGibbs | None = None) -> None:
        super().__init__(k, sampler)
        self.num_chains = num_chains
        self.state: ChainState | None = None

    def reset(self) -> None:
        self.state = None

    def negative_phase(self, model, positive: Tensor, generator: torch.Generator | None = None) -> NegativePhase:
        if self.state is None or self.state.visible.device != positive.device:
            self.state = self.sampler.init(model, self._initial_visible(model, positive, generator), generator)
        self.state = self.sampler.run(model, self.state, self.k, generator)
        return NegativePhase(self.state)

    def _initial_visible(self, model, positive: Tensor, generator) -> Tensor:
        n = self.num_chains or positive.shape[0]
        if n <= positive.shape[0]:
            return positive[:n].clone()
        extra = model.layers[0].random_state(n - positive.shape[0], generator, positive.dtype, positive.device)
        return torch.cat([positive, extra])


class ExactNegativePhase:
    """The exact negative phase of a small model with a free energy (an RBM): every visible state,
    weighted by its exact p(v) (``info["weights"]``), with its exact p(h|v). With it the trainer
    follows the exact log-likelihood gradient; meant for tests and tiny models (K**n or 2**n
    visible states). Fully observed data only: masked softmax cases each have their own model."""

    persistent = False

    def set_epoch(self, epoch: int) -> None:
        pass

    def reset(self) -> None:
        pass

    def negative_phase(self, model, positive: Tensor, generator: torch.Generator | None = None) -> NegativePhase:
        from rbm_core.partition import visible_distribution  # partition imports the models

        mask = model.layers[0].mask(positive)
        if mask is not None and not bool(mask.all()):
            raise ValueError("the exact negative phase needs fully observed data (no masked units)")
        with torch.no_grad():
            states, log_p = visible_distribution(model)
            hidden = model.hidden_mean(states)
            positive_hidden = model.hidden_mean(positive)
        state = ChainState((states, hidden), None, None, (None, hidden))
        return NegativePhase(state, {"weights": log_p.exp(), "positive_means": (None, positive_hidden)})

