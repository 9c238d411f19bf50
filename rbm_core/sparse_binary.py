"""Exact fast products for 0/1 matrices on the CPU: x @ W for a binary x is the sum of the rows of W
that x's ones select, so a sparse batch (MNIST images, sampled states) costs its ones, not its size.

``binary_matmul(x, weight, bias)`` and ``binary_outer(vp, pp, vn, pn)`` return ``None`` whenever the fast
path does not apply (not the CPU, autograd recording, values other than exactly 0 and 1, too dense, or
too small to be worth it); the caller then takes its dense path. Results equal the dense products up to
floating-point summation order.

``binary_chain`` runs the block-Gibbs chain of CD-k for an RBM with Bernoulli visible and hidden units in
one pass: the same conditionals and the same comparisons u < p as ``BlockGibbs``, with each layer's 0/1
pattern kept as a boolean array so that the next product and the gradient reuse it. Its uniforms come
from a NumPy ``SFC64`` generator seeded from the caller's ``torch.Generator`` (about twice as fast as
``torch.rand`` on the CPU, with the same 24-bit (float32) or 53-bit (float64) resolution); with
``fast_rng = False`` it draws ``torch.rand`` in BlockGibbs' order instead and reproduces its chains.

Where the C kernel ``rbm_core/_kernels/cd_binary.c`` builds (``use_kernel``), ``binary_chain`` runs the
whole chain in it and ``chain_gradient`` writes CD's gradient straight into the ``.grad`` buffers: the same
sums over the ones, without the NumPy index building. Its uniforms come from a counter-based SplitMix64
keyed once per run from the torch generator (same resolutions); ``fast_rng = False`` passes it
``torch.rand`` uniforms in BlockGibbs' order instead. Without a compiler everything above still works.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from rbm_core import _kernels

# Densities above which the dense BLAS product is faster (measured on a 2-core AVX-512 CPU, 784 x 500,
# batch 100: gathering rows breaks even near 25 % ones for x @ W with one or two threads, and near 20 %
# (one thread) or 12 % (two threads, where the index building stays serial) for the stacked gradient);
# products smaller than MIN_WORK multiply-adds stay dense.
MAX_DENSITY = 0.25
MAX_DENSITY_OUTER = 0.2
MAX_DENSITY_OUTER_THREADED = 0.12
# CD's paired gradient (chain_outer) sums one row per unit and sample where the data or the chain end
# is on; it beats the two dense products below these fractions of batch x units (measured as above,
# 784 x 500, batch 100, quiet machine: near 40-45 % with one thread, 30-35 % with two)
MAX_ROWS_PAIRED = 0.4
MAX_ROWS_PAIRED_THREADED = 0.3
MIN_WORK = 1 << 20

_FLOAT_TYPES = (torch.float32, torch.float64)
enabled = True  # module switch: False forces the dense path everywhere (for tests and comparisons)
fast_rng = True  # binary_chain's uniforms: NumPy SFC64 seeded from the torch generator (False: torch.rand)
use_kernel = True  # binary_chain and chain_gradient in the compiled C kernel where it builds (False: NumPy/torch)


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
    return _gather_rows(ones, weight, bias)


def _gather_rows(ones: np.ndarray, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``bias + ones @ weight`` for a boolean ``(batch, n)`` array: each row sums the rows of
    ``weight`` that its ones select."""
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
    arrays = (positive.detach().numpy(), negative.detach().numpy())
    num_ones = 0
    for values in arrays:  # cheap checks first, so a dense batch costs next to nothing
        count = _count_binary(values, values == 1)
        if count is None:
            return None
        num_ones += count
    if num_ones > _outer_density(max_density) * (num_pos + num_neg) * n:
        return None
    return _outer_from_masks(arrays[0] == 1, positive_hidden, arrays[1] == 1, negative_hidden)


def _outer_density(max_density: float | None) -> float:
    if max_density is not None:
        return max_density
    return MAX_DENSITY_OUTER if torch.get_num_threads() == 1 else MAX_DENSITY_OUTER_THREADED


