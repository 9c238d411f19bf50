"""Annealed importance sampling against exact log partition functions (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from rbm_core.ais import ais_ladder, ais_log_likelihood, ais_log_partition, summarize_log_weights
from rbm_core.models import DBM, RBM, BMConfig, BoltzmannMachine, DBMConfig, RBMConfig
from rbm_core.partition import exact_log_likelihood, exact_log_partition


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mnist_like_rbm(num_hidden: int, seed: int = 0, num_visible: int = 784, strength: float = 0.08):
    """An RBM that looks like a trained one: data are noisy copies of 10 sparse prototypes, each
    hidden unit prefers one prototype (weights ±strength plus noise), hidden biases centre the
    hidden inputs on the data, visible biases are the data's base rates. Returns (model, data)."""
    g = torch.Generator().manual_seed(seed)
    prototypes = (torch.rand(10, num_visible, generator=g) < 0.2).double()
    data = prototypes[torch.randint(0, 10, (2000,), generator=g)]
    data = (data + (torch.rand(data.shape, generator=g) < 0.05)).remainder(2)
    model = RBM(RBMConfig(num_visible, num_hidden), dtype=torch.float64)
    preferred = prototypes[torch.randint(0, 10, (num_hidden,), generator=g)].t()
    with torch.no_grad():
        model.weight.copy_(torch.randn(num_visible, num_hidden, generator=g, dtype=torch.float64) * 0.05)
        model.weight.add_(strength * (2 * preferred - 1))
        model.hidden_bias.copy_(
            -(data @ model.weight).mean(0) + torch.randn(num_hidden, generator=g, dtype=torch.float64)
        )
        model.init_visible_bias_from_data(data)
    return model, data


def assert_close_to_exact(result, exact: float, nats: float = 0.1):
    error = result.log_z - exact
    assert abs(error) <= 3 * result.std_error, f"error {error:.4f} exceeds 3 SE = {3 * result.std_error:.4f}"
    assert abs(error) <= nats, f"error {error:.4f} nats"
    assert result.lower <= exact <= result.upper or abs(error) <= result.std_error


def test_ladder_shape():
    ladder = ais_ladder(1450)
    assert ladder.numel() == 1451 and ladder[0] == 0.0 and ladder[-1] == 1.0
    assert bool((ladder[1:] > ladder[:-1]).all())
    # Salakhutdinov & Murray's proportions: 50 steps to 0.5, 400 to 0.9, 1000 to 1.
    assert int((ladder < 0.5).sum()) == 50 and int((ladder < 0.9).sum()) == 450


def test_summary_by_hand():
    """Weights 1 and 3 (log 0 and log 3): Ẑ/Z_A = 2, σ̂ = std(w)/√2 = √2/√2 = 1, so the log-space
    SE is 1/2 and the bounds are log(2 ∓ 3)."""
    result = summarize_log_weights(
        torch.tensor([0.0, math.log(3.0)], dtype=torch.float64), log_z_base=1.5, num_betas=10
    )
    assert math.isclose(result.log_z, 1.5 + math.log(2.0))
    assert math.isclose(result.std_error, 0.5)
    assert result.lower == -math.inf
    assert math.isclose(result.upper, 1.5 + math.log(5.0))
    assert math.isclose(result.effective_sample_size, 16 / 10)
    with pytest.raises(FloatingPointError):
        summarize_log_weights(torch.tensor([0.0, math.nan]), 0.0, 10)


def test_rbm_784_visible_matches_exact():
    """784 visible × 15 hidden: exact log Z by enumerating the 2¹⁵ hidden states."""
    model, data = mnist_like_rbm(15)
    exact = float(exact_log_partition(model).detach())
    g = torch.Generator().manual_seed(1)
    result = ais_log_partition(model, num_betas=1000, num_runs=200, base_data=data, generator=g)
    assert_close_to_exact(result, exact)
    # The average log-likelihood follows: exact −F(v) minus the estimate.
    estimate = ais_log_likelihood(model, data[:500], result)
    truth = float(exact_log_likelihood(model, data[:500]).detach().mean())
    assert abs(estimate.mean - truth) <= 3 * estimate.std_error
    assert estimate.lower <= estimate.mean <= estimate.upper


