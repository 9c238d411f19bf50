"""Deep Boltzmann machine against exact enumeration (tiny models, float64)."""

from __future__ import annotations

import pytest
import torch
from helpers import chi_squared_pvalue

from rbm_core.estimators import PersistentContrastiveDivergence
from rbm_core.io import model_from_bytes, model_to_bytes
from rbm_core.models import DBM, RBM, DBMConfig, RBMConfig, TwoPhaseEstimator, greedy_pretrain
from rbm_core.models.bm import enumerated_posterior
from rbm_core.partition import joint_distribution
from rbm_core.samplers import BlockGibbs
from rbm_core.training import Trainer

ALPHA = 1e-3  # false-alarm rate of every chi-squared test
KINDS = [("bernoulli", 2), ("softmax", 3)]


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: see tests/conftest.py


def make_dbm(kind, k, num_visible=3, hidden=(2, 2), scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = DBM(DBMConfig(num_visible, hidden, kind, k, init_std=scale), dtype=torch.float64, generator=g)
    with torch.no_grad():
        for b in model.biases:
            b.copy_(torch.randn(b.shape, generator=g, dtype=torch.float64) * 0.5)
    return model


def joint_codes(model, layers):
    """Index of each joint state in ``joint_distribution`` order."""
    index = torch.zeros(layers[0].shape[0], dtype=torch.long)
    for units, x in zip(model.layers, layers, strict=True):
        codes = x.argmax(-1) if units.kind == "softmax" else x.long()
        place = units.num_values ** torch.arange(units.size - 1, -1, -1)
        index = index * units.num_states + (codes * place).sum(-1)
    return index


def chi2_pvalue(samples_index, probs):
    """Chi-squared p-value of state indices against the exact pmf (shared helper; cells with
    expected count < 5 pooled)."""
    return chi_squared_pvalue(torch.bincount(samples_index, minlength=probs.numel()), probs)


@pytest.mark.parametrize("kind,k", KINDS)
def test_energy_and_fields_match_the_layered_sum(kind, k):
    model = make_dbm(kind, k, hidden=(2, 3, 2))
    g = torch.Generator().manual_seed(1)
    state = [units.random_state(4, g, torch.float64) for units in model.layers]
    flat = [model.visible.flatten(state[0]), *state[1:]]
    expected = -sum(x @ b for x, b in zip(flat, model.biases, strict=True))
    for layer, w in enumerate(model.weights):
        expected = expected - torch.einsum("bi,ij,bj->b", flat[layer], w, flat[layer + 1])
    torch.testing.assert_close(model.energy(state), expected)
    # A layer's field gives its exact conditional: flipping one hidden unit changes E by its field.
    for layer in range(1, 4):
        flipped = [x.clone() for x in state]
        flipped[layer][:, 0] = 1 - flipped[layer][:, 0]
        delta = model.energy(flipped) - model.energy(state)
        sign = 2 * state[layer][:, 0] - 1
        torch.testing.assert_close(delta, sign * model.field(layer, state)[:, 0])


@pytest.mark.parametrize("kind,k", KINDS)
@pytest.mark.parametrize("beta", [1.0, 0.4])
def test_even_free_energy_sums_out_the_odd_layers(kind, k, beta):
    model = make_dbm(kind, k, hidden=(2, 2, 2), seed=21)
    layers, _ = joint_distribution(model)
    # Group the joint states by their even layers and sum exp(-beta E) over the odd ones.
    even_key = joint_codes(model, [layers[0], torch.zeros_like(layers[1]), layers[2], torch.zeros_like(layers[3])])
    weights = torch.exp(-beta * model.energy(layers))
    summed = torch.zeros(int(even_key.max()) + 1, dtype=torch.float64).index_add_(0, even_key, weights)
    torch.testing.assert_close(torch.exp(-model.even_free_energy(layers, beta)), summed[even_key])
    per_chain = torch.full((len(even_key),), beta, dtype=torch.float64)
    torch.testing.assert_close(model.even_free_energy(layers, per_chain), model.even_free_energy(layers, beta))


@pytest.mark.parametrize("kind,k", KINDS)
def test_block_gibbs_matches_the_exact_joint(kind, k):
    model = make_dbm(kind, k, scale=1.0, seed=2)
    _, log_p = joint_distribution(model)
    g = torch.Generator().manual_seed(3)
    state = BlockGibbs().init(model, model.visible.random_state(20_000, g, torch.float64), g)
    state = BlockGibbs().run(model, state, 30, g)
    assert chi2_pvalue(joint_codes(model, state.layers), log_p.exp()) > ALPHA


def test_a_wrong_block_sampler_fails_the_same_test():
    """Updating every layer from the *old* state at once (a synchronous, non-Gibbs update) is
    rejected by the same test on the same model, so the test above can fail."""
    model = make_dbm("bernoulli", 2, scale=1.0, seed=2)
    _, log_p = joint_distribution(model)
    g = torch.Generator().manual_seed(3)
    layers = [units.random_state(20_000, g, torch.float64) for units in model.layers]
    for _ in range(30):
        layers = [units.sample(model.field(i, layers), generator=g) for i, units in enumerate(model.layers)]
    assert chi2_pvalue(joint_codes(model, layers), log_p.exp()) < ALPHA


@pytest.mark.parametrize("kind,k", KINDS)
@pytest.mark.parametrize("hidden,damping", [((2, 3), 0.0), ((3, 2, 2), 0.0), ((3, 2, 2), 0.6)])
def test_mean_field_result_is_a_fixed_point(kind, k, hidden, damping):
    model = make_dbm(kind, k, hidden=hidden, scale=1.5, seed=4)
    v = model.visible.all_states()
    result = model.mean_field(v, tol=1e-12, max_iter=1000, damping=damping)
    assert result.converged
    assert float(model.mean_field_residual(v, result.means).detach()) < 1e-10
    # Not a trivial fixed point: starting elsewhere still lands on it here (weights moderate).
    other = model.mean_field(v, tol=1e-12, max_iter=1000, init=[torch.full_like(m, 0.5) for m in result.means])
    assert float(model.mean_field_residual(v, other.means).detach()) < 1e-10


@pytest.mark.parametrize("kind,k", KINDS)
def test_lower_bound_is_below_the_exact_log_likelihood(kind, k):
    model = make_dbm(kind, k, hidden=(3, 2), scale=1.5, seed=5)
    v = model.visible.all_states()
    log_z = model.exact_log_partition()
    bound = model.mean_field_lower_bound(v, log_z, tol=1e-10, max_iter=500)
    exact = model.exact_log_likelihood(v)
    assert bool((bound <= exact + 1e-12).all())
    assert float((exact - bound).max().detach()) > 1e-3  # a real gap: the posterior does not factorise
    # And the gap is exactly KL(q || p(h|v)) >= 0, computed by enumeration.
    result = model.mean_field(v, tol=1e-10, max_iter=500)
    hidden, log_post = model.exact_posterior(v)
    log_q = sum(h @ mu.log().t() + (1 - h) @ (1 - mu).log().t() for h, mu in zip(hidden, result.means, strict=True)).t()
    kl = (log_q.exp() * (log_q - log_post)).sum(-1)
    torch.testing.assert_close(exact - bound, kl)


@pytest.mark.parametrize("kind,k", KINDS)
def test_lower_bound_is_tight_when_the_posterior_factorises(kind, k):
    """With the top weights zero, p(h¹, h²|v) = p(h¹|v) p(h²), a product of independent
    Bernoullis; mean-field finds it and the bound equals log p(v)."""
    model = make_dbm(kind, k, hidden=(3, 2), scale=1.5, seed=6)
    with torch.no_grad():
        model.weights[1].zero_()
    v = model.visible.all_states()
    bound = model.mean_field_lower_bound(v, model.exact_log_partition(), tol=1e-12)
    torch.testing.assert_close(bound, model.exact_log_likelihood(v), atol=1e-10, rtol=0)


@pytest.mark.parametrize("kind,k", KINDS)
def test_dbm_posterior_does_not_factorise_while_the_rbm_posterior_does(kind, k):
    """Explaining away: given v, h¹ and h² are dependent in a DBM (h² talks to v only through
    h¹), whereas an RBM's hidden units are independent given v."""
    dbm = make_dbm(kind, k, hidden=(2, 2), scale=2.0, seed=7)
    v = dbm.visible.all_states()
    hidden, log_post = enumerated_posterior(dbm, v)
    post = log_post.exp()  # (batch, S) over (h¹, h²)
    h_all = torch.cat(hidden, -1)
    marginals = post @ h_all  # (batch, 4)
    product = torch.exp(h_all @ marginals.log().t() + (1 - h_all) @ (1 - marginals).log().t()).t()
    assert float((post - product).abs().sum(-1).max().detach()) > 0.05  # far from the product of its marginals
    g = torch.Generator().manual_seed(8)
    rbm = RBM(RBMConfig(3, 4, kind, k, init_std=2.0), dtype=torch.float64, generator=g)
    hidden_rbm, log_post_rbm = enumerated_posterior(rbm, v)
    h = hidden_rbm[0]
    p1 = rbm.hidden_mean(v)
    product_rbm = torch.exp(h @ p1.log().t() + (1 - h) @ (1 - p1).log().t()).t()
    torch.testing.assert_close(log_post_rbm.exp(), product_rbm)


@pytest.mark.parametrize("kind,k", KINDS)
def test_two_phase_gradient_with_exact_expectations_is_the_exact_likelihood_gradient(kind, k):
    model = make_dbm(kind, k, hidden=(2, 2), scale=0.7, seed=9)
    data = model.visible.random_state(6, torch.Generator().manual_seed(10), torch.float64)
    autograd = torch.autograd.grad(-model.exact_log_likelihood(data).mean(), list(model.parameters()))
    hidden, log_q = model.exact_posterior(data)
    batch, count = log_q.shape
    clamped = [data.repeat_interleave(count, 0), *[h.repeat(batch, 1) for h in hidden]]
    free, log_p = joint_distribution(model)
    model.two_phase_grads(clamped, free, log_q.exp().reshape(-1) / batch, log_p.exp())
    for (name, param), expected in zip(model.named_parameters(), autograd, strict=True):
        torch.testing.assert_close(param.grad, expected, msg=name)
    grads = torch.autograd.grad(
        model.contrastive_loss(clamped, free, log_q.exp().reshape(-1) / batch, log_p.exp()), list(model.parameters())
    )
    for got, expected in zip(grads, autograd, strict=True):
        torch.testing.assert_close(got, expected)


def test_hand_written_step_equals_autograd_of_the_surrogate_on_chains():
    model = make_dbm("softmax", 3, hidden=(3, 2, 2), seed=11)
    g = torch.Generator().manual_seed(12)
    v = model.visible.random_state(8, g, torch.float64)
    chains = BlockGibbs().run(model, BlockGibbs().init(model, v, g), 2, g)
    clamped = model.positive_phase(v)
    model.two_phase_grads(clamped, chains)
    autograd = torch.autograd.grad(model.contrastive_loss(clamped, chains), list(model.parameters()))
    for (name, param), expected in zip(model.named_parameters(), autograd, strict=True):
        torch.testing.assert_close(param.grad, expected, msg=name)


def test_block_gibbs_conditional_means_give_unbiased_statistics():
    """Under the exact joint, replacing odd layers by their conditional means keeps every
    expected statistic (what ``statistics`` does with a chain's ``means``)."""
    model = make_dbm("bernoulli", 2, hidden=(2, 2, 2), seed=13)
    layers, log_p = joint_distribution(model)
    from rbm_core.models.bm import with_conditional_means
    from rbm_core.samplers import ChainState

    state = with_conditional_means(model, ChainState(tuple(layers)))
    rao = model.statistics(state, log_p.exp())
    plain = model.statistics(layers, log_p.exp())
    for name in plain:
        torch.testing.assert_close(rao[name], plain[name], msg=name)


def test_visible_mean_given_excludes_missing_units():
    model = make_dbm("softmax", 4, num_visible=4, hidden=(3, 2), scale=0.8, seed=14)
    ratings = torch.tensor([[1, 0, 3, 0], [0, 2, 4, 1]])
    v = model.encode(ratings)
    p = model.visible_mean_given(v, steps=100, tol=1e-12)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 4, dtype=torch.float64))
    means = model.mean_field(v, tol=1e-12, max_iter=100).means
    expected = torch.softmax((model.biases[0] + means[0] @ model.weights[0].t()).reshape(2, 4, 4), -1)
    torch.testing.assert_close(p, expected)
    full = model.encode(torch.tensor([[1, 4, 3, 4], [1, 2, 4, 1]]))
    torch.testing.assert_close(model.visible_mean_given(full, ratings > 0, steps=100, tol=1e-12), p)


