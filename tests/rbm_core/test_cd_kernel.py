"""The C kernel of CD-k (rbm_core/_kernels/cd_binary.c) against plain torch: given the same uniforms, its
chain's states and means equal dense matmuls with the comparisons u < p in BlockGibbs' order, and its
gradient equals the two dense products, at any density, batch size, shape (tile tails) and way of
summing rows (Four-Russians tables or not). Its own uniforms are reproducible from the torch generator,
independent of the thread count; without it (switched off, or a failed build) the NumPy path runs."""

import logging

import pytest
import torch

from rbm_core import ContrastiveDivergence, _kernels, sparse_binary

kernel = _kernels.cd_binary()
pytestmark = [
    pytest.mark.skipif(kernel is None, reason="the C kernel does not build here (no compiler)"),
    pytest.mark.usefixtures("single_thread"),
]

DENSITIES = [0.0, 0.02, 0.13, 0.5, 1.0]
TABLES = [_kernels.TABLES_NEVER, _kernels.TABLES_ALWAYS, _kernels.TABLES_BY_COST]


def binary(rows, cols, density, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(rows, cols, generator=gen, dtype=torch.float64) < density).to(dtype)


def parameters(num_visible, num_hidden, seed, dtype=torch.float64, scale=0.5):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_visible, num_hidden, generator=gen, dtype=dtype) * scale
    visible_bias = torch.randn(num_visible, generator=gen, dtype=dtype) - 1.0
    hidden_bias = torch.randn(num_hidden, generator=gen, dtype=dtype)
    return weight, visible_bias, hidden_bias


def reference_chain(weight, visible_bias, hidden_bias, data, num_steps, uniforms):
    """CD-k by dense products and u < p, the uniforms taken in BlockGibbs' order."""
    (batch, num_visible), num_hidden = data.shape, weight.shape[1]
    sizes = [batch * num_hidden] + [batch * num_visible, batch * num_hidden] * num_steps
    draws = iter(torch.split(uniforms, sizes))
    positive_hidden = torch.sigmoid(hidden_bias + data @ weight)
    hidden = (next(draws).view(batch, num_hidden) < positive_hidden).to(data.dtype)
    for _ in range(num_steps):
        visible_mean = torch.sigmoid(visible_bias + hidden @ weight.t())
        visible = (next(draws).view(batch, num_visible) < visible_mean).to(data.dtype)
        hidden_mean = torch.sigmoid(hidden_bias + visible @ weight)
        hidden = (next(draws).view(batch, num_hidden) < hidden_mean).to(data.dtype)
    return {
        "visible": visible, "hidden": hidden, "visible_mean": visible_mean, "hidden_mean": hidden_mean,
        "positive_hidden": positive_hidden,
    }  # fmt: skip


def kernel_chain(weight, visible_bias, hidden_bias, data, num_steps, uniforms=None, key=0, tables=2, threads=1):
    (batch, num_visible), num_hidden = data.shape, weight.shape[1]
    out = {
        "visible": torch.empty(batch, num_visible, dtype=data.dtype),
        "hidden": torch.empty(batch, num_hidden, dtype=data.dtype),
        "visible_mean": torch.empty(batch, num_visible, dtype=data.dtype),
        "hidden_mean": torch.empty(batch, num_hidden, dtype=data.dtype),
        "positive_hidden": torch.empty(batch, num_hidden, dtype=data.dtype),
    }
    kernel.chain(weight, visible_bias, hidden_bias, data, num_steps, key, uniforms, tuple(out.values()), threads, tables)
    return out


