"""Test log-likelihood of RBMs trained by CD-1, PCD and parallel tempering, and of a two-layer
DBM, on binarised MNIST, each estimated by annealed importance sampling, with wall times and
PT's swap rates, in one table.

    .venv/bin/python benchmarks/bench_mnist_models.py --quick          # minutes on a small CPU
    .venv/bin/python benchmarks/bench_mnist_models.py --device cuda    # full: 500 hidden, DBM 500-1000

Data: the official 60,000 training and 10,000 test images (``../shared/data/mnist/`` next to the
repository, or ``--data-dir``), binarised as in the literature by sampling each pixel with
probability x/255 (numpy seed ``--seed``). The RBM log-likelihood is exact −F(v) minus the
AIS log Z; the DBM's is the mean-field lower bound minus the AIS log Z (Salakhutdinov & Hinton
2009). "±" is the AIS standard error of log Z; [lo, hi] the log(Ẑ ± 3σ̂) bounds.
The last line is machine-readable JSON.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rbm_core import RBM, ContrastiveDivergence, PersistentContrastiveDivergence, RBMConfig, Trainer  # noqa: E402
from rbm_core.ais import ais_ladder, ais_log_likelihood, ais_log_partition  # noqa: E402
from rbm_core.models import DBM, DBMConfig, greedy_pretrain  # noqa: E402
from rbm_core.tempering import ParallelTemperingEstimator  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


@dataclass(frozen=True)
class Setting:
    num_hidden: int
    dbm_hidden: tuple[int, int]
    epochs: int
    dbm_pretrain_epochs: int
    dbm_epochs: int
    learning_rate: float
    batch_size: int
    persistent_chains: int
    pt_replicas: int
    pt_beta_min: float
    ais_betas: int
    ais_runs: int
    train_rows: int
    dbm_ais_betas: int
    momentum: float = 0.5


SETTINGS = {
    "quick": Setting(
        num_hidden=25,
        dbm_hidden=(25, 50),
        epochs=5,
        dbm_pretrain_epochs=2,
        dbm_epochs=2,
        learning_rate=0.05,
        batch_size=100,
        persistent_chains=100,
        pt_replicas=5,
        pt_beta_min=0.8,
        ais_betas=2_000,
        ais_runs=100,
        train_rows=60_000,
        dbm_ais_betas=5_000,
    ),
    "full": Setting(
        num_hidden=500,
        dbm_hidden=(500, 1000),
        epochs=100,
        dbm_pretrain_epochs=50,
        dbm_epochs=100,
        learning_rate=0.05,
        batch_size=100,
        persistent_chains=100,
        pt_replicas=10,
        pt_beta_min=0.8,
        ais_betas=14_500,
        ais_runs=100,
        train_rows=60_000,
        dbm_ais_betas=20_000,
    ),
}


def load_images(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic, count, height, width = (int(x) for x in np.frombuffer(raw[:16], dtype=">u4"))
    if magic != 2051 or height * width != 784:
        raise SystemExit(f"{path} is not an MNIST image file")
    return np.frombuffer(raw[16:], dtype=np.uint8).reshape(count, 784)


def binarised_mnist(data_dir: Path, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Official train (60,000) and test (10,000) images, pixels on with probability x/255."""
    rng = np.random.default_rng(seed)
    out = []
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        images = load_images(data_dir / name)
        on = rng.random(images.shape, dtype=np.float32) < images.astype(np.float32) / 255.0
        out.append(torch.from_numpy(on.astype(np.float32)))
    return out[0], out[1]


def linear_decay(epochs: int):
    """Learning rate falling linearly to a tenth over training (helps the persistent chains)."""
    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0 - 0.9 * e / max(epochs, 1))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rbm(name: str, estimator, train: torch.Tensor, s: Setting, device, generator) -> tuple[RBM, float]:
    model = RBM(RBMConfig(784, s.num_hidden), device=device, generator=torch.Generator().manual_seed(1))
    model.init_visible_bias_from_data(train)
    sync(device)
    start = time.perf_counter()
    Trainer(
        model,
        estimator,
        learning_rate=s.learning_rate,
        momentum=s.momentum,
        weight_decay=1e-4,
        batch_size=s.batch_size,
        epochs=s.epochs,
        scheduler=linear_decay(s.epochs),
        progress=False,
        generator=generator,
    ).fit(train)
    sync(device)
    return model, time.perf_counter() - start


def train_dbm(train: torch.Tensor, s: Setting, device, generator) -> tuple[DBM, float]:
    model = DBM(DBMConfig(784, s.dbm_hidden), device=device, generator=torch.Generator().manual_seed(2))
    sync(device)
    start = time.perf_counter()
    greedy_pretrain(
        model,
        train,
        epochs=s.dbm_pretrain_epochs,
        learning_rate=s.learning_rate,
        generator=generator,
        momentum=s.momentum,
        weight_decay=1e-4,
        progress=False,
    )
    Trainer(
        model,
        PersistentContrastiveDivergence(k=1, num_chains=s.persistent_chains),
        learning_rate=s.learning_rate / 2,
        momentum=s.momentum,
        weight_decay=1e-4,
        batch_size=s.batch_size,
        epochs=s.dbm_epochs,
        scheduler=linear_decay(s.dbm_epochs),
        progress=False,
        generator=generator,
    ).fit(train)
    sync(device)
    return model, time.perf_counter() - start