@pytest.mark.parametrize("kind,k", KINDS)
def test_save_and_load_round_trip(kind, k):
    model = make_dbm(kind, k, hidden=(3, 2, 2))
    loaded = model_from_bytes(model_to_bytes(model))
    assert isinstance(loaded, DBM) and loaded.config == model.config
    torch.testing.assert_close(joint_distribution(loaded)[1], joint_distribution(model)[1])


def test_config_rejects_a_single_hidden_layer():
    with pytest.raises(ValueError, match="two hidden layers"):
        DBMConfig(4, (3,))
    assert DBMConfig(4, [3, 2]).hidden_sizes == (3, 2)


def _teacher_data(kind, k, n, seed):
    teacher = make_dbm(kind, k, num_visible=4, hidden=(3, 2), scale=2.0, seed=seed)
    layers, log_p = joint_distribution(teacher)
    rows = torch.multinomial(log_p.exp(), n, replacement=True, generator=torch.Generator().manual_seed(seed))
    v = layers[0][rows]
    return v if kind == "bernoulli" else teacher.visible.decode(v)


@pytest.mark.parametrize("kind,k,estimator", [("bernoulli", 2, "pcd"), ("softmax", 3, "two_phase")])
def test_trainer_raises_the_exact_log_likelihood(kind, k, estimator):
    raw = _teacher_data(kind, k, 300, seed=15)
    model = make_dbm(kind, k, num_visible=4, hidden=(3, 2), scale=0.01, seed=16)
    with torch.no_grad():
        for b in model.biases:
            b.zero_()
    data = model.encode(raw)
    before = float(model.exact_log_likelihood(data).mean().detach())
    chosen = PersistentContrastiveDivergence(1, num_chains=100) if estimator == "pcd" else TwoPhaseEstimator(1, 100)
    Trainer(
        model, chosen, learning_rate=0.05, batch_size=50, epochs=15, generator=torch.Generator().manual_seed(17)
    ).fit(raw)
    after = float(model.exact_log_likelihood(data).mean().detach())
    assert after > before + 0.1, (before, after)


