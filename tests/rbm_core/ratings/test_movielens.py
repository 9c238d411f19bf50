"""Real MovieLens-100K through the harness (slow: about 2-4 minutes on the shared 2-core machine)."""

from pathlib import Path

import pytest

from rbm_core.ratings.evaluate import build_parser, evaluate

DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "ml-100k" / "u.data"


@pytest.mark.slow
@pytest.mark.skipif(not DATA.exists(), reason="MovieLens-100K not present")
def test_item_based_rbm_beats_biases_and_popularity_on_movielens_100k():
    args = build_parser().parse_args(["--data", str(DATA), "--models", "biases,popularity,rbm-item"])
    report = evaluate(args, log=lambda *a, **k: None)
    rating = report["rating"]["models"]
    assert rating["rbm-item"]["rmse"] < rating["biases"]["rmse"] - 0.015
    topn = report["topn"]["models"]
    assert topn["rbm-item"]["ndcg@10"] >= 0.40
    assert topn["rbm-item"]["ndcg@10"] >= 1.2 * topn["popularity"]["ndcg@10"]
