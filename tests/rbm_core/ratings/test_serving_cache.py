"""The serving fast path of RatingModel (user-independent terms cached per parameter state) gives the
same numbers as the general batched code it replaces: ``SoftmaxRBMNet.query_logits`` on the user's case,
``predict_pairs`` for a training user of an item-based model, and the engagement RBM's conditional
computed from the dense indicator row."""

import copy

import pytest
import torch
from torch.nn import functional as F

from rbm_core.ratings import RatingMatrix, RatingModel, RatingModelConfig
from rbm_core.ratings.model import _build_engagement, _build_net, _single_case, _softplus_gain

TOL = 1e-5


def random_model(orientation: str, prediction: str, conditional: bool, seed: int = 0) -> RatingModel:
    g = torch.Generator().manual_seed(seed)
    num_users, num_items = 40, 30
    observed = torch.rand(num_users, num_items, generator=g) < 0.3
    observed[:, -1] = False  # an item nobody rated in training: the fallback applies
    observed[-1] = False  # a user with no training ratings
    users, items = observed.nonzero(as_tuple=True)
    ratings = torch.randint(1, 6, (len(users),), generator=g)
    train = RatingMatrix(users, items, ratings, num_users, num_items)
    config = RatingModelConfig(orientation=orientation, prediction=prediction, conditional=conditional,
                               num_hidden=7, engagement_hidden=6)
    net = _build_net(config, train, generator=g)
    engagement = _build_engagement(config, num_items, generator=g)
    with torch.no_grad():  # weights far from the small initial ones, so that errors would show
        for p in list(net.parameters()) + list(engagement.parameters()):
            p.copy_(torch.randn(p.shape, generator=g))
    extra = None
    if conditional:
        extra_users = torch.tensor([0, 1, 2])
        extra_items = torch.tensor([num_items - 1, 3, 4])
        extra = RatingMatrix(extra_users, extra_items, torch.ones(3, dtype=torch.long), num_users, num_items)
    return RatingModel(config, train, net, engagement, extra)


def reference_user_proba(model: RatingModel, item_idx, ratings, items) -> torch.Tensor:
    batch = _single_case(item_idx, ratings, model.config.conditional)
    logits = model.net.query_logits(batch, torch.zeros_like(items), items, exact=model.config.prediction == "exact")
    return torch.softmax(logits, -1)


def reference_engagement(model: RatingModel, item_idx) -> torch.Tensor:
    rbm = model.engagement
    r = torch.zeros(1, model.num_items, dtype=rbm.weight.dtype)
    r[0, item_idx] = 1.0
    x = rbm.hidden_field(r)[0]
    base = x - r[0].unsqueeze(-1) * rbm.weight
    logit = rbm.visible_bias + (F.softplus(base + rbm.weight) - F.softplus(base)).sum(-1)
    return F.logsigmoid(logit)


@pytest.mark.parametrize("prediction", ["exact", "mean_field"])
@pytest.mark.parametrize("conditional", [False, True])
def test_user_based_fast_path_equals_query_logits(prediction, conditional):
    model = random_model("user", prediction, conditional)
    item_idx = torch.tensor([3, 0, 17, 9])
    ratings = torch.tensor([5, 1, 2, 4])
    everything = torch.arange(model.num_items)
    got = model.predict_proba(item_idx, ratings)
    want = model._apply_unseen_fallback(reference_user_proba(model, item_idx, ratings, everything), everything, ratings)
    assert torch.allclose(got, want, atol=TOL, rtol=0)
    subset = torch.tensor([9, 1, 9, 28, 3])  # rated and unrated, a repeat
    got = model.predict_proba(item_idx, ratings, items=subset)
    want = reference_user_proba(model, item_idx, ratings, subset)
    assert torch.allclose(got, want, atol=TOL, rtol=0)


@pytest.mark.parametrize("prediction", ["exact", "mean_field"])
@pytest.mark.parametrize("conditional", [False, True])
def test_item_based_training_user_equals_predict_pairs(prediction, conditional):
    model = random_model("item", prediction, conditional)
    subset = torch.tensor([5, 29, 0, 5])
    for user in (0, 1, 7, model.num_users - 1):
        item_idx, ratings = model.train_data.user_ratings(user)
        everything = torch.arange(model.num_items)
        want = model.predict_pairs(torch.full_like(everything, user), everything)
        want = model._apply_unseen_fallback(want, everything, ratings)
        got = model.predict_proba(item_idx, ratings, user_index=user)
        assert torch.allclose(got, want, atol=TOL, rtol=0), user
        got = model.predict_proba(item_idx, ratings, items=subset, user_index=user)
        assert torch.allclose(got, want[subset], atol=TOL, rtol=0), user


def test_engagement_and_ranking_scores_match_the_dense_formula():
    model = random_model("user", "exact", False)
    item_idx = torch.tensor([2, 11, 5])
    ratings = torch.tensor([4, 4, 1])
    assert torch.allclose(model.engagement_log_prob(item_idx), reference_engagement(model, item_idx), atol=TOL, rtol=0)
    score, expected = model.ranking_scores(item_idx, ratings)
    probs = model._apply_unseen_fallback(reference_user_proba(model, item_idx, ratings, torch.arange(model.num_items)),
                                         torch.arange(model.num_items), ratings)
    like = probs[:, model.config.like_threshold - 1:].sum(-1).clamp_min(1e-12).log()
    assert torch.allclose(score, reference_engagement(model, item_idx) + like, atol=TOL, rtol=0)
    assert torch.allclose(expected, probs @ torch.arange(1.0, 6.0), atol=TOL, rtol=0)


