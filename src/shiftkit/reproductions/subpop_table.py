"""A comparison table of our own (docs/METHODS.md#reproduction-subpop-table): every method, one protocol.

Thirteen methods (ERM, IW, Group DRO, CVaR, χ²-DRO, RGD, LA, VS, Poly+IW, AutoBalance, JTT, DFR, cRT) on
``fmnist_spurious`` (a Waterbirds-like spurious attribute; from scratch, and with ``pretrained`` a linear
model on frozen features of the offline-pretrained ResNet-18) and ``fmnist_lt`` (long-tailed classes, from
scratch), each with the same seeded random search (:mod:`shiftkit.hparams`: ``trials`` settings of its
space, trial 0 its defaults, ``seeds`` seeds each) and the same selection across runs
(:mod:`shiftkit.report_select`): by validation worst-group accuracy (group labels on validation), by
validation worst-class accuracy (none), and by test (the oracle, an upper bound), as SubpopBench reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .. import hparams
from ..report_select import select
from .reproduction import Claim, Reproduction, Summary, cell, mean, p_text, paired, register


@dataclass(frozen=True)
class Method:
    """A row: its label, its name for the search (a preset per variant where the data need one) and the
    overrides its runs add."""

    label: str
    name: str
    extra: Tuple[str, ...] = ()
    grouped_name: Optional[str] = None  # the name on data with an attribute, where it differs


METHODS: List[Method] = [
    Method("ERM", "erm"),
    Method("IW", "iw"),
    Method("Group DRO", "group_dro"),
    Method("CVaR", "cvar"),
    Method("χ²-DRO", "chi2"),
    Method("RGD", "rgd"),
    Method("LA", "la"),
    Method("VS", "vs"),
    Method("Poly+IW", "poly+iw", ("loss.alpha=2",)),
    Method("AutoBalance", "autobalance", ("procedure.retrain_on=train",), grouped_name="autobalance_group"),
    Method("JTT", "jtt"),
    Method("DFR", "dfr"),
    Method("cRT", "crt"),
]

#: Published worst-group test accuracy (%) on Waterbirds (ImageNet-pretrained ResNet-50), for orientation
#: only: JTT's Table 1 (Liu et al. 2021) for ERM, CVaR DRO, Group DRO and JTT; DFR's (Kirichenko et al.
#: 2023) for DFR. Our data and models differ; the claims compare orderings, not values.
WATERBIRDS_WORST = {"ERM": 72.6, "CVaR": 75.9, "Group DRO": 91.4, "JTT": 86.7, "DFR": 92.9}

#: Variants: (key, data overrides, selection with group labels, the metric the table leads with).
_SCALES = {
    "tiny": dict(seeds=1, trials=1, epochs=2, width=16, n_train=600, n_max=300, batch_size=128,
                 pretrained=False, pretrain="tiny", methods=[]),
    "quick": dict(seeds=2, trials=4, epochs=15, width=128, n_train=4795, n_max=1000, batch_size=128,
                  pretrained=True, pretrain="quick", methods=[]),
    "paper": dict(seeds=3, trials=16, epochs=100, width=256, n_train=4795, n_max=5000, batch_size=64,
                  pretrained=True, pretrain="paper", methods=[]),
}
#: Selection criteria, with the variant's own group-label criterion first.
CRITERIA = {"groups": "val/worst_group_acc", "no groups": "val/worst_class_acc", "oracle": "oracle/worst_group_acc"}


def _variants(ctx, s: dict) -> Dict[str, List[str]]:
    """``{variant: common overrides}``: fmnist_spurious from scratch (and pretrained), fmnist_lt."""
    mlp = ["model=mlp", f"model.width={s['width']}"]
    common = [f"train.epochs={s['epochs']}", f"train.eval_every={s['epochs']}", f"train.batch_size={s['batch_size']}"]
    out = {
        "fmnist_spurious": ["data=fmnist_spurious", f"data.n_train={s['n_train']}", *mlp, *common],
        "fmnist_lt": ["data=fmnist_lt", f"data.n_max={s['n_max']}", *mlp, *common],
    }
    if s["pretrained"]:
        from ..config import quoted
        from . import pretraining

        weights = pretraining.backbone(ctx, s["pretrain"])
        out["fmnist_spurious pretrained"] = [
            "data=fmnist_spurious", f"data.n_train={s['n_train']}", "data.features_from=resnet18",
            f"data.features_weights={quoted(str(weights))}", f"+data.features_options.width={pretraining.width(s['pretrain'])}",
            "model=linear", *common]
    return out


def _plan(variants: Dict[str, List[str]], methods: Sequence[Method], s: dict) -> List[Tuple[str, str, dict]]:
    """Every run: ``(variant, method label, hparams run)``."""
    runs = []
    for variant, common in variants.items():
        for m in methods:
            name = m.grouped_name if m.grouped_name and "spurious" in variant else m.name
            for run in hparams.plan([name], s["trials"], list(range(s["seeds"])), [*common, *m.extra]):
                runs.append((variant, m.label, run))
    return runs


def _percent(records: List[dict], split: str = "test", metric: str = "worst_group_acc") -> Dict[int, float]:
    return {r["config"]["seed"]: 100 * r["selected"][split][metric] for r in records
            if r["selected"][split].get(metric) is not None}


@register("subpop-table")
class SubpopTable(Reproduction):
    """Every method with the same search and selection (module docstring). Each variant's runs share the
    model (an MLP of ``width`` on the pixels; a linear model on frozen features for ``pretrained``), the
    epochs, batch size and the optimizer's defaults; the search tunes each method's own options and the
    learning rate and weight decay (``--tune all``). ``methods`` (a list of labels) restricts the rows."""

    title = "Every method, one protocol: random search, selection with and without group labels, and the oracle"
    source = ("shiftkit's own comparison in the manner of SubpopBench (Yang et al. 2023); "
              "docs/METHODS.md#reproduction-subpop-table")
    keys = ("worst", "average", "chosen", "runs", "diverged")
    scales = _SCALES

    def run(self, ctx, settings):
        methods = [m for m in METHODS if not settings["methods"] or m.label in settings["methods"]]
        variants = _variants(ctx, settings)
        plan = _plan(variants, methods, settings)
        records = ctx.train([run["overrides"] for _, _, run in plan], label="search", diverged_ok=True)
        by: Dict[Tuple[str, str], List[dict]] = {}
        for (variant, label, _), record in zip(plan, records):
            by.setdefault((variant, label), []).append(record)
        worst, average, chosen = {}, {}, {}
        diverged = {f"{v} | {m}": sum(bool(r.get("failed")) for r in runs) for (v, m), runs in by.items()}
        for (variant, label), runs in by.items():
            finished = [r for r in runs if not r.get("failed")]  # a diverged run is no result: never selected
            for how, text in CRITERIA.items():
                key = f"{variant} | {label} | {how}"
                picked, notes = select(finished, text) if finished else ([], [{"chosen": "every setting diverged"}])
                worst[key] = _percent(picked)
                average[key] = _percent(picked, metric="acc")
                chosen[key] = notes[0]["chosen"]
        rows = self._rows(variants, methods, worst, average, chosen, diverged, len(records) // len(by))
        figures = [self._figure(ctx, variants, methods, worst)]
        return Summary(key={"worst": {k: mean(v) for k, v in worst.items()},
                            "average": {k: mean(v) for k, v in average.items()}, "chosen": chosen,
                            "runs": len(records), "diverged": diverged},
                       rows=rows, claims=self._claims(variants, worst, settings["trials"]), figures=figures,
                       notes=self._notes(settings, variants))

    @staticmethod
    def _rows(variants, methods, worst, average, chosen, diverged, per_method) -> List[Tuple[str, str, str]]:
        rows = []
        for variant in variants:
            what = "worst-group" if "spurious" in variant else "worst-class"
            for m in methods:
                key = f"{variant} | {m.label} | groups"
                paper = f"{WATERBIRDS_WORST[m.label]:.1f} (Waterbirds)" if "spurious" in variant and m.label in WATERBIRDS_WORST else "–"
                ours = (f"{cell(worst[key], 1)} (no group labels: {cell(worst[f'{variant} | {m.label} | no groups'], 1)}; "
                        f"oracle: {cell(worst[f'{variant} | {m.label} | oracle'], 1)}); average {cell(average[key], 1)}; "
                        f"chosen {chosen[key]}")
                broke = diverged[f"{variant} | {m.label}"]
                ours += f"; {broke} of {per_method} runs diverged" if broke else ""
                rows.append((f"{variant}: {m.label}, test {what} acc (%)", paper, ours))
        return rows

    @staticmethod
    def _claims(variants, worst, trials: int) -> List[Claim]:
        claims = []

        def beats(variant, a, b, source):
            """Holds: a higher mean with a one-sided paired p < 0.05 over seeds; not decided: higher but
            not significant; does not hold: not higher."""
            x, y = (worst.get(f"{variant} | {m} | groups") for m in (a, b))
            if not x or not y:
                return
            p = paired(x, y)
            higher = mean(x) > mean(y)
            holds = (True if p is not None and p < 0.05 else None) if higher else False
            what = "worst-group" if "spurious" in variant else "worst-class"
            claims.append(Claim(f"{variant}: {a} has a higher {what} accuracy than {b} (mean, one-sided paired "
                                f"p < 0.05 over seeds; {source})", holds,
                                f"{a} {mean(x):.1f} vs {b} {mean(y):.1f} %, p = {p_text(p)}"))

        for variant in (v for v in variants if "spurious" in v):
            beats(variant, "Group DRO", "ERM", "Sagawa et al. 2020")
            beats(variant, "JTT", "ERM", "Liu et al. 2021")
            beats(variant, "DFR", "ERM", "Kirichenko et al. 2023")
            with_groups = [mean(v) for k, v in worst.items() if k.startswith(f"{variant} |") and k.endswith("| groups")]
            without = [mean(v) for k, v in worst.items() if k.startswith(f"{variant} |") and k.endswith("| no groups")]
            if with_groups and without:
                a, b = sum(with_groups) / len(with_groups), sum(without) / len(without)
                verdict = None if trials < 2 or 0 <= a - b < 1 else a - b >= 1
                claims.append(Claim(f"{variant}: selecting without group labels costs worst-group accuracy, at least "
                                    "1 point averaged over methods (SubpopBench, Yang et al. 2023)", verdict,
                                    f"mean over methods {a:.1f} with group labels vs {b:.1f} % without"
                                    + (" (less than 1 point apart)" if 0 <= a - b < 1 else "")
                                    + ("" if trials > 1 else "; one setting per method: nothing to select")))
        if "fmnist_lt" in variants:
            beats("fmnist_lt", "LA", "IW", "Menon et al. 2021; [W]: a loss change, not a reweighting, moves an interpolating model")
            beats("fmnist_lt", "Poly+IW", "IW", "[W]")
        return claims

    @staticmethod
    def _figure(ctx, variants, methods, worst) -> str:
        """One panel per variant: each method's test worst-group accuracy under each selection."""
        from ..plots import _pyplot
        from ..report import mean_sem

        plt = _pyplot()
        fig, axes = plt.subplots(len(variants), 1, figsize=(max(8.0, 0.9 * len(methods) + 2), 3.6 * len(variants)),
                                 squeeze=False)
        shown = (("groups", "val worst-group", "tab:blue"), ("no groups", "val worst-class", "tab:green"),
                 ("oracle", "oracle (test)", "lightgrey"))
        for ax, variant in zip(axes[:, 0], variants):
            for j, (how, text, colour) in enumerate(shown):
                stats = [mean_sem(list(worst[f"{variant} | {m.label} | {how}"].values()) or [float("nan")])
                         for m in methods]
                xs = [i + (j - 1) * 0.27 for i in range(len(methods))]
                ax.bar(xs, [s[0] for s in stats], 0.27, yerr=[s[1] or 0.0 for s in stats], capsize=2, color=colour,
                       label=f"selected by {text}")
            what = "worst-group" if "spurious" in variant else "worst-class"
            ax.set_title(f"{variant}: test {what} accuracy (%), mean ± s.e.m. over seeds{ctx.note}", fontsize=10)
            ax.set_xticks(range(len(methods)))
            ax.set_xticklabels([m.label for m in methods], fontsize=8)
            ax.set_ylim(0, 100)
            ax.grid(axis="y", alpha=0.3)
        axes[0, 0].legend(fontsize=8, loc="upper left", ncol=3)
        fig.tight_layout()
        return ctx.save_figure(fig, "subpop_table.png")

    @staticmethod
    def _notes(settings, variants) -> List[str]:
        return [
            f"Search: {settings['trials']} setting(s) per method (trial 0 its defaults), {settings['seeds']} seed(s) "
            "each; selection takes the mean over seeds of the criterion (docs/METHODS.md#select-across-runs).",
            "fmnist_lt has no attribute: its groups are its classes, so worst-group accuracy is worst-class "
            "accuracy and both selections coincide.",
            "Published Waterbirds numbers (ImageNet-pretrained ResNet-50) are for orientation only; "
            f"variants here: {', '.join(variants)}.",
        ]
