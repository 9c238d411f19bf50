"""The neuromorphic reading of an RBM: every unit is a stochastic spiking neuron whose membrane
potential is its resting bias plus synaptic input plus logistic noise, firing when it crosses
a threshold; such a network samples the RBM exactly.

For a neuron with resting bias βᵢ, threshold θᵢ, synaptic weights Jᵢⱼ and logistic noise of
scale T, u = βᵢ + Σⱼ Jᵢⱼ vⱼ + ε with P(ε ≤ x) = σ(x / T), so

    P(spike) = P(u > θᵢ) = σ((βᵢ − θᵢ + Σⱼ Jᵢⱼ vⱼ) / T) = σ(cᵢ + Wᵢᵀv),

i.e. W = J / T and c = (β − θ) / T. Only the differences β − θ are identifiable from the RBM,
so the threshold is a free choice when converting back. Softmax visible units are groups of K
neurons under winner-take-all: each gets Gumbel noise of scale T and the largest potential
fires, which draws value k with probability softmax((β − θ + Jh) / T)_k (a logistic variable is
the difference of two Gumbels, so K = 2 reduces to the binary neuron).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rbm_core.models.rbm import RBM, RBMConfig
from rbm_core.units import SoftmaxUnits, Units


def logistic_noise(shape, scale: float, *, generator=None, dtype=torch.float32, device=None) -> Tensor:
    """Samples of the logistic distribution with location 0 and scale T: T·(log U − log(1 − U))."""
    u = torch.rand(shape, generator=generator, dtype=dtype, device=device)
    u = u.clamp_(torch.finfo(dtype).tiny, 1 - torch.finfo(dtype).eps)
    return scale * (torch.log(u) - torch.log1p(-u))


def gumbel_noise(shape, scale: float, *, generator=None, dtype=torch.float32, device=None) -> Tensor:
    """Samples of the Gumbel distribution with scale T: −T·log(−log U)."""
    u = torch.rand(shape, generator=generator, dtype=dtype, device=device)
    u = u.clamp_(torch.finfo(dtype).tiny, 1 - torch.finfo(dtype).eps)
    return -scale * torch.log(-torch.log(u))


@dataclass(frozen=True)
class SpikingNetwork:
    """Two populations of stochastic threshold neurons joined by symmetric synapses.

    ``synapses`` J ``(V, H)`` (V the flat visible size, K neurons per softmax unit);
    ``visible_rest`` / ``visible_threshold`` ``(V,)`` and ``hidden_rest`` / ``hidden_threshold``
    ``(H,)`` the resting biases β and thresholds θ; ``noise_scale`` T of the logistic (Gumbel
    for winner-take-all groups) membrane noise; ``visible`` the visible unit type.
    """

    synapses: Tensor
    visible_rest: Tensor
    visible_threshold: Tensor
    hidden_rest: Tensor
    hidden_threshold: Tensor
    noise_scale: float
    visible: Units

    def __post_init__(self) -> None:
        if not self.noise_scale > 0:
            raise ValueError("the noise scale T must be positive")

    # -- conversion ----------------------------------------------------------------------------
    @classmethod
    def from_rbm(
        cls,
        model: RBM,
        noise_scale: float = 1.0,
        *,
        hidden_threshold: Tensor | float = 0.0,
        visible_threshold: Tensor | float = 0.0,
    ) -> SpikingNetwork:
        """J = T·W, β = T·bias + θ for the chosen thresholds θ (default 0)."""
        with torch.no_grad():
            weight, b, c = model.weight.detach(), model.visible_bias.detach(), model.hidden_bias.detach()
            theta_v = torch.as_tensor(visible_threshold, dtype=b.dtype, device=b.device).expand_as(b).clone()
            theta_h = torch.as_tensor(hidden_threshold, dtype=c.dtype, device=c.device).expand_as(c).clone()
            t = float(noise_scale)
            return cls(weight * t, b * t + theta_v, theta_v, c * t + theta_h, theta_h, t, model.visible)

    def rbm_parameters(self) -> dict[str, Tensor]:
        """W = J / T, b = (β_v − θ_v) / T, c = (β_h − θ_h) / T, keyed like ``RBM`` parameters."""
        t = self.noise_scale
        return {
            "weight": self.synapses / t,
            "visible_bias": (self.visible_rest - self.visible_threshold) / t,
            "hidden_bias": (self.hidden_rest - self.hidden_threshold) / t,
        }

    def to_rbm(self) -> RBM:
        """The RBM this network samples (same dtype and device as the synapses)."""
        units = self.visible
        num_values = units.num_values if isinstance(units, SoftmaxUnits) else 2
        config = RBMConfig(units.size, self.synapses.shape[1], units.kind, num_values)
        model = RBM(config, dtype=self.synapses.dtype, device=self.synapses.device)
        model.load_state_dict(self.rbm_parameters())
        return model

    # -- simulation ----------------------------------------------------------------------------
    def hidden_potential(self, v: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Membrane potentials u = β_h + Jᵀv + logistic noise, ``(batch, H)``."""
        drive = self.hidden_rest + self.visible.flatten(v) @ self.synapses
        return drive + logistic_noise(
            drive.shape, self.noise_scale, generator=generator, dtype=drive.dtype, device=drive.device
        )

    def hidden_spikes(self, v: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One time step of the hidden neurons given visible activity: 1 where u > θ_h."""
        return (self.hidden_potential(v, generator) > self.hidden_threshold).to(self.synapses.dtype)

    def visible_spikes(self, h: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One time step of the visible neurons given hidden activity (winner-take-all for
        softmax groups), in the visible state shape."""
        drive = self.visible_rest - self.visible_threshold + h @ self.synapses.t()
        if isinstance(self.visible, SoftmaxUnits):
            drive = self.visible.unflatten(drive)
            noisy = drive + gumbel_noise(
                drive.shape, self.noise_scale, generator=generator, dtype=drive.dtype, device=drive.device
            )
            return torch.zeros_like(drive).scatter_(-1, noisy.argmax(-1, keepdim=True), 1.0)
        noise = logistic_noise(
            drive.shape, self.noise_scale, generator=generator, dtype=drive.dtype, device=drive.device
        )
        return (drive + noise > 0).to(drive.dtype)

    @torch.no_grad()
    def firing_rates(self, v: Tensor, num_steps: int, generator: torch.Generator | None = None) -> Tensor:
        """Fraction of ``num_steps`` time steps in which each hidden neuron fires while the
        visible neurons are held at ``v``: estimates p(h = 1 | v), ``(batch, H)``."""
        total = torch.zeros(v.shape[0], self.synapses.shape[1], dtype=self.synapses.dtype, device=self.synapses.device)
        for _ in range(num_steps):
            total += self.hidden_spikes(v, generator)
        return total / num_steps

    @torch.no_grad()
    def run(self, v: Tensor, num_steps: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Let the two populations drive each other for ``num_steps`` rounds (hidden fire given
        visible, then visible given hidden): block Gibbs sampling of the RBM done by neurons.
        Returns the final ``(v, h)``."""
        h = self.hidden_spikes(v, generator)
        for _ in range(num_steps):
            v = self.visible_spikes(h, generator)
            h = self.hidden_spikes(v, generator)
        return v, h
