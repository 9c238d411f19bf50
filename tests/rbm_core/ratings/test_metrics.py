"""Metrics on hand-computed examples."""

import math

import pytest
import torch

from rbm_core.ratings.metrics import (
    average_precision_at_k,
    mae,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    rmse,
    topn_metrics,
)


def test_rmse_and_mae_by_hand():
    predicted = torch.tensor([3.0, 4.0, 2.0, 5.0])
    actual = torch.tensor([4, 4, 1, 3])
    # errors -1, 0, 1, 2: squares 1, 0, 1, 4 -> mean 1.5
    assert rmse(predicted, actual) == pytest.approx(math.sqrt(1.5))
    assert mae(predicted, actual) == pytest.approx(1.0)


# ranked list 10 20 30 40 50; relevant {20, 50, 99}: hits at ranks 2 and 5
RANKED = [10, 20, 30, 40, 50]
RELEVANT = {20, 50, 99}


def test_precision_recall_by_hand():
    assert precision_at_k(RANKED, RELEVANT, 5) == pytest.approx(2 / 5)
    assert recall_at_k(RANKED, RELEVANT, 5) == pytest.approx(2 / 3)
    assert precision_at_k(RANKED, RELEVANT, 2) == pytest.approx(1 / 2)
    assert recall_at_k(RANKED, set(), 5) == 0.0


def test_ndcg_by_hand():
    dcg = 1 / math.log2(3) + 1 / math.log2(6)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(RANKED, RELEVANT, 5) == pytest.approx(dcg / ideal)
    assert ndcg_at_k([20, 50, 99], RELEVANT, 3) == pytest.approx(1.0)
    # only 1 relevant: ideal is a hit at rank 1
    assert ndcg_at_k([1, 2], {2}, 2) == pytest.approx(1 / math.log2(3))


def test_average_precision_by_hand():
    # precisions at the hits: 1/2 (rank 2), 2/5 (rank 5); divided by min(3, 5) = 3
    assert average_precision_at_k(RANKED, RELEVANT, 5) == pytest.approx((0.5 + 0.4) / 3)
    assert average_precision_at_k([7, 8], {7}, 2) == pytest.approx(1.0)


def test_vectorised_topn_metrics_agree_with_scalar_ones():
    ranked_lists = [RANKED, [99, 1, 2, 3, 20]]
    relevant_sets = [RELEVANT, {99, 20, 7, 8}]
    ranked = torch.tensor(ranked_lists)
    hits = torch.tensor([[item in rel for item in lst] for lst, rel in zip(ranked_lists, relevant_sets, strict=True)])
    counts = torch.tensor([len(r) for r in relevant_sets])
    got = topn_metrics(ranked, hits, counts, 5, num_items=100)
    for name, fn in (("precision@5", precision_at_k), ("recall@5", recall_at_k), ("ndcg@5", ndcg_at_k),
                     ("map@5", average_precision_at_k)):
        expected = sum(fn(lst, rel, 5) for lst, rel in zip(ranked_lists, relevant_sets, strict=True)) / 2
        assert got[name] == pytest.approx(expected), name
    assert got["coverage"] == pytest.approx(len(set(RANKED) | {99, 1, 2, 3, 20}) / 100)
