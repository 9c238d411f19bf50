"""Parallel tempering against exact answers on tiny models enumerated in float64."""

from __future__ import annotations

import math

import helpers
import pytest
import torch

from rbm_core.estimators import ExactNegativePhase
from rbm_core.models import DBM, RBM, BMConfig, BoltzmannMachine, DBMConfig, RBMConfig
from rbm_core.partition import joint_distribution, visible_distribution
from rbm_core.samplers import BlockGibbs
from rbm_core.tempering import (
    ParallelTempering,
    ParallelTemperingEstimator,
    check_ladder,
    geometric_ladder,
)
from rbm_core.training import Trainer

FALSE_ALARM = 1e-3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny tensors: extra threads only add contention on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def state_codes(layers) -> torch.Tensor:
    """One integer per joint state: the flattened 0/1 (or one-hot) units read as a binary number."""
    flat = torch.cat([x.reshape(x.shape[0], -1) for x in layers], 1).round().long()
    powers = 2 ** torch.arange(flat.shape[1], dtype=torch.long)
    return flat @ powers


def chi_squared_pvalue(sample_codes: torch.Tensor, state_codes_: torch.Tensor, probs: torch.Tensor) -> float:
    """Chi-squared p-value of samples (as state codes) against an exact pmf over enumerated states."""
    order = torch.argsort(state_codes_)
    position = torch.searchsorted(state_codes_[order], sample_codes).clamp_(max=len(order) - 1)
    assert bool((state_codes_[order][position] == sample_codes).all()), "a sample is not a valid state"
    counts = torch.bincount(order[position], minlength=len(probs))
    return helpers.chi_squared_pvalue(counts, probs)


def random_rbm(num_visible, num_hidden, visible="bernoulli", num_values=2, scale=1.0, seed=0) -> RBM:
    return helpers.tiny_rbm(num_visible, num_hidden, visible, num_values, seed=seed, scale=scale)


def random_dbm(seed=0) -> DBM:
    g = torch.Generator().manual_seed(seed)
    model = DBM(DBMConfig(4, (3, 2)), dtype=torch.float64, generator=g)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model


def random_bm(seed=0) -> BoltzmannMachine:
    g = torch.Generator().manual_seed(seed)
    model = BoltzmannMachine(BMConfig(4, 2), dtype=torch.float64, generator=g)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.8)
    return model