def evaluate(model, train: torch.Tensor, test: torch.Tensor, s: Setting, device, seed: int) -> dict:
    g = torch.Generator(device=device).manual_seed(seed)
    base = model.encode(train)
    num_betas = s.dbm_ais_betas if isinstance(model, DBM) else s.ais_betas
    sync(device)
    start = time.perf_counter()
    log_z = ais_log_partition(model, betas=ais_ladder(num_betas), num_runs=s.ais_runs, base_data=base, generator=g)
    test_ll = ais_log_likelihood(model, model.encode(test), log_z)
    train_ll = ais_log_likelihood(model, base[:10_000], log_z)
    sync(device)
    return {
        "log_z": log_z.log_z,
        "log_z_se": log_z.std_error,
        "ais_ess": log_z.effective_sample_size,
        "ais_betas": num_betas,
        "test_ll": test_ll.mean,
        "test_ll_lower": test_ll.lower,
        "test_ll_upper": test_ll.upper,
        "train_ll": train_ll.mean,
        "ais_s": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small models, few epochs, short AIS (minutes on a CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0, help="binarisation and training seed")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 with --quick on a CPU, where small matrices gain nothing from more "
        "and a shared machine loses much to contention; else torch's default)",
    )
    parser.add_argument("--models", default="cd1,pcd,pt,dbm", help="comma-separated subset of cd1,pcd,pt,dbm")
    parser.add_argument("--epochs", type=int, help="override the setting's RBM epochs")
    args = parser.parse_args()
    device = torch.device(args.device)
    setting_name = "quick" if args.quick else "full"
    threads = args.threads if args.threads is not None else (1 if args.quick and device.type == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)
    s = SETTINGS[setting_name]
    if args.epochs:
        from dataclasses import replace

        s = replace(s, epochs=args.epochs)
    torch.manual_seed(args.seed)
    train, test = binarised_mnist(args.data_dir, args.seed)
    train = train[: s.train_rows]
    print(
        f"# binarised MNIST: {len(train)} train / {len(test)} test images, {train.mean():.4f} of pixels on; "
        f"device {device}, {torch.get_num_threads()} CPU threads; setting {setting_name}: {s}",
        flush=True,
    )

    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    rows = []
    for index, name in enumerate(wanted):
        generator = torch.Generator(device=device).manual_seed(args.seed + 10 + index)
        extra: dict = {}
        if name == "cd1":
            model, seconds = train_rbm(name, ContrastiveDivergence(1), train, s, device, generator)
            label, size = "RBM, CD-1", f"784-{s.num_hidden}"
        elif name == "pcd":
            estimator = PersistentContrastiveDivergence(1, num_chains=s.persistent_chains)
            model, seconds = train_rbm(name, estimator, train, s, device, generator)
            label, size = "RBM, PCD-1", f"784-{s.num_hidden}"
        elif name == "pt":
            estimator = ParallelTemperingEstimator(
                1, num_chains=s.persistent_chains, num_replicas=s.pt_replicas, beta_min=s.pt_beta_min
            )
            model, seconds = train_rbm(name, estimator, train, s, device, generator)
            label, size = f"RBM, PT ({s.pt_replicas} replicas, β ≥ {s.pt_beta_min})", f"784-{s.num_hidden}"
            extra = {
                "swap_rates": [round(float(r), 4) for r in estimator.state.swap_rates.cpu()],
                "round_trips": estimator.state.round_trips,
            }
        elif name == "dbm":
            model, seconds = train_dbm(train, s, device, generator)
            label, size = "DBM, pretrain + PCD-1", f"784-{s.dbm_hidden[0]}-{s.dbm_hidden[1]}"
        else:
            raise SystemExit(f"unknown model {name!r}")
        print(f"# trained {label} in {seconds:.1f} s; running AIS", flush=True)
        result = evaluate(model, train, test, s, device, args.seed + 100 + index)
        rows.append({"model": name, "label": label, "size": size, "train_s": seconds, **result, **extra})
        print(
            f"# {name}: test LL {result['test_ll']:.2f} ± {result['log_z_se']:.2f} (AIS {result['ais_s']:.1f} s)",
            flush=True,
        )

    print()
    print(
        "| model | units | train time (s) | AIS log Z ± SE | test log-lik. (nats) | [lo, hi] | train log-lik. "
        "| AIS β's × runs (ESS) | AIS time (s) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        bound = "≥ " if r["model"] == "dbm" else ""
        hi = "+∞" if math.isinf(r["test_ll_upper"]) else f"{r['test_ll_upper']:.2f}"
        print(
            f"| {r['label']} | {r['size']} | {r['train_s']:.1f} | {r['log_z']:.2f} ± {r['log_z_se']:.2f} | "
            f"{bound}{r['test_ll']:.2f} | [{r['test_ll_lower']:.2f}, {hi}] | {bound}{r['train_ll']:.2f} | "
            f"{r['ais_betas']} × {s.ais_runs} ({r['ais_ess']:.0f}) | {r['ais_s']:.1f} |"
        )
    for r in rows:
        if "swap_rates" in r:
            rates = ", ".join(f"{x:.2f}" for x in r["swap_rates"])
            print(f"\nPT swap acceptance per neighbouring pair (β₁→β_R): {rates}; round trips: {r['round_trips']}")
    print()
    summary = {
        "benchmark": "mnist_models",
        "setting": setting_name,
        "device": str(device),
        "ais_runs": s.ais_runs,
        "results": [
            {
                k: (
                    round(v, 4)
                    if isinstance(v, float) and math.isfinite(v)
                    else v
                    if not isinstance(v, float)
                    else str(v)
                )
                for k, v in r.items()
            }
            for r in rows
        ],
    }
    print(json.dumps(summary, ensure_ascii=False))


if __name__ == "__main__":
    main()
