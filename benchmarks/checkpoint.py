"""What checkpoints cost: the same training without checkpoints, saving after every epoch, and with the
default interval (``checkpoint.interval=60``: at most one save a minute), timed side by side.

Default setting: the ``mlp`` on ``digits_binary``, 200 epochs of 2 steps each, where a save costs most
relative to an epoch; with ``--data fmnist_binary --model cnn --epochs 3`` an epoch is seconds long and
saving disappears in it. Each variant runs ``--rounds`` times in a fresh random order and the median is
taken.

    python benchmarks/checkpoint.py [--data digits_binary] [--model mlp] [--epochs 200] [--rounds 3]

Final line: ``RESULT {"ratios": {"every_epoch": ..., "default_interval": ...}, "save_ms": ..., "bytes": ...}``
(times relative to training without checkpoints).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from pathlib import Path

import torch

from _common import result, timed
from shiftkit import data, losses, models, optim, weighting
from shiftkit.checkpoint import Checkpoint
from shiftkit.train import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits_binary")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    splits = data.build(args.data)
    stats = splits.statistics()
    folder = Path(tempfile.mkdtemp())
    variants = {"none": None, "every_epoch": 0.0, "default_interval": 60.0}

    def train(interval):
        torch.manual_seed(0)
        ck = None if interval is None else Checkpoint(folder / "checkpoint.pt", every=1, interval=interval)
        fit(models.build(args.model, **stats), splits, losses.build("ce"), weighting.build("group_dro", **stats),
            optim.build("sgd", lr=0.05), epochs=args.epochs, eval_every=args.epochs, device=device, checkpoint=ck)

    train(None)  # warm-up
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name in random.sample(list(variants), len(variants)):
            times[name].append(timed(lambda: train(variants[name])))
    base = statistics.median(times["none"])
    ratios = {name: round(statistics.median(t) / base, 3) for name, t in times.items() if name != "none"}
    saves = max(args.epochs - 1, 1)  # every epoch but the last
    save_ms = (statistics.median(times["every_epoch"]) - base) / saves * 1000
    size = (folder / "checkpoint.pt").stat().st_size if (folder / "checkpoint.pt").exists() else 0
    print(f"{args.model} on {args.data}, {args.epochs} epochs: {base:.2f} s without checkpoints")
    for name, ratio in ratios.items():
        print(f"  {name}: x{ratio}")
    print(f"  one save: {save_ms:.1f} ms, {size / 1e6:.2f} MB")
    result({"ratios": ratios, "save_ms": round(save_ms, 2), "bytes": size, "seconds_without": round(base, 3)})


if __name__ == "__main__":
    main()
