"""Gradients and training: the estimators' gradients against autograd of exact quantities, PCD and
CD learning on data with a known distribution and on scikit-learn's digits, and the Trainer's
optimizer, schedule, early-stopping, callback and divergence paths."""

import pytest
import torch
from helpers import tiny_rbm

from rbm_core import (
    RBM,
    ContrastiveDivergence,
    EarlyStopping,
    InvalidInputError,
    PersistentContrastiveDivergence,
    RBMConfig,
    Trainer,
    TrainingDiverged,
)
from rbm_core.estimators import ExactNegativePhase
from rbm_core.metrics import default_metrics, free_energy_gap, pseudo_log_likelihood, reconstruction_error
from rbm_core.partition import exact_log_likelihood, visible_distribution

pytestmark = pytest.mark.usefixtures("single_thread")

MODELS = {
    "bernoulli": lambda: tiny_rbm(5, 3, seed=31),
    "softmax": lambda: tiny_rbm(3, 3, "softmax", 3, seed=32),
}


def grads_of(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def clear_grads(model):
    for p in model.parameters():
        p.grad = None


def data_batch(model, rows=16, seed=0, missing=0.0):
    gen = torch.Generator().manual_seed(seed)
    c = model.config
    if c.visible == "bernoulli":
        return model.encode(torch.rand(rows, c.num_visible, generator=gen) < 0.4)
    codes = torch.randint(1, c.num_values + 1, (rows, c.num_visible), generator=gen)
    codes[torch.rand(rows, c.num_visible, generator=gen) < missing] = 0
    return model.encode(codes)


# -- gradients -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("path", ["gradient_step", "autograd_with_weights"])
def test_exact_negative_phase_gives_the_exact_log_likelihood_gradient(kind, path):
    model = MODELS[kind]()
    data = data_batch(model)
    (-exact_log_likelihood(model, data).mean()).backward()
    expected = grads_of(model)
    clear_grads(model)
    negative = ExactNegativePhase().negative_phase(model, data)
    assert torch.allclose(negative.info["weights"].sum(), torch.tensor(1.0, dtype=torch.float64))
    if path == "gradient_step":
        model.gradient_step(data, negative)
    else:
        model.contrastive_loss(data, negative.state.visible, negative_weights=negative.info["weights"]).backward()
    for ours, exact in zip(grads_of(model), expected, strict=True):
        assert torch.allclose(ours, exact, atol=1e-12)


def test_exact_negative_phase_refuses_masked_data():
    model = MODELS["softmax"]()
    with pytest.raises(ValueError, match="fully observed"):
        ExactNegativePhase().negative_phase(model, data_batch(model, missing=0.5))


@pytest.mark.parametrize("kind, missing", [("bernoulli", 0.0), ("softmax", 0.0), ("softmax", 0.4)])
@pytest.mark.parametrize("given_means", [False, True])
def test_contrastive_grads_equal_autograd_of_contrastive_loss(kind, missing, given_means):
    model = MODELS[kind]()
    positive = data_batch(model, 16, seed=1, missing=missing)
    negative = data_batch(model, 24, seed=2, missing=missing)  # a different batch size on purpose
    model.contrastive_loss(positive, negative).backward()
    expected = grads_of(model)
    clear_grads(model)
    with torch.no_grad():
        kwargs = {}
        if given_means:
            kwargs = {"positive_hidden": model.hidden_mean(positive), "negative_hidden": model.hidden_mean(negative)}
    model.contrastive_grads(positive, negative, **kwargs)
    for ours, exact in zip(grads_of(model), expected, strict=True):
        assert torch.allclose(ours, exact, atol=1e-12)
    # called again, it overwrites (does not accumulate into) the existing buffers
    model.contrastive_grads(positive, negative, **kwargs)
    for ours, exact in zip(grads_of(model), expected, strict=True):
        assert torch.allclose(ours, exact, atol=1e-12)


@pytest.mark.parametrize("estimator", [ContrastiveDivergence(2), PersistentContrastiveDivergence(1, num_chains=40)])
def test_gradient_step_on_a_chain_state_equals_autograd(estimator):
    """The fast path reuses the chain's Rao-Blackwellised means; the result is the autograd
    gradient of contrastive_loss on the same negative states."""
    model = MODELS["softmax"]()
    positive = data_batch(model, 16, seed=3, missing=0.3)
    negative = estimator.negative_phase(model, positive, torch.Generator().manual_seed(0))
    model.gradient_step(positive, negative)
    fast = grads_of(model)
    clear_grads(model)
    model.contrastive_loss(positive, negative.state.visible).backward()
    for ours, exact in zip(fast, grads_of(model), strict=True):
        assert torch.allclose(ours, exact, atol=1e-12)


def test_fast_path_and_autograd_trainers_agree():
    """Two Trainers from the same seeds, one with the hand-written update and one with autograd,
    end with the same parameters."""
    results = []
    for autograd in (False, True):
        model = tiny_rbm(6, 4, seed=33, scale=0.3)
        data = (torch.rand(120, 6, generator=torch.Generator().manual_seed(1)) < 0.3).double()
        trainer = Trainer(
            model, ContrastiveDivergence(1), learning_rate=0.1, momentum=0.5, weight_decay=1e-3,
            batch_size=20, epochs=3, generator=torch.Generator().manual_seed(2), autograd=autograd,
        )
        trainer.fit(data)
        results.append([p.detach().clone() for p in model.parameters()])
    for fast, slow in zip(*results, strict=True):
        assert torch.allclose(fast, slow, atol=1e-10)


# -- learning ------------------------------------------------------------------------------------
def test_pcd_raises_the_exact_log_likelihood_of_a_known_distribution():
    teacher = tiny_rbm(6, 3, seed=34, scale=1.5)
    states, log_p = visible_distribution(teacher)
    gen = torch.Generator().manual_seed(3)
    data = states[torch.multinomial(log_p.detach().exp(), 3000, replacement=True, generator=gen)]
    # the best any model can do on this sample: its empirical entropy
    counts = torch.bincount(
        (data * 2 ** torch.arange(5, -1, -1, dtype=torch.float64)).sum(1).long(), minlength=64
    ).double()
    freq = counts[counts > 0] / counts.sum()
    best_possible = float((freq * freq.log()).sum())

    student = RBM(RBMConfig(6, 6), dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        before = float(exact_log_likelihood(student, data).mean())
    trainer = Trainer(
        student, PersistentContrastiveDivergence(k=1, num_chains=200), learning_rate=0.05, momentum=0.5,
        batch_size=50, epochs=15, generator=gen,
    )
    trainer.fit(data)
    with torch.no_grad():
        after = float(exact_log_likelihood(student, data).mean())
    # before: about -6 log 2 = -4.16 nats; the sample's optimum lies well above it
    assert best_possible - before > 0.8
    assert after - before > 0.6, (before, after, best_possible)
    assert after > best_possible - 0.15, (before, after, best_possible)


@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    images = torch.as_tensor(datasets.load_digits().data)
    binary = (images >= 8).float()
    order = torch.randperm(len(binary), generator=torch.Generator().manual_seed(0))
    return binary[order[:1500]], binary[order[1500:]]


def test_cd_on_digits_lowers_reconstruction_error_and_raises_pseudo_likelihood(digits):
    train, valid = digits
    model = RBM(RBMConfig(64, 48), generator=torch.Generator().manual_seed(5))
    model.init_visible_bias_from_data(train)
    valid_state = model.encode(valid)
    pll_gen_seed = 7
    before_error = reconstruction_error(model, None, valid_state)
    before_pll = pseudo_log_likelihood(model, None, valid_state, seed=pll_gen_seed)
    seen = []
    trainer = Trainer(
        model, ContrastiveDivergence(1), learning_rate=0.1, momentum=0.5, batch_size=20, epochs=6,
        metrics=default_metrics(model, with_held_out=True), callbacks=[lambda epoch, m: seen.append(m)],
        generator=torch.Generator().manual_seed(6),
    )
    history = trainer.fit(train, valid)
    after_error = reconstruction_error(model, None, valid_state)
    after_pll = pseudo_log_likelihood(model, None, valid_state, seed=pll_gen_seed)
    assert after_error < 0.75 * before_error, (before_error, after_error)
    assert after_pll > before_pll + 3.0, (before_pll, after_pll)
    assert [m["epoch"] for m in seen] == list(range(6)) and seen == history.epochs
    assert set(history.epochs[0]) == {"epoch", "reconstruction_error", "pseudo_log_likelihood", "free_energy_gap"}
    assert history.metric("reconstruction_error")[-1] < history.metric("reconstruction_error")[0]


def test_free_energy_gap_by_hand():
    model = tiny_rbm(3, 2, seed=35)
    a = model.encode(torch.tensor([[1, 0, 1], [0, 0, 1]]))
    b = model.encode(torch.tensor([[1, 1, 1]]))
    expected = float(model.free_energy(b).mean() - model.free_energy(a).mean().detach())
    assert free_energy_gap(model, a, b) == pytest.approx(expected)
    assert reconstruction_error(model, a) == pytest.approx(
        float((model.visible_mean(model.hidden_mean(a)) - a).pow(2).mean())
    )


# -- the Trainer's paths -------------------------------------------------------------------------
def test_momentum_and_weight_decay_follow_the_sgd_formula():
    """Full-batch training with the exact gradient is deterministic, so three Trainer epochs must
    equal three hand-computed steps of SGD with momentum and weight decay."""
    lr, momentum, decay = 0.2, 0.9, 0.05
    model = tiny_rbm(4, 3, seed=36, scale=0.5)
    data = (torch.rand(40, 4, generator=torch.Generator().manual_seed(8)) < 0.5).double()
    params = [p.detach().clone() for p in model.parameters()]
    buffers = None
    reference = tiny_rbm(4, 3, seed=36, scale=0.5)
    for _ in range(3):
        with torch.no_grad():
            for p, value in zip(reference.parameters(), params, strict=True):
                p.copy_(value)
        clear_grads(reference)
        (-exact_log_likelihood(reference, data).mean()).backward()
        grads = [g + decay * p for g, p in zip(grads_of(reference), params, strict=True)]
        buffers = grads if buffers is None else [momentum * b + g for b, g in zip(buffers, grads, strict=True)]
        params = [p - lr * b for p, b in zip(params, buffers, strict=True)]
    Trainer(
        model, ExactNegativePhase(), learning_rate=lr, momentum=momentum, weight_decay=decay,
        batch_size=len(data), epochs=3, generator=torch.Generator().manual_seed(0),
    ).fit(data)
    for ours, expected in zip(model.parameters(), params, strict=True):
        assert torch.allclose(ours, expected, atol=1e-12)


def scripted_metric(values):
    """A metric reporting ``values[epoch]``: drives early stopping along a known path."""
    calls = []

    def metric(model, sample, held_out):
        calls.append(None)
        return values[len(calls) - 1]

    return metric


def test_early_stopping_stops_after_patience_and_restores_the_best_weights():
    model = tiny_rbm(4, 3, seed=37, scale=0.3)
    data = (torch.rand(60, 4, generator=torch.Generator().manual_seed(9)) < 0.5).double()
    snapshots = {}
    stopper = EarlyStopping("score", mode="min", patience=2)
    trainer = Trainer(
        model, ContrastiveDivergence(1), learning_rate=0.1, batch_size=20, epochs=20,
        metrics={"score": scripted_metric([5.0, 4.0, 3.0, 3.5, 3.2, 1.0, 0.5])},
        callbacks=[lambda epoch, m: snapshots.setdefault(epoch, [p.detach().clone() for p in model.parameters()])],
        early_stopping=stopper, generator=torch.Generator().manual_seed(1),
    )
    history = trainer.fit(data)
    assert history.stopped_early and history.best_epoch == 2
    assert len(history.epochs) == 5  # epochs 3 and 4 did not improve on epoch 2
    assert not torch.equal(snapshots[4][0], snapshots[2][0])
    for restored, best in zip(model.parameters(), snapshots[2], strict=True):
        assert torch.equal(restored, best)


def test_early_stopping_max_mode_and_min_delta():
    stopper = EarlyStopping("pll", mode="max", patience=1, min_delta=0.5, restore_best=False)
    model = torch.nn.Linear(1, 1)
    assert not stopper.update(0, {"pll": -10.0}, model)
    assert not stopper.update(1, {"pll": -9.0}, model)  # improves by 1 > 0.5
    assert stopper.update(2, {"pll": -8.8}, model)  # improves by only 0.2
    assert stopper.best == -9.0 and stopper.best_epoch == 1
    with pytest.raises(KeyError, match="monitors 'loss'"):
        EarlyStopping("loss").update(0, {"pll": 1.0}, model)
    with pytest.raises(TrainingDiverged, match="became nan"):
        EarlyStopping("pll").update(0, {"pll": float("nan")}, model)


def test_learning_rate_schedule_callbacks_and_should_stop():
    model = tiny_rbm(4, 3, seed=38, scale=0.3)
    data = (torch.rand(40, 4, generator=torch.Generator().manual_seed(10)) < 0.5).double()
    rates, ks = [], []
    estimator = ContrastiveDivergence(lambda epoch: 1 + 2 * epoch)
    trainer = Trainer(
        model, estimator, learning_rate=0.1, batch_size=20, epochs=10,
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
        callbacks=[lambda epoch, m: rates.append(trainer.optimizer.param_groups[0]["lr"]),
                   lambda epoch, m: ks.append(estimator.k)],
        should_stop=lambda: len(rates) >= 5, generator=torch.Generator().manual_seed(2),
    )
    history = trainer.fit(data)
    assert len(history.epochs) == 5 and not history.stopped_early
    assert rates == pytest.approx([0.1, 0.05, 0.05, 0.025, 0.025])  # after each epoch's scheduler step
    assert ks == [1, 3, 5, 7, 9]


def test_any_torch_optimizer(capsys):
    model = tiny_rbm(4, 3, seed=39, scale=0.3)
    data = (torch.rand(40, 4, generator=torch.Generator().manual_seed(11)) < 0.5).double()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(
        model, PersistentContrastiveDivergence(1), optimizer=torch.optim.Adam(model.parameters(), lr=0.01),
        batch_size=10, epochs=2, progress=True, generator=torch.Generator().manual_seed(3),
    )
    history = trainer.fit(data)
    assert len(history.epochs) == 2
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert "epoch" in capsys.readouterr().err  # the progress bar


@pytest.mark.parametrize("autograd", [False, True])
def test_diverging_run_stops_with_training_diverged(autograd):
    model = RBM(RBMConfig(8, 4), generator=torch.Generator().manual_seed(12))
    data = (torch.rand(200, 8, generator=torch.Generator().manual_seed(12)) < 0.5).float()
    trainer = Trainer(
        model, ContrastiveDivergence(1), learning_rate=1e38, momentum=0.9, batch_size=10, epochs=5,
        check_every=5, generator=torch.Generator().manual_seed(4), autograd=autograd,
    )
    with pytest.raises(TrainingDiverged, match="non-finite|became"):
        trainer.fit(data)


def test_fit_refuses_bad_data_before_training():
    model = RBM(RBMConfig(4, 2))
    trainer = Trainer(model, ContrastiveDivergence(1), epochs=1)
    before = model.weight.detach().clone()
    with pytest.raises(InvalidInputError, match="0 or 1"):
        trainer.fit(torch.tensor([[0, 1, 2, 0]] * 10))
    with pytest.raises(InvalidInputError, match="shape"):
        trainer.fit(torch.zeros(10, 5))
    with pytest.raises(InvalidInputError, match="NaN"):
        trainer.fit(torch.zeros(10, 4), valid=torch.full((3, 4), float("nan")))
    assert torch.equal(model.weight, before)


def train_digits_like(device):
    gen = torch.Generator(device=device).manual_seed(0)
    model = RBM(RBMConfig(64, 32), device=device, generator=torch.Generator().manual_seed(1))
    data = (torch.rand(600, 64, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    data[:, :8] = data[:, 8:16]  # some structure to learn
    trainer = Trainer(
        model, PersistentContrastiveDivergence(1, num_chains=50), learning_rate=0.05, batch_size=50, epochs=3,
        metrics=default_metrics(model, with_held_out=True), generator=gen,
    )
    history = trainer.fit(data[:500], data[500:])
    return model, history


@pytest.mark.cuda
def test_training_runs_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model, history = train_digits_like(torch.device("cuda"))
    assert model.weight.device.type == "cuda"
    assert len(history.epochs) == 3
    assert history.metric("reconstruction_error")[-1] < history.metric("reconstruction_error")[0]


def test_training_runs_on_the_default_device_code_path_on_cpu():
    model, history = train_digits_like(torch.device("cpu"))
    assert history.metric("reconstruction_error")[-1] < history.metric("reconstruction_error")[0]
