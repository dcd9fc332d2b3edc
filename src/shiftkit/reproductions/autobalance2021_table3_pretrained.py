"""[AB] Table 3 in [AB]'s regime: every row trains a linear model on frozen pretrained features.

[AB] trains its Waterbirds classifiers on fixed 512-dimensional ResNet-18 features. Here the backbone is
the ResNet-18 pretrained offline on the eight Fashion-MNIST classes ``fmnist_spurious`` does not use
(:mod:`.pretraining`); ``data.features_from`` computes its penultimate features of every
``fmnist_spurious`` image once (cached), and each row of ``autobalance-table3`` (the same losses,
weightings, AutoBalance search and data) trains ``model=linear`` on them, the seeds of a row as one
vectorized ensemble.
"""

from __future__ import annotations

from typing import List

from . import pretraining
from .autobalance2021_table3 import _SCALES, AutoBalanceTable3
from .reproduction import register
from ..config import quoted


def _scales() -> dict:
    pretrain = {"tiny": "tiny", "quick": "quick", "paper": "paper"}
    return {scale: {**s, "lr": 0.1, "pretrain": pretrain[scale]} for scale, s in _SCALES.items()}


@register("autobalance-table3-pretrained")
class AutoBalanceTable3Pretrained(AutoBalanceTable3):
    """``autobalance-table3`` with a linear model on the frozen features of the offline-pretrained ResNet-18
    (SGD 0.1: a linear model on features takes a larger rate than the MLP on pixels)."""

    title = "Fairness of training losses under a spurious attribute, on frozen pretrained features"
    source = "[AB] Table 3 (a linear model on ResNet-18 features, pretrained offline: docs/PRETRAINED.md)"
    scales = _scales()

    def model(self, ctx, settings) -> List[str]:
        weights = pretraining.backbone(ctx, settings["pretrain"])
        return ["data.features_from=resnet18", f"data.features_weights={quoted(str(weights))}",
                f"+data.features_options.width={pretraining.width(settings['pretrain'])}", "model=linear"]
