"""The softmax RBM for collaborative filtering (Salakhutdinov, Mnih & Hinton 2007) on sparse
cases: one softmax unit with K values per visible entity (an item in the user-based orientation,
a user in the item-based one), only the observed units of each case taking part.

Energy of a case with observed units O, one-hot ratings v and, for the conditional variant, the
rated-indicator r (a vector over all units):

    E(v, h; r) = -Σ_{i∈O} Σ_k v_ik (b_ik + Σ_j W_ikj h_j) - Σ_j h_j (c_j + Σ_i r_i D_ij)

A batch of cases travels as a ``CaseBatch`` of coordinate triples (case, unit, rating). The CD
gradient is computed either on masked dense tensors ``(B, N·K)`` (one matmul per term) or on the
sparse triples (gather / ``index_add_``); ``layout`` picks one and the benchmark compares both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from rbm_core.units import SoftmaxUnits


@dataclass
class CaseBatch:
    """``size`` cases; observed entries ``(case, unit, rating)`` sorted by case, ``rating`` in 1..K.
    ``offsets`` ``(size,)`` start of each case's entries. ``rated_case``/``rated_unit`` list the
    conditional indicator's ones (None for the plain RBM)."""

    size: int
    case: Tensor
    unit: Tensor
    rating: Tensor
    offsets: Tensor
    rated_case: Tensor | None = None
    rated_unit: Tensor | None = None

    def to(self, device) -> CaseBatch:
        move = lambda x: None if x is None else x.to(device)  # noqa: E731
        return CaseBatch(self.size, move(self.case), move(self.unit), move(self.rating), move(self.offsets),
                         move(self.rated_case), move(self.rated_unit))


class CaseStore:
    """All cases of one orientation in CSR form, for slicing mini-batches quickly.

    ``units``/``ratings`` are grouped by case; ``rated`` (optional) is a second CSR of the
    conditional indicator (training + validation pairs)."""

    def __init__(self, num_cases: int, case: Tensor, unit: Tensor, rating: Tensor,
                 rated: tuple[Tensor, Tensor] | None = None) -> None:
        self.num_cases = num_cases
        self.indptr, self.unit, self.rating = _csr(num_cases, case, unit, rating)
        self.rated = None
        if rated is not None:
            ones = torch.ones_like(rated[0])
            indptr, units, _ = _csr(num_cases, rated[0], rated[1], ones)
            self.rated = (indptr, units)

    def counts(self) -> Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    def batch(self, cases: Tensor) -> CaseBatch:
        cases = cases.cpu()
        unit, rating, case_local, offsets = _gather(self.indptr, cases, self.unit, self.rating)
        rated_case = rated_unit = None
        if self.rated is not None:
            rated_unit, _, rated_case, _ = _gather(self.rated[0], cases, self.rated[1], None)
        return CaseBatch(len(cases), case_local, unit, rating, offsets, rated_case, rated_unit)


