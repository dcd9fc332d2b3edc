"""Step time of every registered weighting scheme and loss, relative to ERM with cross-entropy.

Same model, data, batches and optimizer for all; a weighting is timed with cross-entropy, a loss with
ERM. Default model: the ``cnn`` on ``fmnist_binary`` (batch 64), the setting of a real run; with
``--data digits_binary --model mlp`` a step is so cheap that per-call Python overhead shows. Each
method is timed in several rounds, in a fresh random order each round, and the median taken.

    python benchmarks/overhead.py [--steps 40] [--rounds 5] [--model cnn] [--data fmnist_binary]

Final line: ``RESULT {"max_ratio": ..., "ratios": {...}}``.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from _common import result, timed
from shiftkit import data, losses, models, optim, weighting
from shiftkit.errors import ShiftkitError
from shiftkit.train import train_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--data", default="fmnist_binary")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    splits = data.build(args.data)
    stats = splits.statistics()
    train = splits.train.to(device)
    gen = torch.Generator().manual_seed(0)
    # Exactly `steps` full batches, whatever the size of the training set (drawn with replacement).
    order = torch.randint(0, len(train), (64 * args.steps,), generator=gen).to(device)
    torch.manual_seed(0)
    model = models.build(args.model, **stats).to(device)
    opt = optim.build("sgd", lr=0.001).optimizer(model.parameters())
    methods = {("ce", "erm"): None}
    methods.update({("ce", w): None for w in weighting.names()})
    methods.update({(lo, "erm"): None for lo in losses.names()})
    built, skipped = {}, {}
    for lo, w in methods:  # a scheme that does not apply to this data (deo_mix needs g = 2y + a) is skipped
        try:
            built[(lo, w)] = (losses.build(lo, **stats).to(device), weighting.build(w, **stats).to(device))
        except ShiftkitError as exc:
            skipped[f"{lo}+{w}"] = str(exc)

    def steps(key):
        loss, scheme = built[key]
        train_epoch(model, loss, scheme, opt, train, order, 64, splits.pipeline, None, device)

    steps(("ce", "erm"))  # warm-up
    times = {key: [] for key in built}
    keys = list(built)
    for _ in range(args.rounds):  # a fresh order each round, so that no method always runs first
        for i in torch.randperm(len(keys), generator=gen).tolist():
            times[keys[i]].append(timed(lambda key=keys[i]: steps(key)))
    base = statistics.median(times[("ce", "erm")])
    ratios = {f"{lo}+{w}": round(statistics.median(t) / base, 3) for (lo, w), t in times.items()}
    for name, ratio in sorted(ratios.items(), key=lambda kv: -kv[1]):
        print(f"{name:>20}: {ratio:.3f} x ERM+CE step time")
    print(f"ERM+CE: {base / args.steps * 1e3:.2f} ms per step")
    for name, why in skipped.items():
        print(f"{name:>20}: skipped ({why})")
    result({"max_ratio": max(ratios.values()), "ratios": ratios, "skipped": sorted(skipped), "ms_per_step_erm_ce": round(base / args.steps * 1e3, 3),
            "model": args.model, "device_used": device})


if __name__ == "__main__":
    main()