def _outer_from_masks(
    positive: np.ndarray, positive_hidden: Tensor, negative: np.ndarray, negative_hidden: Tensor
) -> Tensor:
    """``binary_outer`` for boolean ``(batch, n)`` arrays of the ones of ``positive`` / ``negative``."""
    num_pos, num_neg = positive.shape[0], negative.shape[0]
    if num_pos == num_neg:
        return _paired_outer(positive, positive_hidden, negative, negative_hidden)
    # Units along rows, samples along columns: bag i lists the samples whose unit i is on.
    ones = np.empty((positive.shape[1], num_pos + num_neg), dtype=bool)
    ones[:, :num_pos] = positive.T
    ones[:, num_pos:] = negative.T
    indices, offsets = _bags(ones)
    hidden = torch.cat([positive_hidden * (-1.0 / num_pos), negative_hidden * (1.0 / num_neg)])
    return F.embedding_bag(indices, hidden, offsets, mode="sum")


def _paired_outer(
    positive: np.ndarray, positive_hidden: Tensor, negative: np.ndarray, negative_hidden: Tensor
) -> Tensor:
    """``_outer_from_masks`` for two batches of the same size, grouping the sum by sample index s:
    one row per unit and s where either batch is on, (n_s - p_s) / B where both are, n_s / B or
    -p_s / B where one is. The same sum for any two such batches, with fewer rows the more the
    batches agree: CD's chains start at their data rows, so chain s mostly agrees with data row s."""
    batch, n = positive.shape
    # code = 1 (positive only), 2 (negative only), 3 (both), units along rows; table rows: 0..B-1
    # both, B..2B-1 negative only, 2B..3B-1 positive only, i.e. row = s + B * (3 - code)
    code = np.add(positive.view(np.uint8), negative.view(np.uint8) << 1).T.copy()
    flat = np.flatnonzero(code.astype(bool))  # NumPy's nonzero is fastest on booleans
    offsets = np.searchsorted(flat, np.arange(n, dtype=np.int64) * batch)
    samples = flat % batch
    samples += batch * (3 - code.reshape(-1)[flat].astype(np.int64))
    table = torch.empty((3 * batch, positive_hidden.shape[1]), dtype=positive_hidden.dtype)
    torch.sub(negative_hidden, positive_hidden, out=table[:batch]).mul_(1.0 / batch)
    torch.mul(negative_hidden, 1.0 / batch, out=table[batch : 2 * batch])
    torch.mul(positive_hidden, -1.0 / batch, out=table[2 * batch :])
    return F.embedding_bag(torch.from_numpy(samples), table, torch.from_numpy(offsets), mode="sum")


def is_binary(x: Tensor) -> bool | None:
    """Whether every entry of a floating CPU tensor is exactly 0 or 1 (one pass of the C kernel, or a
    NumPy pass, both several times faster than torch's comparisons); ``None`` where it cannot tell this
    way (other devices, dtypes)."""
    if x.device.type != "cpu" or x.dtype not in _FLOAT_TYPES:
        return None
    kernel = _kernel()
    if kernel is not None and x.is_contiguous():  # one pass in C, several times faster again
        return kernel.count_binary(x.detach()) is not None
    values = x.detach().numpy()
    return np.count_nonzero(values == 0) + np.count_nonzero(values == 1) == values.size


# -- the block-Gibbs chain of CD-k for a Bernoulli-Bernoulli RBM -------------------------------------


_local = threading.local()  # one NumPy bit generator per thread, re-seeded for each chain run


def _seeded_sfc64(generator: torch.Generator | None) -> np.random.SFC64:
    """This thread's SFC64 bit generator with its state drawn from ``generator`` (three 63-bit words),
    so each chain run is reproducible from the torch generator. Setting the state directly, then
    discarding 12 outputs as SFC64's own seeding does, avoids constructing a generator (SeedSequence)
    each time: about 0.1 ms per run when the caches are cold, as they are between CD updates."""
    words = torch.empty(3, dtype=torch.int64).random_(generator=generator).numpy().view(np.uint64)
    bits = getattr(_local, "sfc64", None)
    if bits is None:
        bits = _local.sfc64 = np.random.SFC64(0)
    state = np.array([words[0], words[1], words[2], 1], dtype=np.uint64)  # a, b, c, counter
    bits.state = {"bit_generator": "SFC64", "state": {"state": state}, "has_uint32": 0, "uinteger": 0}
    bits.random_raw(12)
    return bits


