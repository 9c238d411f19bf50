"""The sparse 0/1 fast path (rbm_core.sparse_binary) against the dense products it replaces: fields,
gradients and a whole CD-1 epoch agree up to rounding, at densities from 0 to 1, and anything that is
not an exact 0/1 batch (probabilities, autograd, too dense) still takes the dense path. The fused CD-k
chain (binary_chain) makes the same transitions as BlockGibbs: the same chains from the same uniforms,
the exact marginal of a tiny model, and the same gradient as the dense path and autograd."""

import pytest
import torch
from helpers import chi_squared_pvalue, counts_over_states, tiny_rbm

from rbm_core import RBM, ContrastiveDivergence, RBMConfig, Trainer, _kernels, sparse_binary
from rbm_core.models import rbm as rbm_module
from rbm_core.partition import visible_distribution
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
@pytest.mark.parametrize("extra", [16, 0])  # 0: paired chains (CD), one row per unit and sample where either is on
def test_binary_outer_equals_the_two_dense_products(density, extra):
    gen = torch.Generator().manual_seed(8)
    positive = binary(BATCH, NUM_VISIBLE, density, seed=9, dtype=torch.float64)
    negative = binary(BATCH + extra, NUM_VISIBLE, min(1.0, density * 1.5), seed=10, dtype=torch.float64)
    if extra == 0:  # chain ends that agree with their data in part
        negative[:, : NUM_VISIBLE // 2] = positive[:, : NUM_VISIBLE // 2]
    positive_hidden = torch.rand(BATCH, NUM_HIDDEN, generator=gen, dtype=torch.float64)
    negative_hidden = torch.rand(BATCH + extra, NUM_HIDDEN, generator=gen, dtype=torch.float64)
    fast = binary_outer(positive, positive_hidden, negative, negative_hidden, max_density=1.0)
    assert fast is not None
    exact = negative.t() @ negative_hidden / (BATCH + extra) - positive.t() @ positive_hidden / BATCH
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


@pytest.mark.parametrize("use_kernel", [True, False])
def test_a_cd1_epoch_ends_with_the_same_parameters(use_kernel, monkeypatch):
    """The fused CD-1 chain (sparse_binary.binary_chain) with its products over the ones and the gradient
    from its 0/1 patterns, by the C kernel or by NumPy, against BlockGibbs and the dense products: with
    ``fast_rng`` off both draw the same torch uniforms in the same order, so the parameters must agree
    after 20 updates of CD-1 with momentum through the Trainer. Float64, so that no sample u < p flips on
    a rounding difference."""
    if use_kernel and _kernels.cd_binary() is None:
        pytest.skip("the C kernel does not build here (no compiler)")
    monkeypatch.setattr(sparse_binary, "use_kernel", use_kernel)
    data = binary(1280, NUM_VISIBLE, 0.13, seed=13)
    calls = []

    def counted(function, name):
        def wrapper(*args, **kwargs):
            out = function(*args, **kwargs)
            calls.append((name, out is not None))
            return out

        return wrapper

    monkeypatch.setattr(sparse_binary, "fast_rng", False)
    monkeypatch.setattr(sparse_binary, "binary_chain", counted(sparse_binary.binary_chain, "chain"))
    monkeypatch.setattr(sparse_binary, "_gather_rows", counted(sparse_binary._gather_rows, "field"))
    monkeypatch.setattr(rbm_module, "chain_outer", counted(sparse_binary.chain_outer, "grad"))
    monkeypatch.setattr(sparse_binary, "chain_gradient", counted(sparse_binary.chain_gradient, "kernel grad"))
    results = []
    for enabled in (True, False):
        monkeypatch.setattr(sparse_binary, "enabled", enabled)
        rbm = model(torch.float64, seed=14)
        with torch.no_grad():
            rbm.visible_bias.sub_(3.0)  # sparse reconstructions, like a model that has seen MNIST
        calls.clear()
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
        updates = len(data) // BATCH
        if enabled and use_kernel:  # every update ran the kernel's chain and gradient
            assert [fast for kind, fast in calls if kind == "chain"] == [True] * updates
            assert [fast for kind, fast in calls if kind == "kernel grad"] == [True] * updates
            assert not [kind for kind, _ in calls if kind in ("field", "grad")]
        elif enabled:  # every update ran the fused chain; most fields and gradients summed rows
            assert [fast for kind, fast in calls if kind == "chain"] == [True] * updates
            for name in ("field", "grad"):
                taken = [fast for kind, fast in calls if kind == name]
                assert sum(taken) >= 0.8 * updates, name
        else:
            assert calls == []
    moved = (results[0][0] - model(torch.float64, seed=14).weight.detach()).abs().max()
    assert moved > 1e-2  # the epoch did train
    for fast, dense in zip(*results, strict=True):
        torch.testing.assert_close(fast, dense, atol=1e-11, rtol=0)


def run_chain(rbm, positive, seed, num_steps=1, **kwargs):
    gen = torch.Generator().manual_seed(seed)
    return sparse_binary.binary_chain(rbm.weight, rbm.visible_bias, rbm.hidden_bias, positive, num_steps, gen, **kwargs)


@pytest.mark.parametrize("num_steps", [1, 3])
def test_the_fused_chain_gives_the_same_states_with_sparse_or_dense_products(num_steps, monkeypatch):
    """With its own (fast) uniforms: the same seed gives the same chain whichever way the products go
    (the NumPy path: the C kernel has its own tests in test_cd_kernel.py)."""
    monkeypatch.setattr(sparse_binary, "use_kernel", False)
    rbm = model(torch.float64, seed=16)
    with torch.no_grad():
        rbm.visible_bias.sub_(3.0)
    positive = binary(BATCH, NUM_VISIBLE, 0.13, seed=17, dtype=torch.float64)
    fast = run_chain(rbm, positive, seed=18, num_steps=num_steps)
    again = run_chain(rbm, positive, seed=18, num_steps=num_steps)
    monkeypatch.setattr(sparse_binary, "enabled", False)
    dense = run_chain(rbm, positive, seed=18, num_steps=num_steps)
    other_seed = run_chain(rbm, positive, seed=19, num_steps=num_steps)
    for name in ("visible", "hidden", "visible_mean", "hidden_mean", "positive_hidden"):
        torch.testing.assert_close(getattr(fast, name), getattr(again, name), atol=0, rtol=0)  # reproducible
        torch.testing.assert_close(getattr(fast, name), getattr(dense, name), atol=1e-12, rtol=0)
    assert not torch.equal(fast.visible, other_seed.visible)
    assert (fast.visible_ones == fast.visible.numpy().astype(bool)).all()
    assert (fast.positive_ones == positive.numpy().astype(bool)).all()
    exact = torch.sigmoid(torch.addmm(rbm.hidden_bias, positive, rbm.weight)).detach()
    torch.testing.assert_close(fast.positive_hidden, exact, atol=1e-12, rtol=0)
    exact = torch.sigmoid(torch.addmm(rbm.hidden_bias, fast.visible, rbm.weight)).detach()
    torch.testing.assert_close(fast.hidden_mean, exact, atol=1e-12, rtol=0)


@pytest.mark.parametrize("use_kernel", [True, False])
@pytest.mark.parametrize("fast_rng", [True, False])
def test_the_fused_chain_samples_the_exact_marginal(fast_rng, use_kernel, monkeypatch):
    """Many fused chains of a tiny RBM (forced past the size limit) run long from random starts: their
    visible states pass a chi-squared test against the exact p(v) at false-alarm rate 1e-3, while the
    same test on the chains of a wrong model (visible bias of the wrong sign) fails: the test has power.
    By the C kernel (its own uniforms, or torch's) and by NumPy."""
    if use_kernel and _kernels.cd_binary() is None:
        pytest.skip("the C kernel does not build here (no compiler)")
    monkeypatch.setattr(sparse_binary, "fast_rng", fast_rng)
    monkeypatch.setattr(sparse_binary, "use_kernel", use_kernel)
    rbm = tiny_rbm(4, 3, seed=11)
    starts = rbm.visible.random_state(20_000, torch.Generator().manual_seed(20), torch.float64)
    chain = run_chain(rbm, starts, seed=21, num_steps=30, min_work=0)
    states, log_p = visible_distribution(rbm)
    assert float(log_p.detach().exp().max()) > 3.0 / rbm.visible.num_states  # far from uniform
    assert chi_squared_pvalue(counts_over_states(chain.visible, states), log_p.exp()) > 1e-3
    wrong = sparse_binary.binary_chain(
        rbm.weight, -rbm.visible_bias, rbm.hidden_bias, starts, 30, torch.Generator().manual_seed(21), min_work=0
    )
    assert chi_squared_pvalue(counts_over_states(wrong.visible, states), log_p.exp()) < 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_uniforms_compare_like_uniforms_at_torch_rand_resolution(dtype):
    uniforms = sparse_binary._Uniforms(torch.Generator().manual_seed(22), dtype)
    assert uniforms.source is not None
    n = 1_000_000
    assert not uniforms.less(torch.zeros(n, dtype=dtype)).any()  # u >= 0
    assert uniforms.less(torch.ones(n, dtype=dtype)).all()  # u < 1
    for p in (0.001, 0.3, 0.5, 0.97):
        rate = uniforms.less(torch.full((n,), p, dtype=dtype)).mean()
        assert abs(rate - p) < 5 * (p * (1 - p) / n) ** 0.5, p
    # the uniforms are multiples of 2**-bits: u < 2**-bits only for u = 0, probability 2**-bits
    bits = 24 if dtype == torch.float32 else 53
    tiny = uniforms.less(torch.full((4 * n,), 2.0**-bits, dtype=dtype)).sum()
    assert tiny <= 3
    if dtype == torch.float32:  # 24 bits: p = 2**-20 hits u in {0, ..., 15 * 2**-24}, rate 2**-20
        rate = uniforms.less(torch.full((4 * n,), 2.0**-20, dtype=dtype)).sum()
        assert 0 < rate < 20


def test_the_estimator_takes_the_fused_chain_for_plain_bernoulli_rbms_only(monkeypatch):
    from rbm_core.models.dbm import _ScaledRBM

    positive = binary(BATCH, NUM_VISIBLE, 0.13, seed=23)
    gen = torch.Generator().manual_seed(24)
    estimator = ContrastiveDivergence(1)
    negative = estimator.negative_phase(model(), positive, gen)
    assert "binary_chain" in negative.info
    state = negative.state
    assert state.visible.shape == (BATCH, NUM_VISIBLE) and state.layers[1].shape == (BATCH, NUM_HIDDEN)
    assert state.means[0].shape == (BATCH, NUM_VISIBLE) and state.means[1].shape == (BATCH, NUM_HIDDEN)
    assert negative.info["positive_means"][1].shape == (BATCH, NUM_HIDDEN)
    scaled = _ScaledRBM(RBMConfig(NUM_VISIBLE, NUM_HIDDEN), up=2.0, down=1.0)
    assert "binary_chain" not in estimator.negative_phase(scaled, positive, gen).info  # own conditionals
    softmax = model(visible="softmax", num_values=5, num_visible=40)
    codes = torch.randint(1, 6, (BATCH, 40), generator=gen)
    assert "binary_chain" not in estimator.negative_phase(softmax, softmax.encode(codes), gen).info
    assert "binary_chain" not in estimator.negative_phase(model(), positive * 0.5, gen).info  # not 0/1
    monkeypatch.setattr(sparse_binary, "enabled", False)
    assert "binary_chain" not in estimator.negative_phase(model(), positive, gen).info


@pytest.mark.parametrize("density", [0.02, 0.13, 0.5])
def test_the_fused_chain_gradient_equals_the_dense_one_and_autograd(density, monkeypatch):
    rbm = model(torch.float64, seed=25)
    with torch.no_grad():
        rbm.visible_bias.sub_(3.0)
    positive = binary(BATCH, NUM_VISIBLE, density, seed=26, dtype=torch.float64)
    negative = ContrastiveDivergence(1).negative_phase(rbm, positive, torch.Generator().manual_seed(27))
    assert "binary_chain" in negative.info
    rbm.gradient_step(positive, negative)
    fast = [p.grad.clone() for p in rbm.parameters()]
    monkeypatch.setattr(sparse_binary, "enabled", False)
    rbm.contrastive_grads(positive, negative.state.visible)
    dense = [p.grad.clone() for p in rbm.parameters()]
    for p in rbm.parameters():
        p.grad = None
    rbm.contrastive_loss(positive, negative.state.visible).backward()
    for ours, theirs, autograd in zip(fast, dense, (p.grad for p in rbm.parameters()), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-13, rtol=0)
        torch.testing.assert_close(ours, autograd, atol=1e-13, rtol=0)


def test_encode_checks_bernoulli_floats_with_the_numpy_pass_and_still_refuses_bad_values():
    from rbm_core import InvalidInputError

    rbm = model()
    data = binary(BATCH, NUM_VISIBLE, 0.13, seed=28)
    data[0, 0] = -0.0
    assert sparse_binary.is_binary(data)
    torch.testing.assert_close(rbm.encode(data), data, atol=0, rtol=0)
    for bad in (0.5, 2.0, float("nan"), float("inf")):
        wrong = data.clone()
        wrong[3, 7] = bad
        assert not sparse_binary.is_binary(wrong)
        with pytest.raises(InvalidInputError):
            rbm.encode(wrong)
    with pytest.raises(InvalidInputError):
        rbm.encode(data[:, :-1])  # wrong shape
