"""AutoBalance's price: wall time of the search phase against ERM training of the same length.

Same data, model, optimizer, batches and epochs; the search adds, every ``every`` steps from 40% of the
run on (SPEC §5.6: bilevel from epoch 120 of 300), a hypergradient from ``batches`` train and validation
batches through a 5-term Neumann series (SPEC §5.3), computed with Hessian-vector products. [AB] reports
4-5x the cost of ordinary training end to end.

    python benchmarks/autobalance.py [--data fmnist_lt] [--model cnn] [--epochs 5] [--every 20] [--batches 10]

Final line: ``RESULT {"cost_ratio": ...}``.
"""

from __future__ import annotations

import argparse

import torch

from _common import result, timed
from shiftkit import data, losses, models, optim, weighting
from shiftkit.autobalance import AutoBalanceSearch
from shiftkit.train import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fmnist_lt")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--curvature-batches", type=int, default=None,
                        help="train batches of the Neumann series' Hessian (default: the search's default)")
    parser.add_argument("--plain-series", action="store_true",
                        help="the code's Neumann series without the stop at a growing term")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    splits = data.build(args.data)
    stats = splits.statistics()
    settings = dict(batch_size=64, device=device)

    def model():
        torch.manual_seed(0)
        return models.build(args.model, **stats)

    def erm(epochs=args.epochs):
        fit(model(), splits, losses.build("autobalance", init="la", **stats), weighting.build("erm"),
            optim.build("sgd", lr=0.01), epochs=epochs, eval_every=epochs, **settings)

    def search(epochs=args.epochs):
        net, loss = model(), losses.build("autobalance", init="la", **stats)
        extra = {} if args.curvature_batches is None else {"curvature_batches": args.curvature_batches}
        extra["stop_on_growth"] = not args.plain_series
        outer = AutoBalanceSearch(net, loss, splits, epochs=epochs, every=args.every, batches=args.batches,
                                  device=device, **extra)
        fit(net, splits, loss, weighting.build("erm"), optim.build("sgd", lr=0.01), outer=outer, epochs=epochs,
            eval_every=epochs, **settings)
        used.update(curvature_batches=outer.curvature_batches, stop_on_growth=outer.stop_on_growth)

    used = {}

    erm(1), search(1)  # one epoch of each first: allocator, thread pools (and CUDA, cuDNN) warm-up untimed
    plain, bilevel = timed(erm), timed(search)
    print(f"{args.data} / {args.model}, {args.epochs} epochs: ERM {plain:.1f} s, AutoBalance search {bilevel:.1f} s, "
          f"ratio {bilevel / plain:.2f}")
    result({"cost_ratio": round(bilevel / plain, 3), "seconds": {"erm": round(plain, 2), "search": round(bilevel, 2)},
            "data": args.data, "model": args.model, "epochs": args.epochs, "every": args.every,
            "batches": args.batches, **used, "device_used": device})


if __name__ == "__main__":
    main()
