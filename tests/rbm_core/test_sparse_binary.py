"""The sparse 0/1 fast path (rbm_core.sparse_binary) against the dense products it replaces: fields,
gradients and a whole CD-1 epoch agree up to rounding, at densities from 0 to 1, and anything that is
not an exact 0/1 batch (probabilities, autograd, too dense) still takes the dense path."""

import pytest
import torch

from rbm_core import RBM, ContrastiveDivergence, RBMConfig, Trainer, sparse_binary
from rbm_core.models import rbm as rbm_module
from rbm_core.sparse_binary import binary_matmul, binary_outer

pytestmark = pytest.mark.usefixtures("single_thread")

# 64 x 160 x 120 = 1.2M multiply-adds: above MIN_WORK, so the fast path is eligible.
BATCH, NUM_VISIBLE, NUM_HIDDEN = 64, 160, 120
DENSITIES = [0.0, 0.02, 0.13, 0.5, 1.0]


def binary(rows, cols, density, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(rows, cols, generator=gen) < density).to(dtype)


def model(dtype=torch.float32, seed=0, visible="bernoulli", num_values=2, num_visible=NUM_VISIBLE):
    rbm = RBM(
        RBMConfig(num_visible, NUM_HIDDEN, visible, num_values, init_std=0.5),
        dtype=dtype,
        generator=torch.Generator().manual_seed(seed),
    )
    with torch.no_grad():
        rbm.visible_bias.normal_(0, 1, generator=torch.Generator().manual_seed(seed + 1))
        rbm.hidden_bias.normal_(0, 1, generator=torch.Generator().manual_seed(seed + 2))
    return rbm


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_binary_matmul_equals_the_dense_product(density, dtype, tol):
    weight = torch.randn(NUM_VISIBLE, NUM_HIDDEN, generator=torch.Generator().manual_seed(1), dtype=dtype)
    bias = torch.randn(NUM_HIDDEN, generator=torch.Generator().manual_seed(2), dtype=dtype)
    x = binary(BATCH, NUM_VISIBLE, density, seed=3, dtype=dtype)
    fast = binary_matmul(x, weight, bias, max_density=1.0)  # forced, whatever the density
    assert fast is not None
    exact = torch.addmm(bias.double(), x.double(), weight.double())
    torch.testing.assert_close(fast.double(), exact, atol=tol * NUM_VISIBLE**0.5, rtol=0)


@pytest.mark.parametrize("density", DENSITIES)
def test_hidden_field_equals_the_dense_path_at_any_density(density, monkeypatch):
    rbm = model()
    v = binary(BATCH, NUM_VISIBLE, density, seed=4)
    with torch.no_grad():
        fast = rbm.hidden_field(v)
        monkeypatch.setattr(sparse_binary, "enabled", False)
        dense = rbm.hidden_field(v)
    torch.testing.assert_close(fast, dense, atol=1e-5, rtol=0)


def test_the_fast_path_is_taken_for_sparse_binary_batches_only():
    weight = torch.randn(NUM_VISIBLE, NUM_HIDDEN)
    sparse = binary(BATCH, NUM_VISIBLE, 0.1, seed=5)
    assert binary_matmul(sparse, weight) is not None
    assert binary_matmul(binary(BATCH, NUM_VISIBLE, 0.6, seed=5), weight) is None  # too dense
    probabilities = sparse * 0.5
    assert binary_matmul(probabilities, weight) is None  # not 0/1
    twos = sparse.clone()
    twos[0, sparse[0].argmax()] = 2.0
    assert binary_matmul(twos, weight) is None
    assert binary_matmul(sparse[:4], weight) is None  # too small to pay off
    assert binary_matmul(sparse.double(), weight) is None  # mixed dtypes
    weight.requires_grad_(True)
    assert binary_matmul(sparse, weight) is None  # autograd recording: dense, differentiable path
    with torch.no_grad():
        assert binary_matmul(sparse, weight) is not None


def test_free_energy_keeps_its_autograd_gradient():
    rbm = model(torch.float64)
    v = binary(BATCH, NUM_VISIBLE, 0.1, seed=6, dtype=torch.float64)
    rbm.free_energy(v).sum().backward()
    expected = -(v.t() @ torch.sigmoid(torch.addmm(rbm.hidden_bias, v, rbm.weight)).detach())
    torch.testing.assert_close(rbm.weight.grad, expected, atol=1e-10, rtol=0)


