"""Evaluation metrics: RMSE and MAE for rating prediction; Precision, Recall, nDCG and MAP at k
(binary relevance: every test item of a user is relevant) and catalogue coverage for top-N."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor


def rmse(predicted: Tensor, actual: Tensor) -> float:
    """sqrt(mean((predicted - actual)²))."""
    diff = predicted.double() - actual.double()
    return float(diff.pow(2).mean().sqrt()) if diff.numel() else math.nan


def mae(predicted: Tensor, actual: Tensor) -> float:
    """mean(|predicted - actual|)."""
    diff = predicted.double() - actual.double()
    return float(diff.abs().mean()) if diff.numel() else math.nan


def precision_at_k(ranked: Sequence[int], relevant: Iterable[int], k: int) -> float:
    """|top-k ∩ relevant| / k."""
    relevant = set(relevant)
    return sum(1 for item in list(ranked)[:k] if item in relevant) / k


def recall_at_k(ranked: Sequence[int], relevant: Iterable[int], k: int) -> float:
    """|top-k ∩ relevant| / |relevant| (0 when nothing is relevant)."""
    relevant = set(relevant)
    if not relevant:
        return 0.0
    return sum(1 for item in list(ranked)[:k] if item in relevant) / len(relevant)


def ndcg_at_k(ranked: Sequence[int], relevant: Iterable[int], k: int) -> float:
    """DCG / ideal DCG with gains 1 for relevant items, discount 1 / log2(rank + 1)."""
    relevant = set(relevant)
    if not relevant:
        return 0.0
    dcg = sum(1.0 / math.log2(rank + 2) for rank, item in enumerate(list(ranked)[:k]) if item in relevant)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(relevant), k)))
    return dcg / ideal


def average_precision_at_k(ranked: Sequence[int], relevant: Iterable[int], k: int) -> float:
    """(1 / min(|relevant|, k)) Σ_{i ≤ k, item i relevant} Precision@i; MAP@k is its mean over users."""
    relevant = set(relevant)
    if not relevant:
        return 0.0
    hits, total = 0, 0.0
    for rank, item in enumerate(list(ranked)[:k], start=1):
        if item in relevant:
            hits += 1
            total += hits / rank
    return total / min(len(relevant), k)


def topn_metrics(ranked: Tensor, hits: Tensor, num_relevant: Tensor, k: int, num_items: int) -> dict[str, float]:
    """Vectorised means over users of the four metrics above, plus coverage.

    ``ranked`` ``(U, k)`` item indices, ``hits`` ``(U, k)`` bool (item relevant), ``num_relevant``
    ``(U,)`` (> 0). Coverage = distinct recommended items / ``num_items``."""
    hits = hits[:, :k].double()
    num_relevant = num_relevant.double()
    ranks = torch.arange(1, k + 1, dtype=torch.float64)
    discount = 1.0 / torch.log2(ranks + 1)
    ideal_len = num_relevant.clamp(max=k).long()
    ideal = torch.cumsum(discount, 0)[ideal_len - 1]
    cum_hits = torch.cumsum(hits, 1)
    precision_i = cum_hits / ranks
    out = {
        f"precision@{k}": float((hits.sum(1) / k).mean()),
        f"recall@{k}": float((hits.sum(1) / num_relevant).mean()),
        f"ndcg@{k}": float(((hits * discount).sum(1) / ideal).mean()),
        f"map@{k}": float(((precision_i * hits).sum(1) / num_relevant.clamp(max=k)).mean()),
        "coverage": float(torch.unique(ranked[:, :k]).numel() / num_items),
    }
    return out
