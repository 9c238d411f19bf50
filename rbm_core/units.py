"""Unit types of a Boltzmann machine layer: each owns its energy term, its conditional
distribution given a field, and its sampler, all at an inverse temperature ``beta``.

A layer's *field* is the total input of each unit (bias plus weighted input from the other
layers); given its field a layer's units are independent and p(x) ∝ exp(beta * <field, x>).

State shapes
------------
- Bernoulli units: ``(batch, size)`` with values in {0, 1} (or probabilities in [0, 1]).
- Softmax units: ``(batch, size, K)`` one-hot rows; a missing (masked) unit is an all-zero row,
  so it takes no part in any energy term, any field, or any gradient.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F


class InvalidInputError(ValueError):
    """Input data of the wrong shape, dtype or value range."""


def _check_finite(x: Tensor, what: str) -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise InvalidInputError(f"{what} contains NaN or infinite values")


def _check_mask(mask: Tensor | None, field: Tensor) -> None:
    """A softmax mask must be ``(batch, size)``, one entry per unit of ``field`` ``(batch, size, K)``."""
    if mask is not None and tuple(mask.shape) != tuple(field.shape[:-1]):
        raise InvalidInputError(
            f"mask has shape {tuple(mask.shape)}, expected {tuple(field.shape[:-1])} (batch, units)"
        )


@dataclass(frozen=True)
class BernoulliUnits:
    """``size`` binary units with values in {0, 1}."""

    size: int

    num_values = 2
    kind = "bernoulli"

    @property
    def flat_size(self) -> int:
        """Number of weight-matrix rows (or columns) the layer occupies."""
        return self.size

    @property
    def num_states(self) -> int:
        return 2**self.size

    def state_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.size)

    def flatten(self, x: Tensor) -> Tensor:
        return x

    def unflatten(self, x: Tensor) -> Tensor:
        return x

    def encode(self, data: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Validate raw data ``(batch, size)`` in {0, 1} and return it as a float state."""
        if data.dim() != 2 or data.shape[1] != self.size:
            raise InvalidInputError(
                f"expected Bernoulli data of shape (batch, {self.size}), got {tuple(data.shape)}"
            )
        if data.dtype != torch.bool:
            # one pass finds any entry that is neither 0 nor 1 (NaN included); diagnose only then
            outside = (data != 0) & (data != 1)
            if bool(outside.any()):
                _check_finite(data, "Bernoulli data")
                raise InvalidInputError(f"Bernoulli data must be 0 or 1, found {data[outside][0].item()!r}")
        return data.to(dtype)

    def mask(self, x: Tensor) -> Tensor | None:
        return None

    def linear_energy(self, x: Tensor, field: Tensor) -> Tensor:
        """-<field, x> per sample, shape ``(batch,)``."""
        return -(x * field).sum(-1)

    def log_partition(self, field: Tensor, beta: float | Tensor = 1.0, mask: Tensor | None = None) -> Tensor:
        """log sum_x exp(beta <field, x>) per sample: sum of softplus(beta * field)."""
        return F.softplus(_scale(field, beta)).sum(-1)

    def mean(self, field: Tensor, beta: float | Tensor = 1.0, mask: Tensor | None = None) -> Tensor:
        """E[x | field] = sigmoid(beta * field)."""
        return torch.sigmoid(_scale(field, beta))

    def sample(
        self,
        field: Tensor,
        beta: float | Tensor = 1.0,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        mean: Tensor | None = None,
    ) -> Tensor:
        p = self.mean(field, beta) if mean is None else mean
        # u < p with u ~ U[0, 1) is 1 with probability p; comparing in place into the uniforms
        # costs one allocation and is about twice as fast as torch.bernoulli on the CPU.
        return torch.rand(p.shape, generator=generator, dtype=p.dtype, device=p.device).lt_(p)

    def log_prob(self, x: Tensor, field: Tensor, beta: float | Tensor = 1.0) -> Tensor:
        """log p(x | field) per sample, shape ``(batch,)``."""
        return -self.linear_energy(x, _scale(field, beta)) - self.log_partition(field, beta)

    def all_states(self, dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> Tensor:
        """Every configuration of the layer, shape ``(2**size, size)``."""
        return _enumerate(self.size, 2, dtype, device)

    def random_state(self, batch: int, generator=None, dtype=torch.float32, device=None) -> Tensor:
        p = torch.full((batch, self.size), 0.5, dtype=dtype, device=device)
        return torch.bernoulli(p, generator=generator)


@dataclass(frozen=True)
class SoftmaxUnits:
    """``size`` units each taking one of ``num_values`` values, one-hot encoded.

    Raw data is an integer matrix ``(batch, size)`` with values 1..K and 0 for missing;
    ``encode`` turns it into the one-hot state with all-zero rows for missing units.
    """

    size: int
    num_values: int = 5

    kind = "softmax"

    @property
    def flat_size(self) -> int:
        return self.size * self.num_values

    @property
    def num_states(self) -> int:
        return self.num_values**self.size

    def state_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.size, self.num_values)

    def flatten(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], self.flat_size)

    def unflatten(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], self.size, self.num_values)

    def encode(self, data: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Validate integer ratings ``(batch, size)`` (0 = missing, 1..K) and one-hot them.

        Also accepts an already one-hot state ``(batch, size, K)`` and validates it.
        """
        if data.dim() == 3:
            if data.shape[1:] != (self.size, self.num_values):
                raise InvalidInputError(
                    f"expected one-hot softmax state of shape (batch, {self.size}, {self.num_values}), "
                    f"got {tuple(data.shape)}"
                )
            _check_finite(data, "softmax state")
            if not bool(((data == 0) | (data == 1)).all()) or bool((data.sum(-1) > 1).any()):
                raise InvalidInputError("softmax state rows must be one-hot or all zero (missing)")
            return data.to(dtype)
        if data.dim() != 2 or data.shape[1] != self.size:
            raise InvalidInputError(
                f"expected ratings of shape (batch, {self.size}) with 0 for missing, got {tuple(data.shape)}"
            )
        _check_finite(data, "ratings")
        if data.is_floating_point() and not bool((data == data.round()).all()):
            raise InvalidInputError("ratings must be whole numbers 1..K (0 for missing)")
        codes = data.long()
        bad = (codes < 0) | (codes > self.num_values)
        if bool(bad.any()):
            raise InvalidInputError(
                f"ratings must lie in 1..{self.num_values} (0 for missing), found {codes[bad][0].item()}"
            )
        return self.one_hot(codes, dtype)

    def one_hot(self, codes: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Integer codes ``(batch, size)`` in 0..K (0 missing) to one-hot ``(batch, size, K)``."""
        full = F.one_hot(codes.long(), self.num_values + 1).to(dtype)
        return full[..., 1:]

    def decode(self, x: Tensor) -> Tensor:
        """One-hot state to integer codes 1..K, 0 where missing."""
        return torch.where(x.sum(-1) > 0, x.argmax(-1) + 1, torch.zeros((), dtype=torch.long, device=x.device))

    def mask(self, x: Tensor) -> Tensor:
        """Boolean ``(batch, size)``: True where the unit is observed."""
        return x.sum(-1) > 0

    def linear_energy(self, x: Tensor, field: Tensor) -> Tensor:
        return -(x * field).sum((-1, -2))

    def log_partition(self, field: Tensor, beta: float | Tensor = 1.0, mask: Tensor | None = None) -> Tensor:
        """log sum_x exp(beta <field, x>) over the observed units: sum of logsumexp over K."""
        _check_mask(mask, field)
        per_unit = torch.logsumexp(_scale(field, beta), dim=-1)
        if mask is not None:
            per_unit = per_unit * mask.to(per_unit.dtype)
        return per_unit.sum(-1)

    def mean(self, field: Tensor, beta: float | Tensor = 1.0, mask: Tensor | None = None) -> Tensor:
        """p(x_i = k | field) as ``(batch, size, K)``; masked units get all-zero rows."""
        _check_mask(mask, field)
        p = torch.softmax(_scale(field, beta), dim=-1)
        if mask is not None:
            p = p * mask.unsqueeze(-1).to(p.dtype)
        return p

    def sample(
        self,
        field: Tensor,
        beta: float | Tensor = 1.0,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        mean: Tensor | None = None,
    ) -> Tensor:
        p = torch.softmax(_scale(field, beta), dim=-1) if mean is None else mean
        _check_mask(mask, p)
        # Inverse-CDF sampling: one uniform per unit, first value whose cumulative mass exceeds it.
        u = torch.rand(p.shape[:-1] + (1,), generator=generator, dtype=p.dtype, device=p.device)
        cdf = p.cumsum(-1)
        index = (cdf < u * cdf[..., -1:]).sum(-1, keepdim=True).clamp_(max=self.num_values - 1)
        x = torch.zeros_like(p).scatter_(-1, index, 1.0)
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        return x

    def log_prob(self, x: Tensor, field: Tensor, beta: float | Tensor = 1.0) -> Tensor:
        return -self.linear_energy(x, _scale(field, beta)) - self.log_partition(field, beta, self.mask(x))

    def all_states(self, dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> Tensor:
        """Every fully observed configuration, shape ``(K**size, size, K)``."""
        codes = _enumerate(self.size, self.num_values, torch.long, device) + 1
        return self.one_hot(codes, dtype)

    def random_state(self, batch: int, generator=None, dtype=torch.float32, device=None) -> Tensor:
        field = torch.zeros(self.state_shape(batch), dtype=dtype, device=device)
        return self.sample(field, generator=generator)


Units = BernoulliUnits | SoftmaxUnits


def units_from_spec(kind: str, size: int, num_values: int = 2) -> Units:
    if kind == "bernoulli":
        return BernoulliUnits(size)
    if kind == "softmax":
        return SoftmaxUnits(size, num_values)
    raise ValueError(f"unknown unit kind {kind!r}; expected 'bernoulli' or 'softmax'")


def _scale(field: Tensor, beta: float | Tensor) -> Tensor:
    if isinstance(beta, Tensor):
        # A per-sample beta (shape (batch,)) broadcasts over the unit dimensions.
        return field * beta.reshape(beta.shape + (1,) * (field.dim() - beta.dim()))
    return field if beta == 1.0 else field * beta


def _enumerate(size: int, values: int, dtype: torch.dtype, device) -> Tensor:
    if values**size > 2**24:
        raise ValueError(f"refusing to enumerate {values}**{size} states")
    rows = list(itertools.product(range(values), repeat=size))
    return torch.tensor(rows, dtype=dtype, device=device).reshape(len(rows), size)
