"""The RBM's closed forms against exact enumeration in float64: energy, free energy, conditionals,
log Z, and the masked softmax unit that takes no part in anything."""

import math

import pytest
import torch
from helpers import submodel_without_visible_units, tiny_rbm
from torch.nn import functional as F

from rbm_core import RBM, InvalidInputError, RBMConfig
from rbm_core.partition import exact_log_likelihood, exact_log_partition, joint_distribution, visible_distribution

pytestmark = pytest.mark.usefixtures("single_thread")

MODELS = {
    "bernoulli": lambda: tiny_rbm(4, 3, seed=1),
    "softmax": lambda: tiny_rbm(3, 3, "softmax", 3, seed=2),
}


def all_hidden(model):
    return model.hidden.all_states(torch.float64)


def masked_softmax_batch(model, seed=0, rows=12):
    """Random ratings with some missing (0) entries, at least one observed unit per row."""
    gen = torch.Generator().manual_seed(seed)
    c = model.config
    codes = torch.randint(1, c.num_values + 1, (rows, c.num_visible), generator=gen)
    missing = torch.rand(rows, c.num_visible, generator=gen) < 0.4
    missing[:, 0] = False
    return model.encode(codes * ~missing)


def test_energy_and_free_energy_by_hand():
    model = RBM(RBMConfig(2, 1), dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [2.0]]))
        model.visible_bias.copy_(torch.tensor([0.5, -1.0]))
        model.hidden_bias.copy_(torch.tensor([0.25]))
    v = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    h = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    # E = -vᵀWh - bᵀv - cᵀh
    assert model.energy((v, h)).tolist() == pytest.approx([-(3.0) - (-0.5) - 0.25, -0.5])
    assert model.free_energy(v).tolist() == pytest.approx(
        [0.5 - math.log1p(math.exp(3.25)), -0.5 - math.log1p(math.exp(1.25))]
    )


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("beta", [1.0, 0.35])
def test_free_energy_is_minus_logsumexp_over_hidden_states(kind, beta):
    model = MODELS[kind]()
    v = model.visible.all_states(torch.float64)
    if kind == "softmax":  # masked units too
        v = torch.cat([v, masked_softmax_batch(model)])
    h = all_hidden(model)
    # -E(v, h) for every (v, h) pair: (num_v, num_h)
    minus_energy = torch.stack([-model.energy((v, hj.expand(len(v), -1))) for hj in h], 1)
    expected = -torch.logsumexp(beta * minus_energy, 1)
    assert torch.allclose(model.free_energy(v, beta), expected, atol=1e-12)
    per_sample_beta = torch.full((len(v),), beta, dtype=torch.float64)
    assert torch.allclose(model.free_energy(v, per_sample_beta), expected, atol=1e-12)


@pytest.mark.parametrize("kind", MODELS)
def test_conditionals_are_ratios_of_the_exact_joint(kind):
    model = MODELS[kind]()
    (v_all, h_all), log_joint = joint_distribution(model)
    num_v, num_h = model.visible.num_states, model.hidden.num_states
    log_joint = log_joint.reshape(num_v, num_h)  # meshgrid order: visible index major
    v_states = v_all.reshape(num_v, num_h, *v_all.shape[1:])[:, 0]
    h_states = h_all.reshape(num_v, num_h, -1)[0]
    with torch.no_grad():
        # p(h | v) = p(v, h) / sum_h' p(v, h'), for every (v, h)
        exact_h_given_v = log_joint - torch.logsumexp(log_joint, 1, keepdim=True)
        field_h = model.hidden_field(v_states)  # (num_v, H)
        for j, h in enumerate(h_states):
            ours = model.hidden.log_prob(h.expand(num_v, -1), field_h)
            assert torch.allclose(ours, exact_h_given_v[:, j], atol=1e-12)
        assert torch.allclose(model.hidden_mean(v_states), exact_h_given_v.exp() @ h_states, atol=1e-12)
        # p(v | h) = p(v, h) / sum_v' p(v', h)
        exact_v_given_h = log_joint - torch.logsumexp(log_joint, 0, keepdim=True)
        field_v = model.visible_field(h_states)
        for i, v in enumerate(v_states):
            ours = model.visible.log_prob(v.expand(num_h, *v.shape), field_v)
            assert torch.allclose(ours, exact_v_given_h[i], atol=1e-12)
        expected_mean = torch.einsum("vh,v...->h...", exact_v_given_h.exp(), v_states)
        assert torch.allclose(model.visible_mean(h_states), expected_mean, atol=1e-12)
        # and the marginal p(v) ∝ exp(-F(v))
        states, log_p = visible_distribution(model)
        assert torch.equal(states, v_states)
        assert torch.allclose(log_p, torch.logsumexp(log_joint, 1), atol=1e-12)


