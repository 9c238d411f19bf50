"""The generic training loop: device, optimizer, schedules, callbacks, progress, early stopping
and the non-finite guard. It knows nothing of any one model's mathematics: the model turns a
positive batch and the estimator's negative phase into gradients."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from rbm_core.estimators import ContrastiveDivergence, NegativePhase


class TrainingDiverged(RuntimeError):
    """Raised when a parameter or a monitored quantity becomes NaN or infinite."""


class Callback(Protocol):
    def __call__(self, epoch: int, metrics: dict[str, float]) -> None: ...


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class EarlyStopping:
    """Stop when ``monitor`` has not improved for ``patience`` epochs; restore the best weights."""

    monitor: str
    mode: str = "min"
    patience: int = 5
    min_delta: float = 0.0
    restore_best: bool = True
    best: float = field(default=math.nan, init=False)
    best_epoch: int = field(default=-1, init=False)
    best_state: dict[str, Tensor] | None = field(default=None, init=False, repr=False)

    def update(self, epoch: int, metrics: dict[str, float], model: torch.nn.Module) -> bool:
        """Record ``metrics``; return True when training should stop."""
        if self.monitor not in metrics:
            raise KeyError(f"early stopping monitors {self.monitor!r}, which no metric provides")
        value = metrics[self.monitor]
        if not math.isfinite(value):
            raise TrainingDiverged(f"monitored metric {self.monitor} became {value} at epoch {epoch}")
        sign = 1.0 if self.mode == "min" else -1.0
        if self.best_epoch < 0 or sign * (self.best - value) > self.min_delta:
            self.best, self.best_epoch = value, epoch
            if self.restore_best:
                self.best_state = copy.deepcopy(model.state_dict())
            return False
        return epoch - self.best_epoch >= self.patience

    def restore(self, model: torch.nn.Module) -> None:
        if self.restore_best and self.best_state is not None:
            model.load_state_dict(self.best_state)


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    best_epoch: int | None = None

    def metric(self, name: str) -> list[float]:
        return [row[name] for row in self.epochs if name in row]


def iterate_minibatches(num_rows: int, batch_size: int, generator: torch.Generator | None, shuffle: bool = True) -> Iterator[Tensor]:
    if not shuffle:
        order = torch.arange(num_rows)
    elif generator is None:
        order = torch.randperm(num_rows)
    else:  # a CUDA generator draws the permutation on its own device
        order = torch.randperm(num_rows, generator=generator, device=generator.device)
    for start in range(0, num_rows, batch_size):
        yield order[start : start + batch_size]


def check_finite_parameters(model: torch.nn.Module, where: str) -> None:
    for name, param in model.named_parameters():
        if not bool(torch.isfinite(param).all()):
            raise TrainingDiverged(f"parameter {name} became non-finite {where}")


def default_sgd(model: torch.nn.Module, learning_rate: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """torch's SGD over the model's parameters, by its fused kernel where every parameter allows it
    (floating, on the CPU or CUDA): one pass over each parameter, its gradient and its momentum
    buffer instead of a pass per operation, the same bits as the loop of operations (as the tests
    check), 0.03-0.05 ms of a 784 x 500 CD-1 update on the CPU. The loop elsewhere."""
    params = list(model.parameters())
    options = {"lr": learning_rate, "momentum": momentum, "weight_decay": weight_decay}
    if params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return torch.optim.SGD(params, fused=True, **options)
        except (RuntimeError, TypeError, ValueError):  # a torch without this fused kernel
            pass
    return torch.optim.SGD(params, **options)


class Trainer:
    """Mini-batch maximum-likelihood training of an energy model.

    ``model`` must provide ``encode(raw) -> state`` and either ``gradient_step(positive,
    negative_phase)`` or ``contrastive_loss(positive, negative_visible)`` (autograd).
    ``metrics`` maps a name to ``fn(model, train_sample, valid_or_None) -> float``; they are
    computed once per epoch on up to ``metric_rows`` rows.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        estimator: ContrastiveDivergence,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        learning_rate: float = 0.01,
        momentum: float = 0.5,
        weight_decay: float = 0.0,
        batch_size: int = 100,
        epochs: int = 10,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        metrics: dict[str, Callable[..., float]] | None = None,
        callbacks: list[Callback] | tuple[Callback, ...] = (),
        early_stopping: EarlyStopping | None = None,
        progress: bool | None = None,
        metric_rows: int = 1000,
        generator: torch.Generator | None = None,
        gradient_step: Callable[[Any, Tensor, NegativePhase], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        check_every: int = 50,
        autograd: bool = False,
    ) -> None:
        self.model = model
        self.estimator = estimator
        self.optimizer = optimizer or default_sgd(model, learning_rate, momentum, weight_decay)
        self.scheduler = scheduler(self.optimizer) if scheduler is not None else None
        self.batch_size = batch_size
        self.epochs = epochs
        self.metrics = dict(metrics or {})
        self.callbacks = list(callbacks)
        self.early_stopping = early_stopping
        self.progress = progress
        self.metric_rows = metric_rows
        self.generator = generator
        self.gradient_step = gradient_step
        self.should_stop = should_stop
        # Parameters are checked for NaN/inf every ``check_every`` updates and after each epoch:
        # often enough to stop a diverging run early, rarely enough to cost nothing measurable.
        self.check_every = check_every
        # autograd=True ignores a model's hand-written gradient_step and backpropagates
        # contrastive_loss instead (slower; for checking the fast path, or for new models).
        self.autograd = autograd
        # A model whose gradient_step overwrites every .grad (gradient_step_overwrites) needs no
        # zero_grad before it, when the optimizer holds nothing but the model's parameters: a memset
        # of every gradient per update saved (1.5 MB for a 784 x 500 RBM).
        model_params = {id(p) for p in model.parameters()}
        self._optimizer_in_model = all(
            id(p) in model_params for group in self.optimizer.param_groups for p in group["params"]
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _step(self, positive: Tensor) -> None:
        negative = self.estimator.negative_phase(self.model, positive, self.generator)
        if self.gradient_step is not None:
            self.optimizer.zero_grad(set_to_none=False)
            self.gradient_step(self.model, positive, negative)
        elif not self.autograd and hasattr(self.model, "gradient_step"):
            if not (self._optimizer_in_model and getattr(self.model, "gradient_step_overwrites", False)):
                self.optimizer.zero_grad(set_to_none=False)
            self.model.gradient_step(positive, negative)
        else:
            self.optimizer.zero_grad(set_to_none=False)
            weights = negative.info.get("weights")
            if weights is None:
                loss = self.model.contrastive_loss(positive, negative.state.visible)
            else:
                loss = self.model.contrastive_loss(positive, negative.state.visible, negative_weights=weights)
            if not bool(torch.isfinite(loss)):
                raise TrainingDiverged(f"loss became {loss.item()}")
            loss.backward()
        self.optimizer.step()

    def fit(self, train: Tensor, valid: Tensor | None = None) -> History:
        """Train on raw data rows ``train`` (validated up front); ``valid`` feeds the metrics."""
        device = self.device
        train_all = self.model.encode(train)  # validates: bad data fails before any update
        valid_state = None if valid is None else self.model.encode(valid)
        metric_gen = torch.Generator().manual_seed(0)
        metric_rows = torch.randperm(len(train_all), generator=metric_gen)[: self.metric_rows].to(device)
        history = History()
        show = self.progress if self.progress is not None else self.epochs * len(train_all) >= 200_000
        epochs = range(self.epochs)
        if show:
            try:  # tqdm is optional: rbm_core must run where only PyTorch is installed
                from tqdm.auto import tqdm
            except ImportError:
                show = False
            else:
                epochs = tqdm(epochs, desc=f"train {getattr(self.model, 'kind', 'model')}", unit="epoch")
        for epoch in epochs:
            if hasattr(self.estimator, "set_epoch"):
                self.estimator.set_epoch(epoch)
            self.model.train()
            for step, rows in enumerate(iterate_minibatches(len(train_all), self.batch_size, self.generator), 1):
                # index_select: the same rows as train_all[rows], several times faster for a batch of rows
                self._step(train_all.index_select(0, rows.to(device)))
                if self.check_every and step % self.check_every == 0:
                    check_finite_parameters(self.model, f"after update {step} of epoch {epoch}")
            check_finite_parameters(self.model, f"in epoch {epoch}")
            if self.scheduler is not None:
                self.scheduler.step()
            self.model.eval()
            with torch.no_grad():
                sample = train_all[metric_rows]
                held = None if valid_state is None else valid_state[: self.metric_rows]
                metrics = {"epoch": float(epoch)}
                for name, fn in self.metrics.items():
                    metrics[name] = float(fn(self.model, sample, held))
            for name, value in metrics.items():
                if not math.isfinite(value):
                    raise TrainingDiverged(f"metric {name} became {value} in epoch {epoch}")
            history.epochs.append(metrics)
            for callback in self.callbacks:
                callback(epoch, metrics)
            if show:
                epochs.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k != "epoch"})
            if self.early_stopping is not None and self.early_stopping.update(epoch, metrics, self.model):
                history.stopped_early = True
                break
            if self.should_stop is not None and self.should_stop():
                break
        if self.early_stopping is not None:
            self.early_stopping.restore(self.model)
            history.best_epoch = self.early_stopping.best_epoch
        return history
