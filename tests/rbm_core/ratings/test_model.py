"""Rating models end to end on small synthetic data: planted taste groups are recovered, fold-in,
fallbacks, ranking, reconstructions, model bytes and config validation."""

import math

import pytest
import torch
from torch.nn import functional as F

from rbm_core.ratings import (
    RatingMatrix,
    RatingModel,
    RatingModelConfig,
    RatingModelError,
    split_random,
    train_rating_model,
)
from rbm_core.ratings.baselines import Biases
from rbm_core.ratings.metrics import rmse


def planted_tastes(num_users=240, num_items=60, groups=3, density=0.35, seed=0) -> RatingMatrix:
    """Users and items fall into ``groups`` taste groups: a user rates items of their own group
    4-5 and the others 1-2 (plus a per-item quality shift that biases alone can capture)."""
    g = torch.Generator().manual_seed(seed)
    user_group = torch.arange(num_users) % groups
    item_group = torch.randperm(num_items, generator=g) % groups
    observed = torch.rand(num_users, num_items, generator=g) < density
    users, items = observed.nonzero(as_tuple=True)
    same = user_group[users] == item_group[items]
    noise = torch.rand(len(users), generator=g) < 0.5
    ratings = torch.where(same, 4 + noise.long(), 1 + noise.long())
    return RatingMatrix(users, items, ratings, num_users, num_items)


FAST = dict(num_hidden=20, epochs=25, batch_size=16, learning_rate=0.5, weight_decay=0.001,
            k_schedule=((0, 1), (10, 3)), engagement_hidden=10, engagement_epochs=5, patience=8, averaging=0.0)


@pytest.fixture(scope="module")
def data():
    full = planted_tastes()
    train_part, test = split_random(full, 0.2, seed=0)
    fit, valid = split_random(train_part, 0.1, seed=1)
    return full, train_part, fit, valid, test


@pytest.fixture(scope="module")
def models(data):
    _, _, fit, valid, _ = data
    out = {}
    for name, extra in {"user": {"orientation": "user"}, "item": {"orientation": "item"},
                        "crbm-item": {"orientation": "item", "conditional": True},
                        "pl-user": {"orientation": "user", "objective": "pl", "learning_rate": 0.1},
                        "item-finetuned": {"orientation": "item", "finetune_epochs": 4},
                        "ordinal-crbm-item-pl": {"orientation": "item", "conditional": True, "objective": "pl",
                                                 "learning_rate": 0.1, "ordinal_weights": True}}.items():
        out[name] = train_rating_model(fit, RatingModelConfig(**{**FAST, **extra}), validation=valid, device="cpu")
    return out


def _expected(probs):
    return probs.double() @ torch.arange(1, probs.shape[1] + 1, dtype=torch.float64)


@pytest.mark.parametrize("name", ["user", "item", "crbm-item", "pl-user", "item-finetuned", "ordinal-crbm-item-pl"])
def test_planted_taste_groups_are_recovered(data, models, name):
    """The groups make ratings unpredictable from biases alone (RMSE about 1.5) and almost fully
    predictable from taste (the residual coin flip gives 0.5)."""
    _, train_part, _, _, test = data
    model = models[name]
    model_rmse = rmse(_expected(model.predict_pairs(test.users, test.items, train_part)), test.ratings)
    bias_rmse = rmse(Biases().fit(train_part).predict(test.users, test.items), test.ratings)
    assert bias_rmse > 1.2
    assert model_rmse < 0.75 * bias_rmse, (model_rmse, bias_rmse)
    assert "valid_rmse" in model.history[-1] and "free_energy_gap" in model.history[-1]


def test_user_based_fold_in_reproduces_a_training_user(data, models):
    _, train_part, _, _, _ = data
    model = models["user"]
    items, ratings = train_part.user_ratings(7)
    as_training = model.predict_proba(items, ratings, user_index=7)
    folded = model.predict_proba(items, ratings)
    assert torch.allclose(as_training, folded)
    pairs = model.predict_pairs(torch.full((model.num_items,), 7), torch.arange(model.num_items), train_part)
    assert torch.allclose(pairs, folded.to(pairs.dtype), atol=1e-5)