@pytest.mark.parametrize("num_visible, num_hidden", [(3, 6), (7, 2)], ids=["enumerate-visible", "enumerate-hidden"])
def test_exact_log_partition_both_ways(num_visible, num_hidden):
    model = tiny_rbm(num_visible, num_hidden, seed=3)
    _, unnormalised = joint_distribution(model)  # normalised: recompute -E's logsumexp directly
    layers = [u.all_states(torch.float64) for u in model.layers]
    grid = torch.meshgrid(torch.arange(len(layers[0])), torch.arange(len(layers[1])), indexing="ij")
    brute = torch.logsumexp(-model.energy([layers[0][grid[0].reshape(-1)], layers[1][grid[1].reshape(-1)]]), 0)
    assert torch.allclose(exact_log_partition(model), brute, atol=1e-10)
    v = layers[0][:5]
    assert torch.allclose(exact_log_likelihood(model, v), -model.free_energy(v) - brute, atol=1e-10)


@torch.no_grad()
def test_exact_log_partition_with_twenty_hidden_units_runs():
    model = tiny_rbm(30, 20, seed=4, scale=0.1)
    value = exact_log_partition(model)
    assert torch.isfinite(value)
    # with zero weights, log Z = sum softplus(b) + sum softplus(c): a hand check of the enumerator
    with torch.no_grad():
        model.weight.zero_()
    expected = F.softplus(model.visible_bias).sum() + F.softplus(model.hidden_bias).sum()
    assert torch.allclose(exact_log_partition(model), expected, atol=1e-9)


