"""General Boltzmann machine against exact enumeration (tiny models, float64)."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import chi_squared_pvalue

from rbm_core.estimators import NegativePhase
from rbm_core.io import model_from_bytes, model_to_bytes
from rbm_core.models import RBM, BMConfig, BoltzmannMachine, RBMConfig, TwoPhaseEstimator
from rbm_core.partition import joint_distribution
from rbm_core.samplers import BlockGibbs, ChainState, SingleSiteGibbs
from rbm_core.training import Trainer

ALPHA = 1e-3  # false-alarm rate of every chi-squared test
KINDS = [("bernoulli", 2), ("softmax", 3)]
LATERALS = [(True, True), (True, False), (False, True)]


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: see tests/conftest.py


def make_bm(kind, k, num_visible=3, num_hidden=2, vv=True, hh=True, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = BoltzmannMachine(
        BMConfig(num_visible, num_hidden, kind, k, vv, hh, init_std=scale), dtype=torch.float64, generator=g
    )
    with torch.no_grad():
        model.visible_bias.copy_(torch.randn(model.visible_bias.shape, generator=g, dtype=torch.float64) * 0.5)
        model.hidden_bias.copy_(torch.randn(model.hidden_bias.shape, generator=g, dtype=torch.float64) * 0.5)
    return model


def layer_codes(units, x):
    """Index of each layer state in ``units.all_states()`` order (first unit most significant)."""
    codes = x.argmax(-1) if units.kind == "softmax" else x.long()
    base = units.num_values
    place = base ** torch.arange(units.size - 1, -1, -1)
    return (codes * place).sum(-1)


def joint_codes(model, layers):
    index = torch.zeros(layers[0].shape[0], dtype=torch.long)
    for units, x in zip(model.layers, layers, strict=True):
        index = index * units.num_states + layer_codes(units, x)
    return index


def chi2_pvalue(samples_index, probs):
    """Chi-squared p-value of state indices against the exact pmf (shared helper; cells with
    expected count < 5 pooled)."""
    return chi_squared_pvalue(torch.bincount(samples_index, minlength=probs.numel()), probs)


def exact_clamped_and_free(model, data):
    """Exact clamped states/weights (posterior given each data row) and free states/weights."""
    hidden, log_q = model.exact_posterior(data)
    batch, num_hidden_states = log_q.shape
    clamped = [data.repeat_interleave(num_hidden_states, 0), *[h.repeat(batch, 1) for h in hidden]]
    clamped_weights = log_q.exp().reshape(-1) / batch
    layers, log_p = joint_distribution(model)
    return clamped, clamped_weights, layers, log_p.exp()


# -- structure --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,k", KINDS)
def test_lateral_weights_symmetric_zero_diagonal_whatever_the_free_parameter(kind, k):
    model = make_bm(kind, k, num_visible=4, num_hidden=3)
    with torch.no_grad():  # an arbitrary, asymmetric free parameter
        model.visible_lateral_free.normal_()
        model.hidden_lateral_free.normal_()
    for lateral in (model.visible_lateral, model.hidden_lateral):
        assert torch.equal(lateral, lateral.t())
        assert torch.all(lateral.diagonal() == 0)
    if kind == "softmax":
        blocks = model.visible_lateral.reshape(4, k, 4, k)
        for unit in range(4):
            assert torch.all(blocks[unit, :, unit, :] == 0)
        # Between different units every (value, value) pair has its own weight.
        assert torch.all(blocks[0, :, 1, :] != 0)


def test_semi_restricted_variants_are_the_same_class_with_connections_off():
    model = make_bm("bernoulli", 2, vv=False, hh=True)
    assert model.visible_lateral is None and model.hidden_lateral is not None
    assert "visible_lateral_free" not in dict(model.named_parameters())
    rbm_like = make_bm("bernoulli", 2, vv=False, hh=False)
    assert rbm_like.layers_conditionally_independent
    rbm = RBM(RBMConfig(3, 2), dtype=torch.float64)
    with torch.no_grad():
        rbm.weight.copy_(rbm_like.weight)
        rbm.visible_bias.copy_(rbm_like.visible_bias)
        rbm.hidden_bias.copy_(rbm_like.hidden_bias)
    v = rbm.visible.all_states()
    h = torch.bernoulli(torch.full((8, 2), 0.5, dtype=torch.float64))
    torch.testing.assert_close(rbm_like.energy((v, h)), rbm.energy((v, h)))
    torch.testing.assert_close(rbm_like.free_energy(v), rbm.free_energy(v))


@pytest.mark.parametrize("kind,k", KINDS)
def test_energy_equals_the_quadratic_form(kind, k):
    model = make_bm(kind, k)
    g = torch.Generator().manual_seed(3)
    v = model.visible.random_state(5, g, torch.float64)
    h = model.hidden.random_state(5, g, torch.float64)
    vf = model.visible.flatten(v)
    w_vv, w_hh = model.visible_lateral, model.hidden_lateral
    for n in range(5):
        expected = (
            -0.5 * vf[n] @ w_vv @ vf[n]
            - 0.5 * h[n] @ w_hh @ h[n]
            - vf[n] @ model.weight @ h[n]
            - model.visible_bias @ vf[n]
            - model.hidden_bias @ h[n]
        )
        torch.testing.assert_close(model.energy((v[n : n + 1], h[n : n + 1]))[0], expected)


@pytest.mark.parametrize("kind,k", KINDS)
def test_every_unit_conditional_is_the_ratio_of_the_exact_joint(kind, k):
    """p(x_i | x_-i) from field() equals the joint energies renormalised over x_i's values."""
    model = make_bm(kind, k, scale=1.0)
    g = torch.Generator().manual_seed(4)
    state = [model.visible.random_state(4, g, torch.float64), model.hidden.random_state(4, g, torch.float64)]
    site_field = model.site_field_function()
    for index, units in enumerate(model.layers):
        means = model.conditional_mean(index, state)
        for unit in range(units.size):
            values = (
                torch.eye(k, dtype=torch.float64)
                if (index == 0 and kind == "softmax")
                else torch.tensor([[0.0], [1.0]], dtype=torch.float64)
            )
            energies = []
            for value in values:
                x = [s.clone() for s in state]
                x[index][:, unit] = value if values.shape[1] > 1 else value[0]
                energies.append(model.energy(x))
            probs = torch.softmax(-torch.stack(energies, -1), -1)
            expected = probs if values.shape[1] > 1 else probs[:, 1]
            torch.testing.assert_close(means[:, unit], expected)
            field = site_field(index, unit, state)
            torch.testing.assert_close(field, model.field(index, state)[:, unit])