def test_softmax_one_hot_batches_take_the_fast_path_with_masks(monkeypatch):
    rbm = model(visible="softmax", num_values=5, num_visible=40)  # 200 flat visible units
    gen = torch.Generator().manual_seed(7)
    codes = torch.randint(1, 6, (BATCH, 40), generator=gen)
    codes[torch.rand(BATCH, 40, generator=gen) < 0.5] = 0  # half missing
    v = rbm.encode(codes)
    assert binary_matmul(rbm.visible.flatten(v), rbm.weight.detach()) is not None
    with torch.no_grad():
        fast = rbm.hidden_field(v)
        monkeypatch.setattr(sparse_binary, "enabled", False)
        dense = rbm.hidden_field(v)
    torch.testing.assert_close(fast, dense, atol=1e-5, rtol=0)


@pytest.mark.parametrize("density", DENSITIES)
def test_binary_outer_equals_the_two_dense_products(density):
    gen = torch.Generator().manual_seed(8)
    positive = binary(BATCH, NUM_VISIBLE, density, seed=9, dtype=torch.float64)
    negative = binary(BATCH + 16, NUM_VISIBLE, min(1.0, density * 1.5), seed=10, dtype=torch.float64)
    positive_hidden = torch.rand(BATCH, NUM_HIDDEN, generator=gen, dtype=torch.float64)
    negative_hidden = torch.rand(BATCH + 16, NUM_HIDDEN, generator=gen, dtype=torch.float64)
    fast = binary_outer(positive, positive_hidden, negative, negative_hidden, max_density=1.0)
    assert fast is not None
    exact = negative.t() @ negative_hidden / (BATCH + 16) - positive.t() @ positive_hidden / BATCH
    torch.testing.assert_close(fast, exact, atol=1e-13, rtol=0)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-14)])
def test_contrastive_grads_equal_the_dense_path_and_autograd(dtype, tol, monkeypatch):
    rbm = model(dtype)
    positive = binary(BATCH, NUM_VISIBLE, 0.13, seed=11, dtype=dtype)
    negative = binary(BATCH, NUM_VISIBLE, 0.1, seed=12, dtype=dtype)
    with torch.no_grad():
        assert binary_outer(positive, rbm.hidden_mean(positive), negative, rbm.hidden_mean(negative)) is not None
    rbm.contrastive_grads(positive, negative)
    fast = [p.grad.clone() for p in rbm.parameters()]
    monkeypatch.setattr(sparse_binary, "enabled", False)
    rbm.contrastive_grads(positive, negative)
    dense = [p.grad.clone() for p in rbm.parameters()]
    for p in rbm.parameters():
        p.grad = None
    rbm.contrastive_loss(positive, negative).backward()
    for ours, theirs, autograd in zip(fast, dense, (p.grad for p in rbm.parameters()), strict=True):
        torch.testing.assert_close(ours, theirs, atol=tol, rtol=0)
        torch.testing.assert_close(ours, autograd, atol=tol, rtol=0)


def test_a_cd1_epoch_ends_with_the_same_parameters(monkeypatch):
    """Float64, so that no sample u < p flips on a rounding difference and both runs see the same
    chains; 20 updates of CD-1 with momentum through the Trainer."""
    data = binary(1280, NUM_VISIBLE, 0.13, seed=13)
    fast_calls = []

    def counted(function, name):
        def wrapper(*args, **kwargs):
            out = function(*args, **kwargs)
            fast_calls.append((name, out is not None))
            return out

        return wrapper

    monkeypatch.setattr(rbm_module, "binary_matmul", counted(binary_matmul, "field"))
    monkeypatch.setattr(rbm_module, "binary_outer", counted(binary_outer, "grad"))
    results = []
    for enabled in (True, False):
        monkeypatch.setattr(sparse_binary, "enabled", enabled)
        rbm = model(torch.float64, seed=14)
        with torch.no_grad():
            rbm.visible_bias.sub_(3.0)  # sparse reconstructions, like a model that has seen MNIST
        fast_calls.clear()
        Trainer(
            rbm,
            ContrastiveDivergence(1),
            learning_rate=0.1,
            momentum=0.5,
            batch_size=BATCH,
            epochs=1,
            metrics={},
            progress=False,
            generator=torch.Generator().manual_seed(15),
        ).fit(data)
        results.append([p.detach().clone() for p in rbm.parameters()])
        if enabled:  # most fields and gradients of the run went through the fast path
            for name in ("field", "grad"):
                taken = [fast for kind, fast in fast_calls if kind == name]
                assert sum(taken) >= 0.8 * len(taken) > 0, name
    moved = (results[0][0] - model(torch.float64, seed=14).weight.detach()).abs().max()
    assert moved > 1e-2  # the epoch did train
    for fast, dense in zip(*results, strict=True):
        torch.testing.assert_close(fast, dense, atol=1e-11, rtol=0)
