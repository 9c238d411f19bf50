"""Data-parallel maximum-likelihood training with ``torch.distributed`` (gloo on CPU, nccl on GPU,
launched by ``torchrun``): each process estimates the CD/PCD gradient on its shard of every global
batch with its own chains; the gradients are summed across processes before the optimizer step.

Why the result does not depend on the number of processes
---------------------------------------------------------
Every random number is a pure function of ``(seed, step, chain id, unit)`` (a counter-based
generator, as in JAX's ``fold_in``), not of a per-process stream. A CD chain is identified by its
position in the global batch, a PCD chain by its global index (chain ``j`` of ``num_chains`` lives on
exactly one process, with its state). So the same chain draws the same samples whichever process
holds it, each process's gradient is its shard's exact share of the global-batch gradient (sums
divided by the *global* counts), the all-reduce adds the shares, and every process applies the
same update to the same parameters. One process and W processes then differ only by the order of
floating-point additions (about 1e-16 relative in float64).

Launch on GPUs (one process per GPU; any number of machines)::

    torchrun --nproc-per-node=4 -m rbm_core.distributed --data snapshot.pt --out model.pt \\
        --hidden 200 --epochs 20 --batch-size 1000 --learning-rate 0.05

``snapshot.pt`` holds ``{"train": int tensor (rows, units), "valid": optional}`` (raw ratings,
0 = missing, or 0/1 data); every process reads all of it and works on its rows of each batch.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch import distributed as dist

from rbm_core.samplers import ChainState
from rbm_core.training import History, TrainingDiverged, check_finite_parameters
from rbm_core.units import BernoulliUnits, SoftmaxUnits, Units

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def _mix_int(z: int) -> int:
    """SplitMix64's finaliser on a Python int (64-bit wrap-around)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


_M1, _M2 = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shift_right(z: Tensor, bits: int) -> Tensor:
    # torch's >> on int64 is arithmetic; a logical shift masks the sign-extended bits away.
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _mix_tensor(z: Tensor) -> Tensor:
    """SplitMix64's finaliser elementwise on int64 tensors (multiplication wraps modulo 2**64)."""
    z = (z ^ _shift_right(z, 30)) * _M1
    z = (z ^ _shift_right(z, 27)) * _M2
    return z ^ _shift_right(z, 31)


