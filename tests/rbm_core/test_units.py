"""Unit types: input validation, conditionals, sampling against exact probabilities, beta."""

import math

import pytest
import torch
from helpers import chi_squared_pvalue, counts_over_states

from rbm_core.units import BernoulliUnits, InvalidInputError, SoftmaxUnits

pytestmark = pytest.mark.usefixtures("single_thread")

ALPHA = 1e-3  # false-alarm rate of every chi-squared test


# -- bad input gives a clear error ---------------------------------------------------------------
@pytest.mark.parametrize(
    "data, message",
    [
        (torch.zeros(3, 5), "shape"),
        (torch.zeros(3), "shape"),
        (torch.tensor([[0.0, 1.0, 2.0, 0.0]]), "0 or 1"),
        (torch.tensor([[0.0, 1.0, 0.5, 0.0]]), "0 or 1"),
        (torch.tensor([[0.0, 1.0, -1.0, 0.0]]), "0 or 1"),
        (torch.tensor([[0.0, float("nan"), 1.0, 0.0]]), "NaN"),
        (torch.tensor([[0.0, float("inf"), 1.0, 0.0]]), "NaN"),
    ],
)
def test_bernoulli_encode_rejects_bad_input(data, message):
    with pytest.raises(InvalidInputError, match=message):
        BernoulliUnits(4).encode(data)


def test_bernoulli_encode_accepts_bool_int_float():
    units = BernoulliUnits(3)
    expected = torch.tensor([[0.0, 1.0, 1.0]], dtype=torch.float64)
    for raw in (torch.tensor([[False, True, True]]), torch.tensor([[0, 1, 1]]), expected.float()):
        out = units.encode(raw, torch.float64)
        assert out.dtype == torch.float64 and torch.equal(out, expected)


@pytest.mark.parametrize(
    "data, message",
    [
        (torch.tensor([[1, 2]]), "shape"),
        (torch.tensor([[1, 2, 6]]), "1..5"),
        (torch.tensor([[1, -1, 3]]), "1..5"),
        (torch.tensor([[1.0, 2.5, 3.0]]), "whole numbers"),
        (torch.tensor([[1.0, float("nan"), 3.0]]), "NaN"),
        (torch.zeros(2, 3, 4), "one-hot"),  # K = 4 but the units have K = 5
        (torch.ones(2, 3, 5), "one-hot"),  # rows with several ones
        (torch.full((2, 3, 5), 0.2), "one-hot"),  # probabilities, not a state
    ],
)
def test_softmax_encode_rejects_bad_input(data, message):
    with pytest.raises(InvalidInputError, match=message):
        SoftmaxUnits(3, 5).encode(data)


def test_softmax_encode_one_hot_with_missing():
    units = SoftmaxUnits(3, 4)
    x = units.encode(torch.tensor([[1, 0, 4], [2, 3, 0]]), torch.float64)
    assert x.shape == (2, 3, 4)
    assert torch.equal(x[0], torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.float64))
    assert torch.equal(units.mask(x), torch.tensor([[True, False, True], [True, True, False]]))
    assert torch.equal(units.decode(x), torch.tensor([[1, 0, 4], [2, 3, 0]]))
    assert torch.equal(units.encode(x), x.float())  # an already one-hot state validates and passes


def test_softmax_mask_of_wrong_shape_is_refused():
    units = SoftmaxUnits(3, 5)
    field = torch.randn(4, 3, 5)
    for bad in (torch.ones(4, 2, dtype=torch.bool), torch.ones(3, 3, dtype=torch.bool), torch.ones(4, 3, 5, dtype=torch.bool)):
        with pytest.raises(InvalidInputError, match="mask has shape"):
            units.mean(field, mask=bad)
        with pytest.raises(InvalidInputError, match="mask has shape"):
            units.sample(field, mask=bad)
        with pytest.raises(InvalidInputError, match="mask has shape"):
            units.log_partition(field, mask=bad)