# -- a masked softmax unit takes no part ---------------------------------------------------------
def test_masked_unit_changes_neither_energy_nor_conditionals_nor_log_z():
    model = tiny_rbm(4, 3, "softmax", 3, seed=5)
    keep = [0, 2, 3]
    sub = submodel_without_visible_units(model, keep)
    codes = torch.tensor([[1, 0, 3, 2], [3, 0, 1, 1], [2, 0, 2, 3]])
    v = model.encode(codes)
    v_sub = sub.encode(codes[:, keep])
    h = torch.tensor([[1.0, 0, 1], [0, 0, 0], [1, 1, 1]], dtype=torch.float64)
    assert torch.allclose(model.energy((v, h)), sub.energy((v_sub, h)), atol=1e-12)
    assert torch.allclose(model.free_energy(v), sub.free_energy(v_sub), atol=1e-12)
    assert torch.allclose(model.hidden_mean(v), sub.hidden_mean(v_sub), atol=1e-12)
    mask = model.visible.mask(v)
    mean = model.visible_mean(h, mask=mask)
    assert torch.equal(mean[:, 1], torch.zeros(3, 3, dtype=torch.float64))
    assert torch.allclose(mean[:, keep], sub.visible_mean(h), atol=1e-12)
    assert torch.allclose(exact_log_partition(model, mask), exact_log_partition(sub).expand(3), atol=1e-10)
    assert torch.allclose(exact_log_likelihood(model, v), exact_log_likelihood(sub, v_sub), atol=1e-10)
    # and whatever the masked unit's parameters, nothing changes
    before = (model.energy((v, h)), model.free_energy(v), model.hidden_mean(v))
    with torch.no_grad():
        rows = slice(1 * 3, 2 * 3)
        model.weight[rows] += 5.0
        model.visible_bias[rows] -= 3.0
    after = (model.energy((v, h)), model.free_energy(v), model.hidden_mean(v))
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("hand_written", [False, True], ids=["autograd", "contrastive_grads"])
def test_masked_unit_changes_no_gradient(hand_written):
    model = tiny_rbm(4, 3, "softmax", 3, seed=6)
    keep = [0, 2, 3]
    sub = submodel_without_visible_units(model, keep)
    pos_codes = torch.tensor([[1, 0, 3, 2], [3, 0, 1, 1], [2, 0, 2, 3]])
    neg_codes = torch.tensor([[2, 0, 1, 2], [1, 0, 1, 3], [3, 0, 3, 3]])

    def grads(m, pos, neg):
        for p in m.parameters():
            p.grad = None
        if hand_written:
            m.contrastive_grads(pos, neg)
        else:
            m.contrastive_loss(pos, neg).backward()
        return m.weight.grad.clone(), m.visible_bias.grad.clone(), m.hidden_bias.grad.clone()

    gw, gb, gc = grads(model, model.encode(pos_codes), model.encode(neg_codes))
    sw, sb, sc = grads(sub, sub.encode(pos_codes[:, keep]), sub.encode(neg_codes[:, keep]))
    rows = torch.tensor([u * 3 + k for u in keep for k in range(3)])
    assert torch.equal(gw[3:6], torch.zeros(3, 3, dtype=torch.float64))
    assert torch.equal(gb[3:6], torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(gw[rows], sw, atol=1e-12)
    assert torch.allclose(gb[rows], sb, atol=1e-12)
    assert torch.allclose(gc, sc, atol=1e-12)


# -- bad input -------------------------------------------------------------------------------------
def test_model_encode_rejects_bad_input():
    bern = RBM(RBMConfig(4, 2))
    soft = RBM(RBMConfig(3, 2, "softmax", 5))
    with pytest.raises(InvalidInputError, match="shape"):
        bern.encode(torch.zeros(2, 5))
    with pytest.raises(InvalidInputError, match="0 or 1"):
        bern.encode(torch.tensor([[0, 1, 3, 0]]))
    with pytest.raises(InvalidInputError, match="NaN"):
        bern.encode(torch.tensor([[0, 1, float("nan"), 0]]))
    with pytest.raises(InvalidInputError, match="1..5"):
        soft.encode(torch.tensor([[1, 6, 0]]))
    with pytest.raises(InvalidInputError, match="shape"):
        soft.encode(torch.tensor([[1, 2, 0, 4]]))
    with pytest.raises(InvalidInputError, match="mask has shape"):
        soft.visible_mean(torch.zeros(2, 2), mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(InvalidInputError, match="mask has shape"):
        soft.sample_visible(torch.zeros(2, 2), mask=torch.ones(3, 3, dtype=torch.bool))


def test_bad_config_is_refused():
    with pytest.raises(ValueError):
        RBMConfig(0, 3)
    with pytest.raises(ValueError):
        RBMConfig(3, 3, "softmax", 1)
    with pytest.raises(ValueError, match="unknown unit kind"):
        RBM(RBMConfig(3, 3, "gaussian"))


def test_init_visible_bias_from_data_matches_base_rates():
    model = RBM(RBMConfig(3, 2), dtype=torch.float64)
    data = torch.tensor([[1, 0, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]])
    model.init_visible_bias_from_data(data)
    p = torch.tensor([0.75, 0.25, 0.25], dtype=torch.float64)
    assert torch.allclose(torch.sigmoid(model.visible_bias), p, atol=1e-12)
    soft = RBM(RBMConfig(2, 2, "softmax", 3), dtype=torch.float64)
    soft.init_visible_bias_from_data(torch.tensor([[1, 0], [1, 2], [2, 2], [3, 0]]))
    probs = torch.softmax(soft.visible_bias.reshape(2, 3), -1)
    expected = torch.tensor([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(probs, expected, atol=2e-3)