@dataclass(frozen=True)
class CounterKey:
    """A key of a counter-based random generator: ``fold(n)`` derives an independent child key,
    ``uniform(ids, n)`` gives each id its own row of ``n`` uniforms. The numbers drawn for an
    id depend only on the key and the id, never on which other ids are drawn alongside it."""

    value: int

    @classmethod
    def from_seed(cls, seed: int) -> CounterKey:
        return cls(_mix_int(seed * _GOLDEN + 1))

    def fold(self, data: int) -> CounterKey:
        return CounterKey(_mix_int(self.value ^ _mix_int(data + _GOLDEN)))

    def seed(self) -> int:
        """A non-negative 63-bit integer, e.g. to seed a ``torch.Generator``."""
        return self.value >> 1

    def uniform(self, ids: Tensor, num: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """Uniforms in [0, 1), shape ``(len(ids), num)``, on ``ids``' device; row i depends only
        on (key, ids[i]). float32 gets 24 random bits, float64 53."""
        row_keys = _mix_tensor(ids.to(torch.int64) * _signed(_GOLDEN) + _signed(self.value))
        columns = torch.arange(1, num + 1, dtype=torch.int64, device=ids.device) * _signed(_GOLDEN)
        z = _mix_tensor(row_keys.unsqueeze(-1) ^ _mix_tensor(columns).unsqueeze(0))
        bits = 53 if dtype == torch.float64 else 24
        return _shift_right(z, 64 - bits).to(dtype) * (2.0**-bits)


def sample_from_uniforms(units: Units, mean: Tensor, uniforms: Tensor, mask: Tensor | None = None) -> Tensor:
    """Draw a layer's state from its conditional means given one uniform per unit (shape
    ``(batch, size)``): Bernoulli ``u < p``; softmax by the inverse CDF over the K values."""
    if isinstance(units, BernoulliUnits):
        return (uniforms < mean).to(mean.dtype)
    if isinstance(units, SoftmaxUnits):
        cdf = mean.cumsum(-1)
        index = (cdf < uniforms.unsqueeze(-1) * cdf[..., -1:]).sum(-1, keepdim=True).clamp_(max=units.num_values - 1)
        x = torch.zeros_like(mean).scatter_(-1, index, 1.0)
        return x if mask is None else x * mask.unsqueeze(-1).to(x.dtype)
    raise TypeError(f"no counter-based sampler for {type(units).__name__}")


def random_state_from_uniforms(units: Units, uniforms: Tensor, dtype: torch.dtype) -> Tensor:
    """A uniformly random, fully observed layer state from one uniform per unit."""
    if isinstance(units, BernoulliUnits):
        return (uniforms < 0.5).to(dtype)
    codes = (uniforms * units.num_values).long().clamp_(max=units.num_values - 1) + 1
    return units.one_hot(codes, dtype)


class CounterGibbs:
    """Block Gibbs (the same schedule as ``samplers.BlockGibbs``) whose noise comes from a
    ``CounterKey`` and each chain's global id, so a chain's path does not depend on how the
    chains are split across processes. ``key`` must be fresh for each call (fold in the step)."""

    def init(self, model, visible: Tensor, key: CounterKey, ids: Tensor) -> ChainState:
        with torch.no_grad():
            mask = model.layers[0].mask(visible)
            layers = [visible] + [
                torch.zeros(u.state_shape(visible.shape[0]), dtype=visible.dtype, device=visible.device)
                for u in model.layers[1:]
            ]
            state = ChainState(tuple(layers), mask)
            state = self._update(model, state, 1, key.fold(1), ids)
            return self._update(model, state, 0, key.fold(0), ids, include_visible=False)

    def step(self, model, state: ChainState, key: CounterKey, ids: Tensor) -> ChainState:
        with torch.no_grad():
            state = self._update(model, state, 0, key.fold(0), ids)
            return self._update(model, state, 1, key.fold(1), ids)

    def run(self, model, state: ChainState, num_steps: int, key: CounterKey, ids: Tensor) -> ChainState:
        for step in range(num_steps):
            state = self.step(model, state, key.fold(step), ids)
        return state

    @staticmethod
    def _update(model, state: ChainState, parity: int, key: CounterKey, ids: Tensor, include_visible: bool = True):
        layers = list(state.layers)
        means = list(state.means) if state.means is not None else [None] * len(layers)
        start = parity if include_visible or parity == 1 else 2
        for index in range(start, len(layers), 2):
            units = model.layers[index]
            mask = state.mask if index == 0 else None
            means[index] = units.mean(model.field(index, layers), 1.0, mask)
            uniforms = key.fold(index).uniform(ids, units.size, means[index].dtype)
            layers[index] = sample_from_uniforms(units, means[index], uniforms, mask)
        return state.with_layers(layers, means)


# -- process group ---------------------------------------------------------------------------


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(backend: str | None = None) -> torch.device:
    """Join the process group ``torchrun`` describes in the environment (no-op without one) and
    return this process's device: ``cuda:LOCAL_RANK`` with nccl when CUDA is present, else CPU
    with gloo."""
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    device = torch.device("cpu")
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if use_cuda else "gloo"))
    return device


# -- the trainer -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataParallelConfig:
    """``batch_size`` and ``num_chains`` are global (summed over processes); ``persistent``
    chooses PCD-k (chains carried between updates) over CD-k (chains restarted at the data)."""

    batch_size: int = 100
    epochs: int = 10
    learning_rate: float = 0.01
    momentum: float = 0.5
    weight_decay: float = 0.0
    k: int = 1
    persistent: bool = True
    num_chains: int | None = None
    seed: int = 0
    metric_rows: int = 1000


def shard(count: int, rank: int, world_size: int, device: torch.device | None = None) -> Tensor:
    """The contiguous positions ``0..count-1`` that process ``rank`` of ``world_size`` owns (the
    first ``count % world_size`` processes hold one more)."""
    return torch.tensor_split(torch.arange(count, device=device), world_size)[rank]


