"""[W] Figure 2 (docs/METHODS.md#reproduction-wang2022-fig2): with a polynomially-tailed loss, importance weights change the
interpolating classifier, and exponentiated weights help.

Theory simulation (numerics in :mod:`.wang2022_theory`): two Gaussian classes in ``p = 10^6`` dimensions
with means ``|mu| e_1``, ``|mu| e_2`` (``|mu| = p^0.251``), ``n = 100`` points, minority weight
``b = tau^a`` in the objective ``[sum_1 1/(z.v) + b sum_2 1/(z.v)]/(n_1 + b n_2) + |v|^2``, SGD (lr 1e-3,
momentum 0.9) to ``|grad| <= 1e-5``, test error ``(1/2)[Phi(-mu_1.v^) + Phi(-mu_2.v^)]``, 10 runs.

- Left: test error against the imbalance ``tau = n_1/n_2`` (``t = 1..11``, fresh data per run and
  ``tau``) for ``w = 1, tau, tau^3`` (``a = 0, 1, 3``, each from ``(mu_1 + mu_2)/|mu_1 + mu_2|``) and the
  max-margin classifier (the no-intercept hinge-loss SVM, C = 1).
- Right: ``tau ~ 10`` (91 vs 9), ``a`` in ``linspace(0, 5, 21)`` warm-started in turn from the normalized
  mean of the ``z``'s: majority, minority and overall error.

Scales: ``quick`` is the paper's setting with the noise Gram matrix drawn by Bartlett's decomposition
(the same distribution; seconds). ``paper`` draws the ``10^6``-dimensional features explicitly, as the
notebook does (in chunks, on ``--device``; about 3 CPU-seconds for each of its 120 data sets).
``tiny`` uses ``p = 1000`` (at ``p = 500`` a margin can cross zero, where ``1/(z.v)`` is no longer a tail).
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np

from ..errors import ShiftkitError
from ..environment import resolve_device
from . import wang2022_theory as theory
from .reproduction import Claim, Context, Reproduction, Summary, register

#: The left panel's weight exponents, as [W]: w = 1, tau, tau^3.
LEFT_A = (0.0, 1.0, 3.0)
LABELS = {0.0: "w = 1", 1.0: "w = τ", 3.0: "w = τ³"}
RIGHT_A_MAX = 5.0
FEATURES = {
    "bartlett": "the noise Gram matrix drawn as the Wishart matrix it is (Bartlett), the distribution of the "
                "notebook's explicit features",
    "explicit": "the p-dimensional features drawn explicitly in chunks, as the notebook",
}


@register("wang2022-fig2")
class Wang2022Fig2(Reproduction):
    title = "Theory simulation: exponentiated importance weights with a polynomially-tailed loss"
    source = "[W] Figure 2; docs/METHODS.md#reproduction-wang2022-fig2"
    keys = ("p", "error_a0", "error_a1", "error_a3", "error_max_margin", "best_a_right")
    _common = {"n": 100, "mu_exponent": 0.251, "right_t": 10, "lr": 1e-3, "momentum": 0.9, "tol": 1e-5,
               "max_steps": 100_000, "seed": 0}
    scales = {
        "tiny": {**_common, "p": 1000, "runs": 1, "t_values": [1, 4, 10], "right_points": 6, "features": "explicit"},
        "quick": {**_common, "p": 1_000_000, "runs": 10, "t_values": list(range(1, 12)), "right_points": 21,
                  "features": "bartlett"},
        "paper": {**_common, "p": 1_000_000, "runs": 10, "t_values": list(range(1, 12)), "right_points": 21,
                  "features": "explicit"},
    }

    def run(self, ctx: Context, settings: Dict) -> Summary:
        s = settings
        if s["runs"] < 1 or s["n"] < 2 or s["p"] < 3 or s["right_points"] < 2:
            raise ShiftkitError("wang2022-fig2: runs >= 1, n >= 2, p >= 3 and right_points >= 2 are required")
        mu = float(s["p"]) ** s["mu_exponent"]
        splits = theory.imbalance_splits(s["n"], s["t_values"])
        left = _left_panel(ctx, s, mu, splits)
        right = _right_panel(ctx, s, mu)
        return _summary(ctx, s, mu, splits, left, right)


def _gd(s: Dict) -> Dict:
    return {"lr": s["lr"], "momentum": s["momentum"], "tol": s["tol"], "max_steps": s["max_steps"]}


def _draw(ctx: Context, s: Dict, mu: float, n1: int, n2: int, key: List[int]):
    rng = np.random.default_rng([s["seed"], *key])
    return theory.draw(n1, n2, s["p"], mu, rng, s["features"], resolve_device(ctx.device))


def _left_panel(ctx: Context, s: Dict, mu: float, splits) -> Dict[str, np.ndarray]:
    """Balanced test errors ``[tau, run]`` per weighting and for max-margin."""
    grams, means, weights, mm_errors = [], [], [], []
    for n1, n2 in splits:
        for run in range(s["runs"]):
            gram, mean = theory.reduce(*_draw(ctx, s, mu, n1, n2, [0, run, n1]), mu, start=theory.DIAGONAL)
            grams.append(gram)
            means.append(mean)
            weights.append(np.stack([theory.class_weights(n1, n2, (n1 / n2) ** a) for a in LEFT_A], 1))
            alpha = theory.max_margin(gram[1:, 1:])
            beta = np.concatenate([[0.0], alpha])[None, :, None]
            mm_errors.append(theory.class_errors(gram[None], mean[None], beta).mean())
        ctx.log(f"tau = {n1 / n2:.2f}: {s['runs']} data sets drawn, max-margin classifiers fitted")
    gram, mean = np.array(grams), np.array(means)
    beta = np.zeros((len(grams), gram.shape[1], len(LEFT_A)))
    beta[:, 0] = 1.0
    beta, steps = theory.descend(gram, np.array(weights), beta, **_gd(s))
    ctx.log(f"left panel: {gram.shape[0] * len(LEFT_A)} problems, at most {steps.max()} SGD steps")
    errors = theory.class_errors(gram, mean, beta).mean(1).reshape(len(splits), s["runs"], len(LEFT_A))
    out = {LABELS[a]: errors[..., j] for j, a in enumerate(LEFT_A)}
    out["max-margin"] = np.array(mm_errors).reshape(len(splits), s["runs"])
    return out


def _right_panel(ctx: Context, s: Dict, mu: float) -> Dict[str, np.ndarray]:
    """Per-class errors ``[a, run, class]`` at ``tau ~ right_t``, warm-started over ``a``."""
    (n1, n2), = theory.imbalance_splits(s["n"], [s["right_t"]])
    reduced = [theory.reduce(*_draw(ctx, s, mu, n1, n2, [1, run]), mu) for run in range(s["runs"])]
    gram, mean = np.array([g for g, _ in reduced]), np.array([m for _, m in reduced])
    # The notebook's start: the mean of the z's, normalized; in the basis Z that is a constant beta.
    beta = np.ones((len(gram), s["n"], 1)) / np.sqrt(gram.sum((1, 2)))[:, None, None]
    exponents = np.linspace(0.0, RIGHT_A_MAX, s["right_points"])
    errors, steps = theory.weight_sweep(gram, mean, n1, n2, exponents, beta, **_gd(s))
    ctx.log(f"right panel: tau = {n1 / n2:.2f}, {len(exponents)} weights x {s['runs']} runs, "
            f"at most {steps.max()} SGD steps per weight")
    return {"a": exponents, "tau": n1 / n2, "errors": errors}


def _summary(ctx: Context, s: Dict, mu: float, splits, left, right) -> Summary:
    taus = np.array([n1 / n2 for n1, n2 in splits])
    ref = int(np.argmin(np.abs(taus - 10.0)))
    means = {k: v.mean(1) for k, v in left.items()}
    at = {k: float(v[ref]) for k, v in means.items()}
    a, per_class = right["a"], right["errors"].mean(1)
    overall = per_class.mean(1)
    best = int(np.argmin(overall))
    key = {
        "p": s["p"], "mu_norm": mu, "tau": float(taus[ref]),
        "error_a0": at["w = 1"], "error_a1": at["w = τ"], "error_a3": at["w = τ³"],
        "error_max_margin": at["max-margin"],
        "best_a_right": float(a[best]), "taus": taus.tolist(),
        "errors_by_tau": {name: means[label].tolist() for name, label in
                          [("a0", "w = 1"), ("a1", "w = τ"), ("a3", "w = τ³"), ("max_margin", "max-margin")]},
        "right_tau": right["tau"], "right_a": a.tolist(), "right_error_majority": per_class[:, 0].tolist(),
        "right_error_minority": per_class[:, 1].tolist(), "right_error_overall": overall.tolist(),
    }
    figure = ctx.save_figure(_figure(taus, means, left, right, s["runs"]), "figure2.png")
    rows, claims = _findings(key, taus, means, left, ref)
    notes = [
        "Exact reduced computation: SGD runs on the coefficients of v in span{w_0, z_1..z_n} with the Gram "
        "matrix, step for step equal to the p-dimensional SGD (tests/test_repro_wang_synthetic.py); float64 "
        "where the notebook used float32.",
        f"features = {s['features']}: " + FEATURES[s["features"]],
        "Max-margin: the SVM dual solved exactly (L-BFGS-B) instead of liblinear's approximate solution.",
        "Errors are fractions in summary.json and percentages in the table and figure.",
    ]
    return Summary(key=key, rows=rows, claims=claims, figures=[figure], notes=notes)


def _pct(values: np.ndarray) -> str:
    sem = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else None
    return f"{100 * values.mean():.3f}" + (f" ± {100 * sem:.3f}" if sem is not None else "")


def _findings(key: Dict, taus, means, left, ref: int):
    """Rows of summary.md and the claims, from the key figures and the per-run errors."""
    a, overall = np.array(key["right_a"]), np.array(key["right_error_overall"])
    minority, majority = key["right_error_minority"], key["right_error_majority"]
    pick = [int(np.argmin(np.abs(a - x))) for x in (0.0, 1.0, 3.0)]
    tau, right = f"τ = {taus[ref]:.2f}", f"right panel (τ = {key['right_tau']:.2f})"
    rows = [(f"test error at {tau}, {label} (%)", paper, _pct(left[label][ref])) for label, paper in [
        ("w = 1", "highest, ≈ max-margin (figure)"), ("w = τ", "lower (figure)"), ("w = τ³", "lowest (figure)"),
        ("max-margin", "≈ w = 1 (figure)")]]
    rows += [
        (f"{right}: overall error at a = " + " / ".join(f"{a[i]:g}" for i in pick) + " (%)", "falls from a = 0",
         " / ".join(f"{100 * overall[i]:.3f}" for i in pick)),
        (f"{right}: a with the lowest overall error", "intermediate (figure)",
         f"{key['best_a_right']:g} ({100 * overall.min():.3f} %)"),
    ]
    rows += [(f"{right}: {name} error, a = 0 → {a[-1]:g} (%)", trend, f"{100 * e[0]:.3f} → {100 * e[-1]:.3f}")
             for name, trend, e in [("minority", "falls", minority), ("majority", "rises", majority)]]
    return rows, _claims(key, taus, means, ref)


def _claims(key: Dict, taus, means, ref: int) -> List[Claim]:
    at, tau = {k: float(v[ref]) for k, v in means.items()}, f"τ = {taus[ref]:.2f}"
    a, minority, majority = key["right_a"], key["right_error_minority"], key["right_error_majority"]
    weighted = [i for i, t in enumerate(taus) if t > 1]
    gain = [means["w = 1"][i] - means["w = τ³"][i] for i in weighted]
    to_mm = {w: [abs(means[w][i] - means["max-margin"][i]) for i in weighted] for w in ("w = 1", "w = τ", "w = τ³")}
    near = [to_mm["w = 1"][j] < min(to_mm["w = τ"][j], to_mm["w = τ³"][j]) for j in range(len(weighted))]
    trade = minority[-1] < minority[0] and majority[-1] > majority[0] and 0 < key["best_a_right"] < a[-1]
    return [
        Claim(f"Exponentiated weights lower the test error at {tau}: w = τ³ < w = τ < w = 1",
              bool(at["w = τ³"] < at["w = τ"] < at["w = 1"]),
              f"{100 * at['w = τ³']:.3f} %, {100 * at['w = τ']:.3f} %, {100 * at['w = 1']:.3f} %"),
        Claim("w = τ³ beats w = 1 at every τ > 1", bool(all(g > 0 for g in gain)),
              "w = 1 minus w = τ³ (points): " + ", ".join(f"{100 * g:.3f}" for g in gain)),
        Claim("Unweighted training tracks the max-margin classifier: at every τ > 1 the error of w = 1 is closer to "
              "max-margin's than the weighted runs' are", bool(all(near)),
              "|w = 1 - max-margin| (points): " + ", ".join(f"{100 * d:.3f}" for d in to_mm["w = 1"])),
        Claim("Right panel: the minority error falls and the majority error rises with a; the overall error is "
              "lowest at an intermediate a", bool(trade),
              f"best a = {key['best_a_right']:g}; minority {100 * minority[0]:.3f} → {100 * minority[-1]:.3f} %, "
              f"majority {100 * majority[0]:.3f} → {100 * majority[-1]:.3f} %"),
    ]


def _figure(taus, means, left, right, runs: int):
    from ..plots import _pyplot

    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12.0, 4.6))
    for (label, marker), color in zip([("w = 1", "o"), ("w = τ", "^"), ("w = τ³", "p"), ("max-margin", "*")],
                                      ["#7fbf7b", "#1b9e77", "#00441b", "#777777"]):
        sem = left[label].std(1, ddof=1) / np.sqrt(runs) if runs > 1 else 0 * taus
        ax.errorbar(taus, 100 * means[label], yerr=100 * sem, marker=marker, color=color, capsize=2,
                    linestyle="--" if label == "max-margin" else "-", label=label)
    ax.set_xlabel("imbalance ratio τ = n₁/n₂")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"Test error vs imbalance (mean ± s.e.m. of {runs} runs)")
    a, per_class = right["a"], 100 * right["errors"].mean(1)
    curves = [(per_class[:, 0], "majority class", "^"), (per_class[:, 1], "minority class", "o"),
              (per_class.mean(1), "overall", "*")]
    for values, label, marker in curves:
        bx.plot(a, values, marker=marker, label=label)
    bx.axvline(a[int(np.argmin(per_class.mean(1)))], color="gray", linestyle=":", label="lowest overall error")
    bx.set_xlabel("a (importance weight w = τᵃ)")
    bx.set_ylabel("test error (%)")
    bx.set_title(f"Test error vs weight exponent at τ = {right['tau']:.2f} ({runs} runs)")
    for axis in (ax, bx):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    return fig
