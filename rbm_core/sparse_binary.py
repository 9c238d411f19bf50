"""Exact fast products for 0/1 matrices on the CPU: x @ W for a binary x is the sum of the rows of W
that x's ones select, so a sparse batch (MNIST images, sampled states) costs its ones, not its size.

``binary_matmul(x, weight, bias)`` and ``binary_outer(vp, pp, vn, pn)`` return ``None`` whenever the fast
path does not apply (not the CPU, autograd recording, values other than exactly 0 and 1, too dense, or
too small to be worth it); the caller then takes its dense path. Results equal the dense products up to
floating-point summation order.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

# Densities above which the dense BLAS product is faster (measured on a 2-core AVX-512 CPU, 784 x 500,
# batch 100: gathering rows breaks even near 25 % ones for x @ W with one or two threads, and near 20 %
# (one thread) or 12 % (two threads, where the index building stays serial) for the stacked gradient);
# products smaller than MIN_WORK multiply-adds stay dense.
MAX_DENSITY = 0.25
MAX_DENSITY_OUTER = 0.2
MAX_DENSITY_OUTER_THREADED = 0.12
MIN_WORK = 1 << 20

_FLOAT_TYPES = (torch.float32, torch.float64)
enabled = True  # module switch: False forces the dense path everywhere (for tests and comparisons)


def _usable(*tensors: Tensor) -> bool:
    if not enabled or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        return False
    return all(
        t.device.type == "cpu" and t.dim() == 2 and t.is_contiguous() and t.dtype in _FLOAT_TYPES for t in tensors
    )


def _count_binary(values: np.ndarray, ones: np.ndarray) -> int | None:
    """The number of ones of ``values`` (given ``ones = values == 1``), or None if some entry is
    neither exactly 0 nor exactly 1."""
    count = np.count_nonzero(ones)
    return count if count + np.count_nonzero(values == 0) == values.size else None


def _bags(mask: np.ndarray) -> tuple[Tensor, Tensor]:
    """(indices, offsets) for ``embedding_bag`` of a boolean ``(rows, cols)`` mask: each row's
    column indices of its ones."""
    rows, cols = mask.shape
    flat = np.flatnonzero(mask)
    offsets = np.searchsorted(flat, np.arange(rows, dtype=np.int64) * cols)
    return torch.from_numpy(flat % cols), torch.from_numpy(offsets)


def binary_matmul(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, max_density: float = MAX_DENSITY
) -> Tensor | None:
    """``bias + x @ weight`` for a 0/1 matrix ``x`` ``(batch, n)`` and ``weight`` ``(n, m)`` by summing
    the selected rows of ``weight``; ``None`` where the dense product should be used instead."""
    if x.dim() != 2 or x.shape[1] != weight.shape[0] or x.dtype != weight.dtype:
        return None  # the dense product reports any shape error
    if x.shape[0] * weight.shape[0] * weight.shape[1] < MIN_WORK:
        return None
    if not _usable(x, weight):
        return None
    values = x.detach().numpy()
    ones = values == 1
    count = _count_binary(values, ones)
    if count is None or count > max_density * values.size:
        return None
    indices, offsets = _bags(ones)
    out = F.embedding_bag(indices, weight, offsets, mode="sum")
    return out if bias is None else out.add_(bias)


def binary_outer(
    positive: Tensor,
    positive_hidden: Tensor,
    negative: Tensor,
    negative_hidden: Tensor,
    max_density: float | None = None,
) -> Tensor | None:
    """``negativeᵀ negative_hidden / len(negative) - positiveᵀ positive_hidden / len(positive)``
    ``(n, m)`` for 0/1 matrices ``positive`` / ``negative`` ``(batch, n)`` in one pass: row i is the sum
    of the (signed, scaled) hidden rows of the samples whose unit i is on. ``None`` where the dense
    products should be used instead."""
    if not _usable(positive, positive_hidden, negative, negative_hidden):
        return None
    num_pos, num_neg = positive.shape[0], negative.shape[0]
    n, m = positive.shape[1], positive_hidden.shape[1]
    if not positive.dtype == negative.dtype == positive_hidden.dtype == negative_hidden.dtype:
        return None
    if negative.shape[1] != n or negative_hidden.shape[1] != m or (num_pos + num_neg) * n * m < MIN_WORK:
        return None
    if max_density is None:
        max_density = MAX_DENSITY_OUTER if torch.get_num_threads() == 1 else MAX_DENSITY_OUTER_THREADED
    arrays = (positive.detach().numpy(), negative.detach().numpy())
    num_ones = 0
    for values in arrays:  # cheap checks first, so a dense batch costs next to nothing
        count = _count_binary(values, values == 1)
        if count is None:
            return None
        num_ones += count
    if num_ones > max_density * (num_pos + num_neg) * n:
        return None
    # Units along rows, samples along columns: bag i lists the samples whose unit i is on.
    ones = np.empty((n, num_pos + num_neg), dtype=bool)
    np.equal(arrays[0].T, 1, out=ones[:, :num_pos])
    np.equal(arrays[1].T, 1, out=ones[:, num_pos:])
    indices, offsets = _bags(ones)
    hidden = torch.cat([positive_hidden * (-1.0 / num_pos), negative_hidden * (1.0 / num_neg)])
    return F.embedding_bag(indices, hidden, offsets, mode="sum")