def test_item_based_fold_in_approximates_a_training_user(data, models):
    """Refitting a training user's weights from their ratings alone (rest frozen) gives nearly
    the same predictions as the weights learned in training."""
    _, train_part, _, _, test = data
    model = models["item"]
    errors_trained, errors_folded, pairs = [], [], []
    for user in range(0, 240, 24):
        items, ratings = train_part.user_ratings(user)
        targets = test.users == user
        if not bool(targets.any()):
            continue
        trained = model.expected_rating(items, ratings, test.items[targets], user_index=user)
        folded = model.expected_rating(items, ratings, test.items[targets])
        errors_trained.append((trained - test.ratings[targets]).pow(2))
        errors_folded.append((folded - test.ratings[targets]).pow(2))
        pairs.append(torch.stack([trained, folded]))
    trained_rmse = float(torch.cat(errors_trained).mean().sqrt())
    folded_rmse = float(torch.cat(errors_folded).mean().sqrt())
    correlation = float(torch.corrcoef(torch.cat(pairs, 1))[0, 1])
    assert correlation > 0.9, correlation
    assert folded_rmse < trained_rmse + 0.15 and folded_rmse < 0.9, (folded_rmse, trained_rmse)


@pytest.mark.parametrize("name", ["user", "item"])
def test_user_without_ratings_gets_the_documented_fallback(models, name):
    model = models[name]
    probs = model.predict_proba([], [], items=[0, 5])
    assert torch.allclose(probs.double(), model.item_fallback[[0, 5]])
    popular = model.popular_items(5)
    assert [i for i, _, _ in model.recommend([], [], n=5)] == [i for i, _ in popular]
    counts = model.item_counts
    assert [c for _, c in popular] == sorted(counts.tolist(), reverse=True)[:5]
    assert model.popular_items(3, offset=2) == popular[2:5]


def test_fallback_is_the_shrunk_item_histogram(models):
    model = models["user"]
    train = model.train_data
    prior = model.config.fallback_prior
    item = 3
    hist = torch.bincount(train.ratings[train.items == item] - 1, minlength=5).double()
    global_hist = (torch.bincount(train.ratings - 1, minlength=5).double() + 1) / (len(train) + 5)
    expected = (hist + prior * global_hist) / (hist.sum() + prior)
    assert torch.allclose(model.item_fallback[item], expected)


def test_recommend_excludes_known_items_and_pages(data, models):
    _, train_part, _, _, _ = data
    model = models["item"]
    items, ratings = train_part.user_ratings(3)
    top = model.recommend(items, ratings, n=8, user_index=3)
    assert len(top) == 8 and not set(i for i, _, _ in top) & set(items.tolist())
    scores = [s for _, s, _ in top]
    assert scores == sorted(scores, reverse=True)
    assert model.recommend(items, ratings, n=4, offset=4, user_index=3) == top[4:8]
    with_known = model.recommend(items, ratings, n=model.num_items, exclude_known=False, user_index=3)
    assert len(with_known) == model.num_items


def test_ranking_score_combines_engagement_and_liking(data, models):
    _, train_part, _, _, _ = data
    model = models["user"]
    items, ratings = train_part.user_ratings(11)
    score, expected = model.ranking_scores(items, ratings, user_index=11)
    probs = model.predict_proba(items, ratings, user_index=11)
    like = probs[:, 3:].sum(-1).log()
    assert torch.allclose(score, model.engagement_log_prob(items) + like, atol=1e-5)
    batched, _ = model.score_users(torch.tensor([11]), train_part)
    assert torch.allclose(batched[0], score, atol=1e-4)


def test_engagement_probability_is_the_exact_conditional(models):
    """log p(r_q = 1 | r_-q) equals -softplus(F(r, q=1) - F(r, q=0)) of the Bernoulli RBM."""
    model = models["user"]
    rbm = model.engagement
    known = torch.tensor([1, 4, 9])
    got = model.engagement_log_prob(known)
    for q in (0, 4, 17):
        on = torch.zeros(1, model.num_items)
        on[0, known] = 1
        off = on.clone()
        on[0, q], off[0, q] = 1, 0
        with torch.no_grad():
            expected = -F.softplus(rbm.free_energy(on) - rbm.free_energy(off))
        assert float(got[q]) == pytest.approx(float(expected), abs=1e-4)


def test_reconstructions_are_seeded_and_keep_known_ratings(data, models):
    _, train_part, _, _, _ = data
    model = models["user"]
    items, ratings = train_part.user_ratings(2)
    chosen = torch.cat([items[:2], torch.tensor([i for i in range(model.num_items) if i not in items.tolist()][:3])])
    samples, energies = model.reconstruct(items, ratings, items=chosen, steps=3, num_samples=6, seed=5)
    again, energies_again = model.reconstruct(items, ratings, items=chosen, steps=3, num_samples=6, seed=5)
    assert samples.shape == (6, 5) and energies.shape == (6,)
    assert torch.equal(samples, again) and torch.equal(energies, energies_again)
    assert (samples[:, :2] == ratings[:2]).all()
    assert int(samples.min()) >= 1 and int(samples.max()) <= 5
    item_samples, item_energies = models["item"].reconstruct(items, ratings, items=chosen, num_samples=4, seed=1)
    assert item_samples.shape == (4, 5) and torch.isfinite(item_energies).all()


