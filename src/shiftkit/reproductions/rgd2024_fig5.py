"""[RGD] Figure 5: RGD against cross-entropy, the focal loss and the class-balanced loss on long-tailed
data, over the imbalance factor ρ (docs/METHODS.md#reproduction-rgd-fig5).

The paper trains a ResNet-32 on CIFAR-10-LT; its figure has no numbers we can read (docs/METHODS.md#headline-rgd), only
the claim that RGD improves over these baselines. Here the long tail is ``fmnist_lt`` (class ``i`` keeps
``n_max · ρ^(-i/9)`` images, docs/METHODS.md#data-cifar10_lt) with the balanced 10,000-image test set, and every method
trains through the one loop with the same model, optimizer and epochs; only the loss or the weighting
differs (docs/METHODS.md#one-loop):

- CE: ``loss=ce weighting=erm``;
- Focal: ``loss=focal`` (Lin et al. 2017, ``gamma``);
- CB: ``loss=ce weighting=cb`` (Cui et al. 2019, ``beta``; docs/METHODS.md#weighting-cb);
- RGD: ``loss=ce weighting=rgd`` with its defaults (docs/METHODS.md#weighting-rgd), ``exp(min(ℓ, 1) / 2)``, unnormalized.

Settings: ``rhos`` (the imbalance factors), ``seeds``, override lists ``data`` (besides ``data.rho``),
``model`` and ``optim``, ``epochs``, ``batch_size``, ``ensemble`` (the seeds of a method as one
vectorized ensemble: it pays for small MLPs on the CPU), ``gamma`` (focal) and ``beta`` (CB). Metrics
are the final weights' balanced and worst-class test accuracy (docs/METHODS.md#metrics). ``quick``: an MLP (2 x 128)
on a tail whose head class keeps 2,000 images, 10 epochs, ρ in {10, 50, 200}, 5 seeds (2-5 minutes on 2
CPU cores). ``paper``: the LDAM-DRW recipe (docs/METHODS.md#recipe-ldam-drw) (ResNet-32, crops and flips, 200 epochs, decays
at epochs 160 and 180: change ``optim`` with ``epochs``), ρ in {10, 50, 100, 200}, 5 seeds; a GPU run.
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

from ..errors import ShiftkitError
from ..report import mean_sem
from .reproduction import Claim, Reproduction, Summary, by_method, cell, mean, p_text, paired, register

RGD = "RGD"
BASELINES = ("CE", "Focal", "CB")
#: One-sided paired t-tests over seeds decide "beats" at this level.
ALPHA = 0.05
#: "The gain grows": gain(largest ρ) − gain(smallest ρ) exceeds this many standard errors.
GROWTH_Z = 2.0

_SGD = ["optim=sgd", "optim.momentum=0.9", "optim.weight_decay=2e-4"]


def _methods(settings: dict) -> List[Tuple[str, List[str]]]:
    return [
        ("CE", ["loss=ce", "weighting=erm"]),
        ("Focal", ["loss=focal", f"loss.gamma={settings['gamma']}", "weighting=erm"]),
        ("CB", ["loss=ce", "weighting=cb", f"weighting.beta={settings['beta']}"]),
        (RGD, ["loss=ce", "weighting=rgd"]),
    ]


def _overrides(settings: dict) -> List[List[str]]:
    """Every run: imbalance factors x methods x seeds, one final evaluation each."""
    common = [
        *settings["data"], *settings["model"], *settings["optim"], f"train.epochs={settings['epochs']}",
        f"train.batch_size={settings['batch_size']}", f"train.eval_every={settings['epochs']}",
        f"ensemble={str(settings['ensemble']).lower()}",
    ]
    return [
        [*common, f"data.rho={rho}", *method, f"name={label}", f"seed={seed}"]
        for rho in settings["rhos"]
        for label, method in _methods(settings)
        for seed in range(settings["seeds"])
    ]


def _tables(records: List[dict], rhos: List[float], metric: str) -> Dict[float, Dict[str, Dict[int, float]]]:
    """``{ρ: {method: {seed: final test metric}}}``."""
    return {
        rho: by_method([r for r in records if r["config"]["data"]["rho"] == rho], "test", metric) for rho in rhos
    }


def _diff(a: Dict[int, float], b: Dict[int, float]) -> Tuple[float, float]:
    """Mean and s.e.m. of the paired differences ``a - b`` over shared seeds (s.e.m. nan for one seed).

    >>> _diff({0: 0.8, 1: 0.9, 2: 0.7}, {0: 0.7, 1: 0.9})
    (0.05, 0.05)
    """
    diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    m, s = mean_sem(diffs)
    return m, math.nan if s is None else s


def _rho(rho: float) -> str:
    return f"{rho:g}"


def _points(difference: float) -> str:
    """A difference of accuracies in percentage points, signed."""
    return f"{100 * difference:+.2f}".replace("-", "−")


def _rows(acc, worst) -> List[Tuple[str, str, str]]:
    rows = []
    for rho, per in acc.items():
        for method in (*BASELINES, RGD):
            rows.append((f"ρ = {_rho(rho)}: {method}, balanced acc % (worst class %)", "–",
                         f"{cell(per[method], 2, 100)} ({cell(worst[rho][method], 1, 100)})"))
        versus = [f"{_points(mean(per[RGD]) - mean(per[b]))} (p {p_text(paired(per[RGD], per[b]))})" for b in BASELINES]
        rows.append((f"ρ = {_rho(rho)}: RGD − CE, − Focal, − CB (points)", "> 0 (Fig. 5, no numbers)",
                     ", ".join(versus)))
    return rows


def _beats_everywhere(acc, baseline_of, text: str) -> Claim:
    """RGD beats ``baseline_of(per_method)`` at every ρ: a higher mean and one-sided paired p < ALPHA."""
    parts, verdicts = [], []
    for rho, per in acc.items():
        base = baseline_of(per)
        p = paired(per[RGD], per[base])
        gain = mean(per[RGD]) - mean(per[base])
        verdicts.append(None if p is None else (gain > 0 and p < ALPHA))
        parts.append(f"ρ = {_rho(rho)}: RGD − {base} = {_points(gain)} points, p = {p_text(p)}")
    holds = None if None in verdicts else all(verdicts)
    return Claim(f"{text} (one-sided paired t-test, p < {ALPHA}, at every ρ)", holds, "; ".join(parts))


def _growth(acc) -> Claim:
    rhos = sorted(acc)
    gains = {rho: _diff(acc[rho][RGD], acc[rho]["CE"]) for rho in rhos}
    text = "RGD's gain over CE grows with the imbalance factor"
    listing = ", ".join(f"ρ = {_rho(r)}: {_points(g)} ± {100 * s:.2f}" for r, (g, s) in gains.items())
    (g_lo, s_lo), (g_hi, s_hi) = gains[rhos[0]], gains[rhos[-1]]
    se = math.hypot(s_lo, s_hi)
    if len(rhos) < 2 or math.isnan(se):
        return Claim(text, None, f"needs two imbalance factors and two seeds; gains {listing}")
    growth = g_hi - g_lo
    return Claim(
        f"{text} (gain at ρ = {_rho(rhos[-1])} minus gain at ρ = {_rho(rhos[0])} > {GROWTH_Z:g} s.e.)",
        growth > GROWTH_Z * se, f"gains in points (mean ± s.e.m. of paired differences) {listing}; growth "
        f"{_points(growth)}, s.e. {100 * se:.2f}",
    )


def _figure(ctx, acc, worst, seeds: int) -> str:
    from ..plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    rhos = sorted(acc)
    for ax, table, label in ((axes[0], acc, "balanced test accuracy"), (axes[1], worst, "worst-class test accuracy")):
        for method in (*BASELINES, RGD):
            stats = [mean_sem(list(table[r][method].values())) for r in rhos]
            means = [m for m, _ in stats]
            sems = [s or 0.0 for _, s in stats]
            line, = ax.plot(rhos, means, "o-", lw=2.2 if method == RGD else 1.4, label=method)
            ax.fill_between(rhos, [m - s for m, s in zip(means, sems)], [m + s for m, s in zip(means, sems)],
                            color=line.get_color(), alpha=0.2, lw=0)
        ax.set_xscale("log")
        ax.set_xticks(rhos)
        ax.set_xticklabels([_rho(r) for r in rhos])
        ax.minorticks_off()
        ax.set_xlabel("imbalance factor ρ (largest / smallest class)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower left")
    fig.suptitle(f"[RGD] Figure 5 on Fashion-MNIST-LT: final weights, mean ± s.e.m. over {seeds} seeds")
    fig.tight_layout()
    return ctx.save_figure(fig, "fig5.png")


def _per_rho(table) -> Dict[str, Dict[str, float]]:
    """``{method: {ρ: mean}}`` for summary.json."""
    return {m: {_rho(rho): mean(per[m]) for rho, per in table.items()} for m in (*BASELINES, RGD)}


def _notes(records: List[dict], settings: dict) -> List[str]:
    fit: Dict[str, List[float]] = {}
    for r in records:
        fit.setdefault(r["method"], []).append(r["final"]["train"]["acc"])
    counts = {r["config"]["data"]["rho"]: r["data"]["info"]["train_counts"] for r in records}
    return [
        "Data: fmnist_lt in place of CIFAR-10-LT; training counts per class "
        + "; ".join(f"ρ = {_rho(rho)}: {c[0]} … {c[-1]} ({sum(c)} in all)" for rho, c in counts.items())
        + "; test: the balanced Fashion-MNIST test set (1,000 per class).",
        "One optimizer for all methods (fair comparison, nothing tuned per method). RGD's weights are "
        "unnormalized, in [1, e^0.5] (docs/METHODS.md#weighting-rgd defaults), so its steps are up to 1.65 times larger than CE's; "
        "the paper says RGD's learning rate is 'generally lower than the baseline' (docs/METHODS.md#weighting-rgd).",
        f"Focal γ = {settings['gamma']:g} (Lin et al.); CB β = {settings['beta']:g} with softmax CE, the weights "
        "in the plain mean of w·ℓ (docs/METHODS.md#one-loop, not divided by the batch's sum of weights).",
        "Mean final training accuracy (over ρ and seeds): "
        + ", ".join(f"{m} {sum(v) / len(v):.3f}" for m, v in fit.items()) + ".",
        "Metrics are those of the final weights (no model selection); p-values are one-sided paired t-tests "
        "over seeds (seeds pair the initialization and data order).",
    ]


@register("rgd-fig5")
class RGDFig5(Reproduction):
    """RGD vs CE, focal and class-balanced losses on ``fmnist_lt`` over the imbalance factor ρ: the
    balanced (and worst-class) test accuracy of each, mean ± s.e.m. over seeds, and RGD's paired
    one-sided tests against each baseline at every ρ."""

    title = "RGD vs CE, focal loss and class-balanced loss over the imbalance factor"
    source = "[RGD] Figure 5 (long-tailed CIFAR-10, ResNet-32); docs/METHODS.md#reproduction-rgd-fig5"
    keys = ("balanced_acc", "worst_class_acc", "rgd_minus_ce", "p_rgd_better")
    scales = {
        "tiny": {
            "rhos": [10.0, 100.0], "seeds": 2, "data": ["data=fmnist_lt", "data.n_max=200"],
            "model": ["model=mlp", "model.width=16", "model.depth=1"],
            "optim": [*_SGD, "optim.lr=0.05", "optim.schedule=cosine"],
            "epochs": 1, "batch_size": 64, "ensemble": True, "gamma": 2.0, "beta": 0.9999,
        },
        "quick": {
            "rhos": [10.0, 50.0, 200.0], "seeds": 5, "data": ["data=fmnist_lt", "data.n_max=2000"],
            "model": ["model=mlp", "model.width=128", "model.depth=2"],
            "optim": [*_SGD, "optim.lr=0.05", "optim.schedule=cosine"],
            "epochs": 10, "batch_size": 128, "ensemble": True, "gamma": 2.0, "beta": 0.9999,
        },
        "paper": {  # docs/METHODS.md#recipe-ldam-drw: 5 warm-up epochs, x0.01 at 160 and again at 180
            "rhos": [10.0, 50.0, 100.0, 200.0], "seeds": 5, "data": ["data=fmnist_lt", "data.augment=true"],
            "model": ["model=resnet32"],
            "optim": [*_SGD, "optim.lr=0.1", "optim.schedule=multistep", "optim.milestones=[160,180]",
                      "optim.gamma=0.01", "optim.warmup_epochs=5"],
            "epochs": 200, "batch_size": 128, "ensemble": False, "gamma": 2.0, "beta": 0.9999,
        },
    }

    def run(self, ctx, settings):
        if not settings["rhos"] or settings["seeds"] < 1:
            raise ShiftkitError("rgd-fig5: rhos must name at least one imbalance factor and seeds must be >= 1")
        settings = {**settings, "rhos": sorted({float(rho) for rho in settings["rhos"]})}
        runs = len(settings["rhos"]) * 4 * settings["seeds"]
        records = ctx.train(_overrides(settings), label=f"{runs} runs (ρ × method × seed)")
        acc = _tables(records, settings["rhos"], "balanced_acc")
        worst = _tables(records, settings["rhos"], "worst_class_acc")
        claims = [
            _beats_everywhere(acc, lambda per: "CE", "RGD beats CE at every imbalance factor"),
            _growth(acc),
            _beats_everywhere(acc, lambda per: max(BASELINES, key=lambda b: mean(per[b])),
                              "RGD beats the best of CE, focal and CB at every imbalance factor"),
        ]
        key = {
            "balanced_acc": _per_rho(acc),
            "worst_class_acc": _per_rho(worst),
            "rgd_minus_ce": {_rho(rho): mean(per[RGD]) - mean(per["CE"]) for rho, per in acc.items()},
            "p_rgd_better": {b: {_rho(rho): paired(per[RGD], per[b]) for rho, per in acc.items()} for b in BASELINES},
        }
        figures = [_figure(ctx, acc, worst, settings["seeds"])]
        return Summary(key=key, rows=_rows(acc, worst), claims=claims, figures=figures,
                       notes=_notes(records, settings))
