"""Baselines computed by the same harness on the same splits: the global mean, regularised
user + item biases, biased matrix factorisation (mini-batch SGD, early-stopped on validation)
and item popularity for top-N."""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from rbm_core.ratings.data import RatingMatrix


class GlobalMean:
    name = "global mean"

    def fit(self, train: RatingMatrix, validation: RatingMatrix | None = None) -> GlobalMean:
        self.mu = train.mean
        return self

    def predict(self, users: Tensor, items: Tensor) -> Tensor:
        return torch.full((len(users),), self.mu, dtype=torch.float64)


class Biases:
    """r̂ = μ + b_u + b_i, ridge-regularised (λ_user, λ_item), fitted by alternating exact
    minimisation (each step is closed-form: b_i = Σ(r - μ - b_u) / (λ_item + n_i))."""

    name = "biases"

    def __init__(self, reg_user: float = 5.0, reg_item: float = 10.0, iterations: int = 15) -> None:
        self.reg_user, self.reg_item, self.iterations = reg_user, reg_item, iterations

    def fit(self, train: RatingMatrix, validation: RatingMatrix | None = None) -> Biases:
        r = train.ratings.double()
        self.mu = float(r.mean())
        nu = train.user_counts().double()
        ni = train.item_counts().double()
        bu = torch.zeros(train.num_users, dtype=torch.float64)
        bi = torch.zeros(train.num_items, dtype=torch.float64)
        for _ in range(self.iterations):
            resid = r - self.mu - bu[train.users]
            bi = torch.zeros_like(bi).index_add_(0, train.items, resid) / (self.reg_item + ni)
            resid = r - self.mu - bi[train.items]
            bu = torch.zeros_like(bu).index_add_(0, train.users, resid) / (self.reg_user + nu)
        self.user_bias, self.item_bias = bu, bi
        self.top = float(train.num_values)
        return self

    def predict(self, users: Tensor, items: Tensor) -> Tensor:
        return (self.mu + self.user_bias[users] + self.item_bias[items]).clamp(1.0, self.top)


class BiasedMF:
    """r̂ = μ + b_u + b_i + p_uᵀq_i trained by SGD on shuffled mini-batches of ratings (each
    rating's gradient applied as in plain SGD, summed within a batch), L2 ``reg``, early
    stopping on validation RMSE (best epoch restored)."""

    name = "biased MF (SGD)"

    def __init__(self, factors: int = 50, learning_rate: float = 0.01, reg: float = 0.05, epochs: int = 60,
                 batch_size: int = 512, patience: int = 4, seed: int = 0) -> None:
        self.factors, self.learning_rate, self.reg = factors, learning_rate, reg
        self.epochs, self.batch_size, self.patience, self.seed = epochs, batch_size, patience, seed

    def fit(self, train: RatingMatrix, validation: RatingMatrix | None = None) -> BiasedMF:
        g = torch.Generator().manual_seed(self.seed)
        self.mu = train.mean
        self.top = float(train.num_values)
        f = self.factors
        P = torch.randn(train.num_users, f, generator=g, dtype=torch.float64) * 0.1
        Q = torch.randn(train.num_items, f, generator=g, dtype=torch.float64) * 0.1
        bu = torch.zeros(train.num_users, dtype=torch.float64)
        bi = torch.zeros(train.num_items, dtype=torch.float64)
        users, items, r = train.users, train.items, train.ratings.double()
        best, best_state, since = math.inf, None, 0
        self.history: list[float] = []
        lr, reg = self.learning_rate, self.reg
        for _ in range(self.epochs):
            order = torch.randperm(len(train), generator=g)
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                u, i, y = users[rows], items[rows], r[rows]
                pu, qi = P[u], Q[i]
                err = y - (self.mu + bu[u] + bi[i] + (pu * qi).sum(-1))
                bu.index_add_(0, u, lr * (err - reg * bu[u]))
                bi.index_add_(0, i, lr * (err - reg * bi[i]))
                P.index_add_(0, u, lr * (err.unsqueeze(-1) * qi - reg * pu))
                Q.index_add_(0, i, lr * (err.unsqueeze(-1) * pu - reg * qi))
            self.P, self.Q, self.user_bias, self.item_bias = P, Q, bu, bi
            if validation is None:
                continue
            score = float((self.predict(validation.users, validation.items) - validation.ratings.double()).pow(2).mean().sqrt())
            self.history.append(score)
            if score < best - 1e-5:
                best, since = score, 0
                best_state = (P.clone(), Q.clone(), bu.clone(), bi.clone())
            else:
                since += 1
                if since >= self.patience:
                    break
        if best_state is not None:
            self.P, self.Q, self.user_bias, self.item_bias = best_state
        return self

    def predict(self, users: Tensor, items: Tensor) -> Tensor:
        pred = self.mu + self.user_bias[users] + self.item_bias[items] + (self.P[users] * self.Q[items]).sum(-1)
        return pred.clamp(1.0, self.top)


class Popularity:
    """Top-N by training rating count."""

    name = "popularity"

    def fit(self, train: RatingMatrix, validation: RatingMatrix | None = None) -> Popularity:
        self.counts = train.item_counts().double()
        return self

    def scores(self, users: Tensor) -> Tensor:
        return self.counts.unsqueeze(0).expand(len(users), -1).clone()


def timed_fit(model, train: RatingMatrix, validation: RatingMatrix | None = None) -> float:
    start = time.perf_counter()
    model.fit(train, validation)
    return time.perf_counter() - start
