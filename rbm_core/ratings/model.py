"""Rating models: configuration, training (CD-k with a k schedule, momentum, weight decay, a
learning-rate schedule and early stopping on validation RMSE, optionally followed by
pseudo-likelihood fine-tuning, or the pseudo-likelihood alone), prediction, top-N ranking,
fold-in, sampled reconstructions and (de)serialisation.

Orientation. ``"user"``: a case is one user's ratings over the items (N = num_items softmax
units). ``"item"``: a case is one item's ratings over the users (N = num_users units).

Prediction of user u's rating of item q is the RBM's exact conditional p(v_q = k | the case's
other ratings) (or its one-step mean-field approximation, ``prediction="mean_field"``):
user-based, the case is u's known ratings and q a visible unit; item-based, the case is q's
ratings by the training users and u a visible unit.

Fold-in. User-based: a new user's ratings are simply clamped as a case; nothing is fitted.
Item-based: a new user is a new visible unit. Their weights W_u (K × H) and biases b_u (K) are
fitted with everything else frozen, by maximising Σ_{(q, r) known} log p(v_u = r | case q) (the
same conditional used for prediction, case q's hidden field fixed) with the training L2 penalty,
by L-BFGS from the training users' average weights. This is a small (K·(H+1)-parameter) smooth
problem and takes milliseconds.

Ranking score for top-N (``ranking="engagement"``): an implicit-feedback Bernoulli RBM
(``rbm_core.RBM``, user-based, visible unit i = "the user rated item i") is trained next to the
rating model. Its exact conditional p(rated_q = 1 | the user's other rated indicators) is the
engagement probability; the ranking score is

    score(q) = log p(rated_q = 1 | ...) + ranking_weight · log P(rating_q ≥ like_threshold | ...)

i.e. (for weight 1) the log-probability that the user both picks q and likes it. With
``ranking="rating"`` the score is the expected rating alone.

Fallbacks. A user with no known ratings gets each item's training rating histogram shrunk
toward the global histogram (prior weight ``fallback_prior`` ratings) as p(rating), and the
popularity order for recommendations; an item with no training ratings gets the user's own
known-rating histogram shrunk the same way (the global one when the user has none).
"""

from __future__ import annotations

import io
import json
import math
import pickle
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from rbm_core.ratings.data import RatingMatrix
from rbm_core.ratings.nets import CaseBatch, CaseStore, SoftmaxRBMNet
from rbm_core.training import EarlyStopping, TrainingDiverged, check_finite_parameters

FORMAT = "rbm_core.ratings"
FORMAT_VERSION = 1

_KINDS = ("rbm", "dbm", "bm")
_ORIENTATIONS = ("user", "item")
_OBJECTIVES = ("cd", "pl")