def _csr(num_cases: int, case: Tensor, unit: Tensor, rating: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    order = torch.argsort(case * (int(unit.max()) + 1 if unit.numel() else 1) + unit)
    counts = torch.bincount(case, minlength=num_cases)
    indptr = torch.zeros(num_cases + 1, dtype=torch.long)
    indptr[1:] = torch.cumsum(counts, 0)
    return indptr, unit[order].contiguous(), rating[order].contiguous()


def _gather(indptr: Tensor, cases: Tensor, unit: Tensor, rating: Tensor | None):
    starts, ends = indptr[cases], indptr[cases + 1]
    lengths = ends - starts
    offsets = torch.zeros(len(cases), dtype=torch.long)
    if len(cases) > 1:
        offsets[1:] = torch.cumsum(lengths, 0)[:-1]
    total = int(lengths.sum())
    case_local = torch.repeat_interleave(torch.arange(len(cases)), lengths)
    positions = starts[case_local] + (torch.arange(total) - offsets[case_local])
    return unit[positions], (None if rating is None else rating[positions]), case_local, offsets


class SoftmaxRBMNet(nn.Module):
    """Parameters: ``weight`` ``(N, K, H)``, ``visible_bias`` ``(N, K)``, ``hidden_bias`` ``(H,)``
    and, when ``conditional``, ``conditional_weight`` ``(N, H)`` (D in the paper)."""

    def __init__(self, num_units: int, num_values: int, num_hidden: int, conditional: bool = False,
                 init_std: float = 0.01, dtype=torch.float32, device=None, generator=None, shared: bool = False,
                 ordinal: bool = False) -> None:
        super().__init__()
        self.ordinal = ordinal
        self.units = SoftmaxUnits(num_units, num_values)
        self.num_units, self.num_values, self.num_hidden = num_units, num_values, num_hidden
        weight = torch.randn((num_units, num_values, num_hidden), generator=generator, dtype=dtype) * init_std
        self.weight = nn.Parameter(weight.to(device))
        self.visible_bias = nn.Parameter(torch.zeros((num_units, num_values), dtype=dtype, device=device))
        self.hidden_bias = nn.Parameter(torch.zeros(num_hidden, dtype=dtype, device=device))
        self.shared = shared
        if shared:
            self.shared_weight = nn.Parameter(torch.zeros((num_values, num_hidden), dtype=dtype, device=device))
        self.conditional = conditional
        if conditional:
            self.conditional_weight = nn.Parameter(torch.zeros((num_units, num_hidden), dtype=dtype, device=device))

    def decayed_parameters(self) -> list[nn.Parameter]:
        """The weights that weight decay applies to (not the biases)."""
        params = [self.weight] + ([self.conditional_weight] if self.conditional else [])
        return params + ([self.shared_weight] if self.shared else [])

    @property
    def effective_weight(self) -> Tensor:
        """W_ik + S_k, ``(N, K, H)``: with ``shared`` a rating-value weight S common to every unit
        lets one hidden unit express "rates everything high" without learning it item by item.
        With ``ordinal`` the parameter holds increments: W_ik = Σ_{j≤k} V_ij (CF-NADE's sharing
        between rating values), so weight decay on V pulls adjacent ratings' weights together
        rather than every weight to zero; the energy is the same RBM's."""
        weight = self.weight.cumsum(1) if self.ordinal else self.weight
        return weight + self.shared_weight if self.shared else weight

    @property
    def flat_weight(self) -> Tensor:
        return self.effective_weight.reshape(self.num_units * self.num_values, self.num_hidden)

    # -- fields ---------------------------------------------------------------------------------
    def hidden_field(self, batch: CaseBatch, rating: Tensor | None = None, keep: Tensor | None = None) -> Tensor:
        """c + Σ_{i∈O} W_{i,v_i} (+ Σ_i r_i D_i), shape ``(B, H)``; ``rating`` overrides the
        batch's ratings (e.g. with sampled ones at the same positions); ``keep`` (a boolean mask
        over the batch's entries) restricts O to the kept entries, the others being unobserved."""
        rating = batch.rating if rating is None else rating
        flat = batch.unit * self.num_values + (rating - 1)
        weights = None if keep is None else keep.to(self.visible_bias.dtype)
        field = F.embedding_bag(flat, self.flat_weight, batch.offsets, mode="sum", per_sample_weights=weights)
        if field.shape[0] < batch.size:  # trailing empty cases
            field = torch.cat([field, field.new_zeros(batch.size - field.shape[0], self.num_hidden)])
        field = field + self.hidden_bias
        return field + self.rated_field(batch)

    def rated_field(self, batch: CaseBatch) -> Tensor | Tensor:
        if not self.conditional or batch.rated_case is None:
            return torch.zeros((), dtype=self.visible_bias.dtype, device=self.visible_bias.device)
        extra = torch.zeros(batch.size, self.num_hidden, dtype=self.visible_bias.dtype, device=self.visible_bias.device)
        return extra.index_add_(0, batch.rated_case, self.conditional_weight[batch.rated_unit])

    def observed_logits(self, batch: CaseBatch, hidden: Tensor) -> Tensor:
        """b_i + W_i h for each observed entry: ``(nnz, K)``."""
        w = self.effective_weight[batch.unit]  # (nnz, K, H)
        return self.visible_bias[batch.unit] + torch.einsum("nkh,nh->nk", w, hidden[batch.case])

    def free_energy(self, batch: CaseBatch) -> Tensor:
        """F(v; r) per case, ``(B,)``: -Σ_{i∈O} b_{i,v_i} - Σ_j softplus(field_j)."""
        bias = self.visible_bias[batch.unit, batch.rating - 1]
        bias_sum = torch.zeros(batch.size, dtype=bias.dtype, device=bias.device).index_add_(0, batch.case, bias)
        return -bias_sum - F.softplus(self.hidden_field(batch)).sum(-1)

    # -- prediction -----------------------------------------------------------------------------
    def query_logits(self, batch: CaseBatch, query_case: Tensor, query_unit: Tensor, exact: bool = True,
                     chunk: int = 4096, field: Tensor | None = None) -> Tensor:
        """Unnormalised log p(v_q = k | the case's other observed units), ``(P, K)``, for each pair
        (``query_case`` into the batch, ``query_unit``).

        ``exact``: log p ∝ b_qk + Σ_j softplus(x_j - own_j + W_qkj) where x is the hidden field
        and own the query unit's own contribution when it is itself observed (and, for the
        conditional variant, the indicator r_q is set to 1: "given that the user rates q").
        Otherwise the one-step mean-field approximation b_qk + Σ_j W_qkj σ(x_j - own_j)."""
        x = self.hidden_field(batch) if field is None else field
        weight = self.effective_weight
        own_lookup = _own_ratings(batch, self.num_units)
        out = []
        for start in range(0, len(query_case), chunk):
            qc = query_case[start : start + chunk]
            qu = query_unit[start : start + chunk]
            base = x[qc]
            own = own_lookup(qc, qu)  # rating 1..K or 0
            seen = own > 0
            if bool(seen.any()):
                base = base.clone()
                base[seen] -= weight[qu[seen], own[seen] - 1]
            if self.conditional:
                rated = _rated_lookup(batch, self.num_units)(qc, qu)
                base = base + self.conditional_weight[qu] * (~rated).unsqueeze(-1).to(base.dtype)
            w = weight[qu]  # (P, K, H)
            if exact:
                logits = F.softplus(base.unsqueeze(1) + w).sum(-1)
            else:
                logits = torch.einsum("pkh,ph->pk", w, torch.sigmoid(base))
            out.append(logits + self.visible_bias[qu])
        if not out:
            return torch.zeros(0, self.num_values, dtype=self.visible_bias.dtype, device=self.visible_bias.device)
        return torch.cat(out)

    # -- learning -------------------------------------------------------------------------------
    def leave_one_out_logits(self, batch: CaseBatch, select: Tensor | None = None,
                             keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Unnormalised log p(v_q = k | the case's other observed units) for the observed entries
        ``select`` (a boolean mask over the batch's entries; all when None), differentiable:
        ``(logits (P, K), observed rating - 1 (P,))``.

        Each row is the model's exact conditional (the prediction rule of ``query_logits``):
        b_qk + Σ_j softplus(x_j - W_{q,v_q,j} + W_qkj), with x the case's hidden field. The sum of
        the log-probabilities of the observed ratings is the case's pseudo-log-likelihood under
        this RBM, a consistent estimator that needs no negative phase.

        ``keep`` (a boolean mask over the entries; all when None) conditions on the kept entries
        only, the others being unobserved (absent from the case's RBM, as an unrated unit is):
        x sums over the kept entries, and a kept target's own term leaves it as above, while a
        dropped target is predicted from the kept ones exactly as ``query_logits`` predicts an
        unobserved unit."""
        x = self.hidden_field(batch, keep=keep)
        unit, rating, case = batch.unit, batch.rating, batch.case
        kept = keep
        if select is not None:
            unit, rating, case = unit[select], rating[select], case[select]
            kept = None if keep is None else keep[select]
        effective = self.effective_weight
        own = effective[unit, rating - 1]  # (P, H)
        if kept is not None:
            own = own * kept.unsqueeze(-1).to(own.dtype)
        base = x[case] - own  # (P, H): the field without the query unit
        return _SoftplusRows.apply(base, effective, unit) + self.visible_bias[unit], rating - 1

    @torch.no_grad()
    def cd_gradients(self, batch: CaseBatch, k: int, generator: torch.Generator | None, layout: str) -> dict:
        """Write the CD-k gradient of the mean negative log-likelihood into ``.grad`` (that of
        mean F(data) - mean F(negative sample), as the tests check against autograd); returns the
        batch's reconstruction squared error (sum), rating count and the negative ratings."""
        x_pos = self.hidden_field(batch)
        p_pos = torch.sigmoid(x_pos)
        h = torch.bernoulli(p_pos, generator=generator)
        rating = batch.rating
        for step in range(k):
            logits = self.observed_logits(batch, h) if layout == "sparse" else self._dense_logits(batch, h)
            probs = torch.softmax(logits, -1)
            if step == 0:
                values = torch.arange(1, self.num_values + 1, dtype=probs.dtype, device=probs.device)
                recon_sq = float(((probs @ values) - batch.rating.to(probs.dtype)).pow(2).sum())
            rating = _sample_categorical(probs, generator) + 1
            p_neg = torch.sigmoid(self.hidden_field(batch, rating))
            if step < k - 1:
                h = torch.bernoulli(p_neg, generator=generator)
        scale = 1.0 / batch.size
        pos_flat = batch.unit * self.num_values + (batch.rating - 1)
        neg_flat = batch.unit * self.num_values + (rating - 1)
        if layout == "sparse":
            grad_w = torch.zeros_like(self.flat_weight)
            grad_w.index_add_(0, neg_flat, p_neg[batch.case], alpha=scale)
            grad_w.index_add_(0, pos_flat, p_pos[batch.case], alpha=-scale)
        else:
            v_pos = self._dense_visible(batch, pos_flat)
            v_neg = self._dense_visible(batch, neg_flat)
            grad_w = torch.mm(v_neg.t(), p_neg).mul_(scale)
            grad_w.addmm_(v_pos.t(), p_pos, alpha=-scale)
        grad_b = torch.zeros(self.num_units * self.num_values, dtype=grad_w.dtype, device=grad_w.device)
        grad_b.index_add_(0, neg_flat, torch.full_like(neg_flat, 1, dtype=grad_w.dtype), alpha=scale)
        grad_b.index_add_(0, pos_flat, torch.full_like(pos_flat, 1, dtype=grad_w.dtype), alpha=-scale)
        grad_v = grad_w.view_as(self.weight)
        # with ordinal increments, dW_ik/dV_ij = [j <= k]: V's gradient is W's summed over k >= j
        _set_grad(self.weight, grad_v.flip(1).cumsum(1).flip(1) if self.ordinal else grad_v)
        if self.shared:
            # S sits in every observed unit's weights, so its gradient sums over the ~nnz/B ratings
            # of a case; dividing by that count gives S a per-parameter learning rate on the scale
            # of one unit's weights (the direction is still the exact gradient's).
            per_case = max(len(batch.rating) / max(batch.size, 1), 1.0)
            _set_grad(self.shared_weight, grad_w.view_as(self.weight).sum(0) / per_case)
        _set_grad(self.visible_bias, grad_b.view_as(self.visible_bias))
        _set_grad(self.hidden_bias, (p_neg - p_pos).mean(0))
        if self.conditional:
            grad_d = torch.zeros_like(self.conditional_weight)
            if batch.rated_case is not None:
                diff = (p_neg - p_pos)[batch.rated_case]
                grad_d.index_add_(0, batch.rated_unit, diff, alpha=scale)
            _set_grad(self.conditional_weight, grad_d)
        return {"recon_sq": recon_sq, "count": float(len(batch.rating)), "negative_rating": rating}

    def _dense_visible(self, batch: CaseBatch, flat: Tensor) -> Tensor:
        v = torch.zeros(batch.size, self.num_units * self.num_values, dtype=self.visible_bias.dtype, device=self.visible_bias.device)
        v[batch.case, flat] = 1.0
        return v

    def _dense_logits(self, batch: CaseBatch, h: Tensor) -> Tensor:
        """Dense layout: the full visible field ``h Wᵀ`` (B, N·K), read at the observed units."""
        full = torch.mm(h, self.flat_weight.t()).view(batch.size, self.num_units, self.num_values)
        return full[batch.case, batch.unit] + self.visible_bias[batch.unit]


class _SoftplusRows(torch.autograd.Function):
    """Σ_j softplus(base_pj + W[unit_p, k, j]), ``(P, K)``, for ``base`` ``(P, H)`` and ``W``
    ``(N, K, H)``: the autograd graph of ``F.softplus(base.unsqueeze(1) + W[unit]).sum(-1)`` with
    one ``(P, K, H)`` buffer instead of four (the gather, the sum, the softplus and its gradient)
    and the weight gradient by one ``index_add_`` (d/dz softplus(z) = σ(z)); ~1.5x faster on a CPU
    core, equal to the plain graph (tested)."""

    @staticmethod
    def forward(ctx, base: Tensor, weight: Tensor, unit: Tensor) -> Tensor:
        z = weight[unit].add_(base.unsqueeze(1))  # (P, K, H)
        ctx.save_for_backward(z, unit)
        ctx.weight_shape = weight.shape
        return F.softplus(z).sum(-1)

    @staticmethod
    @once_differentiable  # its backward is not itself differentiable
    def backward(ctx, grad: Tensor):
        z, unit = ctx.saved_tensors
        t = torch.sigmoid(z).mul_(grad.unsqueeze(-1))
        grad_weight = None
        if ctx.needs_input_grad[1]:
            n, k, h = ctx.weight_shape
            grad_weight = torch.zeros(n, k * h, dtype=t.dtype, device=t.device)
            grad_weight.index_add_(0, unit, t.view(-1, k * h))
            grad_weight = grad_weight.view(n, k, h)
        return t.sum(1) if ctx.needs_input_grad[0] else None, grad_weight, None


def _sample_categorical(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One draw per row of ``probs`` ``(n, K)``: index 0..K-1 (inverse CDF, as SoftmaxUnits)."""
    u = torch.rand(probs.shape[0], 1, generator=generator, dtype=probs.dtype, device=probs.device)
    cdf = probs.cumsum(-1)
    return (cdf < u * cdf[:, -1:]).sum(-1).clamp_(max=probs.shape[1] - 1)


def _own_ratings(batch: CaseBatch, num_units: int):
    """Lookup (case, unit) -> observed rating (0 if unobserved), by sorted keys."""
    keys = batch.case * num_units + batch.unit
    order = torch.argsort(keys)
    sorted_keys, sorted_ratings = keys[order], batch.rating[order]

    def lookup(case: Tensor, unit: Tensor) -> Tensor:
        query = case * num_units + unit
        if sorted_keys.numel() == 0:
            return torch.zeros_like(query)
        pos = torch.searchsorted(sorted_keys, query).clamp(max=sorted_keys.numel() - 1)
        return torch.where(sorted_keys[pos] == query, sorted_ratings[pos], torch.zeros_like(query))

    return lookup


def _rated_lookup(batch: CaseBatch, num_units: int):
    if batch.rated_case is None:
        return lambda case, unit: torch.zeros_like(case, dtype=torch.bool)
    keys = torch.sort(batch.rated_case * num_units + batch.rated_unit).values

    def lookup(case: Tensor, unit: Tensor) -> Tensor:
        query = case * num_units + unit
        if keys.numel() == 0:
            return torch.zeros_like(query, dtype=torch.bool)
        pos = torch.searchsorted(keys, query).clamp(max=keys.numel() - 1)
        return keys[pos] == query

    return lookup


def _set_grad(param: nn.Parameter, grad: Tensor) -> None:
    if param.grad is None:
        param.grad = grad.clone()
    else:
        param.grad.copy_(grad)