@pytest.mark.parametrize("kind,k", KINDS)
def test_free_energy_sums_out_the_hidden_units(kind, k):
    model = make_bm(kind, k, hh=False)
    v = model.visible.all_states()
    torch.testing.assert_close(
        -model.free_energy(v),
        torch.logsumexp(
            -torch.stack([model.energy((v, h.expand(len(v), -1))) for h in model.hidden.all_states()], -1), -1
        ),
    )
    with pytest.raises(NotImplementedError):
        make_bm(kind, k).free_energy(v)


# -- sampling ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,k", KINDS)
@pytest.mark.parametrize("vv,hh", LATERALS)
def test_single_site_gibbs_matches_the_exact_joint(kind, k, vv, hh):
    model = make_bm(kind, k, vv=vv, hh=hh, scale=1.0, seed=5)
    layers, log_p = joint_distribution(model)
    g = torch.Generator().manual_seed(6)
    sampler = SingleSiteGibbs()
    state = sampler.init(model, model.visible.random_state(20_000, g, torch.float64), g)
    state = sampler.run(model, state, 25, g)
    assert chi2_pvalue(joint_codes(model, state.layers), log_p.exp()) > ALPHA


@pytest.mark.parametrize("kind,k", KINDS)
def test_a_wrong_sampler_fails_the_same_test(kind, k):
    """Block Gibbs updates each layer's units at once, which is wrong with lateral weights:
    the same chi-squared test on the same model rejects it, so the test above can fail."""
    model = make_bm(kind, k, scale=1.0, seed=5)
    assert not model.layers_conditionally_independent
    _, log_p = joint_distribution(model)
    g = torch.Generator().manual_seed(6)
    state = BlockGibbs().init(model, model.visible.random_state(20_000, g, torch.float64), g)
    state = BlockGibbs().run(model, state, 25, g)
    assert chi2_pvalue(joint_codes(model, state.layers), log_p.exp()) < ALPHA


def test_single_site_gibbs_keeps_a_clamped_layer_and_respects_beta():
    model = make_bm("softmax", 3, seed=7)
    g = torch.Generator().manual_seed(8)
    v = model.visible.random_state(6, g, torch.float64)
    state = ChainState((v, torch.zeros(6, 2, dtype=torch.float64)), model.visible.mask(v))
    clamped = SingleSiteGibbs(layers=(1,)).run(model, state, 3, g)
    assert torch.equal(clamped.layers[0], v)
    # At beta = 0 every unit is uniform whatever the weights: the visible marginal is flat.
    hot = ChainState(
        (model.visible.random_state(30_000, g, torch.float64), torch.zeros(30_000, 2, dtype=torch.float64)),
        None,
        torch.zeros(30_000, dtype=torch.float64),
    )
    hot = SingleSiteGibbs().run(model, hot, 2, g)
    codes = layer_codes(model.visible, hot.layers[0])
    assert chi2_pvalue(codes, torch.full((27,), 1 / 27, dtype=torch.float64)) > ALPHA


