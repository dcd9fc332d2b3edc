"""[W] Figure 5's group panel in [W]'s regime: every method fine-tunes a pretrained network.

``wang2022-fig5`` trains its group-shift methods from scratch, with learning rates [W] chose to fine-tune an
ImageNet-pretrained ResNet-50 on CelebA. Here each ``wang_group_*`` preset (its loss, weighting, sampler,
learning rate and momentum unchanged) fine-tunes a ResNet-18 pretrained offline on the eight other
Fashion-MNIST classes (:mod:`.pretraining`), on ``fmnist_spurious``. Every parameter trains, BatchNorm
included, as in [W]; the presets' epochs are scaled by ``epoch_scale`` (0.15 at ``quick``: 30 epochs for
the 200-epoch DRO and Poly+IW rows, 8 for the 50-epoch ones), as fine-tuning converges in fewer epochs
than training from scratch does.
"""

from __future__ import annotations

from typing import Dict

from . import pretraining
from .reproduction import Claim, Reproduction, Summary, cell, mean, register
from .wang2022_fig5 import GROUPS, WangFig5, _table
from .wang2022_protocol import bars, interpolation_note, train_presets, values
from ..config import quoted


def _scales() -> Dict[str, dict]:
    def scale(pretrain: str, n_train: int, epoch_scale: float, seeds: int) -> dict:
        return {"data": ["data=fmnist_spurious", f"data.n_train={n_train}"], "epoch_scale": epoch_scale,
                "seeds": seeds, "eval_every": 1000, "ensemble": False, "pretrain": pretrain}

    return {"tiny": scale("tiny", 600, 0.01, 2), "quick": scale("quick", 2000, 0.15, 3),
            "paper": scale("paper", 4795, 1.0, 10)}


@register("wang2022-fig5-pretrained")
class WangFig5Pretrained(Reproduction):
    """The group panel of ``wang2022-fig5`` (the same six methods, data and metric: the group-balanced test
    accuracy of the final weights), each run fine-tuning the backbone of :mod:`.pretraining` through
    ``model.weights``, with a new two-class head."""

    title = "Poly+IW against undersampling and Group DRO under group shift, fine-tuning a pretrained ResNet-18"
    source = "[W] Figure 5 (CelebA panel), with an offline-pretrained backbone (docs/PRETRAINED.md)"
    keys = ("group_balanced_acc", "worst_group_acc")
    scales = _scales()

    def run(self, ctx, settings):
        weights = pretraining.backbone(ctx, settings["pretrain"])
        model = ["model=resnet18", f"model.width={pretraining.width(settings['pretrain'])}", f"model.weights={quoted(str(weights))}"]
        grouped = train_presets(ctx, [p for _, p, _ in GROUPS], {**settings, "model": model},
                                "Figure 5, group shift, fine-tuned")
        rows, gacc = _table(grouped, GROUPS, "group_balanced_acc", "groups: ")
        worst = {label: values(grouped[preset], "final", "worst_group_acc") for label, preset, _ in GROUPS}
        rows += [(f"groups: {m}, worst group", "–", cell(worst[m])) for m, _, _ in GROUPS]
        best = max(gacc, key=lambda m: mean(gacc[m]))
        claims = [
            Claim("under group shift, Poly+DRO has the best group-balanced accuracy", best == "Poly+DRO",
                  f"best: {best} {mean(gacc[best]):.3f}; Poly+DRO {mean(gacc['Poly+DRO']):.3f}"),
            WangFig5._beats(gacc, "Poly+DRO", "CE+DRO"),
            WangFig5._beats(gacc, "Poly+IW", "CE+US"),
        ]
        figure = bars(ctx, [(m, {"ours": gacc[m]}) for m, _, _ in GROUPS],
                      {m: {"ours": float(p.split()[0])} for m, _, p in GROUPS},
                      "Figure 5, group shift, fine-tuning a pretrained ResNet-18 (x: [W] on CelebA)",
                      "test group-balanced accuracy", "fig5_groups_pretrained.png")
        notes = [
            interpolation_note(grouped),
            f"Backbone: {weights.parent.name}/{weights.name} (ResNet-18, width {pretraining.width(settings['pretrain'])},"
            " pretrained on fmnist_pretrain: the eight Fashion-MNIST classes other than pullover and coat).",
            f"Each preset's epochs × {settings['epoch_scale']}; learning rates as [W]'s CelebA rows (4e-4, 1e-3 for "
            "DRO), momentum 0.9, batch 64, no weight decay, every parameter fine-tuned.",
        ]
        key = {"group_balanced_acc": {m: mean(v) for m, v in gacc.items()},
               "worst_group_acc": {m: mean(v) for m, v in worst.items()}}
        return Summary(key=key, rows=rows, claims=claims, figures=[figure], notes=notes)
