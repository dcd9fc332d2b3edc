"""Ten seeds: ten sequential ``fit`` runs against one ten-member vectorized ensemble, and what
``ensemble=true`` does (:func:`shiftkit.ensemble.slower`: it stacks where that is faster, else it runs the
seeds one by one).

The same runs either way (each ensemble member is its seed's sequential run: same initialization, data
order and results; ``tests/test_ensemble.py`` checks it), so the ratio is pure speed. Workloads: the
digits MLP of ``shiftkit demo`` (2 x 512 hidden units) and the same MLP at widths 128, 256 and 384 (from
overhead-bound to arithmetic-bound steps); and the ``cnn`` on ``fmnist_binary``. SGD,
cross-entropy, batch 32 (digits) or 64 (fmnist), one evaluation at the end of each run.

    python benchmarks/seeds.py [--seeds 10] [--epochs 30] [--cnn-epochs 1]

Per workload: ``stacked_ratio_*`` = sequential / stacked time; ``ratio_*`` = sequential / the time of what
``ensemble=true`` runs (1.0 where the rule falls back: it then runs the same sequential runs). Final line:
``RESULT {"ratio_mlp": ..., "ratio_cnn": ..., "stacked_ratio_mlp": ..., ...}``.
"""

from __future__ import annotations

import argparse

import torch

from _common import result, timed
from shiftkit import data, losses, models, optim, weighting
from shiftkit.ensemble import fit_ensemble, slower
from shiftkit.train import fit


def compare(splits, model_kw, seeds, epochs, batch_size, device):
    stats = splits.statistics()
    settings = dict(epochs=epochs, batch_size=batch_size, eval_every=epochs, device=device)

    def member(seed):
        torch.manual_seed(seed)
        return models.build(model_kw["name"], **{k: v for k, v in model_kw.items() if k != "name"}, **stats)

    def sequential():
        for s in seeds:
            fit(member(s), splits, losses.build("ce"), weighting.build("erm"), optim.build("sgd", lr=0.01),
                seed=s, **settings)

    def ensemble():
        fit_ensemble([member(s) for s in seeds], splits, losses.build("ce"), [weighting.build("erm") for _ in seeds],
                     optim.build("sgd", lr=0.01), seeds=list(seeds), **settings)

    fit(member(0), splits, losses.build("ce"), weighting.build("erm"), optim.build("sgd"), epochs=1, device=device)
    return timed(sequential), timed(ensemble), slower([member(0)], device, batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--cnn-epochs", type=int, default=1)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    seeds = range(args.seeds)
    cases = {
        "mlp": (data.build("digits_binary"), {"name": "mlp", "width": 512, "depth": 2}, args.epochs, 32),
        **{f"mlp_w{w}": (data.build("digits_binary"), {"name": "mlp", "width": w, "depth": 2}, args.epochs, 32)
           for w in (128, 256, 384)},
        "cnn": (data.build("fmnist_binary"), {"name": "cnn"}, args.cnn_epochs, 64),
    }
    out = {}
    for key, (splits, model_kw, epochs, bs) in cases.items():
        seq, ens, reason = compare(splits, model_kw, seeds, epochs, bs, device)
        chosen = seq if reason else ens
        print(f"{key}: {args.seeds} sequential runs {seq:.2f} s, one stacked ensemble {ens:.2f} s "
              f"(ratio {seq / ens:.2f}); ensemble=true {'runs them one by one: ' + reason if reason else 'stacks'}, "
              f"ratio {seq / chosen:.2f}")
        out[f"ratio_{key}"] = round(seq / chosen, 3)
        out[f"stacked_ratio_{key}"] = round(seq / ens, 3)
        out[f"seconds_{key}"] = {"sequential": round(seq, 3), "ensemble": round(ens, 3), "stacks": reason is None}
    result({**out, "seeds": args.seeds, "device_used": device})


if __name__ == "__main__":
    main()
