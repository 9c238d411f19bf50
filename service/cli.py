"""The ``rbmrec`` console script."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    import torch

    from rbm_core import RBM, PersistentContrastiveDivergence, RBMConfig, Trainer
    from rbm_core.metrics import default_metrics

    gen = torch.Generator().manual_seed(0)
    prototypes = torch.bernoulli(torch.full((4, 64), 0.5), generator=gen)
    rows = prototypes[torch.randint(0, 4, (4000,), generator=gen)]
    data = torch.where(torch.rand(rows.shape, generator=gen) < 0.05, 1 - rows, rows)
    model = RBM(RBMConfig(64, 16), generator=gen)
    trainer = Trainer(model, PersistentContrastiveDivergence(k=1), learning_rate=0.05, epochs=args.epochs,
                      metrics=default_metrics(model, True), generator=gen, progress=True,
                      callbacks=[lambda e, m: print(f"epoch {e}: " + ", ".join(f"{k}={v:.4f}" for k, v in m.items() if k != 'epoch'))])
    trainer.fit(data[:3500], data[3500:])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rbmrec", description="Boltzmann-machine recommender")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the demo")
    demo.add_argument("--epochs", type=int, default=10)
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
