"""[W] Figure 4: the same comparison with early stopping (IW-ES): each run tested at its epoch of best
validation group-balanced accuracy (docs/METHODS.md#selection-best, docs/METHODS.md#headline-wang2022) on ``fmnist_binary``."""

from __future__ import annotations

from .reproduction import Claim, Reproduction, Summary, mean, p_text, paired, register
from .wang2022_fig3 import WangFig3, not_shown, paper_means, shown
from .wang2022_protocol import FIG34_PAIRS, PAPER_FIG4, bars, interpolation_note, pair_rows, train_presets, values

#: Figure 4's settings: the importance-weighted ones (its runs are Figure 3's IW runs).
PAIRS = [pair for pair in FIG34_PAIRS if pair[1] != "no_iw"]


@register("wang2022-fig4")
class WangFig4(Reproduction):
    """The IW and IW-Exp runs of Figure 3 (the ``wang_*_es`` presets: identical training, so a shared
    runs directory reuses them), tested with the weights of their best validation epoch
    (``train.select=best:group_balanced_acc``, [W]'s max-mode checkpoint, docs/METHODS.md#selection-best). Also compares each
    early-stopped CE run with its own final weights: early stopping is where [W] finds IW still helps CE."""

    title = "Importance weighting with early stopping: CE vs polynomially-tailed loss (best validation epoch)"
    source = "[W] Figure 4, binary CIFAR-10 protocol on Fashion-MNIST; docs/METHODS.md#reproduction-wang2022-fig4"
    keys = ("balanced_acc", "p_poly_gt_ce", "selected_epoch", "ce_es_minus_final")
    scales = WangFig3.scales

    def run(self, ctx, settings):
        presets = [p for _, _, ce, poly in PAIRS for p in (ce, poly)]
        runs = train_presets(ctx, presets, settings, "Figure 4")
        rows, key, ps = pair_rows(runs, PAIRS, PAPER_FIG4, "selected")
        gains, claims = {}, []
        for setting, slug, ce_preset, _ in PAIRS:
            stopped, final = values(runs[ce_preset], "selected"), values(runs[ce_preset], "final")
            gains[slug] = mean(stopped) - mean(final)
            rows.append((f"{setting}: CE early-stopped − final", "+0.047" if slug == "iw" else "+0.038",
                         f"{gains[slug]:+.3f}"))
            p = paired(stopped, final)
            claims.append(Claim(f"{setting}: early stopping improves CE over its interpolating weights (p < 0.05)",
                                shown(p), f"{mean(stopped):.3f} vs {mean(final):.3f}, p = {p_text(p)}"))
        for setting, slug, _, _ in PAIRS:
            claims.append(Claim(f"{setting}, early-stopped: Poly is at least as good as CE (p of CE > Poly is not"
                                " < 0.05)", not_shown(None if ps[slug] is None else 1.0 - ps[slug]),
                                f"Poly − CE = {key[slug]['poly'] - key[slug]['ce']:+.3f}, p (Poly > CE) = "
                                f"{p_text(ps[slug])}"))
        epochs = {runs[p][0]["method"]: mean({r["config"]["seed"]: r["selected_epoch"] for r in runs[p]})
                  for p in presets}
        groups = [(s, {"CE": values(runs[c], "selected"), "Poly": values(runs[p], "selected")}) for s, _, c, p in PAIRS]
        figure = bars(ctx, groups, paper_means(PAPER_FIG4), "Figure 4: best validation epoch (x: [W] on CIFAR-10)",
                      "test balanced accuracy", "fig4.png")
        notes = [
            "Paper's 'early-stopped − final' rows: Figure 4's CE minus Figure 3's CE on CIFAR-10 "
            "(0.625 − 0.578, 0.612 − 0.574).",
            "Mean selected epoch: " + ", ".join(f"{m} {e:.0f}" for m, e in epochs.items()) + ".",
            interpolation_note(runs),
        ]
        return Summary(
            key={"balanced_acc": key, "p_poly_gt_ce": ps, "selected_epoch": epochs, "ce_es_minus_final": gains},
            rows=rows, claims=claims, figures=[figure], notes=notes,
        )