class _Uniforms:
    """Fresh uniforms u ~ U[0, 1) for the comparisons u < p of one chain run, at ``torch.rand``'s
    resolution for the dtype: u = k / 2**bits with k uniform on 0 .. 2**bits - 1 (24 bits for
    float32, 53 for float64), each k converted exactly and scaled by a power of two. ``supplied``
    (a flat array) gives them instead, taken in order."""

    def __init__(self, generator: torch.Generator | None, dtype: torch.dtype, supplied: Tensor | None = None) -> None:
        self.generator = generator
        self.dtype = dtype
        self.source = None
        self.supplied = None if supplied is None else supplied.numpy()
        self.used = 0
        if fast_rng and supplied is None:
            self.source = _seeded_sfc64(generator)

    def less(self, p: Tensor) -> np.ndarray:
        """The boolean array u < p, elementwise, for fresh uniforms u of ``p``'s shape."""
        if self.supplied is not None:
            u = self.supplied[self.used : self.used + p.numel()]
            self.used += p.numel()
            return np.less(u, p.numpy().reshape(-1)).reshape(p.shape)
        if self.source is None:
            return torch.lt(torch.rand(p.shape, generator=self.generator, dtype=p.dtype), p).numpy()
        n = p.numel()
        if self.dtype == torch.float32:  # two 24-bit draws from each 64-bit word
            k = self.source.random_raw((n + 1) // 2).view(np.uint32)[:n]
            np.right_shift(k, 8, out=k)
            u = np.multiply(k, np.float32(2.0**-24), dtype=np.float32)
        else:
            k = self.source.random_raw(n)
            np.right_shift(k, 11, out=k)
            u = np.multiply(k, 2.0**-53, dtype=np.float64)
        return np.less(u, p.numpy().reshape(-1)).reshape(p.shape)


@dataclass
class BinaryChain:
    """End of a CD-k chain: ``visible`` / ``hidden`` the sampled states, ``visible_mean`` /
    ``hidden_mean`` their conditional means (p(v|h) of the last visible update, p(h|v) of the last
    hidden one), ``positive`` the 0/1 data it started from and ``positive_hidden`` their p(h|v), and
    ``positive_ones`` / ``visible_ones`` the boolean arrays of the ones of the data and of ``visible``
    (for ``chain_outer``; None from the C kernel, which needs no such arrays)."""

    visible: Tensor
    hidden: Tensor
    visible_mean: Tensor
    hidden_mean: Tensor
    positive_hidden: Tensor
    positive: Tensor
    positive_ones: np.ndarray | None = None
    visible_ones: np.ndarray | None = None


def _as_float(ones: np.ndarray, dtype: torch.dtype) -> Tensor:
    """A boolean array as a 0/1 tensor of ``dtype`` (NumPy converts several times faster than torch)."""
    return torch.from_numpy(ones.astype(np.float32 if dtype == torch.float32 else np.float64))


def _hidden_mean(ones: np.ndarray, count: int, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """p(h | v) = sigmoid(c + v W) for a 0/1 batch ``x`` with the boolean array ``ones`` of its
    ``count`` ones: summing rows of W when sparse, the dense product otherwise."""
    if enabled and count <= MAX_DENSITY * ones.size:
        field = _gather_rows(ones, weight, bias)
    else:
        field = torch.addmm(bias, x, weight)
    return torch.sigmoid_(field)


@torch.no_grad()
def binary_chain(
    weight: Tensor,
    visible_bias: Tensor,
    hidden_bias: Tensor,
    positive: Tensor,
    num_steps: int,
    generator: torch.Generator | None = None,
    min_work: int = MIN_WORK,
    uniforms: Tensor | None = None,
) -> BinaryChain | None:
    """CD-k's chain for an RBM with Bernoulli visible and hidden units: h0 ~ p(h|v0) from the 0/1
    data ``positive`` ``(batch, V)``, then ``num_steps`` times v ~ p(v|h), h ~ p(h|v), with
    ``weight`` ``(V, H)``. The same transitions as ``BlockGibbs`` (same order of draws, same
    comparisons), so the same distribution of chains. ``None`` where it does not apply: not the
    CPU, other dtypes or shapes, data not exactly 0/1, products smaller than ``min_work``.
    ``uniforms`` (``chain_draws(...)`` values, for tests) replaces the random draws, in BlockGibbs'
    order: h0's ``(batch, H)``, then each step's v ``(batch, V)`` and h ``(batch, H)``, flattened."""
    if not (weight.device.type == "cpu" and positive.device.type == "cpu" and weight.dtype in _FLOAT_TYPES):
        return None
    if positive.dim() != 2 or positive.dtype != weight.dtype or positive.shape[1] != weight.shape[0]:
        return None
    if positive.shape[0] * weight.shape[0] * weight.shape[1] < min_work or num_steps < 1:
        return None
    positive = positive.detach().contiguous()
    weight = weight.detach()
    if uniforms is not None:
        expected = chain_draws(positive.shape[0], *weight.shape, num_steps)
        if uniforms.shape != (expected,) or uniforms.dtype != weight.dtype or uniforms.device.type != "cpu":
            raise ValueError(f"uniforms: expected {expected} values of {weight.dtype} on the CPU")
        uniforms = uniforms.contiguous()
    kernel = _kernel()
    if kernel is not None and _kernel_tensors(weight, visible_bias, hidden_bias):
        if kernel.count_binary(positive) is None:
            return None
        return _kernel_chain(kernel, weight, visible_bias, hidden_bias, positive, num_steps, generator, uniforms)
    values = positive.numpy()
    positive_ones = values == 1
    count = _count_binary(values, positive_ones)
    if count is None:
        return None
    uniforms = _Uniforms(generator, weight.dtype, uniforms)
    positive_hidden = hidden_mean = _hidden_mean(positive_ones, count, positive, weight, hidden_bias)
    hidden = _as_float(uniforms.less(hidden_mean), weight.dtype)
    weight_t = weight.t()
    for _ in range(num_steps):
        # the hidden layer is seldom sparse enough for row sums of Wᵀ to beat the product with W.t()
        visible_mean = torch.sigmoid_(torch.addmm(visible_bias, hidden, weight_t))
        visible_ones = uniforms.less(visible_mean)
        visible = _as_float(visible_ones, weight.dtype)
        hidden_mean = _hidden_mean(visible_ones, np.count_nonzero(visible_ones), visible, weight, hidden_bias)
        hidden = _as_float(uniforms.less(hidden_mean), weight.dtype)
    return BinaryChain(
        visible, hidden, visible_mean, hidden_mean, positive_hidden, positive, positive_ones, visible_ones
    )


def chain_draws(batch: int, num_visible: int, num_hidden: int, num_steps: int) -> int:
    """The number of uniforms that one run of CD-k's chain compares against."""
    return batch * num_hidden + num_steps * batch * (num_visible + num_hidden)


def _kernel() -> _kernels.CDBinary | None:
    """The C kernel where it is switched on (``enabled`` and ``use_kernel``) and builds."""
    return _kernels.cd_binary() if enabled and use_kernel else None


def _kernel_tensors(*tensors: Tensor) -> bool:
    """Whether the C kernel can take these tensors' memory as it is (CPU, contiguous, one dtype)."""
    dtype = tensors[0].dtype
    return all(t.device.type == "cpu" and t.is_contiguous() and t.dtype == dtype for t in tensors)


def _kernel_key(generator: torch.Generator | None) -> int:
    """A 63-bit key for the kernel's counter-based uniforms, drawn from ``generator``."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator))


def kernel_uniforms(
    generator: torch.Generator | None, batch: int, num_visible: int, num_hidden: int, num_steps: int,
    dtype: torch.dtype,
) -> Tensor | None:
    """The uniforms that ``binary_chain`` run by the C kernel with ``generator`` in the same state
    would draw (for tests: a reference chain can compare against the very same numbers); None
    without the kernel."""
    kernel = _kernel()
    if kernel is None:
        return None
    count = chain_draws(batch, num_visible, num_hidden, num_steps)
    return kernel.uniforms(_kernel_key(generator), 0, count, dtype)


def _kernel_chain(
    kernel: _kernels.CDBinary,
    weight: Tensor,
    visible_bias: Tensor,
    hidden_bias: Tensor,
    positive: Tensor,
    num_steps: int,
    generator: torch.Generator | None,
    uniforms: Tensor | None,
) -> BinaryChain:
    """``binary_chain`` by the C kernel, for checked arguments."""
    batch, num_visible = positive.shape
    num_hidden = weight.shape[1]
    if uniforms is None and not fast_rng:  # torch.rand in BlockGibbs' order, as the NumPy path draws them
        shapes = [(batch, num_hidden)] + [(batch, num_visible), (batch, num_hidden)] * num_steps
        draws = [torch.rand(shape, generator=generator, dtype=weight.dtype).reshape(-1) for shape in shapes]
        uniforms = torch.cat(draws)
    key = _kernel_key(generator) if uniforms is None else 0
    options = {"dtype": weight.dtype}
    visible, visible_mean = torch.empty(batch, num_visible, **options), torch.empty(batch, num_visible, **options)
    hidden, hidden_mean = torch.empty(batch, num_hidden, **options), torch.empty(batch, num_hidden, **options)
    positive_hidden = torch.empty(batch, num_hidden, **options)
    out = (visible, hidden, visible_mean, hidden_mean, positive_hidden)
    kernel.chain(
        weight, visible_bias.detach(), hidden_bias.detach(), positive, num_steps, key, uniforms, out,
        torch.get_num_threads(),
    )  # fmt: skip
    return BinaryChain(visible, hidden, visible_mean, hidden_mean, positive_hidden, positive)


def chain_gradient(chain: BinaryChain, grad_weight: Tensor, grad_visible_bias: Tensor, grad_hidden_bias: Tensor) -> bool:
    """Write CD's gradient for a chain (the gradient of mean F(data) - mean F(chain ends), as
    ``RBM.contrastive_grads``) into the three buffers by the C kernel: True when done, False
    (nothing written) where the kernel does not apply."""
    kernel = _kernel()
    if kernel is None:
        return False
    tensors = (chain.positive, chain.positive_hidden, chain.visible, chain.hidden_mean)
    grads = (grad_weight, grad_visible_bias, grad_hidden_bias)
    if not _kernel_tensors(*tensors, *grads) or chain.positive.shape != chain.visible.shape:
        return False
    (batch, num_visible), num_hidden = chain.positive.shape, chain.positive_hidden.shape[1]
    if grad_weight.shape != (num_visible, num_hidden) or grad_visible_bias.shape != (num_visible,):
        return False
    if grad_hidden_bias.shape != (num_hidden,) or chain.hidden_mean.shape != (batch, num_hidden):
        return False
    kernel.gradient(*tensors, grads, torch.get_num_threads())
    return True


def chain_outer(chain: BinaryChain) -> Tensor | None:
    """``binary_outer`` of a chain's data and final visible states with their hidden means, from the
    boolean arrays the chain kept; ``None`` where the dense products should be used instead."""
    if not enabled:
        return None
    positive = chain.positive_ones if chain.positive_ones is not None else chain.positive.numpy() == 1
    negative = chain.visible_ones if chain.visible_ones is not None else chain.visible.numpy() == 1
    # paired rows: one per unit and sample where the data or the chain is on
    limit = MAX_ROWS_PAIRED if torch.get_num_threads() == 1 else MAX_ROWS_PAIRED_THREADED
    if np.count_nonzero(positive | negative) > limit * positive.size:
        return None
    return _paired_outer(positive, chain.positive_hidden, negative, chain.hidden_mean)