# -- conditionals and log-partition against direct sums over the layer's states ------------------
@pytest.mark.parametrize("units", [BernoulliUnits(3), SoftmaxUnits(2, 3)], ids=["bernoulli", "softmax"])
@pytest.mark.parametrize("beta", [1.0, 0.4, "per-sample"])
def test_log_partition_mean_and_log_prob_match_enumeration(units, beta):
    gen = torch.Generator().manual_seed(1)
    field = torch.randn(units.state_shape(4), generator=gen, dtype=torch.float64) * 2
    if beta == "per-sample":
        beta = torch.tensor([1.0, 0.0, 0.3, 2.0], dtype=torch.float64)
    b = beta.reshape(-1, *([1] * (field.dim() - 1))) if isinstance(beta, torch.Tensor) else beta
    states = units.all_states(torch.float64)  # (S, ...)
    # log-weights of every state for every sample: beta <field, x>
    log_w = torch.stack([(b * field * s).reshape(4, -1).sum(1) for s in states], 1)  # (batch, S)
    assert torch.allclose(units.log_partition(field, beta), torch.logsumexp(log_w, 1))
    probs = torch.softmax(log_w, 1)
    expected_mean = torch.einsum("bs,s...->b...", probs, states)
    assert torch.allclose(units.mean(field, beta), expected_mean)
    for s_index, s in enumerate(states):
        x = s.expand(units.state_shape(4))
        assert torch.allclose(units.log_prob(x, field, beta), probs[:, s_index].log())


def test_masked_softmax_unit_takes_no_part():
    units = SoftmaxUnits(3, 4)
    field = torch.randn(2, 3, 4, dtype=torch.float64)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    mean = units.mean(field, mask=mask)
    assert torch.equal(mean[~mask], torch.zeros(3, 4, dtype=torch.float64))
    assert torch.allclose(mean[mask].sum(-1), torch.ones(3, dtype=torch.float64))
    # log Z over observed units only: a masked unit's field does not matter
    changed = field.clone()
    changed[~mask] = 100.0
    assert torch.equal(units.log_partition(field, mask=mask), units.log_partition(changed, mask=mask))
    expected = torch.stack([torch.logsumexp(field[i][mask[i]], -1).sum() for i in range(2)])
    assert torch.allclose(units.log_partition(field, mask=mask), expected)
    x = units.sample(field, mask=mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(units.mask(x), mask)


# -- sampling: chi-squared against the exact conditional -----------------------------------------
@pytest.mark.parametrize("units", [BernoulliUnits(3), SoftmaxUnits(2, 3)], ids=["bernoulli", "softmax"])
@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_sample_passes_chi_squared(units, beta):
    gen = torch.Generator().manual_seed(2)
    one_field = torch.randn(units.state_shape(1), generator=gen, dtype=torch.float64) * 1.5
    n = 20_000
    field = one_field.expand(units.state_shape(n)).contiguous()
    samples = units.sample(field, beta, generator=gen)
    states = units.all_states(torch.float64)
    exact = torch.stack([units.log_prob(s.unsqueeze(0), one_field, beta) for s in states]).squeeze(1).exp()
    assert math.isclose(float(exact.sum()), 1.0, rel_tol=1e-12)
    assert chi_squared_pvalue(counts_over_states(samples, states), exact) > ALPHA


def test_sample_with_wrong_conditional_fails_chi_squared():
    """The chi-squared test has power: a sampler with the field's sign flipped is caught."""
    units = BernoulliUnits(3)
    gen = torch.Generator().manual_seed(3)
    one_field = torch.tensor([[0.3, -0.2, 0.1]], dtype=torch.float64)
    n = 20_000
    samples = units.sample(-one_field.expand(n, 3), generator=gen)
    states = units.all_states(torch.float64)
    exact = torch.stack([units.log_prob(s.unsqueeze(0), one_field) for s in states]).squeeze(1).exp()
    assert chi_squared_pvalue(counts_over_states(samples, states), exact) < ALPHA


def test_sampling_is_reproducible_with_a_generator():
    units = SoftmaxUnits(4, 5)
    field = torch.randn(10, 4, 5)
    a = units.sample(field, generator=torch.Generator().manual_seed(7))
    b = units.sample(field, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    bern = BernoulliUnits(6)
    f = torch.randn(10, 6)
    assert torch.equal(bern.sample(f, generator=torch.Generator().manual_seed(7)), bern.sample(f, generator=torch.Generator().manual_seed(7)))
