"""Block Gibbs sampling of tiny RBMs: the empirical distribution over v of many independent chains
passes a chi-squared test against the exactly enumerated p(v) at false-alarm rate 1e-3, and a
deliberately broken sampler fails the same test."""

import pytest
import torch
from helpers import chi_squared_pvalue, counts_over_states, submodel_without_visible_units, tiny_rbm

from rbm_core.estimators import ContrastiveDivergence, PersistentContrastiveDivergence
from rbm_core.partition import visible_distribution
from rbm_core.samplers import BlockGibbs

pytestmark = pytest.mark.usefixtures("single_thread")

ALPHA = 1e-3
NUM_CHAINS = 20_000
BURN_IN = 30

MODELS = {
    "bernoulli": lambda: tiny_rbm(4, 3, seed=11),
    "softmax": lambda: tiny_rbm(2, 3, "softmax", 4, seed=12),
}


class WrongBiasSign:
    """A model proxy whose visible field has the visible bias with the wrong sign: a typical bug."""

    def __init__(self, model):
        self.model = model
        self.layers = model.layers

    def field(self, index, state):
        field = self.model.field(index, state)
        if index == 0:
            field = field - 2 * self.model.visible.unflatten(self.model.visible_bias.unsqueeze(0))
        return field

    def energy(self, state):
        return self.model.energy(state)


class BrokenGibbs(BlockGibbs):
    """Block Gibbs with the wrong sign on the visible bias in p(v|h)."""

    def step(self, model, state, generator=None):
        return super().step(WrongBiasSign(model), state, generator)


def start_states(model, num_chains, generator):
    return model.visible.random_state(num_chains, generator, torch.float64)


def run_chains(model, sampler, generator, beta=None, visible=None):
    v0 = start_states(model, NUM_CHAINS, generator) if visible is None else visible
    state = sampler.init(model, v0, generator, beta=beta)
    return sampler.run(model, state, BURN_IN, generator)


def pvalue_against_exact(model, samples):
    states, log_p = visible_distribution(model)
    return chi_squared_pvalue(counts_over_states(samples, states), log_p.exp())


@pytest.mark.parametrize("kind", MODELS)
def test_block_gibbs_matches_exact_marginal(kind):
    model = MODELS[kind]()
    gen = torch.Generator().manual_seed(21)
    state = run_chains(model, BlockGibbs(), gen)
    # the model is far from uniform, so agreement is not a foregone conclusion
    _, log_p = visible_distribution(model)
    assert float(log_p.detach().exp().max()) > 3.0 / model.visible.num_states
    assert pvalue_against_exact(model, state.visible) > ALPHA


@pytest.mark.parametrize("kind", MODELS)
def test_broken_sampler_fails_the_same_test(kind):
    model = MODELS[kind]()
    gen = torch.Generator().manual_seed(21)
    state = run_chains(model, BrokenGibbs(), gen)
    assert pvalue_against_exact(model, state.visible) < ALPHA


def test_hidden_layer_matches_exact_marginal():
    model = MODELS["bernoulli"]()
    gen = torch.Generator().manual_seed(22)
    state = run_chains(model, BlockGibbs(), gen)
    log_joint_h = []  # log of the unnormalised p(h) = sum_v exp(-E(v, h))
    states_h = model.hidden.all_states(torch.float64)
    v_all = model.visible.all_states(torch.float64)
    for h in states_h:
        log_joint_h.append(torch.logsumexp(-model.energy((v_all, h.expand(len(v_all), -1))), 0))
    log_p_h = torch.stack(log_joint_h)
    p_h = (log_p_h - torch.logsumexp(log_p_h, 0)).exp()
    assert chi_squared_pvalue(counts_over_states(state.layers[1], states_h), p_h) > ALPHA


def test_per_chain_inverse_temperature():
    """Chains at beta = 0.4 sample p_beta(v) ∝ exp(-F_beta(v)); chains at 1 sample p(v)."""
    model = MODELS["bernoulli"]()
    gen = torch.Generator().manual_seed(23)
    beta = torch.ones(NUM_CHAINS, dtype=torch.float64)
    beta[::2] = 0.4
    state = run_chains(model, BlockGibbs(), gen, beta=beta)
    states = model.visible.all_states(torch.float64)
    for value, rows in ((0.4, slice(0, None, 2)), (1.0, slice(1, None, 2))):
        log_p = -model.free_energy(states, value)
        exact = (log_p - torch.logsumexp(log_p, 0)).exp()
        counts = counts_over_states(state.visible[rows], states)
        assert chi_squared_pvalue(counts, exact) > ALPHA
    # and the hot chains really are at another temperature: they fail against p(v) at beta = 1
    assert pvalue_against_exact(model, state.visible[::2]) < ALPHA


def test_masked_softmax_chains_sample_the_observed_units_model():
    model = tiny_rbm(3, 3, "softmax", 3, seed=13)
    sub = submodel_without_visible_units(model, [0, 2])
    gen = torch.Generator().manual_seed(24)
    codes = torch.randint(1, 4, (NUM_CHAINS, 3), generator=gen)
    codes[:, 1] = 0  # unit 1 missing in every chain
    state = run_chains(model, BlockGibbs(), gen, visible=model.encode(codes))
    v = state.visible
    assert torch.equal(v[:, 1], torch.zeros(NUM_CHAINS, 3, dtype=torch.float64))
    assert pvalue_against_exact(sub, v[:, [0, 2]]) > ALPHA


def test_persistent_chains_converge_to_the_model():
    """PCD's negative phase, called repeatedly on a fixed model, keeps its chains and so samples p(v)."""
    model = MODELS["softmax"]()
    gen = torch.Generator().manual_seed(25)
    batch = model.visible.random_state(100, gen, torch.float64)
    pcd = PersistentContrastiveDivergence(k=2, num_chains=NUM_CHAINS)
    for _ in range(BURN_IN // 2):
        negative = pcd.negative_phase(model, batch, gen)
    assert negative.state.num_chains == NUM_CHAINS
    assert pvalue_against_exact(model, negative.state.visible) > ALPHA
    pcd.reset()
    assert pcd.state is None


def test_cd_restarts_at_the_data_and_keeps_the_mask():
    model = tiny_rbm(3, 2, "softmax", 3, seed=14)
    gen = torch.Generator().manual_seed(26)
    positive = model.encode(torch.tensor([[1, 0, 3], [2, 2, 0]]))
    negative = ContrastiveDivergence(k=3).negative_phase(model, positive, gen)
    assert torch.equal(negative.state.mask, model.visible.mask(positive))
    assert torch.equal(model.visible.mask(negative.state.visible), model.visible.mask(positive))
    # the recorded positive means are p(h | data) and the chain's means p(h | its final v)
    assert torch.allclose(negative.info["positive_means"][1], model.hidden_mean(positive))
    assert torch.allclose(negative.state.means[1], model.hidden_mean(negative.state.visible))


def test_chains_are_reproducible_with_a_generator():
    model = MODELS["softmax"]()
    v0 = start_states(model, 500, torch.Generator().manual_seed(4))
    a = run_chains(model, BlockGibbs(), torch.Generator().manual_seed(5), visible=v0)
    b = run_chains(model, BlockGibbs(), torch.Generator().manual_seed(5), visible=v0)
    assert all(torch.equal(x, y) for x, y in zip(a.layers, b.layers, strict=True))
