"""[AB] Lemma 2 (docs/METHODS.md#reproduction-autobalance-lemma2): on separable two-class data, spherical
augmentation of radius ε_y per class and the parametric loss's multipliers Δ_y (docs/METHODS.md#loss-autobalance)
both shift the max-margin constraints per class, so that for a given Δ some ε gives the same classifier.

Per data set (``seeds`` of them; numerics in :mod:`.autobalance2021_lemma2_theory`): 2-D separable data,
``n_majority`` against ``n_minority`` points; Δ = CDT's ``(n/n_max)^gamma`` from ``losses.build("autobalance",
init="cdt")``. Exact: the plain SVM, the augmented classifier on a grid of ε_min in ``[0, eps_max·γ₀]``
(ε_maj = 0, γ₀ the plain margin) and the cost-sensitive SVM of Δ; the ε_min whose augmented classifier is
nearest the Δ classifier, by a 1-D search, beside the closed form ``d_min − d_maj`` of the cost-sensitive SVM
(its distances to each class's nearest point). Trained: logistic regression with augmentation at
``trained_points`` + 1 radii evenly spaced from 0 to ``eps_max·γ₀`` and at the matched one, with the CE of
Δ_y·f, and with ``loss=autobalance`` itself on two logits. The exact part is computed twice: with the bias in
the norm (``bias_scale``, what gradient descent converges to) and out of it (the textbook SVM).
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np

from . import autobalance2021_lemma2_theory as theory
from .reproduction import Claim, Context, Reproduction, Summary, register

#: "The same classifier": normals within this angle (degrees) and offsets within this fraction of γ₀.
ANGLE_TOL, OFFSET_TOL = 0.5, 0.05
_COMMON = dict(n_majority=100, n_minority=10, gamma=0.3, bias_scale=1.0, eps_max=1.0, grid=21, lr=32.0)
_SCALES = {
    "tiny": dict(_COMMON, n_majority=30, n_minority=5, seeds=1, grid=5, trained_points=1, steps=300, steps_plain=600,
                 copies=32),
    "quick": dict(_COMMON, seeds=2, trained_points=2, steps=4000, steps_plain=20000, copies=1024),
    "paper": dict(_COMMON, seeds=5, trained_points=5, steps=12000, steps_plain=60000, copies=2048),
}


@register("autobalance-lemma2")
class AutoBalanceLemma2(Reproduction):
    title = "Spherical augmentation per class and logit multipliers give the same max-margin classifier"
    source = "[AB] Lemma 2; docs/METHODS.md#reproduction-autobalance-lemma2"
    keys = ("angle_exact_deg", "angle_trained_deg", "epsilon_matching", "shift_per_epsilon")
    scales = _SCALES

    def run(self, ctx: Context, settings: Dict) -> Summary:
        runs = [theory.data_set(settings, seed, ctx.log) for seed in range(settings["seeds"])]
        key = _key(runs)
        figures = [_classifiers_figure(ctx, runs[0]), _shift_figure(ctx, runs[0])]
        return Summary(key=key, rows=_rows(key), claims=_claims(runs), figures=figures, notes=_notes(settings, key))


def _mean(runs: List[Dict], get) -> float:
    return float(np.mean([get(r) for r in runs]))


def _worst(r: Dict, i: int) -> float:
    """The worst trained-vs-exact angle (``i = 0``) or offset (1) of the augmented runs of one data set."""
    return max(c[i] for c in r["trained"]["to_exact"])


#: Key figure -> its value in one data set's results.
_FIELDS = {
    "plain_margin": lambda r: r["gamma0"],
    "epsilon_matching": lambda r: r["exact"]["eps"],
    "epsilon_matching_closed_form": lambda r: r["exact"]["closed"],
    "angle_exact_deg": lambda r: r["exact"]["angle"],
    "offset_exact": lambda r: r["exact"]["offset"],
    "angle_trained_deg": lambda r: r["trained"]["match"][0],
    "offset_trained": lambda r: r["trained"]["match"][1],
    "shift_per_epsilon": lambda r: r["slope"],
    "shift_per_epsilon_trained": lambda r: r["slope_trained"],
    "plain_vs_delta_angle_deg": lambda r: r["exact"]["plain_vs_cs"][0],
    "plain_vs_delta_offset": lambda r: r["exact"]["plain_vs_cs"][1],
    "trained_augmented_vs_exact_angle_deg": lambda r: _worst(r, 0),
    "trained_augmented_vs_exact_offset": lambda r: _worst(r, 1),
    "trained_delta_vs_exact_angle_deg": lambda r: r["trained"]["delta_to_exact"][0],
    "trained_delta_vs_exact_offset": lambda r: r["trained"]["delta_to_exact"][1],
    "epsilon_matching_textbook": lambda r: r["textbook"]["eps"],
    "epsilon_matching_textbook_closed_form": lambda r: r["textbook"]["closed"],
    "angle_textbook_deg": lambda r: r["textbook"]["angle"],
    "offset_textbook": lambda r: r["textbook"]["offset"],
    "two_logits_vs_plain_angle_deg": lambda r: r["trained"]["two_logits"][0][0],
    "two_logits_vs_delta_angle_deg": lambda r: r["trained"]["two_logits"][1][0],
}
#: summary.md's rows: (quantity, paper, the two key figures it shows, their format).
_ROWS = [
    ("plain SVM vs Δ classifier: angle (°) / offset", "differ",
     ("plain_vs_delta_angle_deg", "plain_vs_delta_offset"), ".3f"),
    ("matched ε_min: 1-D search / closed form d_min − d_maj", "exists",
     ("epsilon_matching", "epsilon_matching_closed_form"), ".4f"),
    ("exact: augmented vs Δ, angle (°) / offset", "equal", ("angle_exact_deg", "offset_exact"), ".4f"),
    ("trained: augmented vs Δ, angle (°) / offset", "equal in the limit",
     ("angle_trained_deg", "offset_trained"), ".4f"),
    ("textbook SVM (bias out of the norm): ε search / closed form", "–",
     ("epsilon_matching_textbook", "epsilon_matching_textbook_closed_form"), ".6f"),
    ("textbook SVM: augmented vs Δ, angle (°) / offset", "equal", ("angle_textbook_deg", "offset_textbook"), ".1e"),
    ("boundary shift toward the majority per unit ε_min: exact / trained", "> 0",
     ("shift_per_epsilon", "shift_per_epsilon_trained"), ".4f"),
    ("trained vs exact augmented, worst over radii: angle (°) / offset", "→ 0",
     ("trained_augmented_vs_exact_angle_deg", "trained_augmented_vs_exact_offset"), ".4f"),
    ("trained vs exact Δ classifier: angle (°) / offset", "→ 0",
     ("trained_delta_vs_exact_angle_deg", "trained_delta_vs_exact_offset"), ".4f"),
    ("loss=autobalance on two logits: angle (°) to the plain SVM / to the Δ classifier", "–",
     ("two_logits_vs_plain_angle_deg", "two_logits_vs_delta_angle_deg"), ".3f"),
]


def _key(runs: List[Dict]) -> Dict:
    """Key figures: means over data sets, and each data set's values under ``per_seed``."""
    per_seed = [{name: float(get(r)) for name, get in _FIELDS.items()} for r in runs]
    key = {name: _mean(runs, get) for name, get in _FIELDS.items()}
    return {**key, "delta": list(runs[0]["delta"]), "per_seed": per_seed}


