"""AutoBalance's price: wall time of the search phase against ERM training of the same length.

Same data, model, optimizer, batches and epochs; the search adds, every ``every`` steps from 40% of the
run on (docs/METHODS.md#autobalance-schedules: bilevel from epoch 120 of 300), a hypergradient from ``batches`` train and validation
batches through a 5-term Neumann series (docs/METHODS.md#autobalance-hypergradient), computed with Hessian-vector products. [AB] reports
4-5x the cost of ordinary training end to end. The same run also times the search with a learned
augmentation policy per class (PDA with Δ & l, docs/METHODS.md#augment-search) and ERM with that policy
fixed (what the augmentation itself costs a training step), each as a ratio to plain ERM.

    python benchmarks/autobalance.py [--data fmnist_lt] [--model cnn] [--epochs 5] [--every 20] [--batches 10]
        [--curvature-batches N] [--step 0.1] [--plain-series]

``--curvature-batches 10 --plain-series`` measures the released code's estimator (Hessian from all 10
train batches, Neumann series without the stop at a growing term); the defaults are the library's.

Final line: ``RESULT {"cost_ratio": ..., "pda_cost_ratio": ..., "fixed_policy_ratio": ...}``.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from _common import result, timed
from shiftkit import augment, data, losses, models, optim, weighting
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
    parser.add_argument("--step", type=float, default=0.1,
                        help="Neumann step (default 0.1, as the experiment presets; the code's is 1.0)")
    parser.add_argument("--plain-series", action="store_true",
                        help="the code's Neumann series without the stop at a growing term")
    parser.add_argument("--repeats", type=int, default=1,
                        help="alternate ERM and search this many times and take the medians")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    splits = data.build(args.data)
    stats = splits.statistics()
    settings = dict(batch_size=64, device=device)

    def model():
        torch.manual_seed(0)
        return models.build(args.model, **stats)

    def policy(learn=True):
        return augment.build("policy", learn=learn, **stats)

    def erm(epochs=args.epochs, fixed=False):
        fit(model(), splits, losses.build("autobalance", init="la", **stats), weighting.build("erm"),
            optim.build("sgd", lr=0.01), epochs=epochs, eval_every=epochs,
            augment=policy(learn=False) if fixed else None, **settings)

    def search(epochs=args.epochs, pda=False):
        net, loss = model(), losses.build("autobalance", init="la", **stats)
        extra = {} if args.curvature_batches is None else {"curvature_batches": args.curvature_batches}
        extra.update(stop_on_growth=not args.plain_series, step=args.step)
        learned = policy() if pda else None
        outer = AutoBalanceSearch(net, loss, splits, epochs=epochs, every=args.every, batches=args.batches,
                                  device=device, augment=learned, **extra)
        fit(net, splits, loss, weighting.build("erm"), optim.build("sgd", lr=0.01), outer=outer, epochs=epochs,
            eval_every=epochs, augment=learned, **settings)
        used.update(curvature_batches=outer.curvature_batches, stop_on_growth=outer.stop_on_growth,
                    step=outer.step_size)

    used = {}

    runs = [erm, search, lambda epochs=args.epochs: search(epochs, pda=True),
            lambda epochs=args.epochs: erm(epochs, fixed=True)]
    for fn in runs:  # one epoch of each first: allocator, thread pools (and CUDA, cuDNN) warm-up untimed
        fn(1)
    rounds = [[timed(fn) for fn in runs] for _ in range(args.repeats)]  # alternated: drifts hit all
    plain, bilevel, pda, fixed = (statistics.median(t) for t in zip(*rounds))
    print(f"{args.data} / {args.model}, {args.epochs} epochs: ERM {plain:.1f} s, AutoBalance search {bilevel:.1f} s "
          f"(ratio {bilevel / plain:.2f}), search with PDA {pda:.1f} s (ratio {pda / plain:.2f}), ERM with the "
          f"policy fixed {fixed:.1f} s (ratio {fixed / plain:.2f})")
    result({"cost_ratio": round(bilevel / plain, 3), "pda_cost_ratio": round(pda / plain, 3),
            "fixed_policy_ratio": round(fixed / plain, 3),
            "seconds": {"erm": round(plain, 2), "search": round(bilevel, 2), "search_pda": round(pda, 2),
                        "erm_fixed_policy": round(fixed, 2)},
            "data": args.data, "model": args.model, "epochs": args.epochs, "every": args.every,
            "batches": args.batches, "repeats": args.repeats, **used, "device_used": device})


if __name__ == "__main__":
    main()
