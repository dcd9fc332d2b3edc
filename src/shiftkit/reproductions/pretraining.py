"""Our offline stand-in for ImageNet pretraining, shared by the reproductions' pretrained variants.

The papers' group-shift results start from ImageNet features ([W]: a fine-tuned ResNet-50 on CelebA;
[AB]: a linear model on ResNet-18 features of Waterbirds). Offline we pretrain the same architecture,
ResNet-18 in torchvision's layout (``width`` 16 at ``quick`` on a CPU), on ``fmnist_pretrain``: the eight
Fashion-MNIST classes that ``fmnist_spurious`` does not use, without its background stripes, so the
backbone has seen neither the task's classes nor its spurious attribute, as ImageNet has seen neither
CelebA's hair colours nor Waterbirds' composites. The run is an ordinary run with ``save_weights=true``
(what ``shiftkit pretrain`` does): it is recorded, reused by every reproduction that shares the runs
directory, and deterministic on the CPU, so its weight file, and with it the identities of the runs built
on it, are the same every time (docs/PRETRAINED.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from .reproduction import Context

#: ``fmnist_pretrain`` settings per scale: backbone width, images per class, epochs, batch size.
SCALES: Dict[str, dict] = {
    "tiny": dict(width=4, n_per_class=100, val_per_class=20, epochs=1, batch_size=64),
    "quick": dict(width=16, n_per_class=5000, val_per_class=500, epochs=8, batch_size=128),
    "paper": dict(width=64, n_per_class=5000, val_per_class=500, epochs=30, batch_size=128),
}
#: The pretraining recipe (SGD with momentum, cosine decay, weight decay 5e-4, padded crops and flips).
RECIPE = ["loss=ce", "weighting=erm", "sampler=none", "optim=sgd", "optim.lr=0.1", "optim.momentum=0.9",
          "optim.weight_decay=0.0005", "optim.schedule=cosine", "data.augment=true"]


def overrides(scale: str) -> List[str]:
    """The pretraining run of ``scale`` (without ``save_weights``)."""
    s = SCALES[scale]
    return ["data=fmnist_pretrain", f"data.n_per_class={s['n_per_class']}", f"data.val_per_class={s['val_per_class']}",
            "model=resnet18", f"model.width={s['width']}", *RECIPE, f"train.epochs={s['epochs']}",
            f"train.batch_size={s['batch_size']}", f"train.eval_every={s['epochs']}", "name=pretrain-fmnist8"]


def backbone(ctx: Context, scale: str) -> Path:
    """Pretrain (or reuse) the backbone of ``scale``; the path of its weight file."""
    from ..rundir import WEIGHTS_FILE

    (record,) = ctx.train([[*overrides(scale), "save_weights=true"]], label="pretraining")
    return Path(record["run_dir"]).resolve() / WEIGHTS_FILE


def width(scale: str) -> int:
    return SCALES[scale]["width"]
