"""CD-1 training throughput of a 784x500 Bernoulli RBM (batch 100 by default) with rbm_core's Trainer,
against this machine's own fp32 matrix-multiply rate and scikit-learn's BernoulliRBM, both measured in
the same run, so the ratios hold on a busy or shared machine.

    .venv/bin/python benchmarks/bench_cd1.py                        # CPU, batch 100
    .venv/bin/python benchmarks/bench_cd1.py --device cuda --batch-sizes 100,1000,10000

Data: the MNIST training images (``../shared/data/mnist/train-images-idx3-ubyte.gz`` next to the
repository, or ``--data``), thresholded at 127; random binary data where the file is absent.
FLOPs are counted as 10 * batch * 784 * 500 per CD-1 update (five batch x 784 x 500 products).
scikit-learn trains on the same float32 array (``ratio_vs_sklearn``) and on a float64 copy, the dtype it
chooses for integer or boolean input (``ratio_vs_sklearn_float64``). Each figure is the best of
``--rounds`` interleaved rounds. The last line is machine-readable (first batch size):
``cd1_samples_per_s=... ratio_vs_sklearn=... ratio_vs_matmul=... ratio_vs_sklearn_float64=...``
``--dense`` switches off rbm_core's sparse 0/1 fast path (``rbm_core.sparse_binary``: the fused CD-k chain
and the products summing rows of W over the ones of 0/1 batches) to compare; ``--no-kernel`` keeps that path
but without its C kernel (``rbm_core/_kernels/cd_binary.c``), i.e. the NumPy/torch version of it.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rbm_core import RBM, ContrastiveDivergence, RBMConfig, Trainer, _kernels, sparse_binary  # noqa: E402

NUM_VISIBLE, NUM_HIDDEN = 784, 500
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist" / "train-images-idx3-ubyte.gz"


def load_binary_images(path: Path, rows: int, seed: int) -> tuple[np.ndarray, str]:
    """MNIST images thresholded to {0,1} as float32 ``(rows, 784)``, or random bits if absent."""
    if path.exists():
        with gzip.open(path, "rb") as f:
            raw = f.read()
        magic, count, height, width = np.frombuffer(raw[:16], dtype=">u4")
        if magic != 2051 or height * width != NUM_VISIBLE:
            raise SystemExit(f"{path} is not an MNIST image file")
        images = np.frombuffer(raw[16:], dtype=np.uint8).reshape(count, NUM_VISIBLE)
        binary = (images[:rows] > 127).astype(np.float32)
        return binary, f"MNIST training images ({path}), thresholded at 127"
    rng = np.random.default_rng(seed)
    return (rng.random((rows, NUM_VISIBLE)) < 0.13).astype(np.float32), "random binary data (MNIST not found)"


def numpy_blas_threads() -> str:
    """Threads of the BLAS that NumPy (hence scikit-learn's BernoulliRBM) multiplies with."""
    try:
        from threadpoolctl import threadpool_info  # comes with scikit-learn
    except ImportError:
        return "unknown"
    pools = [p for p in threadpool_info() if p["user_api"] == "blas" and "numpy" in p.get("filepath", "")]
    return ", ".join(f"{p['num_threads']} ({p['internal_api']})" for p in pools) or "unknown"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, size: int = 1024, seconds: float = 1.0) -> float:
    """Sustained fp32 rate of a size x size x size product on ``device``, in GFLOP/s."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    out = torch.empty(size, size, device=device)
    for _ in range(3):
        torch.mm(a, b, out=out)
    sync(device)
    reps, start = 0, time.perf_counter()
    while True:
        for _ in range(5):
            torch.mm(a, b, out=out)
        reps += 5
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2.0 * size**3 * reps / elapsed / 1e9


def make_trainer(batch_size: int, device: torch.device, seed: int) -> Trainer:
    """The library's default CD-1 set-up: Trainer + ContrastiveDivergence(1), SGD with momentum 0.5."""
    model = RBM(RBMConfig(NUM_VISIBLE, NUM_HIDDEN), device=device, generator=torch.Generator().manual_seed(seed))
    return Trainer(
        model,
        ContrastiveDivergence(1),
        learning_rate=0.05,
        momentum=0.5,
        batch_size=batch_size,
        epochs=1,
        metrics={},
        progress=False,
        generator=torch.Generator(device=device).manual_seed(seed),
    )


def time_rbm_core(trainer: Trainer, data: torch.Tensor, device: torch.device) -> float:
    """Rows per second of one CD-1 epoch of ``Trainer.fit`` over ``data`` (validation included)."""
    sync(device)
    start = time.perf_counter()
    trainer.fit(data)
    sync(device)
    return len(data) / (time.perf_counter() - start)