class DataParallelTrainer:
    """Synchronous data-parallel CD-k / PCD-k for models with a ``free_energy`` (RBM and rating
    RBMs). Works unchanged in one process (no process group) and under ``torchrun``.

    Every process must hold the same full ``train`` tensor; each computes the gradient of
    ``sum_{its rows} F(v_data)/B - sum_{its chains} F(v_model)/C`` (B, C global), the gradients
    are summed with one all-reduce of a flat buffer, and an SGD step with momentum follows.
    Metrics and callbacks run on rank 0; its stop decision is broadcast to all.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: DataParallelConfig,
        *,
        metrics: dict[str, Callable[..., float]] | None = None,
        callbacks: Sequence[Callable[[int, dict[str, float]], None]] = (),
        should_stop: Callable[[], bool] | None = None,
        group: Any = None,
    ) -> None:
        self.model = model
        self.config = config
        self.metrics = dict(metrics or {})
        self.callbacks = list(callbacks)
        self.should_stop = should_stop
        self.group = group
        self.rank, self.world_size = world()
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
        )
        self.sampler = CounterGibbs()
        self.chains: ChainState | None = None
        self.chain_ids: Tensor | None = None
        self.root = CounterKey.from_seed(config.seed)
        self.step_count = 0
        self.num_chains = config.num_chains or config.batch_size
        if not hasattr(model, "free_energy"):
            raise TypeError("data-parallel training needs a model with a free_energy (e.g. an RBM)")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _all_reduce(self, tensor: Tensor) -> Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor

    def _broadcast_parameters(self) -> None:
        if self.world_size > 1:
            with torch.no_grad():
                for param in self.model.parameters():
                    dist.broadcast(param.data, src=0, group=self.group)

    def epoch_order(self, num_rows: int, epoch: int) -> Tensor:
        """The permutation of the training rows in ``epoch``; the same on every process."""
        gen = torch.Generator().manual_seed(self.root.fold(2).fold(epoch).seed())
        return torch.randperm(num_rows, generator=gen)

    def _init_chains(self, train_state: Tensor, first_batch: Tensor) -> None:
        """Global chain j starts at the j-th row of the first global batch, or at a random state
        (keyed by j) past its end; this process keeps only its own chains."""
        ids = shard(self.num_chains, self.rank, self.world_size, self.device)
        from_data = ids[ids < len(first_batch)]
        extra = ids[ids >= len(first_batch)]
        visible = train_state[first_batch.to(self.device)[from_data]]
        if len(extra):
            units = self.model.layers[0]
            uniforms = self.root.fold(3).uniform(extra, units.size, visible.dtype)
            visible = torch.cat([visible, random_state_from_uniforms(units, uniforms, visible.dtype)])
        self.chain_ids = ids
        self.chains = self.sampler.init(self.model, visible, self.root.fold(4), ids)

    def _step(self, train_state: Tensor, batch_rows: Tensor) -> None:
        """One synchronous update on the global batch ``batch_rows``."""
        key = self.root.fold(1).fold(self.step_count)
        positions = shard(len(batch_rows), self.rank, self.world_size, self.device)
        positive = train_state[batch_rows.to(self.device)[positions]]
        if self.config.persistent:
            if self.chains is None:
                self._init_chains(train_state, batch_rows)
            self.chains = self.sampler.run(self.model, self.chains, self.config.k, key.fold(1), self.chain_ids)
            negative, num_negative = self.chains.visible, self.num_chains
        else:
            state = self.sampler.init(self.model, positive, key.fold(0), positions)
            negative = self.sampler.run(self.model, state, self.config.k, key.fold(1), positions).visible
            num_negative = len(batch_rows)
        self.optimizer.zero_grad(set_to_none=False)
        loss = (
            self.model.free_energy(positive).sum() / len(batch_rows)
            - self.model.free_energy(negative.detach()).sum() / num_negative
        )
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        self._all_reduce(flat)
        if not bool(torch.isfinite(flat).all()):
            raise TrainingDiverged(f"gradient became non-finite at step {self.step_count}")
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
            offset += p.numel()
        self.optimizer.step()
        self.step_count += 1

    def fit(self, train: Tensor, valid: Tensor | None = None) -> History:
        """Train on raw rows ``train`` (identical on every process); returns the history (the
        metrics are filled on rank 0; other ranks get the epochs' stop decisions only)."""
        self._broadcast_parameters()
        train_state = self.model.encode(train)
        valid_state = None if valid is None else self.model.encode(valid)
        metric_rows = torch.randperm(len(train_state), generator=torch.Generator().manual_seed(0))[
            : self.config.metric_rows
        ]
        history = History()
        for epoch in range(self.config.epochs):
            self.model.train()
            order = self.epoch_order(len(train_state), epoch)
            for start in range(0, len(order), self.config.batch_size):
                self._step(train_state, order[start : start + self.config.batch_size])
            check_finite_parameters(self.model, f"in epoch {epoch}")
            stop = torch.zeros(1, device=self.device)
            if self.rank == 0:
                metrics = self._epoch_metrics(epoch, train_state[metric_rows.to(self.device)], valid_state)
                history.epochs.append(metrics)
                for callback in self.callbacks:
                    callback(epoch, metrics)
                if self.should_stop is not None and self.should_stop():
                    stop.fill_(1.0)
            if self.world_size > 1:
                dist.broadcast(stop, src=0, group=self.group)
            if bool(stop.item()):
                history.stopped_early = True
                break
        return history

    def _epoch_metrics(self, epoch: int, sample: Tensor, valid_state: Tensor | None) -> dict[str, float]:
        self.model.eval()
        metrics = {"epoch": float(epoch)}
        with torch.no_grad():
            held = None if valid_state is None else valid_state[: self.config.metric_rows]
            for name, fn in self.metrics.items():
                metrics[name] = float(fn(self.model, sample, held))
        for name, value in metrics.items():
            if not math.isfinite(value):
                raise TrainingDiverged(f"metric {name} became {value} in epoch {epoch}")
        return metrics


# -- command line (for torchrun) -----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Train an RBM on a saved snapshot, data-parallel over the processes torchrun started."""
    from rbm_core.io import save_model
    from rbm_core.metrics import default_metrics
    from rbm_core.models import RBM, RBMConfig

    parser = argparse.ArgumentParser(prog="python -m rbm_core.distributed", description=main.__doc__)
    parser.add_argument("--data", required=True, help='torch.save({"train": (rows, units) ints, "valid": ...})')
    parser.add_argument("--out", required=True, help="where rank 0 writes the model file")
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--num-values", type=int, default=0, help="softmax values K (0: infer; 1 means Bernoulli)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100, help="global batch size")
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.5)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--cd", action="store_true", help="CD-k instead of PCD-k")
    parser.add_argument("--num-chains", type=int, default=None, help="global number of persistent chains")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--gloo", action="store_true", help="gloo on CPU even where CUDA exists")
    args = parser.parse_args(argv)

    device = init_from_env("gloo" if args.gloo else None)
    rank, world_size = world()
    snapshot = torch.load(args.data, map_location="cpu", weights_only=True)
    train, valid = snapshot["train"], snapshot.get("valid")
    num_values = args.num_values or int(train.max().item())
    if num_values <= 1:
        config = RBMConfig(train.shape[1], args.hidden)
    else:
        config = RBMConfig(train.shape[1], args.hidden, visible="softmax", num_values=num_values)
    model = RBM(
        config, dtype=getattr(torch, args.dtype), device=device, generator=torch.Generator().manual_seed(args.seed)
    )
    model.init_visible_bias_from_data(train)
    trainer = DataParallelTrainer(
        model,
        DataParallelConfig(
            batch_size=args.batch_size,
            epochs=args.epochs,
            learning_rate=args.learning_rate,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            k=args.k,
            persistent=not args.cd,
            num_chains=args.num_chains,
            seed=args.seed,
        ),
        metrics=default_metrics(model, valid is not None),
        callbacks=[
            lambda e, m: print(
                f"epoch {e}: " + ", ".join(f"{k}={v:.4f}" for k, v in m.items() if k != "epoch"), flush=True
            )
        ],
    )
    if rank == 0:
        print(f"{world_size} process(es) on {device}; global batch {args.batch_size}", flush=True)
    trainer.fit(train, valid)
    if rank == 0:
        save_model(model, args.out)
        print(f"wrote {args.out}", flush=True)
    if world_size > 1:
        dist.barrier()  # every rank waits for rank 0's file
        dist.destroy_process_group()
    return 0


def _exit_without_finalizing(code: int) -> None:
    """End a torchrun worker without Python's interpreter finalization.

    gloo's worker threads outlive ``destroy_process_group`` and drop their last collective's work (which
    holds tensors owned by Python objects) a moment after it completes; when that lands in
    ``Py_FinalizeEx`` the thread cannot take the GIL, exits inside a destructor, and the process aborts
    ("terminate called without an active exception"; core dump: ``~AsyncBarrierWork`` in
    ``ProcessGroupGloo::runLoop``). It happened in about 1 of 25 two-process runs on a loaded 2-core
    machine. Everything is written by now, so flush and leave.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    exit_code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun with other processes
        _exit_without_finalizing(exit_code)
    raise SystemExit(exit_code)