def _rows(key: Dict) -> list:
    """summary.md's rows (means over data sets)."""
    rows = [("Δ (majority, minority): CDT's (n/n_max)^γ", "–", " / ".join(f"{d:.4f}" for d in key["delta"])),
            ("plain SVM margin γ₀", "–", f"{key['plain_margin']:.4f}")]
    return rows + [(q, paper, " / ".join(f"{key[k]:{fmt}}" for k in keys)) for q, paper, keys, fmt in _ROWS]


def _monotone(values, sign: int) -> bool:
    return bool(np.all(sign * np.diff(values) > 0))


def _moves(r: Dict) -> bool:
    """Whether d_maj falls and d_min rises with ε, exact and trained."""
    return all(_monotone([c[part] for c in curve], direction) for curve in (r["curve"], r["trained"]["fit"])
               for part, direction in (("d_majority", -1), ("d_minority", 1)))


def _same(angle: float, offset: float, r: Dict) -> bool:
    return angle < ANGLE_TOL and offset < OFFSET_TOL * r["gamma0"]


def _claims(runs: List[Dict]) -> List[Claim]:
    d = " / ".join
    exact = all(_same(r["exact"]["angle"], r["exact"]["offset"], r) for r in runs)
    trained = all(_same(*r["trained"]["match"], r) for r in runs)
    textbook = all(abs(r["textbook"]["eps"] - r["textbook"]["closed"]) < 1e-6 and r["textbook"]["angle"] < 1e-4
                   and r["textbook"]["offset"] < 1e-6 for r in runs)
    same = f"angle below {ANGLE_TOL}° and offset below {OFFSET_TOL} γ₀"
    return [
        Claim("Stronger spherical augmentation on the minority moves the boundary toward the majority: the distance "
              "to the nearest majority point falls and to the nearest minority point rises with ε_min (exact and "
              "trained)", all(_moves(r) for r in runs),
              "d_maj " + d(f"{r['curve'][0]['d_majority']:.3f} → {r['curve'][-1]['d_majority']:.3f}" for r in runs)
              + "; shift per unit ε " + d(f"{r['slope']:.3f} (trained {r['slope_trained']:.3f})" for r in runs)),
        Claim(f"For the parametric loss with Δ there is an augmentation strength giving the same classifier (exact "
              f"solutions: {same})", exact, "angle (°) / offset: " + d(
                  f"{e['angle']:.4f} / {e['offset']:.5f} at ε = {e['eps']:.4f}" for e in (r["exact"] for r in runs))),
        Claim(f"The same for the trained classifiers at that ε ({same})", trained,
              "angle (°) / offset: " + d(f"{a:.4f} / {o:.5f}" for a, o in (r["trained"]["match"] for r in runs))
              + "; plain SVM vs Δ: " + d(f"{r['exact']['plain_vs_cs'][0]:.3f}°" for r in runs)),
        Claim("With the bias out of the norm (textbook SVM) the match is exact (angle < 1e-4°, offset < 1e-6), at "
              "ε_min = d_min − d_maj of the cost-sensitive SVM (within 1e-6)", textbook,
              "search / closed form: " + d(f"{r['textbook']['eps']:.6f} / {r['textbook']['closed']:.6f}"
                                            for r in runs)),
    ]