def time_sklearn(data: np.ndarray, batch_size: int, seed: int) -> float:
    """Rows per second of one epoch of scikit-learn's BernoulliRBM on the same rows and shapes."""
    from sklearn.neural_network import BernoulliRBM

    rbm = BernoulliRBM(n_components=NUM_HIDDEN, learning_rate=0.05, batch_size=batch_size, n_iter=1, random_state=seed)
    start = time.perf_counter()
    rbm.fit(data)
    return len(data) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="torch device for rbm_core (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--batch-sizes", default="100", help="comma-separated batch sizes (default 100)")
    parser.add_argument("--rows", type=int, default=5000, help="training rows per timed epoch (default 5000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds; the best is reported")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MNIST train-images-idx3-ubyte.gz")
    parser.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch and for scikit-learn's BLAS alike (default: library defaults)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dense", action="store_true",
                        help="switch off rbm_core's sparse 0/1 fast path (rbm_core.sparse_binary), for comparison")
    parser.add_argument("--no-kernel", action="store_true",
                        help="run the sparse 0/1 fast path by NumPy/torch instead of its C kernel, for comparison")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        try:
            from threadpoolctl import threadpool_limits  # comes with scikit-learn
        except ImportError:
            pass
        else:
            threadpool_limits(args.threads)

    if args.dense:
        sparse_binary.enabled = False
    if args.no_kernel:
        sparse_binary.use_kernel = False
    kernel = sparse_binary.enabled and sparse_binary.use_kernel and _kernels.cd_binary() is not None
    device = torch.device(args.device)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    data_np, source = load_binary_images(args.data, args.rows, args.seed)
    data = torch.from_numpy(data_np).to(device)
    # scikit-learn gets the very same float32 array; it also runs on a float64 copy, the dtype it
    # picks by itself for integer or boolean input such as thresholded images.
    sklearn_data = {"float32": data_np, "float64": data_np.astype(np.float64)}
    print(f"data: {len(data_np)} rows of {source}")
    print(f"device: {device}  torch {torch.__version__}  threads {torch.get_num_threads()}  "
          f"sparse 0/1 fast path {'on' if sparse_binary.enabled else 'off'} "
          f"(C kernel {'on' if kernel else 'off'})  "
          f"rounds {args.rounds} (best of each reported; the machine may be shared)")
    if not args.no_sklearn:
        print(f"threads: rbm_core (torch) {torch.get_num_threads()}, "
              f"scikit-learn (NumPy's BLAS) {numpy_blas_threads()}")

    results = []
    for batch_size in batch_sizes:
        # Interleave the three measurements round by round, so that a burst of load from other
        # processes hits all of them alike, and report the best round of each.
        trainer = make_trainer(batch_size, device, args.seed)
        trainer.fit(data[: 5 * batch_size])  # warm-up: allocator, kernels, thread pool
        dtypes = [] if args.no_sklearn else list(sklearn_data)
        for dtype in dtypes:
            time_sklearn(sklearn_data[dtype][: 5 * batch_size], batch_size, args.seed)
        ours, matmul, theirs = [], [], {dtype: [] for dtype in dtypes}
        for _ in range(args.rounds):
            matmul.append(matmul_gflops(device, seconds=0.5))
            ours.append(time_rbm_core(trainer, data, device))
            for dtype in dtypes:
                theirs[dtype].append(time_sklearn(sklearn_data[dtype], batch_size, args.seed))
        best, best_matmul = max(ours), max(matmul)
        gflops = best * 10 * NUM_VISIBLE * NUM_HIDDEN / 1e9  # 10 * batch * 784 * 500 FLOPs per update
        print(f"batch {batch_size:>6}: rbm_core {best:9.0f} samples/s (median {statistics.median(ours):9.0f})  "
              f"{gflops:7.1f} GFLOP/s = {gflops / best_matmul:6.1%} of fp32 1024x1024 matmul ({best_matmul:.1f} GFLOP/s)")
        ratios = {dtype: float("nan") for dtype in ("float32", "float64")}
        for dtype, rates in theirs.items():
            ratios[dtype] = best / max(rates)
            print(f"{'':14}sklearn BernoulliRBM ({dtype}, CPU) {max(rates):9.0f} samples/s "
                  f"(median {statistics.median(rates):9.0f})  -> rbm_core is {ratios[dtype]:.2f}x", flush=True)
        results.append((best, ratios, gflops / best_matmul))
    best, ratios, ratio_matmul = results[0]
    print(f"cd1_samples_per_s={best:.0f} ratio_vs_sklearn={ratios['float32']:.2f} ratio_vs_matmul={ratio_matmul:.3f} "
          f"ratio_vs_sklearn_float64={ratios['float64']:.2f}")


if __name__ == "__main__":
    main()
