"""[W]'s image protocol for ``shiftkit reproduce wang2022-fig3|fig4|fig5``: the runs, their scales, and
the tables and figures they share.

Every method is one of the ``experiment=wang_*`` presets (docs/METHODS.md#protocol-wang2022: the papers' loss, weights,
optimizer, epochs and model selection), trained through the one loop on Fashion-MNIST in place of
CIFAR-10 and CelebA (docs/METHODS.md#datasets-offline): ``fmnist_binary`` (T-shirt/top vs shirt, step
imbalance 10) for the class-imbalance figures, ``fmnist_spurious`` (a background attribute with
Waterbirds' group fractions) for Figure 5's group version. Runs keep the preset's own ``name``, so the
same run serves Figures 3 and 4 when they share a runs directory.

Scales (``settings``): ``data`` and ``model`` are override lists, ``epoch_scale`` multiplies every
preset's epochs (keeping [W]'s relative lengths: 400 for Figures 3-4, 600 / 300 for Figure 5's
methods), ``seeds`` and ``eval_every`` are what they say, ``ensemble`` trains the seeds of a method as
one vectorized ensemble (:mod:`shiftkit.ensemble`; it pays for small MLPs on the CPU). ``quick`` trains
an MLP (2 x 256) on a fifth of the images for [W]'s epochs (so a fifth of its steps), 3 seeds;
``paper`` is [W]'s ConvNet on all of them, 10 seeds.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

from .reproduction import Context, by_method, cell, mean, p_text, paired

#: Figures 3 and 4: (setting, its key in summary.json, CE preset, Poly preset) on the binary protocol.
#: The IW rows use the early-stopped presets, which train exactly as the plain ones: Figure 3 reads
#: their final weights, Figure 4 the weights of their best validation epoch (docs/METHODS.md#selection-best).
FIG34_PAIRS: List[Tuple[str, str, str, str]] = [
    ("No IW", "no_iw", "wang_ce", "wang_poly"),
    ("IW (w̄)", "iw", "wang_ce_iw_es", "wang_poly_iw_es"),
    ("IW-Exp (w̄^3/2)", "iw_exp", "wang_ce_iw_exp_es", "wang_poly_iw_exp_es"),
]

#: docs/METHODS.md#headline-wang2022, binary CIFAR-10: (CE, Poly, p) per setting; Figure 3 final weights, Figure 4 early-stopped.
PAPER_FIG3 = {
    "No IW": ("0.605 ± 0.008", "0.564 ± 0.004", "0.9999"),
    "IW (w̄)": ("0.578 ± 0.004", "0.604 ± 0.003", "<1e-5"),
    "IW-Exp (w̄^3/2)": ("0.574 ± 0.006", "0.630 ± 0.006", "<1e-5"),
}
PAPER_FIG4 = {
    "IW (w̄)": ("0.625 ± 0.007", "0.634 ± 0.005", "0.022"),
    "IW-Exp (w̄^3/2)": ("0.612 ± 0.008", "0.635 ± 0.006", "0.0014"),
}

_BINARY = "fmnist_binary"


def scales(data: str = _BINARY, tiny_data: Sequence[str] = (), quick_data: Sequence[str] = ()) -> Dict[str, dict]:
    """The three scales of a [W] image reproduction on ``data``."""
    return {
        "tiny": {
            "data": [f"data={data}", *tiny_data], "model": ["model=mlp", "model.width=16", "model.depth=1"],
            "epoch_scale": 0.005, "seeds": 2, "eval_every": 1, "ensemble": True,
        },
        "quick": {
            "data": [f"data={data}", *quick_data], "model": ["model=mlp", "model.width=256", "model.depth=2"],
            "epoch_scale": 1.0, "seeds": 3, "eval_every": 20, "ensemble": True,
        },
        "paper": {
            "data": [f"data={data}"], "model": ["model=convnet"],
            "epoch_scale": 1.0, "seeds": 10, "eval_every": 1, "ensemble": False,
        },
    }


def preset(name: str):
    """The composed config of preset ``name`` (its epochs and learning rate)."""
    from ..config import compose

    return compose([f"experiment={name}"])


def overrides(name: str, settings: dict) -> List[List[str]]:
    """The override list of each seed of preset ``name`` at these settings (``lr_scale``, if given,
    multiplies the preset's learning rate)."""
    cfg = preset(name)
    epochs = max(1, math.ceil(cfg.train.epochs * settings["epoch_scale"]))
    common = [
        f"experiment={name}", *settings["data"], *settings["model"], f"train.epochs={epochs}",
        f"train.eval_every={min(settings['eval_every'], epochs)}", f"ensemble={str(settings['ensemble']).lower()}",
    ]
    if settings.get("lr_scale", 1.0) != 1.0:
        common.append(f"optim.lr={cfg.optim.lr * settings['lr_scale']:g}")
    return [[*common, f"seed={seed}"] for seed in range(settings["seeds"])]


def train_presets(ctx: Context, presets: Sequence[str], settings: dict, label: str) -> Dict[str, List[dict]]:
    """Train every preset's seeds; ``{preset: records}``."""
    return ctx.train_each({p: overrides(p, settings) for p in presets}, label=label)


def values(records: List[dict], which: str, metric: str = "balanced_acc", split: str = "test") -> Dict[int, float]:
    """``{seed: value}`` of one method's runs."""
    (per_seed,) = by_method(records, split, metric, which).values()
    return per_seed


def train_accuracy(runs: Dict[str, List[dict]]) -> Dict[str, float]:
    """``{method: mean final training accuracy}``."""
    return {records[0]["method"]: mean(values(records, "final", "acc", "train")) for records in runs.values()}


def interpolation_note(runs: Dict[str, List[dict]]) -> str:
    """A note on whether every run fits its training data at the end (the regime [W] studies)."""
    accs = train_accuracy(runs)
    short = [f"{m} {a:.3f}" for m, a in accs.items() if a < 1.0]
    if not short:
        return "Every run ends at training accuracy 1.000: all interpolate, as in [W]."
    return "Not every run interpolates at this scale; mean final training accuracy: " + ", ".join(short) + "."


def pair_rows(
    runs: Dict[str, List[dict]], pairs, paper: dict, which: str, metric: str = "balanced_acc"
) -> Tuple[list, dict, Dict[str, float]]:
    """Rows ``(quantity, paper, ours)`` for CE, Poly and the paired test per setting, the key figures
    ``{slug: {"ce", "poly"}}`` (means) and the one-sided p of Poly > CE ``{slug: p}``."""
    rows, key, ps = [], {}, {}
    for setting, slug, ce_preset, poly_preset in pairs:
        ce, poly = values(runs[ce_preset], which, metric), values(runs[poly_preset], which, metric)
        p = paired(poly, ce)
        ps[slug] = p
        key[slug] = {"ce": mean(ce), "poly": mean(poly)}
        paper_ce, paper_poly, paper_p = paper.get(setting, ("–", "–", "–"))
        rows += [
            (f"{setting}: CE", paper_ce, cell(ce)),
            (f"{setting}: Poly", paper_poly, cell(poly)),
            (f"{setting}: p (Poly > CE)", paper_p, p_text(p)),
        ]
    return rows, key, ps


def bars(ctx: Context, groups: List[Tuple[str, Dict[str, Dict[int, float]]]], paper: Dict[str, Dict[str, float]],
         title: str, ylabel: str, filename: str) -> str:
    """Grouped bars, mean ± s.e.m. over seeds (one group per setting, one bar per method), with the
    paper's means as black markers where it has them."""
    from ..plots import _pyplot
    from ..report import mean_sem

    plt = _pyplot()
    methods = list(dict.fromkeys(m for _, per in groups for m in per))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(groups) * len(methods) ** 0.5 + 3), 4.5))
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        xs, means, sems = [], [], []
        for i, (_, per) in enumerate(groups):
            if method in per:
                m, s = mean_sem(list(per[method].values()))
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                means.append(m)
                sems.append(s or 0.0)
        ax.bar(xs, means, width, yerr=sems, capsize=3, label=method)
    marked = False
    for i, (setting, _) in enumerate(groups):
        for j, method in enumerate(methods):
            if method in paper.get(setting, {}):
                x = i + (j - (len(methods) - 1) / 2) * width
                ax.plot([x], [paper[setting][method]], "kx", markersize=8, label=None if marked else "paper")
                marked = True
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([s for s, _ in groups])
    lows = [v for _, per in groups for vals in per.values() for v in vals.values()]
    lows += [v for per in paper.values() for v in per.values()]
    ax.set_ylim(max(0.0, min(lows) - 0.1), 1.0)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return ctx.save_figure(fig, filename)


def curves(ctx: Context, runs: Dict[str, List[dict]], filename: str, labels: Dict[str, str],
           metric: str = "balanced_acc") -> str:
    """Test ``metric`` over epochs per method (``labels``: preset -> legend), mean ± s.e.m. over seeds."""
    from ..plots import curve_plot
    from ..report import curves as by_epoch

    records = [{**r, "_dir": r["run_dir"], "_label": labels[p]} for p, per in runs.items() for r in per]
    lines = by_epoch(records, "test", metric)
    curve_plot(lines, {dataset: ("test", metric) for dataset in lines}, ctx.figure_path(filename), ctx.note)
    return filename