@pytest.mark.parametrize("hidden", [(3, 2), (3, 3, 2)])
def test_greedy_pretraining_composes_the_rbms_as_documented(hidden):
    raw = _teacher_data("bernoulli", 2, 200, seed=18)
    model = make_dbm("bernoulli", 2, num_visible=4, hidden=hidden, scale=0.01, seed=19)
    rbms = greedy_pretrain(model, raw, epochs=5, batch_size=50, generator=torch.Generator().manual_seed(20))
    top = len(rbms) - 1
    assert rbms[0].up == 2.0 and rbms[0].down == (2.0 if top == 0 else 1.0) and rbms[top].down == 2.0
    for layer, rbm in enumerate(rbms):
        scale = 1.0 if layer in (0, top) else 0.5
        torch.testing.assert_close(model.weights[layer], scale * rbm.weight)
    torch.testing.assert_close(model.biases[0], rbms[0].visible_bias)
    torch.testing.assert_close(model.biases[1], 0.5 * (rbms[0].hidden_bias + rbms[1].visible_bias))
    # Pretraining gives a better model than the near-zero start.
    fresh = make_dbm("bernoulli", 2, num_visible=4, hidden=hidden, scale=0.01, seed=19)
    data = model.encode(raw)
    with torch.no_grad():
        assert float(model.exact_log_likelihood(data).mean()) > float(fresh.exact_log_likelihood(data).mean())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_and_infers_on_cuda():
    raw = _teacher_data("bernoulli", 2, 200, seed=25)
    model = DBM(DBMConfig(4, (3, 2)), device="cuda")
    greedy_pretrain(model, raw.cuda(), epochs=1, batch_size=50)
    Trainer(model, PersistentContrastiveDivergence(1, 50), batch_size=50, epochs=2).fit(raw.cuda())
    assert all(p.device.type == "cuda" and bool(torch.isfinite(p).all()) for p in model.parameters())
    v = model.encode(raw[:5])
    assert model.mean_field_lower_bound(v, 0.0).device.type == "cuda"