@pytest.mark.parametrize("tables", TABLES)
@pytest.mark.parametrize("num_steps", [1, 3])
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("batch, num_visible, num_hidden", [(1, 160, 120), (6, 37, 70), (7, 37, 70), (64, 160, 120), (33, 200, 64)])
def test_the_chain_equals_dense_products_with_the_same_uniforms(batch, num_visible, num_hidden, density, num_steps, tables):
    weight, visible_bias, hidden_bias = parameters(num_visible, num_hidden, seed=1)
    data = binary(batch, num_visible, density, seed=2)
    count = sparse_binary.chain_draws(batch, num_visible, num_hidden, num_steps)
    uniforms = torch.rand(count, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours = kernel_chain(weight, visible_bias, hidden_bias, data, num_steps, uniforms, tables=tables)
    exact = reference_chain(weight, visible_bias, hidden_bias, data, num_steps, uniforms)
    for name, value in exact.items():
        tol = 0 if name in ("visible", "hidden") else 1e-12
        torch.testing.assert_close(ours[name], value, atol=tol, rtol=0, msg=name)
    assert 0 < float(ours["visible"].mean()) < 1 and 0 < float(ours["hidden"].mean()) < 1


@pytest.mark.parametrize("tables", TABLES)
def test_float32_means_follow_the_kernels_own_states(tables):
    """In float32 a state may differ from a float64 reference where u lies within rounding of p; the
    means, given the kernel's own sampled states, must agree to float32 accuracy."""
    weight, visible_bias, hidden_bias = parameters(784, 500, seed=4, dtype=torch.float32, scale=0.05)
    data = binary(100, 784, 0.13, seed=5, dtype=torch.float32)
    ours = kernel_chain(weight, visible_bias, hidden_bias, data, 1, key=6, tables=tables)
    torch.testing.assert_close(ours["positive_hidden"], torch.sigmoid(hidden_bias + data @ weight), atol=2e-6, rtol=0)
    torch.testing.assert_close(
        ours["hidden_mean"], torch.sigmoid(hidden_bias + ours["visible"] @ weight), atol=2e-6, rtol=0
    )
    assert set(ours["visible"].unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_non_finite_weight_spoils_only_the_fields_it_enters(dtype, bad):
    """A diverged model's NaN weight gives NaN means where it enters a field, an infinite one the
    sigmoid's limit, and the other fields are untouched. (A NaN field made exp_f32/exp_f64 convert a
    NaN to an integer and shift a negative value left: undefined, reported by a build with
    -fsanitize=undefined,float-cast-overflow running this test.)"""
    weight, visible_bias, hidden_bias = parameters(40, 24, seed=26, dtype=dtype)
    weight[3, 5] = bad
    data = binary(8, 40, 0.5, seed=27, dtype=dtype)
    data[:4, 3], data[4:, 3] = 1, 0
    ours = kernel_chain(weight, visible_bias, hidden_bias, data, 1, key=28)["positive_hidden"]
    finite = weight.nan_to_num(0.0, 0.0, 0.0)
    exact = torch.sigmoid(hidden_bias + data @ finite)
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    spoiled = torch.zeros_like(ours, dtype=torch.bool)
    spoiled[:4, 5] = True
    torch.testing.assert_close(ours[~spoiled], exact[~spoiled], atol=tol, rtol=0)
    if bad != bad:
        assert ours[:4, 5].isnan().all()
    else:
        torch.testing.assert_close(ours[:4, 5], torch.full((4,), float(bad > 0), dtype=dtype), atol=1e-30, rtol=0)


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("batch, num_visible, num_hidden", [(1, 160, 120), (64, 160, 120), (9, 37, 70)])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-13), (torch.float32, 2e-6)])
def test_the_gradient_equals_the_dense_products(batch, num_visible, num_hidden, density, dtype, tol):
    data = binary(batch, num_visible, density, seed=7, dtype=dtype)
    visible = binary(batch, num_visible, min(1.0, 1.5 * density), seed=8, dtype=dtype)
    visible[:, : num_visible // 2] = data[:, : num_visible // 2]  # chain ends agree with their data in part
    gen = torch.Generator().manual_seed(9)
    data_hidden = torch.rand(batch, num_hidden, generator=gen, dtype=dtype)
    visible_hidden = torch.rand(batch, num_hidden, generator=gen, dtype=dtype)
    grads = (torch.full((num_visible, num_hidden), float("nan"), dtype=dtype),
             torch.full((num_visible,), float("nan"), dtype=dtype), torch.full((num_hidden,), float("nan"), dtype=dtype))  # fmt: skip
    kernel.gradient(data, data_hidden, visible, visible_hidden, grads, 1)
    threaded = tuple(torch.empty_like(g) for g in grads)
    kernel.gradient(data, data_hidden, visible, visible_hidden, threaded, 2)
    for ours, theirs in zip(grads, threaded, strict=True):
        assert torch.equal(ours, theirs)  # each output summed by one thread in one order
    exact = (
        (visible.t() @ visible_hidden - data.t() @ data_hidden) / batch,
        visible.mean(0) - data.mean(0),
        visible_hidden.mean(0) - data_hidden.mean(0),
    )
    for ours, theirs in zip(grads, exact, strict=True):
        torch.testing.assert_close(ours, theirs, atol=tol, rtol=0)


def test_binary_chain_takes_the_kernel_and_its_uniforms_reproduce_it():
    """``binary_chain`` runs the kernel; its uniforms come from the torch generator alone (the same
    seed, the same chain; ``kernel_uniforms`` returns them, and a dense chain from them agrees), and
    they do not depend on the number of threads."""
    weight, visible_bias, hidden_bias = parameters(160, 120, seed=10)
    data = binary(64, 160, 0.13, seed=11)

    def run(seed, threads=1):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            gen = torch.Generator().manual_seed(seed)
            return sparse_binary.binary_chain(weight, visible_bias, hidden_bias, data, 2, gen, min_work=0)
        finally:
            torch.set_num_threads(previous)

    chain = run(12)
    assert chain.positive_ones is None  # the kernel's chain: no NumPy index arrays
    again, threaded, other = run(12), run(12, threads=2), run(13)
    for name in ("visible", "hidden", "visible_mean", "hidden_mean", "positive_hidden"):
        assert torch.equal(getattr(chain, name), getattr(again, name)), name
        assert torch.equal(getattr(chain, name), getattr(threaded, name)), name
    assert not torch.equal(chain.visible, other.visible)
    uniforms = sparse_binary.kernel_uniforms(torch.Generator().manual_seed(12), 64, 160, 120, 2, torch.float64)
    exact = reference_chain(weight, visible_bias, hidden_bias, data, 2, uniforms)
    for name, value in exact.items():
        torch.testing.assert_close(getattr(chain, name), value, atol=0 if name in ("visible", "hidden") else 1e-12, rtol=0)
    supplied = sparse_binary.binary_chain(weight, visible_bias, hidden_bias, data, 2, min_work=0, uniforms=uniforms)
    assert torch.equal(supplied.visible, chain.visible) and torch.equal(supplied.hidden, chain.hidden)


@pytest.mark.parametrize("dtype, bits", [(torch.float32, 24), (torch.float64, 53)])
def test_the_kernels_uniforms_are_uniform_at_torch_rand_resolution(dtype, bits):
    n = 1_000_000
    u = kernel.uniforms(123, 0, n, dtype).double()
    assert float(u.min()) >= 0 and float(u.max()) < 1
    assert torch.equal(u * 2.0**bits, (u * 2.0**bits).floor())  # multiples of 2**-bits
    counts = torch.histc(u, bins=20, min=0, max=1)
    expected = n / 20
    assert float(((counts - expected) ** 2 / expected).sum()) < 50  # chi-squared, 19 dof: p < 1e-4 above 50
    assert abs(float(u[1:] @ u[:-1]) / (n - 1) - 0.25) < 5 * (7 / 144 / n) ** 0.5  # no lag-1 correlation
    later = kernel.uniforms(123, 1000, 10, dtype)
    assert torch.equal(later, kernel.uniforms(123, 0, 1010, dtype)[1000:])  # a counter: draw i is draw i


def test_non_binary_data_and_unusual_tensors_leave_the_kernel():
    weight, visible_bias, hidden_bias = parameters(160, 120, seed=14)
    data = binary(64, 160, 0.13, seed=15)
    assert sparse_binary.binary_chain(weight, visible_bias, hidden_bias, data * 0.5, 1, min_work=0) is None
    # a transposed view of the weights: the NumPy path (index arrays present) gives the same chain
    strided = weight.t().contiguous().t()
    gen = torch.Generator().manual_seed(16)
    uniforms = torch.rand(sparse_binary.chain_draws(64, 160, 120, 1), generator=gen, dtype=torch.float64)
    numpy_chain = sparse_binary.binary_chain(strided, visible_bias, hidden_bias, data, 1, min_work=0, uniforms=uniforms)
    kernel_chain = sparse_binary.binary_chain(weight, visible_bias, hidden_bias, data, 1, min_work=0, uniforms=uniforms)
    assert numpy_chain.positive_ones is not None and kernel_chain.positive_ones is None
    assert torch.equal(numpy_chain.visible, kernel_chain.visible)
    torch.testing.assert_close(numpy_chain.hidden_mean, kernel_chain.hidden_mean, atol=1e-12, rtol=0)


def test_switched_off_the_numpy_path_runs_the_same_chain(monkeypatch):
    weight, visible_bias, hidden_bias = parameters(160, 120, seed=17)
    data = binary(64, 160, 0.13, seed=18)
    uniforms = torch.rand(sparse_binary.chain_draws(64, 160, 120, 3), generator=torch.Generator().manual_seed(19), dtype=torch.float64)
    with_kernel = sparse_binary.binary_chain(weight, visible_bias, hidden_bias, data, 3, min_work=0, uniforms=uniforms)
    monkeypatch.setattr(sparse_binary, "use_kernel", False)
    without = sparse_binary.binary_chain(weight, visible_bias, hidden_bias, data, 3, min_work=0, uniforms=uniforms)
    assert with_kernel.positive_ones is None and without.positive_ones is not None
    grads = tuple(torch.empty_like(t) for t in (weight, visible_bias, hidden_bias))
    assert not sparse_binary.chain_gradient(without, *grads)  # switched off: the caller's NumPy gradient
    assert torch.equal(with_kernel.visible, without.visible) and torch.equal(with_kernel.hidden, without.hidden)
    for name in ("visible_mean", "hidden_mean", "positive_hidden"):
        torch.testing.assert_close(getattr(with_kernel, name), getattr(without, name), atol=1e-12, rtol=0)


def test_a_failed_build_warns_once_and_leaves_the_numpy_path(tmp_path, monkeypatch, caplog):
    """A real compiler run on a source that does not compile: cd_binary() logs one warning and
    returns None, and the chain and the estimator still run (by NumPy)."""
    (tmp_path / "cd_binary.c").write_text("this is not C\n")
    (tmp_path / "cd_binary_impl.h").write_text("")
    monkeypatch.setattr(_kernels, "SOURCE_DIR", tmp_path)
    monkeypatch.setenv("RBM_CORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_kernels, "_loaded", {})
    with caplog.at_level(logging.WARNING, logger="rbm_core._kernels"):
        assert _kernels.cd_binary() is None
        assert _kernels.cd_binary() is None
    assert len([r for r in caplog.records if "unavailable" in r.message]) == 1
    assert not list((tmp_path / "cache").glob("*.so"))  # no half-written library left behind
    weight, visible_bias, hidden_bias = parameters(160, 120, seed=20)
    data = binary(64, 160, 0.13, seed=21)
    chain = sparse_binary.binary_chain(weight, visible_bias, hidden_bias, data, 1, torch.Generator().manual_seed(22), min_work=0)
    assert chain is not None and chain.positive_ones is not None
    assert not sparse_binary.chain_gradient(chain, *(torch.empty_like(t) for t in (weight, visible_bias, hidden_bias)))


def test_the_library_is_cached_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("RBM_CORE_CACHE", str(tmp_path))
    compiler = _kernels._compiler()
    first = _kernels._build("cd_binary", compiler, _kernels.FLAG_SETS[0])
    stamp = first.stat().st_mtime_ns
    assert _kernels._build("cd_binary", compiler, _kernels.FLAG_SETS[0]) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary files left
    other = _kernels._build("cd_binary", compiler, _kernels.FLAG_SETS[1])
    assert other != first


def test_the_estimator_and_gradient_step_use_the_kernel():
    from rbm_core import RBM, RBMConfig

    rbm = RBM(RBMConfig(160, 120, init_std=0.5), dtype=torch.float64, generator=torch.Generator().manual_seed(23))
    data = binary(64, 160, 0.13, seed=24)
    negative = ContrastiveDivergence(1).negative_phase(rbm, data, torch.Generator().manual_seed(25))
    chain = negative.info["binary_chain"]
    assert chain.positive_ones is None
    rbm.gradient_step(data, negative)
    exact = (
        (chain.visible.t() @ chain.hidden_mean - data.t() @ chain.positive_hidden) / 64,
        chain.visible.mean(0) - data.mean(0),
        chain.hidden_mean.mean(0) - chain.positive_hidden.mean(0),
    )
    for param, expected in zip(rbm.parameters(), exact, strict=True):
        torch.testing.assert_close(param.grad, expected, atol=1e-13, rtol=0)
