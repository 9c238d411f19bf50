"""The Trainer's default optimizer (torch's fused SGD) gives the same parameters as the loop of
operations. The Trainer skips zero_grad before a model's gradient_step only where that step overwrites every
gradient (RBM.gradient_step_overwrites) and the optimizer holds nothing else: the parameters after an
epoch equal those of a run that zeroes, and a model whose step adds to .grad still gets zeroed."""

import pytest
import torch

from rbm_core import RBM, ContrastiveDivergence, RBMConfig, Trainer, sparse_binary

pytestmark = pytest.mark.usefixtures("single_thread")


class _AccumulatingRBM(RBM):
    """An RBM whose gradient_step adds its gradient to .grad (as autograd would)."""

    def gradient_step(self, positive, negative):
        for param in self.parameters():
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        grads = [p.grad.clone() for p in self.parameters()]
        super().gradient_step(positive, negative)
        for param, previous in zip(self.parameters(), grads, strict=True):
            param.grad.add_(previous)


def model(cls=RBM):
    return cls(RBMConfig(160, 120, init_std=0.3), dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def train(rbm, extra_parameter=False, use_kernel=True, monkeypatch=None, default_optimizer=False):
    data = (torch.rand(640, 160, generator=torch.Generator().manual_seed(2), dtype=torch.float64) < 0.13).double()
    params = list(rbm.parameters()) + ([torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))] if extra_parameter else [])
    optimizer = None if default_optimizer else torch.optim.SGD(params, lr=0.1, momentum=0.5)
    trainer = Trainer(
        rbm, ContrastiveDivergence(1), optimizer=optimizer, learning_rate=0.1, momentum=0.5, weight_decay=0.0,
        batch_size=64, epochs=2, metrics={}, progress=False, generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    trainer.fit(data)
    return trainer, [p.detach().clone() for p in rbm.parameters()]


@pytest.mark.parametrize("use_kernel", [True, False])
def test_skipping_zero_grad_changes_nothing(use_kernel, monkeypatch):
    monkeypatch.setattr(sparse_binary, "use_kernel", use_kernel)
    assert model().gradient_step_overwrites
    skipping, fast = train(model())
    zeroing, slow = train(model(), extra_parameter=True)  # a parameter outside the model: zero_grad runs
    assert skipping._optimizer_in_model and not zeroing._optimizer_in_model
    for a, b in zip(fast, slow, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(fast[0], model().weight.detach())  # it did train


def test_a_subclass_that_adds_to_grad_is_still_zeroed():
    accumulating = model(_AccumulatingRBM)
    assert not accumulating.gradient_step_overwrites
    _, theirs = train(accumulating)
    _, ours = train(model())
    for a, b in zip(theirs, ours, strict=True):  # zeroed before each step, adding to zero is writing
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_default_fused_sgd_equals_the_loop_of_operations(dtype):
    def build():
        return RBM(RBMConfig(160, 120, init_std=0.3), dtype=dtype, generator=torch.Generator().manual_seed(1))

    fused, ours = train(build(), default_optimizer=True)
    assert fused.optimizer.defaults["fused"] and fused.optimizer.defaults["momentum"] == 0.5
    plain, theirs = train(build())
    assert not plain.optimizer.defaults.get("fused")
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(ours[0], build().weight.detach())  # it did train
