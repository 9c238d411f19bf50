"""Restricted Boltzmann machine: a bipartite energy model over a visible and a hidden layer,
E(v, h) = -vᵀWh - bᵀv - cᵀh, with a closed-form free energy and factorised conditionals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from rbm_core import sparse_binary
from rbm_core.sparse_binary import BinaryChain, binary_matmul, binary_outer, chain_outer
from rbm_core.units import BernoulliUnits, SoftmaxUnits, Units, units_from_spec


@dataclass(frozen=True)
class RBMConfig:
    """Shape of an RBM. ``visible`` is ``"bernoulli"`` or ``"softmax"`` (``num_values`` = K)."""

    num_visible: int
    num_hidden: int
    visible: str = "bernoulli"
    num_values: int = 2
    init_std: float = 0.01

    def __post_init__(self) -> None:
        if self.num_visible < 1 or self.num_hidden < 1:
            raise ValueError("num_visible and num_hidden must be positive")
        if self.visible == "softmax" and self.num_values < 2:
            raise ValueError("softmax units need num_values >= 2")

    def to_dict(self) -> dict:
        return asdict(self)


class RBM(nn.Module):
    """Restricted Boltzmann machine with Bernoulli hidden units.

    Parameters: ``weight`` ``(V, H)`` where V is the flat visible size (``num_visible * K``
    for softmax units), ``visible_bias`` ``(V,)``, ``hidden_bias`` ``(H,)``.
    A state is the tuple ``(v, h)``; visible states have the shape of the visible unit type.
    """

    kind = "rbm"

    def __init__(
        self,
        config: RBMConfig,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.visible: Units = units_from_spec(config.visible, config.num_visible, config.num_values)
        self.hidden = BernoulliUnits(config.num_hidden)
        shape = (self.visible.flat_size, self.hidden.flat_size)
        weight = torch.randn(shape, generator=generator, dtype=dtype) * config.init_std
        self.weight = nn.Parameter(weight.to(device))
        self.visible_bias = nn.Parameter(torch.zeros(shape[0], dtype=dtype, device=device))
        self.hidden_bias = nn.Parameter(torch.zeros(shape[1], dtype=dtype, device=device))

    # -- layered-model interface used by the generic samplers -------------------------------
    @property
    def layers(self) -> tuple[Units, Units]:
        return (self.visible, self.hidden)

    def field(self, index: int, state: Sequence[Tensor]) -> Tensor:
        """Total input of layer ``index`` (0 visible, 1 hidden) given the other layer."""
        if index == 0:
            return self.visible_field(state[1])
        if index == 1:
            return self.hidden_field(state[0])
        raise IndexError(index)

    def energy(self, state: Sequence[Tensor]) -> Tensor:
        """E(v, h) per sample, shape ``(batch,)``."""
        v, h = state
        v_flat = self.visible.flatten(v)
        interaction = ((v_flat @ self.weight) * h).sum(-1)
        return -interaction - v_flat @ self.visible_bias - h @ self.hidden_bias

    # -- closed forms --------------------------------------------------------------------
    def hidden_field(self, v: Tensor) -> Tensor:
        """c + Wᵀv, shape ``(batch, H)``. A sparse 0/1 batch on the CPU (data, sampled states) sums
        the rows of W its ones select instead (``rbm_core.sparse_binary``; equal up to rounding)."""
        v_flat = self.visible.flatten(v)
        fast = binary_matmul(v_flat, self.weight, self.hidden_bias)
        return fast if fast is not None else torch.addmm(self.hidden_bias, v_flat, self.weight)

    def visible_field(self, h: Tensor) -> Tensor:
        """b + Wh in the visible layer's state shape."""
        return self.visible.unflatten(torch.addmm(self.visible_bias, h, self.weight.t()))

    def free_energy(self, v: Tensor, beta: float | Tensor = 1.0) -> Tensor:
        """F(v) = -β bᵀv - Σⱼ softplus(β (cⱼ + Wⱼᵀv)), shape ``(batch,)``; p_β(v) ∝ exp(-F)."""
        v_flat = self.visible.flatten(v)
        bias_term = v_flat @ self.visible_bias
        if isinstance(beta, Tensor) or beta != 1.0:
            bias_term = bias_term * beta
        return -bias_term - self.hidden.log_partition(self.hidden_field(v), beta)

    def log_unnormalized_prob(self, v: Tensor) -> Tensor:
        """log p*(v) = -F(v): the marginal up to log Z."""
        return -self.free_energy(v)

    def hidden_mean(self, v: Tensor, beta: float | Tensor = 1.0) -> Tensor:
        """p(h_j = 1 | v), shape ``(batch, H)``."""
        return self.hidden.mean(self.hidden_field(v), beta)

    def visible_mean(self, h: Tensor, mask: Tensor | None = None, beta: float | Tensor = 1.0) -> Tensor:
        """p(v | h): sigmoid for Bernoulli, softmax over K for softmax units (masked rows zero)."""
        return self.visible.mean(self.visible_field(h), beta, mask)

    @torch.no_grad()
    def sample_hidden(self, v: Tensor, beta: float | Tensor = 1.0, generator: torch.Generator | None = None) -> Tensor:
        return self.hidden.sample(self.hidden_field(v), beta, generator=generator)

    @torch.no_grad()
    def sample_visible(
        self,
        h: Tensor,
        mask: Tensor | None = None,
        beta: float | Tensor = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        return self.visible.sample(self.visible_field(h), beta, mask, generator)

    def encode(self, data: Tensor) -> Tensor:
        """Validate raw data and return a visible state on the model's device and dtype."""
        data = data.to(self.weight.device)
        if isinstance(self.visible, BernoulliUnits) and data.dim() == 2 and data.shape[1] == self.visible.size:
            if sparse_binary.is_binary(data):  # valid 0/1 floats on the CPU, checked by a faster pass
                return data.to(self.weight.dtype)
        return self.visible.encode(data, self.weight.dtype)

    # -- learning ------------------------------------------------------------------------
    def contrastive_loss(self, positive: Tensor, negative: Tensor, negative_weights: Tensor | None = None) -> Tensor:
        """Surrogate whose gradient is the CD/PCD gradient: mean F(data) - mean F(model samples).

        ``negative_weights`` ``(num_negative,)`` (summing to 1) replaces the plain mean over the
        negative states by a weighted one, e.g. the exact p(v) over all visible states."""
        negative_free = self.free_energy(negative.detach())
        if negative_weights is None:
            negative_term = negative_free.mean()
        else:
            negative_term = negative_free @ negative_weights.detach().to(negative_free.dtype)
        return self.free_energy(positive).mean() - negative_term

    def binary_cd_chain(
        self, positive: Tensor, num_steps: int, generator: torch.Generator | None = None
    ) -> BinaryChain | None:
        """CD-k's block-Gibbs chain from the 0/1 data ``positive`` in one fused pass on the CPU
        (``sparse_binary.binary_chain``: the same transitions as ``BlockGibbs``), for Bernoulli
        visible units and this class's own conditionals; ``None`` where it does not apply (the
        estimator then runs ``BlockGibbs``)."""
        if not sparse_binary.enabled or not isinstance(self.visible, BernoulliUnits):
            return None
        if type(self).hidden_field is not RBM.hidden_field or type(self).visible_field is not RBM.visible_field:
            return None  # a subclass with its own conditionals (e.g. scaled inputs)
        return sparse_binary.binary_chain(
            self.weight, self.visible_bias, self.hidden_bias, positive, num_steps, generator
        )

    @property
    def gradient_step_overwrites(self) -> bool:
        """Whether ``gradient_step`` writes every parameter's ``.grad`` in full and never adds to it,
        so that the Trainer need not zero the gradients first: true of this class's own (every path
        writes the three gradients with ``out=`` / ``copy_`` or the C kernel), not assumed of a
        subclass that replaces it."""
        cls = type(self)
        return all(
            getattr(cls, name) is getattr(RBM, name)
            for name in ("gradient_step", "contrastive_grads", "_binary_chain_grads")
        )

    def gradient_step(self, positive: Tensor, negative) -> None:
        """Trainer hook: write the CD/PCD gradient into ``.grad`` by the hand-written fast path,
        reusing the hidden means the chains already computed (p(h|v_data) from CD's start,
        p(h|v_model) from the last Gibbs step)."""
        chain = negative.info.get("binary_chain")
        if chain is not None and self._binary_chain_grads(positive, chain):
            return
        positive_means = negative.info.get("positive_means")
        negative_means = negative.state.means
        self.contrastive_grads(
            positive,
            negative.state.visible,
            positive_hidden=None if positive_means is None else positive_means[1],
            negative_hidden=None if negative_means is None else negative_means[1],
            negative_weights=negative.info.get("weights"),
        )

    @torch.no_grad()
    def contrastive_grads(
        self,
        positive: Tensor,
        negative: Tensor,
        positive_hidden: Tensor | None = None,
        negative_hidden: Tensor | None = None,
        negative_weights: Tensor | None = None,
    ) -> None:
        """Write the gradient of ``contrastive_loss`` into ``.grad`` by hand: two matmuls, written
        in place into the existing gradient buffers (so a CD-1 update costs five matmuls in all,
        against six for autograd). ``positive_hidden`` / ``negative_hidden`` are p(h|v) of the two
        batches when the chains already have them. Equal to autograd, as the tests show."""
        if positive_hidden is None:
            positive_hidden = self.hidden_mean(positive)
        if negative_hidden is None:
            negative_hidden = self.hidden_mean(negative)
        vp = self.visible.flatten(positive)
        vn = self.visible.flatten(negative)
        grad_w = _grad_buffer(self.weight)
        grad_b = _grad_buffer(self.visible_bias)
        grad_c = _grad_buffer(self.hidden_bias)
        # dF/dW = -v p(h|v)ᵀ, so the gradient is E_model[v hᵀ] - E_data[v hᵀ].
        if negative_weights is None:
            # sparse 0/1 batches on the CPU: both phases in one pass over the ones (sparse_binary)
            outer = binary_outer(vp, positive_hidden, vn, negative_hidden)
            if outer is not None:
                grad_w.copy_(outer)
                torch.mean(vn, 0, out=grad_b).sub_(vp.mean(0))
                torch.mean(negative_hidden, 0, out=grad_c).sub_(positive_hidden.mean(0))
                return
            torch.mm(vn.t(), negative_hidden, out=grad_w).div_(vn.shape[0])
            torch.mean(vn, 0, out=grad_b)
            torch.mean(negative_hidden, 0, out=grad_c)
        else:
            weights = negative_weights.to(vn.dtype)
            torch.mm(vn.t(), negative_hidden * weights.unsqueeze(1), out=grad_w)
            torch.mv(vn.t(), weights, out=grad_b)
            torch.mv(negative_hidden.t(), weights, out=grad_c)
        grad_w.addmm_(vp.t(), positive_hidden, alpha=-1.0 / vp.shape[0])
        grad_b.sub_(vp.mean(0))
        grad_c.sub_(positive_hidden.mean(0))

    @torch.no_grad()
    def _binary_chain_grads(self, positive: Tensor, chain: BinaryChain) -> bool:
        """``contrastive_grads`` of a ``binary_cd_chain`` run: by the C kernel, written in place, or from
        the 0/1 patterns the chain kept; False (nothing written) where the dense products should be
        used instead."""
        grads = (_grad_buffer(self.weight), _grad_buffer(self.visible_bias), _grad_buffer(self.hidden_bias))
        if sparse_binary.chain_gradient(chain, *grads):
            return True
        outer = chain_outer(chain)
        if outer is None:
            return False
        if self.weight.grad is None or self.weight.grad.shape == outer.shape:
            self.weight.grad = outer  # a fresh tensor: no copy
        else:
            _grad_buffer(self.weight).copy_(outer)
        torch.mean(chain.visible, 0, out=_grad_buffer(self.visible_bias)).sub_(positive.mean(0))
        torch.mean(chain.hidden_mean, 0, out=_grad_buffer(self.hidden_bias)).sub_(chain.positive_hidden.mean(0))
        return True

    @torch.no_grad()
    def init_visible_bias_from_data(self, data: Tensor, eps: float = 1e-3) -> None:
        """Set b to the log-odds (Bernoulli) or log-frequencies (softmax) of the data's base
        rates, the usual starting point (and the AIS base model)."""
        v = self.encode(data)
        self.visible_bias.copy_(base_rate_bias(self.visible, v, eps))

    def extra_repr(self) -> str:
        c = self.config
        return f"visible={c.visible}({c.num_visible}, K={c.num_values}), hidden={c.num_hidden}"


def base_rate_bias(units: Units, v: Tensor, eps: float = 1e-3) -> Tensor:
    """Flat visible bias matching the data's marginal frequencies (observed units only)."""
    if isinstance(units, SoftmaxUnits):
        counts = v.sum(0) + eps
        logp = counts.log() - counts.sum(-1, keepdim=True).log()
        return (logp - logp.mean(-1, keepdim=True)).reshape(-1)
    p = v.mean(0).clamp(eps, 1 - eps)
    return torch.log(p) - torch.log1p(-p)


def _set_grad(param: nn.Parameter, grad: Tensor) -> None:
    if param.grad is None:
        param.grad = grad
    else:
        param.grad.copy_(grad)


def _grad_buffer(param: nn.Parameter) -> Tensor:
    """``param.grad``, created (uninitialised) if missing, for writing a gradient in place."""
    if param.grad is None or param.grad.shape != param.shape:
        param.grad = torch.empty_like(param)
    return param.grad