@dataclass(frozen=True)
class RatingModelConfig:
    """Hyperparameters of a rating model. ``k_schedule``: ((first_epoch, k), ...) CD steps by
    epoch (1 → 3 → 5 → 9); ``learning_rate`` decays by ``lr_decay`` per epoch; early stopping
    watches validation RMSE with ``patience`` epochs and restores the best weights.
    ``averaging`` > 0 evaluates and keeps an exponential moving average of the parameters
    (decay per mini-batch), which smooths the noise of the CD updates. ``objective``: "cd" (CD-k)
    or "pl" (the exact pseudo-likelihood: each observed rating's conditional given the case's
    other ratings, on a random ``pl_fraction`` of them per mini-batch; ``pl_dropout`` > 0 conditions
    each on a random subset of the others instead, every rating of the batch being left out of the
    conditioning set with that probability). ``finetune_epochs`` > 0
    continues the early-stopped model with that many epochs of pseudo-likelihood training (Adam,
    ``finetune_learning_rate``), early-stopped again: generative training, then discriminative
    fine-tuning of the same RBM. ``optimizer``: "sgd" (with momentum) or "adam"."""

    kind: str = "rbm"
    orientation: str = "item"
    num_hidden: int = 100
    num_hidden2: int = 50
    epochs: int = 50
    batch_size: int = 64
    learning_rate: float = 0.5
    lr_decay: float = 0.97
    momentum: float = 0.9
    initial_momentum: float = 0.5
    momentum_switch_epoch: int = 3
    weight_decay: float = 0.001
    k_schedule: tuple[tuple[int, int], ...] = ((0, 1), (20, 3), (30, 5), (40, 9))
    conditional: bool = False
    shared_weights: bool = True
    ordinal_weights: bool = False
    prediction: str = "exact"
    layout: str = "dense"
    objective: str = "cd"
    optimizer: str = "sgd"
    pl_fraction: float = 1.0
    pl_dropout: float = 0.0
    finetune_epochs: int = 0
    finetune_learning_rate: float = 0.001
    init_std: float = 0.01
    averaging: float = 0.995
    patience: int = 4
    ranking: str = "engagement"
    ranking_weight: float = 1.0
    like_threshold: int = 4
    engagement_hidden: int = 100
    engagement_epochs: int = 30
    engagement_learning_rate: float = 0.05
    mean_field_steps: int = 10
    fallback_prior: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        schedule = tuple(tuple(int(x) for x in pair) for pair in self.k_schedule)
        object.__setattr__(self, "k_schedule", schedule)
        checks = [
            (self.kind in _KINDS, f"kind must be one of {_KINDS}, got {self.kind!r}"),
            (self.orientation in _ORIENTATIONS, f"orientation must be one of {_ORIENTATIONS}, got {self.orientation!r}"),
            (self.prediction in ("exact", "mean_field"), f"prediction must be 'exact' or 'mean_field', got {self.prediction!r}"),
            (self.layout in ("dense", "sparse"), f"layout must be 'dense' or 'sparse', got {self.layout!r}"),
            (self.objective in _OBJECTIVES, f"objective must be one of {_OBJECTIVES}, got {self.objective!r}"),
            (self.optimizer in ("sgd", "adam"), f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}"),
            (0 < self.pl_fraction <= 1, "pl_fraction must lie in (0, 1]"),
            (0 <= self.pl_dropout < 1, "pl_dropout must lie in [0, 1)"),
            (self.ranking in ("engagement", "rating"), f"ranking must be 'engagement' or 'rating', got {self.ranking!r}"),
            (self.num_hidden >= 1 and self.num_hidden2 >= 1, "num_hidden and num_hidden2 must be positive"),
            (self.epochs >= 1, "epochs must be positive"),
            (self.batch_size >= 1, "batch_size must be positive"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (0 < self.lr_decay <= 1, "lr_decay must lie in (0, 1]"),
            (0 <= self.momentum < 1 and 0 <= self.initial_momentum < 1, "momentum must lie in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be non-negative"),
            (len(schedule) > 0 and all(len(p) == 2 and p[1] >= 1 for p in schedule) and schedule[0][0] == 0,
             "k_schedule must be ((0, k0), (epoch, k), ...) with every k >= 1"),
            (self.patience >= 1, "patience must be positive"),
            (0 <= self.averaging < 1, "averaging must lie in [0, 1)"),
            (self.engagement_hidden >= 1 and self.engagement_epochs >= 1, "engagement sizes must be positive"),
            (self.mean_field_steps >= 1, "mean_field_steps must be positive"),
            (self.fallback_prior >= 0, "fallback_prior must be non-negative"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def k_at(self, epoch: int) -> int:
        k = self.k_schedule[0][1]
        for first, value in self.k_schedule:
            if epoch >= first:
                k = value
        return k

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["k_schedule"] = [list(p) for p in self.k_schedule]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RatingModelConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown rating-model config key(s): {', '.join(unknown)}")
        clean: dict[str, Any] = {}
        for name, value in data.items():
            default = getattr(cls, name, None) if name != "k_schedule" else ()
            if name == "k_schedule":
                try:
                    value = tuple(tuple(int(x) for x in pair) for pair in value)
                except (TypeError, ValueError):
                    raise ValueError(f"k_schedule must be a list of [first_epoch, k] pairs, got {value!r}") from None
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be true or false, got {value!r}")
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"{name} must be an integer, got {value!r}")
            elif isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{name} must be a number, got {value!r}")
                value = float(value)
            elif isinstance(default, str):
                if not isinstance(value, str):
                    raise ValueError(f"{name} must be a string, got {value!r}")
            clean[name] = value
        try:
            return cls(**clean)
        except TypeError as exc:
            raise ValueError(str(exc)) from None


class RatingModelError(ValueError):
    """Bad model bytes or bad arguments to a rating model."""


# ------------------------------------------------------------------------------------------------


class RatingModel:
    """A trained rating model: the network, the training ratings it predicts from (needed by the
    item-based orientation and the fallbacks), the engagement RBM and popularity counts."""

    def __init__(self, config: RatingModelConfig, train: RatingMatrix, net: torch.nn.Module,
                 engagement=None, rated_extra: RatingMatrix | None = None) -> None:
        self.config = config
        self.num_users = train.num_users
        self.num_items = train.num_items
        self.num_values = train.num_values
        self.net = net
        self.engagement = engagement
        self.train_data = train
        self.rated_extra = rated_extra
        self.history: list[dict[str, float]] = []
        self.train_seconds: float = 0.0
        self._prepare()

    # -- derived state -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def _prepare(self) -> None:
        train, K = self.train_data, self.num_values
        self.item_counts = train.item_counts()
        global_hist = torch.bincount(train.ratings - 1, minlength=K).double() + 1.0
        self.global_hist = global_hist / global_hist.sum()
        item_hist = torch.zeros(self.num_items, K, dtype=torch.float64)
        item_hist.index_put_((train.items, train.ratings - 1), torch.ones(len(train), dtype=torch.float64), accumulate=True)
        prior = self.config.fallback_prior
        self.item_fallback = (item_hist + prior * self.global_hist) / (item_hist.sum(-1, keepdim=True) + prior)
        self._item_cases: CaseStore | None = None
        self._item_fields: Tensor | None = None
        if self.config.orientation == "item":
            self._item_cases = self._case_store(train.transpose(), None if self.rated_extra is None else self.rated_extra.transpose())

    def _case_store(self, data: RatingMatrix, extra: RatingMatrix | None) -> CaseStore:
        rated = None
        if self.config.conditional:
            users, items = data.users, data.items
            if extra is not None:  # the union: extra pairs may already be among the known ratings
                key = torch.unique(torch.cat([users, extra.users]) * data.num_items + torch.cat([items, extra.items]))
                users, items = key // data.num_items, key % data.num_items
            rated = (users, items)
        return CaseStore(data.num_users, data.users, data.items, data.ratings, rated)

    def _item_case_fields(self) -> Tensor:
        """Hidden field of every item case (item-based), computed once and cached."""
        if self._item_fields is None:
            store = self._item_cases
            parts = []
            with torch.no_grad():
                for start in range(0, store.num_cases, 1024):
                    cases = torch.arange(start, min(start + 1024, store.num_cases))
                    parts.append(self.net.hidden_field(store.batch(cases).to(self.device)))
            self._item_fields = torch.cat(parts) if parts else torch.zeros(0, self.config.num_hidden)
        return self._item_fields

    # -- input checks ------------------------------------------------------------------------
    def _known(self, item_idx, ratings) -> tuple[Tensor, Tensor]:
        item_idx = torch.as_tensor(item_idx).long().reshape(-1).cpu()
        ratings = torch.as_tensor(ratings).long().reshape(-1).cpu()
        if item_idx.numel() != ratings.numel():
            raise RatingModelError(f"item_idx and ratings differ in length ({item_idx.numel()} vs {ratings.numel()})")
        if item_idx.numel():
            if int(item_idx.min()) < 0 or int(item_idx.max()) >= self.num_items:
                raise RatingModelError(f"item index out of range 0..{self.num_items - 1}")
            if int(ratings.min()) < 1 or int(ratings.max()) > self.num_values:
                raise RatingModelError(f"ratings must lie in 1..{self.num_values}")
            if torch.unique(item_idx).numel() != item_idx.numel():
                raise RatingModelError("an item appears more than once among the known ratings")
        return item_idx, ratings

    def _items(self, items) -> Tensor:
        if items is None:
            return torch.arange(self.num_items)
        items = torch.as_tensor(items).long().reshape(-1).cpu()
        if items.numel() and (int(items.min()) < 0 or int(items.max()) >= self.num_items):
            raise RatingModelError(f"item index out of range 0..{self.num_items - 1}")
        return items

    def _user_index(self, user_index: int | None) -> int | None:
        if user_index is None:
            return None
        if not 0 <= int(user_index) < self.num_users:
            raise RatingModelError(f"user_index {user_index} out of range 0..{self.num_users - 1}")
        return int(user_index)

    # -- prediction ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_proba(self, item_idx, ratings, items=None, user_index: int | None = None) -> Tensor:
        """p(rating = k) for ``items`` (default all), ``(len(items), K)``, given one user's known
        ratings; ``user_index`` names the training row, None folds the user in."""
        item_idx, ratings = self._known(item_idx, ratings)
        return self._proba(item_idx, ratings, self._items(items), self._user_index(user_index))

    def _proba(self, item_idx: Tensor, ratings: Tensor, items: Tensor, user_index: int | None) -> Tensor:
        """``predict_proba`` on checked inputs."""
        if item_idx.numel() == 0 and (user_index is None or self.config.orientation == "user"):
            return self.item_fallback[items].to(self.dtype)
        if self.config.kind != "rbm" and self.config.orientation == "user":
            probs = self._deep_proba(item_idx, ratings, items)
        elif self.config.orientation == "user":
            probs = torch.softmax(self._user_case_logits(item_idx, ratings, items), -1).cpu()
        else:
            probs = self._item_based_proba(item_idx, ratings, items, user_index)
        return self._apply_unseen_fallback(probs, items, ratings)

    def _apply_unseen_fallback(self, probs: Tensor, items: Tensor, ratings: Tensor) -> Tensor:
        unseen = self.item_counts[items] == 0
        if bool(unseen.any()):
            hist = torch.bincount(ratings - 1, minlength=self.num_values).double()
            prior = self.config.fallback_prior
            user_hist = (hist + prior * self.global_hist) / (hist.sum() + prior)
            probs = probs.clone()
            probs[unseen] = user_hist.to(probs.dtype)
        return probs

    def _item_based_proba(self, item_idx: Tensor, ratings: Tensor, items: Tensor, user_index: int | None) -> Tensor:
        if user_index is not None:
            if self.config.kind == "rbm":
                return self._training_user_proba(user_index, items)
            users = torch.full_like(items, user_index)
            return self.predict_pairs(users, items, self.train_data)
        weight, bias = self.fold_in_weights(item_idx, ratings)
        return torch.softmax(self._new_unit_logits(self._unit_features(items), weight, bias), -1).cpu()

    def _unit_features(self, items: Tensor) -> Tensor:
        """Item-based: what a new visible unit (user) sees of each item case, ``(len(items), H)``:
        the RBM's hidden field, or a deep model's first-layer mean-field means."""
        if self.config.kind == "rbm":
            return self._item_case_fields()[items.to(self.device)]
        from rbm_core.ratings.deep import case_codes, hidden_features

        return hidden_features(self.net, case_codes(self.train_data.transpose(), items), self.config.mean_field_steps)

    def _new_unit_logits(self, features: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """Item-based: logits of a new visible unit (weights ``(K, H)``, bias ``(K,)``) in each
        case (the unit is unobserved there; for the conditional RBM its D row is zero, so
        "given rated" adds nothing)."""
        if self.config.kind != "rbm" or self.config.prediction != "exact":
            hidden = features if self.config.kind != "rbm" else torch.sigmoid(features)
            return hidden @ weight.t() + bias
        return F.softplus(features.unsqueeze(1) + weight).sum(-1) + bias

    def _first_layer(self) -> tuple[Tensor, Tensor]:
        if self.config.kind == "rbm":
            return self.net.effective_weight, self.net.visible_bias
        from rbm_core.ratings.deep import first_layer

        return first_layer(self.net)

    def fold_in_weights(self, item_idx: Tensor, ratings: Tensor, iterations: int = 50) -> tuple[Tensor, Tensor]:
        """Item-based fold-in: fit a new user's ``(K, H)`` weights and ``(K,)`` biases to their
        known ratings with the rest of the model frozen (see the module docstring)."""
        if self.config.orientation != "item":
            raise RatingModelError("fold_in_weights applies to the item-based orientation")
        item_idx, ratings = self._known(item_idx, ratings)
        all_weights, all_biases = self._first_layer()
        weight0 = all_weights.detach().mean(0)
        bias0 = all_biases.detach().mean(0)
        if item_idx.numel() == 0:
            return weight0, bias0
        features = self._unit_features(item_idx)
        target = (ratings - 1).to(self.device)
        weight = weight0.clone().requires_grad_(True)
        bias = bias0.clone().requires_grad_(True)
        decay = self.config.weight_decay
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            logits = self._new_unit_logits(features, weight, bias)
            loss = F.cross_entropy(logits, target, reduction="sum") + 0.5 * decay * len(target) * weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
        return weight.detach(), bias.detach()

    @torch.no_grad()
    def expected_rating(self, item_idx, ratings, items=None, user_index: int | None = None) -> Tensor:
        """E[rating] for ``items`` (default all), ``(len(items),)``."""
        probs = self.predict_proba(item_idx, ratings, items, user_index)
        return probs @ torch.arange(1, self.num_values + 1, dtype=probs.dtype)

    @torch.no_grad()
    def ranking_scores(self, item_idx, ratings, user_index: int | None = None) -> tuple[Tensor, Tensor]:
        """(ranking score, expected rating) for every item, each ``(num_items,)``."""
        item_idx, ratings = self._known(item_idx, ratings)
        probs = self.predict_proba(item_idx, ratings, None, user_index)
        values = torch.arange(1, self.num_values + 1, dtype=probs.dtype)
        expected = probs @ values
        if item_idx.numel() == 0:
            return self.item_counts.to(probs.dtype), expected
        if self.config.ranking == "rating" or self.engagement is None:
            return expected, expected
        engage = self._engagement_log_prob(item_idx)
        like = probs[:, self.config.like_threshold - 1 :].sum(-1).clamp_min(1e-12).log()
        return engage + self.config.ranking_weight * like, expected

    @torch.no_grad()
    def engagement_log_prob(self, item_idx: Tensor) -> Tensor:
        """log p(rated_q = 1 | the user's other rated indicators) for every item, ``(num_items,)``,
        exact in the implicit Bernoulli RBM."""
        return self._engagement_log_prob(torch.unique(torch.as_tensor(item_idx).long().reshape(-1).cpu()))

    def _engagement_log_prob(self, rated: Tensor) -> Tensor:
        """``engagement_log_prob`` for distinct item indices ``rated``."""
        cache = self._serving()
        w, a = cache["engagement_weight"], cache["engagement_visible_bias"]  # (N, H), (N,)
        rated = rated.to(w.device)
        x = cache["engagement_hidden_bias"] + w.index_select(0, rated).sum(0)  # (H,)
        # An unrated q: field x with r_q = 0 and x + w_q with r_q = 1. A rated q: x - w_q and x.
        logit = _softplus_gain(x, w, cache["engagement_exp_weight"]).add_(a)
        if rated.numel():
            logit[rated] = a[rated] + (F.softplus(x) - F.softplus(x - w[rated])).sum(-1)
        return F.logsigmoid(logit).cpu().to(self.dtype)

    # -- serving: one user's pass over every item ----------------------------------------------
    def _serving(self) -> dict[str, Any]:
        """The user-independent terms of a scoring pass (effective weights, biases), built once per
        parameter state: a served version never changes, and any in-place update of a parameter
        (training, ``load_state_dict``) bumps its version counter and so rebuilds them."""
        params = list(self.net.parameters()) + (list(self.engagement.parameters()) if self.engagement is not None else [])
        key = tuple((id(p), p._version) for p in params)
        cache = getattr(self, "_serving_cache", None)
        if cache is not None and cache["key"] == key:
            return cache
        cache = {"key": key}
        with torch.no_grad():
            if self.config.kind == "rbm":
                net = self.net
                weight = net.effective_weight.detach().contiguous()  # (N, K, H)
                cache["weight"] = weight
                cache["exp_weight"] = (weight.exp(), float(weight.abs().max())) if self.config.prediction == "exact" else None
                cache["flat_weight"] = weight.view(-1, weight.shape[-1])
                cache["visible_bias"] = net.visible_bias.detach()
                cache["hidden_bias"] = net.hidden_bias.detach()
                cache["conditional_weight"] = net.conditional_weight.detach() if self.config.conditional else None
            if self.engagement is not None:
                cache["engagement_weight"] = self.engagement.weight.detach().contiguous()
                w = cache["engagement_weight"]
                cache["engagement_exp_weight"] = (w.exp(), float(w.abs().max()))
                cache["engagement_visible_bias"] = self.engagement.visible_bias.detach()
                cache["engagement_hidden_bias"] = self.engagement.hidden_bias.detach()
        self._serving_cache = cache
        return cache

    def _unit_logits(self, base: Tensor, weight: Tensor, bias: Tensor,
                     exp_weight: tuple[Tensor, float] | None = None) -> Tensor:
        """Logits of softmax units with weights ``weight`` ``(P or 1, K, H)`` and biases ``bias`` given
        hidden fields ``base`` ``(P, H)`` (or ``(H,)``) that leave the unit out: exact
        Σ_j softplus(base_j + W_kj) - softplus(base_j) (the constant of each row cancels in the softmax over k),
        or the one-step mean field Σ_j W_kj σ(base_j).
        ``exp_weight`` = (exp(weight), max |weight|), when given, takes ``_softplus_gain``'s product form."""
        if self.config.prediction == "exact":
            return _softplus_gain(base.unsqueeze(-2), weight, exp_weight) + bias
        if base.dim() == 1:
            return weight @ torch.sigmoid(base) + bias
        return torch.einsum("pkh,ph->pk", weight.expand(base.shape[0], -1, -1), torch.sigmoid(base)) + bias

    def _user_case_logits(self, item_idx: Tensor, ratings: Tensor, items: Tensor) -> Tensor:
        """User-based RBM: unnormalised log p(v_q = k | the user's other ratings) for ``items``,
        ``(len(items), K)``; the same conditional as ``SoftmaxRBMNet.query_logits`` on the user's
        case, computed once for the field shared by every unrated item."""
        cache = self._serving()
        weight, bias, cond = cache["weight"], cache["visible_bias"], cache["conditional_weight"]
        device = weight.device
        units, values = item_idx.to(device), ratings.to(device)
        x = cache["hidden_bias"] + cache["flat_weight"][units * self.num_values + values - 1].sum(0)  # (H,)
        if cond is not None:
            x = x + cond[units].sum(0)  # "the user rated these" (the indicator r)
        whole = items.numel() == self.num_items and bool((items == torch.arange(self.num_items)).all())
        query = None if whole else items.to(device)
        w = weight if whole else weight[query]
        b = bias if whole else bias[query]
        if cond is None:
            exp_w = cache["exp_weight"]
            if exp_w is not None and not whole:
                exp_w = (exp_w[0][query], exp_w[1])
            logits = self._unit_logits(x, w, b, exp_w)
        else:  # an unrated q is asked "given that the user rates q": its D row joins the field
            logits = self._unit_logits(x + (cond if whole else cond[query]), w, b)
        own = torch.zeros(self.num_items, dtype=torch.long, device=device)
        own[units] = values
        own_q = own if whole else own[query]
        seen = torch.nonzero(own_q > 0)[:, 0]
        if seen.numel():  # a rated q: its own rating leaves the field (and r_q = 1 already)
            q = seen if whole else query[seen]
            logits[seen] = self._unit_logits(x - weight[q, own_q[seen] - 1], weight[q], bias[q])
        return logits

    def _training_user_proba(self, user_index: int, items: Tensor) -> Tensor:
        """Item-based RBM, a training user u: p(v_u = k | case q) for ``items`` from the cached
        item-case fields with u's own rating of q (if any) taken out; ``predict_pairs`` for one user."""
        cache = self._serving()
        fields = self._item_case_fields()  # (num_items, H)
        device = fields.device
        rows = getattr(self, "_user_rows", None)
        if rows is None:
            train = self.train_data
            rows = self._user_rows = CaseStore(self.num_users, train.users, train.items, train.ratings)
        lo, hi = int(rows.indptr[user_index]), int(rows.indptr[user_index + 1])
        rated_items, rated_values = rows.unit[lo:hi].to(device), rows.rating[lo:hi].to(device)
        query = items.to(device)
        w_u, b_u = cache["weight"][user_index], cache["visible_bias"][user_index]  # (K, H), (K,)
        own = torch.zeros(self.num_items, dtype=torch.long, device=device)
        own[rated_items] = rated_values
        own_q = own[query]
        base = fields[query]
        seen = own_q > 0
        if bool(seen.any()):
            base[seen] -= w_u[own_q[seen] - 1]
        cond = cache["conditional_weight"]
        if cond is not None:  # D_u joins the field of every case q that u did not rate (train or extra)
            rated = torch.zeros(self.num_items, dtype=torch.bool, device=device)
            rated[rated_items] = True
            if self.rated_extra is not None:
                extra = self.rated_extra
                rated[extra.items[extra.users == user_index].to(device)] = True
            base = base + cond[user_index] * (~rated[query]).unsqueeze(-1).to(base.dtype)
        exp_w = (cache["exp_weight"][0][user_index], float(w_u.abs().max())) if cache["exp_weight"] is not None else None
        probs = torch.softmax(self._unit_logits(base, w_u, b_u, exp_w), -1).cpu()
        # the fallbacks of predict_pairs: items never rated in training, a user with no training ratings
        if hi == lo:
            return self.item_fallback[items].to(probs.dtype)
        unseen = self.item_counts[items] == 0
        if bool(unseen.any()):
            hist = torch.bincount(rows.rating[lo:hi] - 1, minlength=self.num_values).double()
            prior = self.config.fallback_prior
            probs[unseen] = ((hist + prior * self.global_hist) / (hist.sum() + prior)).to(probs.dtype)
        return probs

    @torch.no_grad()
    def recommend(self, item_idx, ratings, n: int = 10, offset: int = 0, exclude_known: bool = True,
                  user_index: int | None = None) -> list[tuple[int, float, float]]:
        """Top ``n`` items after ``offset``: (item index, ranking score, expected rating). A user
        with no ratings gets the popularity order (score = training count)."""
        if n < 0 or offset < 0:
            raise RatingModelError("n and offset must be non-negative")
        item_idx, ratings = self._known(item_idx, ratings)
        if (item_idx.numel() and self.config.ranking == "engagement" and self.engagement is not None
                and self.config.ranking_weight >= 0 and 4 * (offset + n) < self.num_items):
            return self._recommend_pruned(item_idx, ratings, n, offset, exclude_known, user_index)
        score, expected = self.ranking_scores(item_idx, ratings, user_index)
        score = score.clone()
        if exclude_known and item_idx.numel():
            score[item_idx] = -math.inf
        order = torch.argsort(score, descending=True, stable=True)
        keep = order[offset : offset + n]
        keep = keep[torch.isfinite(score[keep])]
        return [(int(i), float(score[i]), float(expected[i])) for i in keep]

    _PRUNE_FIRST = 256  # items scored in the first round of _recommend_pruned (at least 4 (offset + n))

    def _recommend_pruned(self, item_idx: Tensor, ratings: Tensor, n: int, offset: int, exclude_known: bool,
                          user_index: int | None) -> list[tuple[int, float, float]]:
        """``recommend`` with engagement ranking, without the rating conditional of every item. With
        ranking_weight ≥ 0 the score engage(q) + w · log P(like_q) never exceeds engage(q), so items
        are scored in decreasing engage, in growing rounds, until the (offset + n)-th best score beats
        the engage of every item not yet scored: the same items, order and values as the full pass."""
        engage = self._engagement_log_prob(item_idx)
        if exclude_known:
            engage[item_idx] = -math.inf
        user_index = self._user_index(user_index)
        want = offset + n
        if n == 0:
            return []
        values = torch.arange(1, self.num_values + 1, dtype=self.dtype)
        size = max(4 * want, self._PRUNE_FIRST)
        while True:
            # The size + 1 highest engagements: the candidates, and the bound on every other item's score.
            # (Which of several items tied at the bound are candidates does not matter: none can pass it.)
            top, by_engage = torch.topk(engage, min(size + 1, self.num_items))
            chosen = by_engage[:size]
            chosen = torch.sort(chosen[torch.isfinite(top[:size])]).values  # by index: ties as in the full pass
            probs = self._proba(item_idx, ratings, chosen, user_index)
            like = probs[:, self.config.like_threshold - 1 :].sum(-1).clamp_min(1e-12).log()
            score = engage[chosen] + self.config.ranking_weight * like
            order = torch.argsort(score, descending=True, stable=True)
            bound = float(top[size]) if size < self.num_items else -math.inf
            if bound == -math.inf or (len(order) >= want and float(score[order[want - 1]]) > bound):
                keep = order[offset:want]
                keep = keep[torch.isfinite(score[keep])]
                expected = probs[keep] @ values
                return [(int(chosen[i]), float(score[i]), float(e)) for i, e in zip(keep, expected, strict=True)]
            size *= 4

    def popular_items(self, n: int = 10, offset: int = 0) -> list[tuple[int, float]]:
        """Items by training rating count: (item index, count)."""
        order = torch.argsort(self.item_counts, descending=True, stable=True)[offset : offset + n]
        return [(int(i), float(self.item_counts[i])) for i in order]

    @torch.no_grad()
    def reconstruct(self, item_idx, ratings, items=None, steps: int = 1, num_samples: int = 1, seed: int | None = None,
                    user_index: int | None = None) -> tuple[Tensor, Tensor]:
        """Sampled ratings after ``steps`` Gibbs sweeps from the user's clamped ratings.

        Returns ``(samples (S, len(items)) in 1..K, free energies (S,))``. Each sample starts from
        h ~ p(h | known ratings); a sweep draws the chosen items' ratings from p(v | h) and then
        h from p(h | known ratings ∪ sampled ratings), the known ratings staying clamped. The free
        energy is F of the user's case with the sampled ratings filled in. Item-based and deep
        models draw each item independently from ``predict_proba`` (its conditional given the
        known ratings) and return -Σ log p(sampled ratings) in place of the free energy; ``steps``
        only matters for user-based RBMs."""
        if steps < 1 or num_samples < 1:
            raise RatingModelError("steps and num_samples must be at least 1")
        item_idx, ratings = self._known(item_idx, ratings)
        items = self._items(items)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,))))
        if self.config.orientation == "item" or self.config.kind != "rbm":
            probs = self.predict_proba(item_idx, ratings, items, user_index).to(self.device)
            samples = torch.stack([torch.multinomial(probs, 1, generator=generator)[:, 0] + 1 for _ in range(num_samples)])
            log_p = torch.log(probs.clamp_min(1e-12))
            energy = -log_p.gather(1, (samples - 1).t()).sum(0)
            return samples.cpu(), energy.cpu()
        net = self.net
        free = ~torch.isin(items, item_idx)
        query = items[free]
        rows = torch.arange(num_samples).repeat_interleave(len(item_idx) + len(query))
        known_units = torch.cat([item_idx, query])
        units = known_units.repeat(num_samples)
        base_ratings = torch.cat([ratings, torch.ones(len(query), dtype=torch.long)])
        current = base_ratings.repeat(num_samples).to(self.device)
        known_mask = torch.cat([torch.ones(len(item_idx), dtype=torch.bool), torch.zeros(len(query), dtype=torch.bool)]).repeat(num_samples).to(self.device)
        per = len(known_units)
        offsets = torch.arange(num_samples) * per
        rated_case = rated_unit = None
        if self.config.conditional:
            rated_case, rated_unit = rows, units
        full = CaseBatch(num_samples, rows, units, current, offsets, rated_case, rated_unit).to(self.device)
        clamped = CaseBatch(num_samples, rows[known_mask.cpu()], units[known_mask.cpu()], current[known_mask], 
                            torch.arange(num_samples) * len(item_idx), rated_case, rated_unit).to(self.device)
        h = torch.bernoulli(torch.sigmoid(net.hidden_field(clamped)), generator=generator)
        for step in range(steps):
            probs = torch.softmax(net.observed_logits(full, h), -1)
            sampled = torch.multinomial(probs, 1, generator=generator)[:, 0] + 1
            current = torch.where(known_mask, current, sampled)
            if step < steps - 1:
                h = torch.bernoulli(torch.sigmoid(net.hidden_field(full, current)), generator=generator)
        full.rating = current
        energy = net.free_energy(full)
        values = current.view(num_samples, per).cpu()
        lookup = {int(u): j for j, u in enumerate(known_units)}
        cols = torch.tensor([lookup[int(i)] for i in items], dtype=torch.long)
        return values[:, cols], energy.cpu()

    # -- batched evaluation --------------------------------------------------------------------
    @torch.no_grad()
    def predict_pairs(self, users: Tensor, items: Tensor, known: RatingMatrix | None = None, chunk_cases: int = 256) -> Tensor:
        """p(rating) for (user, item) pairs of training users, ``(P, K)``, given ``known`` ratings
        (default: the training ratings). Unseen items get the fallback."""
        known = self.train_data if known is None else known
        users, items = users.long().cpu(), items.long().cpu()
        exact = self.config.prediction == "exact"
        out = torch.empty(len(users), self.num_values, dtype=self.dtype)
        if self.config.kind != "rbm":
            from rbm_core.ratings.deep import pair_probs

            view = known if self.config.orientation == "user" else known.transpose()
            case_of, unit_of = (users, items) if self.config.orientation == "user" else (items, users)
            out[:] = pair_probs(self.net, view, case_of, unit_of, self.config.mean_field_steps, self.num_values)
        elif self.config.orientation == "user":
            store = self._case_store(known, self.rated_extra)
            case_of, unit_of = users, items
        else:
            store = self._case_store(known.transpose(), None if self.rated_extra is None else self.rated_extra.transpose())
            case_of, unit_of = items, users
        order = torch.argsort(case_of)
        sorted_cases = case_of[order]
        unique_cases = torch.unique(sorted_cases) if self.config.kind == "rbm" else sorted_cases[:0]
        for start in range(0, len(unique_cases), chunk_cases):
            cases = unique_cases[start : start + chunk_cases]
            lo = torch.searchsorted(sorted_cases, cases[0])
            hi = torch.searchsorted(sorted_cases, cases[-1], right=True)
            pair_rows = order[lo:hi]
            local = torch.searchsorted(cases, case_of[pair_rows])
            batch = store.batch(cases).to(self.device)
            logits = self.net.query_logits(batch, local.to(self.device), unit_of[pair_rows].to(self.device), exact=exact)
            out[pair_rows] = torch.softmax(logits, -1).cpu().to(out.dtype)
        # documented fallbacks: items never rated in training; users with no known ratings
        unseen_item = self.item_counts[items] == 0
        user_counts = known.user_counts()
        empty_user = user_counts[users] == 0
        if bool(unseen_item.any()) or bool(empty_user.any()):
            hist = torch.zeros(self.num_users, self.num_values, dtype=torch.float64)
            hist.index_put_((known.users, known.ratings - 1), torch.ones(len(known), dtype=torch.float64), accumulate=True)
            prior = self.config.fallback_prior
            user_hist = (hist + prior * self.global_hist) / (hist.sum(-1, keepdim=True) + prior)
            out[unseen_item] = user_hist[users[unseen_item]].to(out.dtype)
            out[empty_user] = self.item_fallback[items[empty_user]].to(out.dtype)
        return out

    @torch.no_grad()
    def score_users(self, users: Tensor, known: RatingMatrix | None = None) -> tuple[Tensor, Tensor]:
        """Batched ``ranking_scores`` for training users: ``(scores, expected)`` each
        ``(len(users), num_items)``, from the ``known`` ratings (default: training data). Known
        items are not excluded here."""
        known = self.train_data if known is None else known
        users = users.long().cpu()
        n = self.num_items
        pair_users = users.repeat_interleave(n)
        pair_items = torch.arange(n).repeat(len(users))
        probs = self.predict_pairs(pair_users, pair_items, known).view(len(users), n, self.num_values)
        values = torch.arange(1, self.num_values + 1, dtype=probs.dtype)
        expected = probs @ values
        if self.config.ranking == "rating" or self.engagement is None:
            return expected, expected
        like = probs[..., self.config.like_threshold - 1 :].sum(-1).clamp_min(1e-12).log()
        engage = self.engagement_log_probs(users, known)
        return engage + self.config.ranking_weight * like, expected

    @torch.no_grad()
    def engagement_log_probs(self, users: Tensor, known: RatingMatrix, chunk: int = 32) -> Tensor:
        """Batched ``engagement_log_prob``: ``(len(users), num_items)``."""
        rbm = self.engagement
        w, a = rbm.weight, rbm.visible_bias
        out = []
        for start in range(0, len(users), chunk):
            part = users[start : start + chunk]
            r = torch.zeros(len(part), self.num_items, dtype=w.dtype)
            lookup = torch.full((self.num_users,), -1, dtype=torch.long)
            lookup[part] = torch.arange(len(part))
            rows = lookup[known.users]
            keep = rows >= 0
            r[rows[keep], known.items[keep]] = 1.0
            r = r.to(w.device)
            x = rbm.hidden_field(r)
            base = x.unsqueeze(1) - r.unsqueeze(-1) * w  # (B, N, H)
            logit = a + (F.softplus(base + w) - F.softplus(base)).sum(-1)
            out.append(F.logsigmoid(logit).cpu().to(self.dtype))
        return torch.cat(out)

    # -- deep models (DBM / general BM) ----------------------------------------------------------
    def _deep_proba(self, item_idx: Tensor, ratings: Tensor, items: Tensor) -> Tensor:
        """User-based deep model: mean-field p(v | the user's ratings) for ``items``."""
        from rbm_core.ratings.deep import case_probs

        codes = torch.zeros(1, self.num_items, dtype=torch.long)
        codes[0, item_idx] = ratings
        return case_probs(self.net, codes, self.config.mean_field_steps)[0, items].to(self.dtype)

    # -- serialisation ---------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """torch.save of plain tensors and a JSON header; read back with weights_only=True."""
        header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "num_users": self.num_users,
            "num_items": self.num_items,
            "num_values": self.num_values,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "has_engagement": self.engagement is not None,
            "has_rated_extra": self.rated_extra is not None,
        }
        t = self.train_data
        tensors = {
            "train_users": t.users.to(torch.int32),
            "train_items": t.items.to(torch.int32),
            "train_ratings": t.ratings.to(torch.uint8),
        }
        if self.rated_extra is not None:
            tensors["extra_users"] = self.rated_extra.users.to(torch.int32)
            tensors["extra_items"] = self.rated_extra.items.to(torch.int32)
        for name, value in self.net.state_dict().items():
            tensors[f"net.{name}"] = value.detach().cpu().contiguous()
        if self.engagement is not None:
            for name, value in self.engagement.state_dict().items():
                tensors[f"engagement.{name}"] = value.detach().cpu().contiguous()
        buffer = io.BytesIO()
        torch.save({"header": json.dumps(header), "tensors": tensors}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, device=None) -> RatingModel:
        """Rebuild a model from ``to_bytes`` output (no code executed); ``RatingModelError`` on
        bytes that are not a rating model of this format."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise RatingModelError("rating model data must be bytes")
        try:
            payload = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, KeyError, OSError) as exc:
            raise RatingModelError(f"rating model bytes are truncated or corrupted ({len(data)} bytes): {exc}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("header"), str) or not isinstance(payload.get("tensors"), dict):
            raise RatingModelError("not a rating model file: no header")
        try:
            header = json.loads(payload["header"])
        except ValueError as exc:
            raise RatingModelError(f"rating model header is not valid JSON: {exc}") from None
        if header.get("format") != FORMAT:
            raise RatingModelError("not a rating model file")
        if header.get("format_version") != FORMAT_VERSION:
            raise RatingModelError(f"rating model format version {header.get('format_version')!r} is not supported")
        tensors = payload["tensors"]
        try:
            config = RatingModelConfig.from_dict(header["config"])
            train = RatingMatrix(tensors["train_users"].long(), tensors["train_items"].long(), tensors["train_ratings"].long(),
                                 int(header["num_users"]), int(header["num_items"]), int(header["num_values"]))
            extra = None
            if header.get("has_rated_extra"):
                extra = RatingMatrix(tensors["extra_users"].long(), tensors["extra_items"].long(),
                                     torch.ones_like(tensors["extra_users"]).long(), train.num_users, train.num_items, train.num_values)
            net_dtypes = [v.dtype for k, v in tensors.items() if k.startswith("net.") and v.is_floating_point()]
            net = _build_net(config, train, dtype=net_dtypes[0] if net_dtypes else torch.float32)
            net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
            engagement = None
            if header.get("has_engagement"):
                engagement = _build_engagement(config, train.num_items)
                engagement.load_state_dict({k[11:]: v for k, v in tensors.items() if k.startswith("engagement.")})
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise RatingModelError(f"rating model file is inconsistent: {exc}") from None
        if device is not None:
            net = net.to(device)
            engagement = engagement.to(device) if engagement is not None else None
        model = cls(config, train, net, engagement, extra)
        model.history = list(header.get("history", []))
        model.train_seconds = float(header.get("train_seconds", 0.0))
        return model


def _softplus_gain(base: Tensor, weight: Tensor, exp_weight: tuple[Tensor, float] | None = None) -> Tensor:
    """Σ_j softplus(base_j + weight_j) - softplus(base_j) over the last dimension, broadcast: what switching a
    unit with weights ``weight`` on adds to -F.

    With ``exp_weight`` = (exp(weight), max |weight|) it is Σ_j log f_j with f_j = 1 - σ(base_j) + σ(base_j)
    e^{weight_j} = e^{softplus(base_j + weight_j) - softplus(base_j)}. Each f_j lies between e^{-|w_j|} and
    e^{|w_j|} whatever the base, so a product of 2^g factors stays inside the float range while 2^g · max |w| <
    80: the logarithm is taken of products of pairs, fours or eights (one log per up to eight elements instead of
    a softplus per element), equal up to float rounding."""
    if exp_weight is None or not base.numel() or not exp_weight[1] < 80.0:
        return (F.softplus(base + weight) - F.softplus(base)).sum(-1)
    # 1 - σ(b) as σ(-b): the difference 1 - σ(b) is rounding noise in float32 from b ≈ 10 and 0 from b ≈ 17
    products = torch.addcmul(torch.sigmoid(-base), torch.sigmoid(base), exp_weight[0])
    rest, bound = None, exp_weight[1]
    for _ in range(3):  # pairs, fours, eights
        if products.shape[-1] < 2 or 2 * bound >= 80.0:
            break
        half = products.shape[-1] // 2
        if products.shape[-1] > 2 * half:  # an odd column left over: its log on its own
            odd = products[..., -1].log()
            rest = odd if rest is None else rest + odd
        products = products[..., :half] * products[..., half : 2 * half]
        bound *= 2
    total = products.log_().sum(-1)
    return total if rest is None else total.add_(rest)


def _single_case(item_idx: Tensor, ratings: Tensor, conditional: bool) -> CaseBatch:
    order = torch.argsort(item_idx)
    units, values = item_idx[order], ratings[order]
    case = torch.zeros(len(units), dtype=torch.long)
    rated_case = case if conditional else None
    rated_unit = units if conditional else None
    return CaseBatch(1, case, units, values, torch.zeros(1, dtype=torch.long), rated_case, rated_unit)


def _build_net(config: RatingModelConfig, train: RatingMatrix, dtype=torch.float32, device=None, generator=None):
    num_units = train.num_items if config.orientation == "user" else train.num_users
    if config.kind != "rbm":
        from rbm_core.ratings.deep import build_deep_net

        return build_deep_net(config, num_units, train.num_values, dtype=dtype, device=device, generator=generator)
    return SoftmaxRBMNet(num_units, train.num_values, config.num_hidden, config.conditional, config.init_std,
                         dtype=dtype, device=device, generator=generator, shared=config.shared_weights,
                         ordinal=config.ordinal_weights)


def _build_engagement(config: RatingModelConfig, num_items: int, device=None, generator=None):
    from rbm_core.models.rbm import RBM, RBMConfig

    return RBM(RBMConfig(num_items, config.engagement_hidden), device=device, generator=generator)


# ------------------------------------------------------------------------------------------------


def train_rating_model(
    train: RatingMatrix,
    config: RatingModelConfig,
    *,
    validation: RatingMatrix | None = None,
    device=None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RatingModel:
    """Train a rating model on ``train``; ``validation`` (same index space, disjoint pairs) drives
    early stopping and the per-epoch ``valid_rmse``. ``callback(epoch, metrics)`` receives
    ``reconstruction_error`` (RMSE of the one-step reconstruction's expected rating on the
    training ratings), ``valid_rmse`` and ``free_energy_gap`` (mean of (F(v) - F(no ratings)) per
    rating over validation cases minus the same over training cases; both only with validation), ``k``,
    ``learning_rate`` and ``seconds``. ``should_stop()`` is polled after every epoch."""
    if not isinstance(config, RatingModelConfig):
        raise TypeError("config must be a RatingModelConfig")
    if len(train) == 0:
        raise ValueError("cannot train a rating model on no ratings")
    if validation is not None and (validation.num_users, validation.num_items, validation.num_values) != (
        train.num_users, train.num_items, train.num_values):
        raise ValueError("validation ratings must share the training index space")
    from rbm_core.training import default_device

    device = torch.device(device) if device is not None else default_device()
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    device_generator = torch.Generator(device=device).manual_seed(config.seed)
    if config.kind != "rbm":
        return _train_deep(train, config, validation, device, callback, should_stop)
    net = _build_net(config, train, device=device, generator=generator)
    rated_extra = None
    if config.conditional and validation is not None:
        rated_extra = RatingMatrix(validation.users, validation.items, torch.ones_like(validation.ratings),
                                   train.num_users, train.num_items, train.num_values)
    view = train if config.orientation == "user" else train.transpose()
    extra_view = None if rated_extra is None else (rated_extra if config.orientation == "user" else rated_extra.transpose())
    model = RatingModel(config, train, net, None, rated_extra)
    store = model._case_store(view, extra_view)
    with torch.no_grad():
        counts = torch.zeros(view.num_items, train.num_values)
        counts.index_put_((view.items, view.ratings - 1), torch.ones(len(view)), accumulate=True)
        logp = (counts + 1.0).log() - (counts + 1.0).sum(-1, keepdim=True).log()
        net.visible_bias.copy_(logp.to(device))
    decayed = net.decayed_parameters()
    others = [net.visible_bias, net.hidden_bias]
    groups = [{"params": decayed, "weight_decay": config.weight_decay}, {"params": others, "weight_decay": 0.0}]
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(groups, lr=config.learning_rate)
    else:
        optimizer = torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.initial_momentum)
    active = torch.nonzero(store.counts() > 0)[:, 0]
    metric_sample = active[torch.randperm(len(active), generator=generator)[:2000]]

    def run_phase(objective: str, optimizer, epochs: int, learning_rate: float, first_epoch: int) -> int:
        """Train for up to ``epochs`` epochs with ``objective``, early-stopped on validation RMSE
        (best weights restored); returns the next epoch number."""
        stopper = EarlyStopping("valid_rmse", patience=config.patience) if validation is not None else None
        averaged = {n: p.detach().clone() for n, p in net.named_parameters()} if config.averaging > 0 else None
        raw = None
        epoch = first_epoch
        for local in range(epochs):
            epoch = first_epoch + local
            epoch_start = time.perf_counter()
            k = config.k_at(local)
            lr = learning_rate * config.lr_decay**local
            momentum = config.momentum if local >= config.momentum_switch_epoch else config.initial_momentum
            for group in optimizer.param_groups:
                group["lr"] = lr
                if "momentum" in group:
                    group["momentum"] = momentum
            order = active[torch.randperm(len(active), generator=generator)]
            net.train()
            recon_sq = recon_n = 0.0
            if averaged is not None and raw is not None:
                _swap(net, raw)  # continue training from the raw parameters
            for start in range(0, len(order), config.batch_size):
                batch = store.batch(order[start : start + config.batch_size]).to(device)
                if objective == "pl":
                    stats = _pseudo_likelihood_step(net, batch, config, device_generator)
                else:
                    stats = net.cd_gradients(batch, k, device_generator, config.layout)
                recon_sq += stats["recon_sq"]
                recon_n += stats["count"]
                optimizer.step()
                if averaged is not None:
                    with torch.no_grad():
                        for name, param in net.named_parameters():
                            averaged[name].mul_(config.averaging).add_(param, alpha=1 - config.averaging)
            check_finite_parameters(net, f"in epoch {epoch}")
            if averaged is not None:  # evaluate (and keep) the averaged parameters
                raw = {name: param.detach().clone() for name, param in net.named_parameters()}
                _swap(net, averaged)
            net.eval()
            model._item_fields = None
            metrics = {"epoch": float(epoch), "k": float(k), "learning_rate": lr,
                       "reconstruction_error": math.sqrt(recon_sq / max(recon_n, 1.0))}
            if validation is not None:
                probs = model.predict_pairs(validation.users, validation.items, train)
                expected = probs.double() @ torch.arange(1, train.num_values + 1, dtype=torch.float64)
                metrics["valid_rmse"] = float((expected - validation.ratings.double()).pow(2).mean().sqrt())
                metrics["free_energy_gap"] = _free_energy_gap(net, store, validation, config, metric_sample, device)
            metrics["seconds"] = time.perf_counter() - epoch_start
            for name, value in metrics.items():
                if not math.isfinite(value):
                    raise TrainingDiverged(f"metric {name} became {value} in epoch {epoch}")
            model.history.append(metrics)
            if callback is not None:
                callback(epoch, metrics)
            if stopper is not None and stopper.update(epoch, metrics, net):
                break
            if should_stop is not None and should_stop():
                break
        if stopper is not None:
            stopper.restore(net)
            model._item_fields = None
        return epoch + 1

    next_epoch = run_phase(config.objective, optimizer, config.epochs, config.learning_rate, 0)
    if config.finetune_epochs and not (should_stop is not None and should_stop()):
        # discriminative fine-tuning of the generatively trained RBM: maximise the pseudo-likelihood
        tune = torch.optim.Adam([{"params": decayed, "weight_decay": config.weight_decay},
                                 {"params": others, "weight_decay": 0.0}], lr=config.finetune_learning_rate)
        run_phase("pl", tune, config.finetune_epochs, config.finetune_learning_rate, next_epoch)
    if config.ranking == "engagement":
        # the implicit signal may use every training-part pair, validation ones included
        implicit = train if validation is None else train.concat(validation)
        model.engagement = _train_engagement(implicit, config, device, generator, should_stop)
    model.train_seconds = time.perf_counter() - started
    return model


def _pseudo_likelihood_step(net, batch, config: RatingModelConfig, generator) -> dict:
    """Write the gradient of the batch's negative pseudo-log-likelihood, per case, on a random
    ``pl_fraction`` of its observed entries, into ``.grad``; returns the same statistics as
    ``cd_gradients`` (the squared error of each left-out rating's expected value). With
    ``pl_dropout`` each target's conditional is given the case's kept ratings only (each rating is
    dropped with probability ``pl_dropout``, the same draw for every target of the case): the exact
    conditional of the RBM over the kept units and the target, i.e. the prediction rule applied to
    a case with fewer known ratings, as a test case has fewer than the training ones plus the
    held-out one."""
    select = keep = None
    if config.pl_fraction < 1:
        u = torch.rand(len(batch.rating), generator=generator, device=batch.rating.device)
        select = u < config.pl_fraction
    if config.pl_dropout > 0:
        u = torch.rand(len(batch.rating), generator=generator, device=batch.rating.device)
        keep = u >= config.pl_dropout
    for param in net.parameters():
        param.grad = None
    with torch.enable_grad():
        logits, target = net.leave_one_out_logits(batch, select, keep)
        loss = F.cross_entropy(logits, target, reduction="sum") / max(batch.size, 1)
        loss.backward()
    with torch.no_grad():
        if net.shared:  # the per-parameter learning rate of cd_gradients: S sums over a case's ratings
            net.shared_weight.grad.div_(max(len(batch.rating) / max(batch.size, 1), 1.0))
        values = torch.arange(1, logits.shape[1] + 1, dtype=logits.dtype, device=logits.device)
        recon_sq = float((torch.softmax(logits, -1) @ values - (target + 1)).pow(2).sum())
    return {"recon_sq": recon_sq, "count": float(len(target))}


@torch.no_grad()
def _swap(net, values: dict[str, Tensor]) -> None:
    for name, param in net.named_parameters():
        param.copy_(values[name])


@torch.no_grad()
def _free_energy_gap(net, store: CaseStore, validation: RatingMatrix, config, sample: Tensor, device) -> float:
    view = validation if config.orientation == "user" else validation.transpose()
    valid_store = CaseStore(view.num_users, view.users, view.items, view.ratings)
    active = torch.nonzero(valid_store.counts() > 0)[:, 0][:2000]

    empty = -float(F.softplus(net.hidden_bias).sum())  # F of a case with no ratings

    def per_rating(s: CaseStore, cases: Tensor) -> float:
        # (F(v) - F(no ratings)) per rating, so that cases of different sizes compare
        batch = s.batch(cases).to(device)
        energy = net.free_energy(batch) - empty
        return float(energy.sum() / max(len(batch.rating), 1))

    if len(active) == 0:
        return 0.0
    return per_rating(valid_store, active) - per_rating(store, sample)


def _train_engagement(train: RatingMatrix, config: RatingModelConfig, device, generator, should_stop):
    """The implicit Bernoulli RBM over "user rated item" rows, by rbm_core's Trainer and CD-1."""
    from rbm_core.estimators import ContrastiveDivergence
    from rbm_core.training import Trainer

    rbm = _build_engagement(config, train.num_items, device=device, generator=generator)
    implicit = torch.zeros(train.num_users, train.num_items)
    implicit[train.users, train.items] = 1.0
    implicit = implicit[implicit.sum(1) > 0]
    rbm.init_visible_bias_from_data(implicit)
    trainer = Trainer(rbm, ContrastiveDivergence(1), learning_rate=config.engagement_learning_rate,
                      momentum=config.momentum, weight_decay=config.weight_decay, batch_size=max(config.batch_size, 16),
                      epochs=config.engagement_epochs, progress=False, should_stop=should_stop,
                      # the Trainer shuffles on the CPU and samples on the device: one generator cannot
                      # serve both off the CPU, so a CUDA run falls back to the global seed
                      generator=generator if torch.device(device).type == "cpu" else None)
    trainer.fit(implicit)
    return rbm


def _train_deep(train, config, validation, device, callback, should_stop):
    """DBM / general BM through rbm_core's Trainer (see ``rbm_core.ratings.deep``)."""
    from rbm_core.ratings.deep import train_deep

    started = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    net = _build_net(config, train, device=device, generator=generator)
    model = RatingModel(config, train, net, None, None)
    view = train if config.orientation == "user" else train.transpose()

    def valid_rmse() -> float:
        probs = model.predict_pairs(validation.users, validation.items, train)
        expected = probs.double() @ torch.arange(1, train.num_values + 1, dtype=torch.float64)
        return float((expected - validation.ratings.double()).pow(2).mean().sqrt())

    model.history, _ = train_deep(net, view, config, validation_metric=None if validation is None else valid_rmse,
                                  callback=callback, should_stop=should_stop, generator=generator)
    if config.ranking == "engagement":
        implicit = train if validation is None else train.concat(validation)
        model.engagement = _train_engagement(implicit, config, device, generator, should_stop)
    model.train_seconds = time.perf_counter() - started
    return model