@pytest.mark.parametrize("kind,k", KINDS)
def test_clamped_sweeps_sample_the_exact_posterior(kind, k):
    """The clamped phase's Gibbs sweeps (visible fixed, hidden-hidden weights on) draw from
    the exact p(h|v)."""
    model = make_bm(kind, k, num_hidden=3, scale=1.5, seed=22)
    g = torch.Generator().manual_seed(23)
    v = model.visible.random_state(1, g, torch.float64).expand(20_000, *model.visible.state_shape(1)[1:])
    hidden, log_q = model.exact_posterior(v[:1])
    state = ChainState((v, torch.zeros(20_000, 3, dtype=torch.float64)), model.visible.mask(v))
    state = SingleSiteGibbs(layers=(1,)).run(model, state, 20, g)
    assert torch.equal(state.layers[0], v)
    assert chi2_pvalue(layer_codes(model.hidden, state.layers[1]), log_q[0].exp()) > ALPHA


# -- learning ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,k", KINDS)
@pytest.mark.parametrize("vv,hh", LATERALS)
def test_two_phase_gradient_with_exact_expectations_is_the_exact_likelihood_gradient(kind, k, vv, hh):
    model = make_bm(kind, k, vv=vv, hh=hh, scale=0.7, seed=9)
    data = model.visible.random_state(7, torch.Generator().manual_seed(10), torch.float64)
    autograd = torch.autograd.grad(-model.exact_log_likelihood(data).mean(), list(model.parameters()))
    clamped, clamped_weights, free, free_weights = exact_clamped_and_free(model, data)
    model.two_phase_grads(clamped, free, clamped_weights, free_weights)
    for (name, param), expected in zip(model.named_parameters(), autograd, strict=True):
        torch.testing.assert_close(param.grad, expected, msg=name)
    # The autograd surrogate gives the same gradient.
    grads = torch.autograd.grad(
        model.contrastive_loss(clamped, free, clamped_weights, free_weights), list(model.parameters())
    )
    for got, expected in zip(grads, autograd, strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("kind,k", KINDS)
def test_rao_blackwellised_statistics_have_the_exact_expectation(kind, k):
    """Under the exact joint, statistics computed from (state, conditional means) have the same
    expectation as those of the states themselves; and the hand-written gradient equals
    autograd of the surrogate at such a chain state."""
    model = make_bm(kind, k, scale=0.8, seed=11)
    layers, log_p = joint_distribution(model)
    with torch.no_grad():
        means = tuple(model.conditional_mean(i, layers) for i in range(2))
    rao = model.statistics(ChainState(tuple(layers), None, None, means), log_p.exp())
    plain = model.statistics(layers, log_p.exp())
    for name in plain:
        torch.testing.assert_close(rao[name], plain[name], msg=name)
    g = torch.Generator().manual_seed(12)
    v = model.visible.random_state(9, g, torch.float64)
    chains = SingleSiteGibbs().init(model, v, g)
    clamped = model.positive_phase(v)
    model.two_phase_grads(clamped, chains)
    autograd = torch.autograd.grad(model.contrastive_loss(clamped, chains), list(model.parameters()))
    for (name, param), expected in zip(model.named_parameters(), autograd, strict=True):
        torch.testing.assert_close(param.grad, expected, msg=name)


@pytest.mark.parametrize("kind,k", KINDS)
def test_hidden_mean_field_is_a_fixed_point_and_exact_without_hidden_lateral(kind, k):
    model = make_bm(kind, k, num_hidden=3, seed=13)
    v = model.visible.all_states()
    result = model.hidden_mean_field(v, tol=1e-12, max_iter=500)
    assert result.converged
    mu = result.means[0]
    torch.testing.assert_close(mu, model.hidden.mean(model.field(1, (v, mu))), atol=1e-10, rtol=0)
    restricted = make_bm(kind, k, num_hidden=3, hh=False, seed=13)
    hidden, log_q = restricted.exact_posterior(v)
    exact_marginal = log_q.exp() @ hidden[0]
    torch.testing.assert_close(restricted.hidden_mean_field(v).means[0], exact_marginal)


@pytest.mark.parametrize("vv", [True, False])
def test_visible_mean_given_uses_only_the_observed_units(vv):
    model = make_bm("softmax", 3, num_visible=4, vv=vv, hh=False, scale=0.8, seed=14)
    ratings = torch.tensor([[1, 0, 3, 0], [2, 2, 0, 1]])
    v = model.encode(ratings)
    p = model.visible_mean_given(v, steps=20)
    assert p.shape == (2, 4, 3)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 4, dtype=torch.float64))
    # Hand formula: q(h) = σ(c + Wᵀv_obs); p(v_i) = softmax(b_i + W_vv v_obs + W q).
    vf = model.visible.flatten(v)
    q = torch.sigmoid(model.hidden_bias + vf @ model.weight)
    field = model.visible_bias + q @ model.weight.t()
    if vv:
        field = field + vf @ model.visible_lateral
    torch.testing.assert_close(p, torch.softmax(field.reshape(2, 4, 3), -1))
    # An explicit mask hides the units it marks, whatever values they hold.
    full = model.encode(torch.tensor([[1, 2, 3, 1], [2, 2, 3, 1]]))
    mask = ratings > 0
    torch.testing.assert_close(model.visible_mean_given(full, mask, steps=20), p)