def _notes(s: Dict, key: Dict) -> List[str]:
    return [
        f"Training: loss-normalized GD (θ ← θ − η∇log L, η = {s['lr']}/R²) from zero, {s['steps']} steps with "
        f"augmentation and {s['steps_plain']} without (plain, Δ and two-logit runs: ten times cheaper a step); each "
        f"augmented example repeated {s['copies']} times a step (weight 1/{s['copies']}), drawn afresh every step by "
        "the spherical policy.",
        "Why trained augmented runs lag the exact classifier: at a finite norm t = ‖w‖ a ball's loss is its worst "
        "point's times about (tε)^(-3/2), so balls act as if their radius were about 1.5·ln(tε)/t smaller than the "
        "majority points' zero, and each step sees only its own draws; both fade as the steps grow, slowly. Where two "
        "minority balls are active at once (larger ε) a small difference in their effective radii tilts the normal.",
        f"Bias in the norm (bias_scale = {s['bias_scale']}): with one support point per class the augmented family "
        "does not pass exactly through the Δ classifier; with the bias out of the norm every classifier shares the "
        "plain SVM's normal and only the intercept moves, by (ε_min − ε_maj)/2.",
        f"loss=autobalance itself, on two logits of a linear model, converges to the plain SVM whatever Δ "
        f"({key['two_logits_vs_plain_angle_deg']:.3f}° from it): Δ only reweights the norm of the two rows; the binary "
        "CE of Δ_y·f (one logit, [Kini et al.]'s form) gives the cost-sensitive SVM.",
        "Offsets are b/‖w‖ (the signed distance of the origin to the boundary), in data units.",
    ]


def _line(ax, g: Dict, **style) -> None:
    """The boundary ``{x : n·x + o = 0}`` of a :func:`~.autobalance2021_lemma2_theory.geometry` across the axes."""
    n, o = g["normal"], g["offset"]
    t = np.linspace(-6, 6, 2)
    ax.plot(-o * n[0] - t * n[1], -o * n[1] + t * n[0], **style)