def test_cache_follows_parameter_updates_and_survives_bytes():
    model = random_model("user", "exact", False)
    item_idx, ratings = torch.tensor([1, 2]), torch.tensor([5, 3])
    before = model.predict_proba(item_idx, ratings)
    with torch.no_grad():  # an in-place update, as an optimizer step makes
        model.net.weight.add_(0.5)
        model.engagement.weight.mul_(2.0)
    after = model.predict_proba(item_idx, ratings)
    want = model._apply_unseen_fallback(reference_user_proba(model, item_idx, ratings, torch.arange(model.num_items)),
                                        torch.arange(model.num_items), ratings)
    assert not torch.allclose(before, after, atol=1e-3)
    assert torch.allclose(after, want, atol=TOL, rtol=0)
    assert torch.allclose(model.engagement_log_prob(item_idx), reference_engagement(model, item_idx), atol=TOL, rtol=0)
    loaded = RatingModel.from_bytes(model.to_bytes())
    assert torch.allclose(loaded.predict_proba(item_idx, ratings), after, atol=TOL, rtol=0)


def test_large_fields_stay_accurate():
    # hidden fields of +-200: softplus(x + W) summed in float32 would lose the logits' differences (one ulp of
    # the sum is ~1e-4); the serving pass works with softplus(x + W) - softplus(x) and matches float64
    model = random_model("user", "exact", False, seed=3)
    with torch.no_grad():
        model.net.hidden_bias.add_(200.0)
        model.engagement.hidden_bias.sub_(200.0)
    exact = copy.deepcopy(model)
    exact.net.double()
    exact.engagement.double()
    item_idx, ratings = torch.tensor([4, 8]), torch.tensor([2, 5])
    want = model._apply_unseen_fallback(reference_user_proba(exact, item_idx, ratings, torch.arange(model.num_items)),
                                        torch.arange(model.num_items), ratings)
    assert torch.allclose(model.predict_proba(item_idx, ratings).double(), want, atol=TOL, rtol=0)
    assert torch.allclose(model.engagement_log_prob(item_idx).double(), reference_engagement(exact, item_idx),
                          atol=TOL, rtol=0)


@pytest.mark.parametrize("scale", [0.5, 3.0, 15.0, 35.0])
def test_softplus_gain_equals_the_plain_formula(scale):
    # the product form against float64: max |W| of about 2, 9, 45 and 100 take eights, eights, pairs and no grouping
    g = torch.Generator().manual_seed(int(scale))
    base = torch.randn(13, generator=g) * 5
    weight = torch.randn(7, 5, 13, generator=g) * scale
    exact = (F.softplus(base.double() + weight.double()) - F.softplus(base.double())).sum(-1)
    got = _softplus_gain(base, weight, (weight.exp(), float(weight.abs().max())))
    assert torch.allclose(got.double(), exact, atol=1e-5 * max(1.0, scale), rtol=1e-6)


@pytest.mark.parametrize("field", [12.0, 17.0, 30.0, -30.0])
def test_softplus_gain_of_saturated_fields(field):
    # a field far from 0 with a weight that takes it back past 0 (the regime where 1 - σ(b) vanishes in float32)
    base = torch.full((8,), field)
    weight = (-base - 3.0 + torch.linspace(-1, 1, 8)).reshape(1, 8)
    exact = (F.softplus(base.double() + weight.double()) - F.softplus(base.double())).sum(-1)
    got = _softplus_gain(base, weight, (weight.exp(), float(weight.abs().max())))
    assert torch.allclose(got.double(), exact, atol=1e-4, rtol=1e-6), (got, exact)


@pytest.mark.parametrize("orientation", ["user", "item"])
@pytest.mark.parametrize("first_round", [8, 256])
def test_pruned_recommend_equals_the_full_ranking(orientation, first_round, monkeypatch):
    # engagement ranking scores items in decreasing engagement until the top is settled: the same top
    # n as sorting the full ranking_scores, whatever the size of the first round
    monkeypatch.setattr(RatingModel, "_PRUNE_FIRST", first_round)
    model = random_model(orientation, "exact", False, seed=5)
    with torch.no_grad():  # engagement biases spread out, so that likes change the order
        model.engagement.visible_bias.mul_(0.3)
    for user in range(0, 12):
        item_idx, ratings = model.train_data.user_ratings(user)
        if item_idx.numel() == 0:
            continue
        score, expected = model.ranking_scores(item_idx, ratings, user_index=user)
        for exclude in (True, False):
            full = score.clone()
            if exclude:
                full[item_idx] = -float("inf")
            order = torch.argsort(full, descending=True, stable=True)
            for n, offset in ((3, 0), (2, 3), (5, 1)):
                got = model.recommend(item_idx, ratings, n=n, offset=offset, exclude_known=exclude, user_index=user)
                want = order[offset:offset + n].tolist()
                assert [i for i, _, _ in got] == want, (user, exclude, n, offset)
                for i, s, e in got:
                    assert abs(s - float(score[i])) < TOL and abs(e - float(expected[i])) < TOL
