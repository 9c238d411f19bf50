"""MovieLens benchmark: the rating-model evaluation table (RBM variants against baselines on the
same seeded split) plus the masked-dense vs sparse CD-step timing, in one run.

    .venv/bin/python benchmarks/bench_movielens.py --data ../shared/data/ml-100k/u.data
    .venv/bin/python benchmarks/bench_movielens.py --data ../shared/data/ml-1m/ratings.dat \
        --protocol rating --models biases,mf,rbm-item

Prints the table, then one JSON line with every figure, the ratios of each RBM's RMSE to the
bias and MF baselines' (measured in the same run) and the layout timings.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rbm_core.ratings import evaluate as harness  # noqa: E402
from rbm_core.ratings.data import load_ratings, split_random  # noqa: E402
from rbm_core.ratings.nets import CaseStore, SoftmaxRBMNet  # noqa: E402


def layout_timing(path: str, orientation: str, num_hidden: int, batch_size: int, repeats: int = 2) -> dict[str, float]:
    """Seconds for one CD-1 epoch (gradient + SGD step) with each layout, best of ``repeats``."""
    data, _ = split_random(load_ratings(path), 0.1, 0)
    view = data if orientation == "user" else data.transpose()
    store = CaseStore(view.num_users, view.users, view.items, view.ratings)
    out = {}
    for layout in ("dense", "sparse"):
        best = float("inf")
        for _ in range(repeats):
            net = SoftmaxRBMNet(view.num_items, data.num_values, num_hidden, generator=torch.Generator().manual_seed(0))
            optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
            generator = torch.Generator().manual_seed(0)
            order = torch.randperm(view.num_users, generator=generator)
            start = time.perf_counter()
            for first in range(0, len(order), batch_size):
                net.cd_gradients(store.batch(order[first : first + batch_size]), 1, generator, layout)
                optimizer.step()
            best = min(best, time.perf_counter() - start)
        out[f"{layout}_epoch_seconds"] = best
    out["sparse_over_dense"] = out["sparse_epoch_seconds"] / out["dense_epoch_seconds"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = harness.build_parser()
    parser.prog = "bench_movielens.py"
    parser.add_argument("--no-layout-timing", action="store_true")
    args = parser.parse_args(argv)
    log = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, file=sys.stderr, flush=True))
    report = harness.evaluate(args, log)
    report["command"] = "benchmarks/bench_movielens.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if "rating" in report:
        models = report["rating"]["models"]
        ratios = {}
        for name, row in models.items():
            if name in harness.RBM_PRESETS or name in harness.BLENDS:
                for reference in ("biases", "mf"):
                    if reference in models:
                        ratios[f"{name}/{reference}"] = row["rmse"] / models[reference]["rmse"]
        report["rating"]["rmse_ratios"] = ratios
    if "topn" in report and "popularity" in report["topn"]["models"]:
        models = report["topn"]["models"]
        pop = models["popularity"]["ndcg@10"]
        report["topn"]["ndcg_over_popularity"] = {n: r["ndcg@10"] / pop for n, r in models.items() if n in harness.RBM_PRESETS}
    if not args.no_layout_timing:
        config = harness.rbm_config("rbm-item", args.seed, harness._parse_overrides(args.set))
        report["layout_timing"] = layout_timing(args.data, config.orientation, config.num_hidden, config.batch_size)
        log(f"  layout timing: {report['layout_timing']}")
    print(harness.format_table(report))
    for key in ("rating", "topn"):
        for name in ("rmse_ratios", "ndcg_over_popularity"):
            if key in report and name in report[key]:
                print(f"{key} {name}: " + ", ".join(f"{k}={v:.3f}" for k, v in report[key][name].items()))
    if "layout_timing" in report:
        t = report["layout_timing"]
        print(f"CD-1 epoch: dense {t['dense_epoch_seconds']:.2f}s, sparse {t['sparse_epoch_seconds']:.2f}s "
              f"(sparse/dense {t['sparse_over_dense']:.2f})")
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
