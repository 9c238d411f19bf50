"""The spiking-neuron reading of an RBM: parameter conversion and simulated firing statistics."""

from __future__ import annotations

import helpers
import pytest
import torch
from scipy import stats

from rbm_core.models import RBM, RBMConfig
from rbm_core.neuromorphic import SpikingNetwork, logistic_noise
from rbm_core.partition import visible_distribution

FALSE_ALARM = 1e-3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_rbm(num_visible=5, num_hidden=3, visible="bernoulli", num_values=2, seed=0) -> RBM:
    return helpers.tiny_rbm(num_visible, num_hidden, visible, num_values, seed=seed)


def binomial_chi_squared_pvalue(rates: torch.Tensor, probs: torch.Tensor, trials: int) -> float:
    """Σ z² over independent Bernoulli frequencies, z = (f − p)/√(p(1 − p)/n): χ² with one
    degree of freedom per frequency."""
    z2 = (rates - probs) ** 2 / (probs * (1 - probs) / trials)
    return float(stats.chi2.sf(float(z2.sum()), z2.numel()))


def test_hand_computed_conversion():
    """J = 2, β = 1, θ = 0.5, T = 2 gives W = 1 and c = (1 − 0.5)/2 = 0.25."""
    model = RBM(RBMConfig(1, 1), dtype=torch.float64)
    one = torch.ones(1, dtype=torch.float64)
    net = SpikingNetwork(
        2 * torch.ones(1, 1, dtype=torch.float64), 0 * one, 0 * one, one, 0.5 * one, 2.0, model.visible
    )
    params = net.rbm_parameters()
    assert float(params["weight"]) == 1.0 and float(params["hidden_bias"]) == 0.25
    with pytest.raises(ValueError):
        SpikingNetwork(net.synapses, one, one, one, one, 0.0, model.visible)


@pytest.mark.parametrize("visible, num_values", [("bernoulli", 2), ("softmax", 4)])
def test_round_trip(visible, num_values):
    model = random_rbm(4, 3, visible, num_values)
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(3, generator=g, dtype=torch.float64)
    net = SpikingNetwork.from_rbm(model, noise_scale=2.5, hidden_threshold=theta, visible_threshold=0.7)
    assert torch.allclose(net.synapses, 2.5 * model.weight)
    assert torch.allclose(net.hidden_rest - net.hidden_threshold, 2.5 * model.hidden_bias)
    back = net.to_rbm()
    for name, p in model.named_parameters():
        assert torch.allclose(getattr(back, name), p, atol=1e-12, rtol=0)
    # And the other way: neuron parameters → RBM → neurons (with the same thresholds).
    again = SpikingNetwork.from_rbm(back, 2.5, hidden_threshold=theta, visible_threshold=0.7)
    assert torch.allclose(again.synapses, net.synapses) and torch.allclose(again.hidden_rest, net.hidden_rest)
    assert torch.allclose(again.visible_rest, net.visible_rest)


def test_logistic_noise_has_the_logistic_law():
    g = torch.Generator().manual_seed(2)
    sample = logistic_noise((200_000,), 1.7, generator=g, dtype=torch.float64)
    result = stats.kstest(sample.numpy(), stats.logistic(scale=1.7).cdf)
    assert result.pvalue > FALSE_ALARM


def test_firing_frequencies_match_the_sigmoid():
    """Hidden neurons driven by fixed visible activity fire at σ(c + Wᵀv); at the wrong noise
    level (2T, same neurons) they do not."""
    model = random_rbm(6, 4, seed=3)
    g = torch.Generator().manual_seed(4)
    v = model.visible.random_state(8, g, torch.float64)
    net = SpikingNetwork.from_rbm(model, noise_scale=0.8, hidden_threshold=1.3)
    steps = 4000
    rates = net.firing_rates(v, steps, g)
    exact = model.hidden_mean(v).detach()
    assert binomial_chi_squared_pvalue(rates, exact, steps) > FALSE_ALARM
    hotter = SpikingNetwork(
        net.synapses, net.visible_rest, net.visible_threshold, net.hidden_rest, net.hidden_threshold, 1.6, net.visible
    )
    assert binomial_chi_squared_pvalue(hotter.firing_rates(v, steps, g), exact, steps) < FALSE_ALARM


def test_winner_take_all_groups_match_the_softmax():
    """Softmax visible units as K-neuron winner-take-all groups with Gumbel noise: the winner's
    frequencies equal p(v_i = k | h)."""
    model = random_rbm(3, 2, "softmax", 4, seed=5)
    net = SpikingNetwork.from_rbm(model, noise_scale=1.5, visible_threshold=-0.4)
    g = torch.Generator().manual_seed(6)
    h = torch.tensor([[1.0, 0.0]], dtype=torch.float64).expand(20000, 2)
    spikes = net.visible_spikes(h, g)
    assert bool((spikes.sum(-1) == 1).all())
    counts = spikes.sum(0)  # (units, K)
    expected = model.visible_mean(h[:1]).detach()[0] * h.shape[0]
    statistic = float(((counts - expected) ** 2 / expected).sum())
    assert stats.chi2.sf(statistic, 3 * (4 - 1)) > FALSE_ALARM


@pytest.mark.parametrize("visible, num_values", [("bernoulli", 2), ("softmax", 3)])
def test_the_network_samples_the_rbm(visible, num_values):
    """Populations driving each other (independent networks, one final state each) reach the
    RBM's exact p(v)."""
    model = (
        random_rbm(4, 3, visible, num_values, seed=7)
        if visible == "bernoulli"
        else random_rbm(3, 2, visible, num_values, seed=7)
    )
    net = SpikingNetwork.from_rbm(model, noise_scale=0.5, hidden_threshold=0.2)
    g = torch.Generator().manual_seed(8)
    start = model.visible.random_state(20000, g, torch.float64)
    v, _ = net.run(start, 30, g)
    states, log_p = visible_distribution(model)
    flat_states = model.visible.flatten(states)
    counts = helpers.counts_over_states(model.visible.flatten(v), flat_states)
    assert helpers.chi_squared_pvalue(counts, log_p.detach().exp()) > FALSE_ALARM