def test_ladders():
    ladder = geometric_ladder(5, 0.1)
    assert ladder[0] == 1.0 and math.isclose(float(ladder[-1]), 0.1)
    ratios = ladder[1:] / ladder[:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios))
    assert torch.equal(check_ladder([1.0, 0.5, 0.0]), torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
    for bad in ([0.9, 0.5], [1.0, 0.5, 0.5], [1.0, -0.1], []):
        with pytest.raises(ValueError):
            check_ladder(bad)
    with pytest.raises(ValueError):
        geometric_ladder(4, 0.0)


MODELS = {
    "rbm-bernoulli": lambda: random_rbm(4, 3),
    "rbm-softmax": lambda: random_rbm(3, 2, "softmax", 3),
    "dbm": random_dbm,
    "bm-lateral": random_bm,
}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_replica_samples_its_exact_tempered_distribution(name):
    """After burn-in, one sample per independent chain: the β = 1 replica must match the exact
    joint p(x), and replica r the exact p_βr(x) ∝ exp(−βr E(x)) (so swaps do not bias them)."""
    model = MODELS[name]()
    g = torch.Generator().manual_seed(1)
    chains = 6000 if name == "bm-lateral" else 15000
    pt = ParallelTempering([1.0, 0.6, 0.3, 0.0])
    start = model.layers[0].random_state(chains, g, torch.float64)
    state = pt.run(model, pt.init(model, start, g), 25, g)
    layers, _ = joint_distribution(model)
    energy = model.energy(layers).detach()
    codes = state_codes(layers)
    for r, beta in enumerate(pt.betas.tolist()):
        exact = torch.softmax(-beta * energy, 0)
        p = chi_squared_pvalue(state_codes(state.replica(r).layers), codes, exact)
        assert p > FALSE_ALARM, f"replica {r} (beta={beta}) fails chi-squared: p={p:.2e}"
    assert bool((state.replica(0).beta == 1).all())
    rates = state.swap_rates
    assert bool(((rates > 0) & (rates <= 1)).all())


def test_swap_acceptance_rate_equals_its_exact_expectation():
    """Two replicas at stationarity: the swap rate must equal
    Σ_{x,y} p_1(x) p_β(y) min(1, exp((1 − β)(E(x) − E(y))))."""
    model = random_rbm(4, 3, seed=3)
    beta = 0.4
    layers, _ = joint_distribution(model)
    energy = model.energy(layers).detach()
    p1, pb = torch.softmax(-energy, 0), torch.softmax(-beta * energy, 0)
    accept = torch.clamp((1 - beta) * (energy[:, None] - energy[None, :]), max=0).exp()
    expected = float(p1 @ accept @ pb)

    g = torch.Generator().manual_seed(2)
    pt = ParallelTempering([1.0, beta])
    state = pt.run(model, pt.init(model, model.layers[0].random_state(20000, g, torch.float64), g), 20, g)
    burned = state
    state = pt.run(model, state, 20, g)  # 10 more swap rounds (even steps only for R = 2)
    rate = float((state.accepted - burned.accepted) / (state.attempted - burned.attempted))
    se = math.sqrt(expected * (1 - expected) / 200000)
    assert abs(rate - expected) < 6 * se + 2e-3, (rate, expected)


def test_round_trips_are_counted():
    """With a flat energy every swap is accepted, so with two replicas each walker moves on every
    even step: after swaps at steps 0, 2, …, 10 (six exchanges) each column has completed
    five β₁ → β₂ → β₁ journeys (walkers alternate), i.e. 5·C round trips."""
    model = random_rbm(3, 2, scale=0.0)
    g = torch.Generator().manual_seed(0)
    pt = ParallelTempering([1.0, 0.5])
    state = pt.init(model, torch.zeros(7, 3, dtype=torch.float64), g)
    for _ in range(11):
        state, info = pt.step(model, state, g)
    assert state.round_trips == 5 * 7
    assert torch.equal(state.swap_rates, torch.ones(1, dtype=torch.float64))
    assert info["round_trips"] == 35


def bimodal_rbm(num_visible=12, strength=3.0) -> RBM:
    """One hidden unit that switches the visible units between all-off and all-on: two modes of
    equal mass, separated by a barrier that single-chain Gibbs crosses about once in 10⁷ sweeps."""
    model = RBM(RBMConfig(num_visible, 1), dtype=torch.float64)
    with torch.no_grad():
        model.weight.fill_(2 * strength)
        model.visible_bias.fill_(-strength)
        model.hidden_bias.fill_(-strength * num_visible)
    return model


def test_tempering_crosses_between_modes_far_faster_than_gibbs():
    """All chains start in one mode. Distance to the exact law of the number of active visible
    units (total variation) is tracked per sweep; PT gets below 0.06 within a few dozen steps,
    plain Gibbs given ten times PT's total work (steps × replicas) stays near 0.5."""
    model = bimodal_rbm()
    n = model.visible.size
    states, log_p = visible_distribution(model)
    exact = torch.zeros(n + 1, dtype=torch.float64).index_add_(0, states.sum(1).long(), log_p.exp().detach())

    def distance(v):
        empirical = torch.bincount(v.sum(1).long(), minlength=n + 1).double() / v.shape[0]
        return 0.5 * float((empirical - exact).abs().sum())

    chains, threshold = 2000, 0.06
    g = torch.Generator().manual_seed(5)
    start = torch.zeros(chains, n, dtype=torch.float64)
    pt = ParallelTempering(num_replicas=8, beta_min=0.1)
    state = pt.init(model, start, g)
    pt_steps = None
    for step in range(1, 201):
        state, _ = pt.step(model, state, g)
        if distance(state.replica(0).visible) < threshold:
            pt_steps = step
            break
    assert pt_steps is not None and pt_steps <= 120, pt_steps

    gibbs = BlockGibbs()
    chain = gibbs.init(model, start, g)
    budget = 10 * pt_steps * pt.betas.numel()
    distances = []
    for _ in range(budget):
        chain, _ = gibbs.step(model, chain, g)
        distances.append(distance(chain.visible))
    assert min(distances) > 0.4, f"Gibbs reached {min(distances):.3f} within {budget} sweeps"


def test_estimator_gradient_matches_exact_gradient():
    """The PT estimator's β = 1 chains (with their Rao-Blackwellised means at β = 1) give the
    RBM gradient; with many chains it must equal the exact log-likelihood gradient."""
    model = random_rbm(5, 3, seed=4)
    g = torch.Generator().manual_seed(3)
    data = model.layers[0].random_state(64, g, torch.float64)

    exact = ExactNegativePhase().negative_phase(model, data)
    model.zero_grad()
    model.gradient_step(data, exact)
    exact_grads = [p.grad.clone() for p in model.parameters()]

    estimator = ParallelTemperingEstimator(k=30, num_chains=30000, betas=[1.0, 0.7, 0.4])
    start = model.layers[0].random_state(30000, g, torch.float64)
    negative = estimator.negative_phase(model, start, g)
    assert negative.state.num_chains == 30000 and bool((negative.state.beta == 1).all())
    assert negative.info["swap_rates"].shape == (2,) and "round_trips" in negative.info
    model.zero_grad()
    model.gradient_step(data, negative)
    for p, exact_grad in zip(model.parameters(), exact_grads, strict=True):
        # Each statistic is a mean of 30,000 weakly dependent terms bounded by 1: SE < 0.003.
        assert torch.allclose(p.grad, exact_grad, atol=0.02), (p.grad - exact_grad).abs().max()


@pytest.mark.parametrize("kind", ["rbm", "dbm", "bm"])
def test_trainer_uses_parallel_tempering(kind):
    """PT as the trainer's negative phase raises the exact log-likelihood of a tiny model."""
    g = torch.Generator().manual_seed(0)
    prototypes = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.float64)
    data = prototypes[torch.randint(0, 2, (400,), generator=g)]
    data = (data + (torch.rand(data.shape, generator=g) < 0.05)).remainder(2)
    if kind == "rbm":
        model = RBM(RBMConfig(6, 3), dtype=torch.float64, generator=g)
        model.init_visible_bias_from_data(data)
    elif kind == "dbm":
        model = DBM(DBMConfig(6, (3, 2), init_std=0.1), dtype=torch.float64, generator=g)
    else:  # lateral weights: single-site Gibbs at each β, mean-field clamped phase supplied by PT
        model = BoltzmannMachine(BMConfig(6, 2, init_std=0.1), dtype=torch.float64, generator=g)

    def log_likelihood():
        if kind == "rbm":
            _, log_p = visible_distribution(model)
            states = model.visible.all_states(torch.float64)
            index = state_codes([data]).unsqueeze(1) == state_codes([states]).unsqueeze(0)
            return float(log_p.detach()[index.double().argmax(1)].mean())
        return float(model.exact_log_likelihood(data).detach().mean())

    before = log_likelihood()
    estimator = ParallelTemperingEstimator(k=1, num_chains=50, num_replicas=4, beta_min=0.3)
    Trainer(model, estimator, learning_rate=0.1, batch_size=50, epochs=15, generator=g).fit(data)
    after = log_likelihood()
    assert after > before + 0.5, (before, after)
    assert estimator.state is not None and estimator.state.attempted.sum() > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tempering_on_cuda():
    """The same sampler on a CUDA device (chains, swaps and generator on the GPU)."""
    model = random_rbm(4, 3).to("cuda")
    g = torch.Generator(device="cuda").manual_seed(1)
    pt = ParallelTempering([1.0, 0.6, 0.3])
    start = model.layers[0].random_state(15000, g, torch.float64, "cuda")
    state = pt.run(model, pt.init(model, start, g), 25, g)
    layers, log_p = joint_distribution(model)
    p = chi_squared_pvalue(
        state_codes([x.cpu() for x in state.replica(0).layers]),
        state_codes([x.cpu() for x in layers]),
        log_p.detach().exp().cpu(),
    )
    assert p > FALSE_ALARM
