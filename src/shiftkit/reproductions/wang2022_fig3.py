"""[W] Figure 3: CE vs the polynomially-tailed loss, trained to interpolation, under no importance
weights, IW (w̄) and IW-Exp (w̄^3/2) (docs/METHODS.md#reproduction-wang2022-fig3) on ``fmnist_binary``."""

from __future__ import annotations

from .reproduction import Claim, Reproduction, Summary, mean, p_text, paired, register
from .wang2022_protocol import (
    FIG34_PAIRS, PAPER_FIG3, bars, curves, interpolation_note, pair_rows, scales, train_accuracy, train_presets,
    values,
)

#: One-sided p below which a difference counts as shown.
ALPHA = 0.05


def shown(p) -> object:
    """True if the one-sided test shows the difference, None if it cannot be run (one seed)."""
    return None if p is None else p < ALPHA


def not_shown(p) -> object:
    return None if p is None else p >= ALPHA


def paper_means(table: dict) -> dict:
    """``{setting: {"CE": mean, "Poly": mean}}`` from the paper's ``"0.605 ± 0.008"`` cells."""
    return {s: {"CE": float(ce.split()[0]), "Poly": float(poly.split()[0])} for s, (ce, poly, _) in table.items()}


@register("wang2022-fig3")
class WangFig3(Reproduction):
    """Six methods (CE and Poly, each without IW, with IW and with IW-Exp), every seed trained for [W]'s
    400 epochs (scaled by ``epoch_scale``) at a constant learning rate, tested with their final weights.
    Balanced test accuracy equals [W]'s ``test_reweighted_acc`` on this balanced test set (docs/METHODS.md#headline-wang2022)."""

    title = "Importance weighting under interpolation: CE vs polynomially-tailed loss (final weights)"
    source = "[W] Figure 3, binary CIFAR-10 protocol on Fashion-MNIST; docs/METHODS.md#reproduction-wang2022-fig3"
    keys = ("balanced_acc", "p_poly_gt_ce", "train_acc")
    scales = scales(tiny_data=["data.n_majority=200"], quick_data=["data.n_majority=1000"])

    def run(self, ctx, settings):
        presets = [p for _, _, ce, poly in FIG34_PAIRS for p in (ce, poly)]
        runs = train_presets(ctx, presets, settings, "Figure 3")
        rows, key, ps = pair_rows(runs, FIG34_PAIRS, PAPER_FIG3, "final")
        ce = {slug: values(runs[c], "final") for _, slug, c, _ in FIG34_PAIRS}
        iw_gain = paired(ce["iw"], ce["no_iw"])
        claims = [
            Claim("with IW, Poly beats CE once both interpolate (one-sided paired p < 0.05)",
                  shown(ps["iw"]), f"p = {p_text(ps['iw'])}"),
            Claim("with IW-Exp, Poly beats CE (p < 0.05)", shown(ps["iw_exp"]), f"p = {p_text(ps['iw_exp'])}"),
            Claim("trained to interpolation, IW does not improve CE over no IW (p of CE+IW > CE is not < 0.05)",
                  not_shown(iw_gain),
                  f"CE {mean(ce['no_iw']):.3f}, CE+IW {mean(ce['iw']):.3f}, p = {p_text(iw_gain)}"),
            Claim("without IW, Poly is no better than CE (p of Poly > CE is not < 0.05)",
                  not_shown(ps["no_iw"]), f"p = {p_text(ps['no_iw'])}"),
        ]
        train_acc = train_accuracy(runs)
        groups = [(s, {"CE": values(runs[c], "final"), "Poly": values(runs[p], "final")}) for s, _, c, p in FIG34_PAIRS]
        figures = [
            bars(ctx, groups, paper_means(PAPER_FIG3), "Figure 3: final weights (x: [W] on CIFAR-10)",
                 "test balanced accuracy", "fig3.png"),
            curves(ctx, runs, "fig3_curves.png", {p: f"{loss}+{s.split()[0]}".replace("+No", "")
                                                  for s, _, c, q in FIG34_PAIRS for loss, p in (("CE", c), ("Poly", q))}),
        ]
        notes = [
            interpolation_note(runs),
            "Fashion-MNIST T-shirt/top vs shirt stands in for CIFAR-10 cat vs dog (docs/METHODS.md#data-fmnist_binary, "
            "docs/METHODS.md#datasets-offline); accuracies are not comparable across the two datasets, the orderings are.",
        ]
        return Summary(
            key={"balanced_acc": key, "p_poly_gt_ce": ps, "train_acc": train_acc},
            rows=rows, claims=claims, figures=figures, notes=notes,
        )