def test_model_bytes_round_trip_and_bad_bytes(data, models):
    _, train_part, _, _, _ = data
    for model in models.values():
        items, ratings = train_part.user_ratings(4)
        restored = RatingModel.from_bytes(model.to_bytes())
        assert restored.config == model.config and restored.history == model.history
        assert torch.allclose(restored.predict_proba(items, ratings, user_index=4), model.predict_proba(items, ratings, user_index=4))
        assert torch.allclose(restored.ranking_scores(items, ratings, 4)[0], model.ranking_scores(items, ratings, 4)[0])
    blob = models["user"].to_bytes()
    for bad in (b"", b"not a model", blob[: len(blob) // 2]):
        with pytest.raises(RatingModelError):
            RatingModel.from_bytes(bad)


def test_config_round_trip_and_validation():
    config = RatingModelConfig(orientation="user", k_schedule=((0, 1), (5, 3)), conditional=True)
    assert RatingModelConfig.from_dict(config.to_dict()) == config
    assert config.k_at(0) == 1 and config.k_at(7) == 3
    with pytest.raises(ValueError, match="unknown rating-model config key.*hiddne"):
        RatingModelConfig.from_dict({"hiddne": 3})
    with pytest.raises(ValueError, match="orientation"):
        RatingModelConfig.from_dict({"orientation": "diagonal"})
    with pytest.raises(ValueError, match="num_hidden must be an integer"):
        RatingModelConfig.from_dict({"num_hidden": "many"})
    with pytest.raises(ValueError, match="learning_rate must be positive"):
        RatingModelConfig.from_dict({"learning_rate": -1})
    with pytest.raises(ValueError, match="k_schedule"):
        RatingModelConfig.from_dict({"k_schedule": [[3, 1]]})


def test_bad_arguments_are_rejected(models):
    model = models["user"]
    with pytest.raises(RatingModelError, match="out of range"):
        model.predict_proba([model.num_items], [3])
    with pytest.raises(RatingModelError, match="1..5"):
        model.predict_proba([0], [6])
    with pytest.raises(RatingModelError, match="user_index"):
        model.predict_proba([0], [3], user_index=-1)


def test_callback_and_should_stop(data):
    _, _, fit, valid, _ = data
    seen = []
    model = train_rating_model(fit, RatingModelConfig(**{**FAST, "epochs": 10, "ranking": "rating"}), validation=valid,
                               callback=lambda epoch, metrics: seen.append((epoch, metrics)), should_stop=lambda: len(seen) >= 2)
    assert [e for e, _ in seen] == [0, 1]
    assert {"valid_rmse", "reconstruction_error", "free_energy_gap"} <= set(seen[0][1])
    assert all(math.isfinite(v) for v in seen[0][1].values())
    assert len(model.history) == 2 and model.engagement is None


@pytest.mark.parametrize("kind", ["dbm", "bm"])
def test_deep_kinds_share_the_interface(data, kind):
    _, train_part, fit, valid, test = data
    config = RatingModelConfig(**{**FAST, "kind": kind, "num_hidden2": 10, "epochs": 15, "ranking": "rating", "init_std": 0.1,
                                  "mean_field_steps": 5})
    model = train_rating_model(fit, config, validation=valid, device="cpu")
    model_rmse = rmse(_expected(model.predict_pairs(test.users, test.items, train_part)), test.ratings)
    bias_rmse = rmse(Biases().fit(train_part).predict(test.users, test.items), test.ratings)
    assert model_rmse < bias_rmse, (model_rmse, bias_rmse)
    items, ratings = train_part.user_ratings(5)
    probs = model.predict_proba(items, ratings, user_index=5)
    assert probs.shape == (model.num_items, 5) and torch.allclose(probs.sum(-1), torch.ones(model.num_items), atol=1e-5)
    assert model.predict_proba(items, ratings).shape == (model.num_items, 5)  # fold-in
    restored = RatingModel.from_bytes(model.to_bytes())
    assert torch.allclose(restored.predict_proba(items, ratings, user_index=5), probs, atol=1e-6)
    assert len(model.recommend(items, ratings, n=5, user_index=5)) == 5
