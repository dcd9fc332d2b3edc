"""Images per second of shiftkit's loop against a standard per-example Dataset + DataLoader loop.

Both train the same model with the same optimizer and loss (SGD, cross-entropy, batch 64) on
``fmnist_binary``'s 4400 training images. Ours: the library's ``train_epoch`` (uint8 images resident on
the device, batched normalization, no host synchronization inside a step). Theirs: the way a typical
PyTorch script is written: a ``Dataset`` whose ``__getitem__`` converts and normalizes one image, a
shuffling ``DataLoader`` (``num_workers`` configurable, 0 by default: this machine has 2 cores, which
the model already uses), and ``loss.item()`` each step for logging.

Then ``ratio_raw``: the loop's own overhead, a shiftkit step (``train_epoch`` with ``ce`` and ``erm``)
against a minimal PyTorch loop's step (index the normalized tensors, forward, ``F.cross_entropy``,
``zero_grad``, backward, ``step``) on the demo's model, data and batch (2 x 512 MLP, ``digits_binary``,
batch 32, SGD with momentum): one epoch (4 steps) of each in turn, ``--raw-epochs`` times after a warm-up,
and the ratio of the median epochs. Above 1 is our overhead.

    python benchmarks/pipeline.py [--epochs 2] [--workers 0] [--device auto] [--raw-epochs 1000] [--only-raw]

Prints per-model images/s and the final line ``RESULT {"ratio_cnn": ..., "ratio_convnet": ..., "ratio_raw": ...}``.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from _common import result, timed
from shiftkit import data, losses, models, optim, weighting
from shiftkit.train import train_epoch


class PerExample(Dataset):
    def __init__(self, split, mean, std):
        self.x, self.y, self.mean, self.std = split.x.numpy(), split.y.numpy(), mean, std

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = torch.from_numpy(self.x[i]).float().div(255.0)
        return (x - self.mean) / self.std, int(self.y[i])


def standard_loop(model, loader, device, epochs):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    logged = []
    for _ in range(epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            logged.append(loss.item())


def our_loop(model, splits, device, epochs):
    train = splits.train.to(device)
    opt, _ = optim.build("sgd", lr=0.01, momentum=0.9).make(model.parameters(), epochs)
    gen = torch.Generator().manual_seed(0)
    loss, scheme = losses.build("ce"), weighting.build("erm")
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=gen).to(device)
        train_epoch(model, loss, scheme, opt, train, order, 64, splits.pipeline, None, device)


def raw_overhead(device: str, epochs: int) -> dict:
    """Seconds per step of shiftkit's loop and of a minimal loop, one epoch of each in turn (so that the
    machine's drifts and neighbours weigh on both alike); the ratio of their medians."""
    splits = data.build("digits_binary")
    train = splits.train.to(device)
    x, y = splits.pipeline(train.x, train=False), train.y  # the minimal loop's inputs, normalized once
    steps = -(-len(train) // 32)

    def fresh():
        torch.manual_seed(0)
        return models.build("mlp", width=512, depth=2, **splits.statistics()).to(device)

    ours_model, raw_model = fresh(), fresh()
    opt, _ = optim.build("sgd", lr=0.01, momentum=0.9).make(ours_model.parameters(), epochs)
    raw_opt = torch.optim.SGD(raw_model.parameters(), lr=0.01, momentum=0.9)
    gen, loss, scheme = torch.Generator().manual_seed(0), losses.build("ce"), weighting.build("erm")

    def ours():
        order = torch.randperm(len(train), generator=gen).to(device)
        train_epoch(ours_model, loss, scheme, opt, train, order, 32, splits.pipeline, None, device)

    def minimal():
        for idx in torch.randperm(len(y), generator=gen).to(device).split(32):
            out = F.cross_entropy(raw_model(x[idx]), y[idx])
            raw_opt.zero_grad(set_to_none=True)
            out.backward()
            raw_opt.step()

    for _ in range(10):  # warm-up
        ours(), minimal()
    times = [(timed(ours), timed(minimal)) for _ in range(epochs)]
    ms = {"ours": 1e3 * statistics.median(a for a, _ in times) / steps,
          "minimal": 1e3 * statistics.median(b for _, b in times) / steps}
    ratio = ms["ours"] / ms["minimal"]
    print(f"loop overhead (demo MLP, batch 32): ours {ms['ours']:.3f} ms per step, minimal loop "
          f"{ms['minimal']:.3f} ms, ratio {ratio:.3f} (medians over {epochs} epochs of each, in turn)")
    return {"ratio_raw": round(ratio, 3), "ms_per_step_raw": {k: round(v, 4) for k, v in ms.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--raw-epochs", type=int, default=1000)
    parser.add_argument("--only-raw", action="store_true", help="measure ratio_raw only")
    args = parser.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    out = raw_overhead(device, args.raw_epochs)
    if args.only_raw:
        return result({**out, "device_used": device})
    splits = data.build("fmnist_binary")
    n = len(splits.train) * args.epochs
    mean, std = splits.pipeline.mean[0], splits.pipeline.std[0]
    loader = DataLoader(PerExample(splits.train, mean, std), batch_size=64, shuffle=True, num_workers=args.workers)
    for name in ("cnn", "convnet"):
        def fresh(name=name):
            torch.manual_seed(0)
            return models.build(name, **splits.statistics()).to(device)

        our_loop(fresh(), splits, device, 1)  # warm-up (allocator, kernels)
        ours = timed(lambda: our_loop(fresh(), splits, device, args.epochs))
        theirs = timed(lambda: standard_loop(fresh(), loader, device, args.epochs))
        print(f"{name}: ours {n / ours:.0f} images/s, standard DataLoader loop {n / theirs:.0f} images/s, "
              f"ratio {theirs / ours:.2f}")
        out[f"ratio_{name}"] = round(theirs / ours, 3)
        out[f"images_per_s_{name}"] = {"ours": round(n / ours, 1), "standard": round(n / theirs, 1)}
    result({**out, "epochs": args.epochs, "workers": args.workers, "device_used": device})


if __name__ == "__main__":
    main()