# -- files ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,k", KINDS)
@pytest.mark.parametrize("vv,hh", LATERALS)
def test_save_and_load_round_trip(kind, k, vv, hh):
    model = make_bm(kind, k, vv=vv, hh=hh)
    loaded = model_from_bytes(model_to_bytes(model))
    assert isinstance(loaded, BoltzmannMachine) and loaded.config == model.config
    layers, log_p = joint_distribution(model)
    torch.testing.assert_close(joint_distribution(loaded)[1], log_p)


# -- training ---------------------------------------------------------------------------------------
def _target_data(kind, k, n, seed):
    """Data from a fixed random tiny BM: correlated units that a BM can learn."""
    teacher = make_bm(kind, k, num_visible=4, num_hidden=2, scale=1.5, seed=seed)
    layers, log_p = joint_distribution(teacher)
    rows = torch.multinomial(log_p.exp(), n, replacement=True, generator=torch.Generator().manual_seed(seed))
    v = layers[0][rows]
    return v if kind == "bernoulli" else teacher.visible.decode(v)


@pytest.mark.parametrize("kind,k,clamped", [("bernoulli", 2, "mean_field"), ("softmax", 3, "gibbs")])
def test_trainer_raises_the_exact_log_likelihood_and_keeps_the_constraints(kind, k, clamped):
    raw = _target_data(kind, k, 300, seed=15)
    model = make_bm(kind, k, num_visible=4, num_hidden=2, scale=0.01, seed=16)
    with torch.no_grad():
        model.visible_bias.zero_()
        model.hidden_bias.zero_()
    data = model.encode(raw)
    before = float(model.exact_log_likelihood(data).mean().detach())
    estimator = TwoPhaseEstimator(free_sweeps=1, num_chains=100, clamped=clamped, clamped_sweeps=2)
    Trainer(
        model,
        estimator,
        learning_rate=0.05,
        momentum=0.5,
        weight_decay=1e-4,
        batch_size=50,
        epochs=15,
        generator=torch.Generator().manual_seed(17),
    ).fit(raw)
    after = float(model.exact_log_likelihood(data).mean().detach())
    assert after > before + 0.1, (before, after)
    for lateral in (model.visible_lateral, model.hidden_lateral):
        assert torch.equal(lateral, lateral.t()) and torch.all(lateral.diagonal() == 0)


def test_surrogate_accepts_a_bare_positive_batch_and_refuses_a_bare_negative_one():
    model = make_bm("bernoulli", 2)
    g = torch.Generator().manual_seed(0)
    v = model.visible.random_state(4, g, torch.float64)
    chains = SingleSiteGibbs().init(model, v, g)
    torch.testing.assert_close(
        model.contrastive_loss(v, chains), model.contrastive_loss(model.positive_phase(v), chains)
    )
    with pytest.raises(TypeError, match="full chain state"):
        model.contrastive_loss(v, chains.visible)


def test_gradient_step_refuses_chains_that_ignore_the_lateral_weights():
    model = make_bm("bernoulli", 2)
    v = model.visible.random_state(4, torch.Generator().manual_seed(0), torch.float64)
    with pytest.raises(ValueError, match="TwoPhaseEstimator"):
        model.gradient_step(v, NegativePhase(BlockGibbs().init(model, v)))


def test_enumeration_covers_every_joint_state_once():
    model = make_bm("softmax", 3, num_visible=2, num_hidden=2)
    layers, log_p = joint_distribution(model)
    codes = joint_codes(model, layers)
    assert sorted(codes.tolist()) == list(range(9 * 4))
    assert len(list(itertools.product(range(3), range(3), range(2), range(2)))) == len(log_p)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_and_samples_on_cuda():
    raw = _target_data("softmax", 3, 200, seed=24)
    model = BoltzmannMachine(BMConfig(4, 2, "softmax", 3), device="cuda")
    Trainer(model, TwoPhaseEstimator(1, 50, clamped="gibbs"), batch_size=50, epochs=2).fit(raw.cuda())
    assert all(p.device.type == "cuda" and bool(torch.isfinite(p).all()) for p in model.parameters())
    assert model.visible_mean_given(model.encode(raw[:5])).device.type == "cuda"
