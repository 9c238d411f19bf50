"""Partition functions and likelihoods. Exact enumeration for small models (summing one layer
analytically and enumerating the other); annealed importance sampling lives in ``ais``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # only for annotations: the model modules import this one
    from rbm_core.models.rbm import RBM

MAX_ENUMERATED_STATES = 2**24


def _chunks(states: int, size: int = 2**12):
    for start in range(0, states, size):
        yield start, min(start + size, states)


def exact_log_partition(model: RBM, mask: Tensor | None = None) -> Tensor:
    """Exact log Z of an RBM, as a 0-d tensor; differentiable.

    With ``mask`` ``(batch, num_visible)`` (softmax units), returns ``(batch,)``: the log Z of
    each case's own model over its observed units only (the masked units take no part).
    Enumerates whichever layer has fewer states; with a mask, always the hidden layer.
    """
    hidden_states = model.hidden.num_states
    if mask is None and model.visible.num_states < hidden_states:
        return torch.logsumexp(-model.free_energy(model.visible.all_states(model.weight.dtype, model.weight.device)), 0)
    if hidden_states > MAX_ENUMERATED_STATES:
        raise ValueError(f"{hidden_states} hidden states are too many to enumerate; use AIS")
    parts = []
    # chunks of about 2**22 field entries: few enough kernel calls, bounded memory
    chunk = max(1, 2**22 // max(1, model.visible.flat_size))
    for start, stop in _chunks(hidden_states, chunk):
        h = _hidden_states(model, start, stop)
        field = model.visible_field(h)
        if mask is None:
            visible_term = model.visible.log_partition(field)
        else:
            per_unit = torch.logsumexp(field, -1)  # (S, n) softmax units
            visible_term = per_unit @ mask.to(per_unit.dtype).t()  # (S, batch)
        bias = h @ model.hidden_bias
        parts.append(bias.unsqueeze(-1) + visible_term if mask is not None else bias + visible_term)
    return torch.logsumexp(torch.cat(parts, 0), 0)


def _hidden_states(model: RBM, start: int, stop: int) -> Tensor:
    m = model.hidden.size
    codes = torch.arange(start, stop, device=model.weight.device)
    bits = (codes.unsqueeze(-1) >> torch.arange(m - 1, -1, -1, device=codes.device)) & 1
    return bits.to(model.weight.dtype)


def exact_log_likelihood(model: RBM, v: Tensor) -> Tensor:
    """log p(v) per sample, ``(batch,)``: -F(v) - log Z (per-case log Z for masked softmax)."""
    mask = model.visible.mask(v)
    if mask is not None and bool(mask.all()):
        mask = None
    return -model.free_energy(v) - exact_log_partition(model, mask)


def visible_distribution(model: RBM) -> tuple[Tensor, Tensor]:
    """Every visible state and its exact log-probability: ``(states, log_p)``."""
    states = model.visible.all_states(model.weight.dtype, model.weight.device)
    log_p = -model.free_energy(states)
    return states, log_p - torch.logsumexp(log_p, 0)


def joint_distribution(model) -> tuple[list[Tensor], Tensor]:
    """Every joint state of a small layered model and its exact log-probability.

    Returns ``(layers, log_p)``: ``layers[i]`` holds layer i's state for each joint
    configuration (the Cartesian product), ``log_p`` the normalised log-probabilities."""
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    per_layer = [units.all_states(dtype, device) for units in model.layers]
    counts = [len(s) for s in per_layer]
    total = 1
    for c in counts:
        total *= c
    if total > MAX_ENUMERATED_STATES:
        raise ValueError(f"{total} joint states are too many to enumerate")
    grids = torch.meshgrid(*[torch.arange(c, device=device) for c in counts], indexing="ij")
    layers = [states[g.reshape(-1)] for states, g in zip(per_layer, grids, strict=True)]
    log_p = -model.energy(layers)
    return layers, log_p - torch.logsumexp(log_p, 0)