def test_short_ladders_fail_visibly():
    """AIS is unbiased for Z, so log Ẑ is biased low. With a uniform base and 10 steps the
    estimate falls tens of nats short (which is why the base model matters); with the
    base-rate base and 10 steps the effective sample size collapses and the reported standard
    error says so. Checks that the accurate runs above are not accurate by accident."""
    model, data = mnist_like_rbm(15)
    exact = float(exact_log_partition(model).detach())
    uniform = ais_log_partition(model, num_betas=10, num_runs=50, generator=torch.Generator().manual_seed(1))
    assert uniform.log_z < exact - 10.0
    short = ais_log_partition(
        model, num_betas=10, num_runs=50, base_data=data, generator=torch.Generator().manual_seed(1)
    )
    assert short.effective_sample_size < 5 and short.std_error > 0.3


def test_softmax_rbm_matches_exact():
    """30 softmax units with 5 values (150 flat inputs) × 12 hidden units."""
    g = torch.Generator().manual_seed(2)
    model = RBM(RBMConfig(30, 12, "softmax", 5), dtype=torch.float64)
    ratings = torch.randint(1, 6, (1000, 30), generator=g)
    with torch.no_grad():
        model.weight.copy_(torch.randn(model.weight.shape, generator=g, dtype=torch.float64) * 0.3)
        model.hidden_bias.copy_(torch.randn(12, generator=g, dtype=torch.float64))
        model.init_visible_bias_from_data(ratings)
        model.visible_bias.add_(torch.randn(150, generator=g, dtype=torch.float64) * 0.5)
    exact = float(exact_log_partition(model).detach())
    result = ais_log_partition(model, num_betas=800, num_runs=150, base_data=model.encode(ratings), generator=g)
    assert_close_to_exact(result, exact)


def test_uniform_base_on_a_small_rbm():
    model, _ = mnist_like_rbm(6, seed=3, num_visible=40, strength=0.5)
    g = torch.Generator().manual_seed(4)
    result = ais_log_partition(model, num_betas=500, num_runs=200, generator=g)
    assert_close_to_exact(result, float(exact_log_partition(model).detach()))


@pytest.mark.parametrize("visible, num_values", [("bernoulli", 2), ("softmax", 3)])
def test_dbm_matches_exact_and_bounds_the_likelihood(visible, num_values):
    """A two-layer DBM small enough to enumerate: AIS (h¹ summed out, annealing over v and h²)
    matches the exact log Z; with it the mean-field estimate is a lower bound on log p(v)."""
    g = torch.Generator().manual_seed(5)
    model = DBM(DBMConfig(6, (5, 4), visible, num_values), dtype=torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    exact = float(model.exact_log_partition().detach())
    data = model.visible.random_state(200, g, torch.float64)
    result = ais_log_partition(model, num_betas=800, num_runs=200, base_data=data, generator=g)
    assert_close_to_exact(result, exact)
    estimate = ais_log_likelihood(model, data, result)
    true_mean = float(model.exact_log_likelihood(data).detach().mean())
    assert estimate.mean <= true_mean + 3 * estimate.std_error
    # With the exact log Z the bound is exactly −E(v, μ) + H(q) − log Z ≤ log p(v) per case.
    bound = model.mean_field_lower_bound(data, exact)
    assert bool((bound <= model.exact_log_likelihood(data) + 1e-9).all())
    assert math.isclose(estimate.mean_log_unnormalized - exact, float(bound.detach().mean()), rel_tol=1e-9)


def test_refuses_lateral_connections():
    model = BoltzmannMachine(BMConfig(4, 3), dtype=torch.float64)
    with pytest.raises(ValueError):
        ais_log_partition(model, num_betas=10, num_runs=2)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_rbm_784_by_20_matches_exact(seed):
    """The 784 × 20 case (2²⁰ hidden states enumerated), with Salakhutdinov & Murray's ladder size."""
    model, data = mnist_like_rbm(20, seed=seed, strength=0.12)
    exact = float(exact_log_partition(model).detach())
    g = torch.Generator().manual_seed(10 + seed)
    result = ais_log_partition(model, num_betas=14_500, num_runs=100, base_data=data, generator=g)
    assert_close_to_exact(result, exact)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ais_on_cuda_in_float32():
    """AIS on a CUDA device with a float32 model (the benchmark's setting) against the exact log Z."""
    model, data = mnist_like_rbm(15)
    exact = float(exact_log_partition(model).detach())
    model = model.float().to("cuda")
    g = torch.Generator(device="cuda").manual_seed(1)
    result = ais_log_partition(model, num_betas=1000, num_runs=200, base_data=data.float().cuda(), generator=g)
    assert_close_to_exact(result, exact)