def _classifiers_figure(ctx: Context, r: Dict) -> str:
    """The data, the minority's balls at the matched ε, and the exact and trained boundaries (two zooms)."""
    from matplotlib.patches import Circle

    from ..plots import _pyplot

    X, sign, e, t = r["X"], r["sign"], r["exact"], r["trained"]
    fig, axes = _pyplot().subplots(1, 2, figsize=(12, 6.6))
    for ax, zoom in zip(axes, (False, True)):
        for x in X[sign < 0]:
            ax.add_patch(Circle(x, e["eps"], color="tab:orange", alpha=0.12, lw=0))
        ax.scatter(*X[sign > 0].T, s=12, color="tab:blue", label=f"majority ({int((sign > 0).sum())})")
        ax.scatter(*X[sign < 0].T, s=18, color="tab:orange", marker="s", label=f"minority ({int((sign < 0).sum())}), "
                   f"balls of radius ε = {e['eps']:.3f}")
        _line(ax, e["plain"], color="gray", lw=1.5, label="plain max-margin SVM (exact)")
        _line(ax, e["aug"], color="tab:green", lw=5, alpha=0.35, label="augmented max-margin, ε_min = ε (exact)")
        _line(ax, e["cs"], color="tab:red", lw=1.5, ls="--", label=f"Δ = {r['delta'][0]:.2f}, {r['delta'][1]:.2f} "
              "cost-sensitive SVM (exact)")
        _line(ax, t["aug"], color="darkgreen", lw=1, ls=":",
              label="logistic regression + spherical augmentation (trained)")
        _line(ax, t["delta"], color="darkred", lw=1, ls="-.", label="logistic regression, CE of Δ_y·f (trained)")
        centre = -e["cs"]["offset"] * e["cs"]["normal"]
        span = 0.6 if zoom else 4.0
        ax.set_xlim(centre[0] - span, centre[0] + span)
        ax.set_ylim(centre[1] - span, centre[1] + span)
        ax.set_aspect("equal")
        ax.set_xlabel("x₁")
        ax.set_ylabel("x₂")
        ax.set_title("zoom on the boundaries" if zoom else "data and boundaries", fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    fig.suptitle(f"[AB] Lemma 2: angle between the augmented and the Δ classifier {e['angle']:.3f}° (exact), "
                 f"{t['match'][0]:.3f}° (trained)\n" + ctx.note.strip(), fontsize=10)
    fig.tight_layout(rect=(0, 0.15, 1, 0.97))
    return ctx.save_figure(fig, "classifiers.png")


def _shift_figure(ctx: Context, r: Dict) -> str:
    """Distances of the boundary to each class's nearest point, and the normal's turn, against ε_min."""
    from ..plots import _pyplot

    fig, (ax, bx) = _pyplot().subplots(1, 2, figsize=(12, 4.6))
    eps, fit, t_eps = r["eps"], r["trained"]["fit"], r["trained"]["eps"]
    g0 = r["gamma0"]
    for part, colour in (("d_majority", "tab:blue"), ("d_minority", "tab:orange")):
        name = part.split("_")[1]
        ax.plot(eps, [c[part] for c in r["curve"]], color=colour, label=f"to the nearest {name} point (exact)")
        ax.plot(t_eps, [f[part] for f in fit], "o", color=colour, label=f"to the nearest {name} point (trained)")
    tb = r["textbook"]["plain"]["d_majority"]
    ax.plot(eps, [tb - e / 2 for e in eps], ":", color="tab:blue", label="textbook SVM: γ₀ − ε/2")
    ax.plot(eps, [tb + e / 2 for e in eps], ":", color="tab:orange", label="textbook SVM: γ₀ + ε/2")
    bx.plot(eps, [theory.compare(c, r["curve"][0])[0] for c in r["curve"]], color="tab:green", label="exact")
    bx.plot(t_eps, [theory.compare(f, r["curve"][0])[0] for f in fit], "o", color="tab:green", label="trained")
    bx.axhline(0, color="gray", ls=":", label="textbook SVM (bias out of the norm): 0")
    for axis in (ax, bx):
        axis.axvline(r["exact"]["eps"], color="tab:red", ls="--", lw=1, label="ε matching the Δ classifier")
        axis.set_xlabel("minority radius ε_min (ε_maj = 0)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    ax.set_ylabel("distance from the boundary")
    ax.set_title(f"The boundary moves toward the majority (γ₀ = {g0:.3f})", fontsize=10)
    bx.set_ylabel("angle of the normal to the plain SVM's (°)")
    bx.set_title("The normal turns a little (bias in the norm)", fontsize=10)
    fig.suptitle("[AB] Lemma 2: spherical augmentation of the minority" + ctx.note, fontsize=10)
    fig.tight_layout()
    return ctx.save_figure(fig, "shift.png")
