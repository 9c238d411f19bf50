"""DBM and general (semi-restricted) Boltzmann machines from ``rbm_core.models`` on rating cases,
behind the same ``RatingModel`` interface as the softmax RBM.

- ``kind="dbm"``: ``DBM`` with softmax visible units (N × K) and hidden layers
  (``num_hidden``, ``num_hidden2``).
- ``kind="bm"``: ``BoltzmannMachine`` with softmax visible units and hidden-hidden lateral
  weights (semi-restricted: no visible-visible block, whose (N·K)² weights would not fit real
  catalogues).

Both train with ``rbm_core.training.Trainer`` on masked dense cases (missing units are all-zero
rows, so they take no part in any field or statistic): a mean-field clamped phase minus a
contrastive free phase started at the data with the same mask (CD-k, k from the schedule; block
Gibbs for the DBM, visible sampling alternating with mean-field hidden updates for the BM whose
hidden units interact). Prediction is mean-field: ``visible_mean_given(v, mask, steps)``.
Early stopping watches validation RMSE, as for the RBM.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rbm_core.estimators import ContrastiveDivergence, NegativePhase
from rbm_core.ratings.data import RatingMatrix
from rbm_core.samplers import ChainState
from rbm_core.training import EarlyStopping, Trainer


def build_deep_net(config, num_units: int, num_values: int, dtype=torch.float32, device=None, generator=None):
    if config.kind == "dbm":
        from rbm_core.models.dbm import DBM, DBMConfig

        cfg = DBMConfig(num_units, (config.num_hidden, config.num_hidden2), "softmax", num_values, config.init_std)
        return DBM(cfg, dtype=dtype, device=device, generator=generator)
    if config.kind == "bm":
        from rbm_core.models.bm import BMConfig, BoltzmannMachine

        cfg = BMConfig(num_units, config.num_hidden, "softmax", num_values, visible_visible=False, hidden_hidden=True,
                       init_std=config.init_std)
        return BoltzmannMachine(cfg, dtype=dtype, device=device, generator=generator)
    raise ValueError(f"not a deep kind: {config.kind!r}")


class MeanFieldContrastive:
    """Free phase for a BM with interacting hidden units: from the data, k times: h ~ q(h),
    v ~ p(v | h) on the observed units only, q(h) ← mean-field given v. Also supplies the
    mean-field clamped phase in ``info["clamped"]``."""

    persistent = False

    def __init__(self, k: int | Callable[[int], int], steps: int) -> None:
        self._k = k
        self.k = k(0) if callable(k) else k
        self.steps = steps

    def set_epoch(self, epoch: int) -> None:
        self.k = self._k(epoch) if callable(self._k) else self._k

    def reset(self) -> None:
        pass

    @torch.no_grad()
    def negative_phase(self, model, positive: Tensor, generator=None) -> NegativePhase:
        mask = model.visible.mask(positive)
        clamped = model.positive_phase(positive, max_iter=self.steps)
        mu = clamped.layers[1]
        v = positive
        for _ in range(self.k):
            h = torch.bernoulli(mu, generator=generator)
            v = model.visible.sample(model.field(0, (v, h)), mask=mask, generator=generator)
            mu = model.hidden_mean_field(v, max_iter=self.steps, init=mu).means[0]
        free = ChainState((v, mu), mask, None, (v, mu))
        return NegativePhase(free, {"clamped": clamped})


def case_codes(view: RatingMatrix, cases: Tensor) -> Tensor:
    """Dense integer rows of ``view`` (cases = its users) for ``cases``."""
    lookup = torch.full((view.num_users,), -1, dtype=torch.long)
    lookup[cases] = torch.arange(len(cases))
    rows = lookup[view.users]
    keep = rows >= 0
    out = torch.zeros(len(cases), view.num_items, dtype=torch.long)
    out[rows[keep], view.items[keep]] = view.ratings[keep]
    return out


@torch.no_grad()
def case_probs(net, codes: Tensor, steps: int, chunk: int = 256) -> Tensor:
    """p(v_i = k | the case's observed units) by mean-field, ``(B, N, K)`` (CPU)."""
    device = next(net.parameters()).device
    out = []
    for start in range(0, len(codes), chunk):
        v = net.encode(codes[start : start + chunk].to(device))
        out.append(net.visible_mean_given(v, steps=steps).cpu())
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def hidden_features(net, codes: Tensor, steps: int) -> Tensor:
    """First hidden layer's mean-field means per case, ``(B, H)``: the features a new visible
    unit (an item-based fold-in user) is predicted from."""
    device = next(net.parameters()).device
    v = net.encode(codes.to(device))
    if hasattr(net, "mean_field"):
        return net.mean_field(v, max_iter=steps).means[0]
    return net.hidden_mean_field(v, max_iter=steps).means[0]


def first_layer(net) -> tuple[Tensor, Tensor]:
    """(weights ``(N, K, H)``, visible biases ``(N, K)``) of the visible-to-first-hidden block."""
    n, k = net.visible.size, net.visible.num_values
    if hasattr(net, "weights"):
        w, b = net.weights[0], net.biases[0]
    else:
        w, b = net.weight, net.visible_bias
    return w.view(n, k, -1), b.view(n, k)


def pair_probs(net, view: RatingMatrix, case_of: Tensor, unit_of: Tensor, steps: int, num_values: int,
               chunk: int = 256) -> Tensor:
    """p(rating) for pairs (case, unit) of ``view``, ``(P, K)``."""
    out = torch.empty(len(case_of), num_values)
    order = torch.argsort(case_of)
    sorted_cases = case_of[order]
    unique = torch.unique(sorted_cases)
    for start in range(0, len(unique), chunk):
        cases = unique[start : start + chunk]
        lo = int(torch.searchsorted(sorted_cases, cases[0]))
        hi = int(torch.searchsorted(sorted_cases, cases[-1], right=True))
        rows = order[lo:hi]
        local = torch.searchsorted(cases, case_of[rows])
        probs = case_probs(net, case_codes(view, cases), steps, chunk)
        out[rows] = probs[local, unit_of[rows]].to(out.dtype)
    return out


def train_deep(net, view: RatingMatrix, config, *, validation_metric: Callable[[], float] | None,
               callback, should_stop, generator: torch.Generator) -> tuple[list[dict[str, float]], int | None]:
    """Fit ``net`` on the cases of ``view`` with rbm_core's Trainer; returns (history, best epoch)."""
    active = torch.nonzero(view.user_counts() > 0)[:, 0]
    data = case_codes(view, active)
    k = config.k_at
    if config.kind == "dbm":
        estimator = ContrastiveDivergence(k)
    else:
        estimator = MeanFieldContrastive(k, config.mean_field_steps)
    values = torch.arange(1, config_values(net) + 1, dtype=torch.float32)

    def reconstruction_error(model, sample: Tensor, held) -> float:
        probs = model.visible_mean_given(sample, steps=config.mean_field_steps)
        mask = model.visible.mask(sample)
        expected = probs @ values.to(probs)
        actual = sample @ values.to(sample)
        return float(((expected - actual)[mask]).pow(2).mean().sqrt())

    metrics: dict[str, Callable] = {"reconstruction_error": reconstruction_error}
    early = None
    if validation_metric is not None:
        metrics["valid_rmse"] = lambda model, sample, held: validation_metric()
        early = EarlyStopping("valid_rmse", patience=config.patience)
    with torch.no_grad():  # start the visible biases at the data's log-frequencies
        v = net.encode(data)
        counts = v.sum(0) + 1.0
        logp = counts.log() - counts.sum(-1, keepdim=True).log()
        bias = net.biases[0] if hasattr(net, "biases") else net.visible_bias
        bias.copy_(logp.reshape(-1))
        del v
    decay = [p for name, p in net.named_parameters() if "bias" not in name]
    rest = [p for name, p in net.named_parameters() if "bias" in name]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}],
                                lr=config.learning_rate, momentum=config.momentum)
    trainer = Trainer(
        net, estimator, optimizer=optimizer, batch_size=config.batch_size, epochs=config.epochs,
        scheduler=lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, config.lr_decay),
        metrics=metrics, callbacks=[callback] if callback is not None else [], early_stopping=early,
        progress=False, should_stop=should_stop,
        generator=generator if next(net.parameters()).device.type == "cpu" else None,  # see _train_engagement
    )
    history = trainer.fit(data)
    return [dict(row) for row in history.epochs], history.best_epoch


def config_values(net) -> int:
    return net.visible.num_values
