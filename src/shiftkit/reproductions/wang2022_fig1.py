"""[W] Figure 1 (docs/METHODS.md#reproduction-wang2022-fig1): importance weights stop mattering for cross-entropy once the data are
interpolated, but not for a polynomially-tailed loss.

Two Gaussians (``data.build("two_gaussians")``: minority class 0, 20 points around (0, 5); majority
class 1, 200 points around (5, 0); true boundary ``x1 = x0``) and a linear model ``nn.Linear(2, 2)``
with bias, trained by full-batch gradient descent without momentum on ``mean(r_i * loss_i)`` for CE and
Poly (docs/METHODS.md#loss-poly, alpha = 1, the [W] code's ``logit`` type), each without IW (``r = 1``) and with IW
(``r = 200/20 = 10`` on the minority class, not normalized). All four runs start from the same
``nn.Linear`` initialization as [W]'s notebook (seed 1, drawn right after the data).

Speed: for two logits both losses depend only on the margin ``v = y~ (f_1 - f_0) = delta . (y~ x~)``
with ``delta = theta_1 - theta_0`` (rows of ``[W | b]``) and ``x~ = [x, 1]``. The gradient of the
objective is ``+g`` for ``theta_1`` and ``-g`` for ``theta_0``, ``g = (1/N) sum_i r_i l'(v_i) y~_i x~_i``,
so a gradient step moves ``delta`` by ``-2 lr g`` and the four runs are one stacked float64 array:
about 30 microseconds per epoch, no autograd. The tests check ``g`` against autograd through
``losses.build("ce")`` and ``losses.build("poly")`` and the trajectory against ``torch.optim.SGD``.

Angle convention: the angle of the boundary *line* ``{x : delta_w . x + delta_b = 0}`` counter-clockwise
from the ``x0`` axis, in ``[0, 180)`` degrees, ``atan2(delta_w0, -delta_w1) mod 180``; the true
boundary ``x1 = x0`` has 45 degrees.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import numpy as np
import torch
from scipy.special import expit
from torch import nn

from .. import data, losses, metrics
from ..errors import ShiftkitError
from ..losses.basic import CrossEntropy, PolyTail
from .reproduction import Claim, Context, Reproduction, Summary, register

#: (label, loss name, importance weighted) of the four panels, in [W]'s order.
RUNS = (("CE", "ce", False), ("CE+IW", "ce", True), ("Poly", "poly", False), ("Poly+IW", "poly", True))
TRUE_ANGLE = 45.0


def _ce_slope(loss: CrossEntropy):
    # -d/dv softplus(-v) = sigmoid(-v) everywhere: no polynomial tail.
    return 1.0, (0.0, math.inf)


def _poly_slope(loss: PolyTail):
    left_at_beta = float(np.logaddexp(0.0, -loss.beta))
    return (1.0 / left_at_beta if loss.continuity == "scale" else 1.0), (loss.alpha, loss.beta)


#: Margin-slope parameters per loss class: (left-branch scale, (alpha, beta) of the tail).
_SLOPES = {CrossEntropy: _ce_slope, PolyTail: _poly_slope}


class MarginSlope:
    """``s(v) = -dl/dv`` of binary margin losses, one row per run: ``k sigmoid(-v)`` for ``v <= beta``
    and ``alpha (v - beta + 1)^(-alpha - 1)`` above (docs/METHODS.md#loss-ce, docs/METHODS.md#loss-poly). CE has no tail and ``k = 1``; the
    poly loss has ``k = 1/log(1 + e^-beta)`` with the [W] code's scaled left branch, ``1`` with the
    shifted one. Parameters are read from shiftkit's loss modules.

    >>> s = MarginSlope([losses.build("ce"), losses.build("poly")])
    >>> np.round(s(np.array([[0.0, 2.0], [0.0, 2.0]])), 4)        # sigmoid(0), sigmoid(-2); k/2, 1/4
    array([[0.5   , 0.1192],
           [1.5961, 0.25  ]])
    """

    def __init__(self, modules: Sequence[nn.Module]):
        kinds = [_SLOPES.get(type(m)) for m in modules]
        if None in kinds:
            raise ShiftkitError(f"margin slopes exist for {', '.join(c.__name__ for c in _SLOPES)} only")
        params = [kind(m) for kind, m in zip(kinds, modules)]
        self.scale = np.array([[k] for k, _ in params])
        self.alpha = np.array([[a] for _, (a, _) in params])
        self.beta = np.array([[b] for _, (_, b) in params])

    def __call__(self, v: np.ndarray) -> np.ndarray:
        s = self.scale * expit(-v)
        tail = v > self.beta
        # Masked ufuncs: the power is computed only on the tail (the hot loop's costliest operation).
        np.power(v - self.beta + 1.0, -self.alpha - 1.0, out=s, where=tail)
        np.multiply(s, self.alpha, out=s, where=tail)
        return s


def margin_gradient(delta: np.ndarray, signed: np.ndarray, ratios: np.ndarray, slope: MarginSlope) -> np.ndarray:
    """``g [R, 3]``: gradient of ``(1/N) sum_i r_i l(v_i)`` with respect to ``theta_1 = [W_1 | b_1]``
    (``-g`` for ``theta_0``), from ``delta = theta_1 - theta_0 [R, 3]``, ``signed = y~ x~ [N, 3]`` and
    ``ratios [R, N]``. A fast path, equal to autograd of ``mean(r * loss)`` through ``loss=ce`` or ``loss=poly``
    (tests/test_repro_wang_synthetic.py::test_margin_gradient_equals_autograd_through_shiftkit_losses)."""
    v = delta @ signed.T
    return -(ratios * slope(v)) @ signed / signed.shape[0]


def gradient_descent(delta, signed, ratios, slope: MarginSlope, lr: float, steps: int) -> np.ndarray:
    """``steps`` full-batch gradient steps of ``nn.Linear(2, 2)`` (SGD, no momentum) on ``delta``: a fast path (about
    30 microseconds per epoch for the four runs, where the figure takes up to 10^6 epochs), equal to ``torch.optim.SGD``
    through ``loss=ce`` and ``loss=poly`` with [W]'s unnormalized ratios, not ``weighting=iw`` through ``train.fit``
    (tests/test_repro_wang_synthetic.py::test_fast_gradient_descent_follows_torch_sgd_on_nn_linear_for_all_four_runs)."""
    delta = delta.copy()
    for _ in range(steps):
        delta -= 2.0 * lr * margin_gradient(delta, signed, ratios, slope)
    return delta


def notebook_init(seed: int = 1, n_minority: int = 20, n_majority: int = 200) -> np.ndarray:
    """``[W | b]`` (2 x 3) of ``nn.Linear(2, 2)`` as [W]'s notebook draws it: ``torch.manual_seed(seed)``,
    the two classes' ``randn`` draws, then the layer's default initialization (bounds ``1/sqrt(2)``)."""
    gen = torch.Generator().manual_seed(seed)
    torch.randn(n_minority, 2, generator=gen)
    torch.randn(n_majority, 2, generator=gen)
    # float32 as the notebook's layer: a float64 draw would consume the generator differently.
    weight, bias = torch.empty(2, 2), torch.empty(2, 1)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=gen)
    nn.init.uniform_(bias, -1 / math.sqrt(2), 1 / math.sqrt(2), generator=gen)
    return torch.cat([weight, bias], 1).double().numpy()


def boundary_angle(delta: np.ndarray) -> np.ndarray:
    """Angle in degrees, in ``[0, 180)``, of the line ``delta_w . x + delta_b = 0`` from the ``x0`` axis.

    >>> boundary_angle(np.array([[1.0, -1.0, 0.0], [1.0, 0.0, 3.0], [0.0, 2.0, 1.0]]))  # x1 = x0; x0 = -3; x1 = -1/2
    array([45., 90.,  0.])
    """
    delta = np.atleast_2d(delta)
    return np.degrees(np.arctan2(delta[:, 0], -delta[:, 1])) % 180.0


def max_margin_boundary(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``delta`` of the hard-margin SVM with intercept (``SVC``, linear kernel, ``C = 1e6``): the direction
    that gradient descent on CE approaches, with or without IW, at a rate ``1/log t`` (Soudry et al. 2018)."""
    from sklearn.svm import SVC

    svm = SVC(kernel="linear", C=1e6, tol=1e-10).fit(x, y)
    return np.concatenate([svm.coef_[0], svm.intercept_])


def log_checkpoints(epochs: int, count: int) -> List[int]:
    """About ``count`` log-spaced epochs from 1 to ``epochs`` (both included), without repeats."""
    return sorted({int(round(e)) for e in np.geomspace(1, epochs, max(count, 2))})


@register("wang2022-fig1")
class Wang2022Fig1(Reproduction):
    title = "Importance weighting and interpolation: two Gaussians, CE vs Poly, with and without IW"
    source = "[W] Figure 1; docs/METHODS.md#reproduction-wang2022-fig1"
    keys = ("angle_ce", "angle_ce_iw", "angle_poly", "angle_poly_iw", "angle_true")
    scales = {
        "tiny": {"epochs": 300, "lr": 0.1, "alpha": 1.0, "checkpoints": 8, "seed": 1},
        "quick": {"epochs": 100_000, "lr": 0.1, "alpha": 1.0, "checkpoints": 26, "seed": 1},
        "paper": {"epochs": 1_000_000, "lr": 0.1, "alpha": 1.0, "checkpoints": 31, "seed": 1},
    }

    def run(self, ctx: Context, settings: Dict) -> Summary:
        if settings["epochs"] < 1 or not settings["lr"] > 0:
            raise ShiftkitError("wang2022-fig1: epochs must be >= 1 and lr > 0")
        splits = data.build("two_gaussians", seed=settings["seed"])
        x, y = splits.train.x.double().numpy(), splits.train.y.numpy()
        signed = (2 * y - 1)[:, None] * np.concatenate([x, np.ones((len(y), 1))], 1)
        counts = np.bincount(y)
        ratios = np.array([max(counts) / counts[y] if iw else np.ones(len(y)) for _, _, iw in RUNS])
        options = {"ce": {}, "poly": {"alpha": settings["alpha"]}}
        slope = MarginSlope([losses.build(name, **options[name]) for _, name, _ in RUNS])
        theta = notebook_init(settings["seed"], int(counts[0]), int(counts[1]))
        delta = np.tile(theta[1] - theta[0], (len(RUNS), 1))
        epochs, history, done = log_checkpoints(settings["epochs"], settings["checkpoints"]), [], 0
        for epoch in epochs:
            delta = gradient_descent(delta, signed, ratios, slope, settings["lr"], epoch - done)
            history.append(boundary_angle(delta))
            if math.log10(epoch).is_integer() or epoch == epochs[-1]:
                angles = ", ".join(f"{label} {a:.2f}" for (label, _, _), a in zip(RUNS, history[-1]))
                ctx.log(f"epoch {epoch}: boundary angles {angles} (true {TRUE_ANGLE:.0f})")
            done = epoch
        return self._summary(ctx, splits, delta, np.array(epochs), np.array(history))

    def _summary(self, ctx: Context, splits, delta, epochs, history) -> Summary:
        labels = [label for label, _, _ in RUNS]
        angles = dict(zip(labels, boundary_angle(delta)))
        svm = max_margin_boundary(splits.train.x.double().numpy(), splits.train.y.numpy())
        svm = float(boundary_angle(svm)[0])
        train = dict(zip(labels, (_accuracy(d, splits.train, "acc") for d in delta)))
        test = dict(zip(labels, (_accuracy(d, splits.test, "balanced_acc") for d in delta)))
        key = {
            "angle_ce": angles["CE"], "angle_ce_iw": angles["CE+IW"], "angle_poly": angles["Poly"],
            "angle_poly_iw": angles["Poly+IW"], "angle_true": TRUE_ANGLE, "angle_max_margin": svm,
            "gap_ce": abs(angles["CE"] - angles["CE+IW"]), "gap_poly": abs(angles["Poly"] - angles["Poly+IW"]),
            "train_acc": train, "test_balanced_acc": test, "checkpoint_epochs": epochs.tolist(),
            "angles_by_epoch": {k: history[:, i].tolist() for i, k in enumerate(labels)},
        }
        figures = [
            ctx.save_figure(boundary_figure(splits.train, delta, angles, train), "boundaries.png"),
            ctx.save_figure(angle_figure(epochs, history, svm), "angles.png"),
        ]
        rows, claims = _findings(key, epochs, history)
        notes = [
            "Full-batch GD in float64 with analytic margin-loss gradients, equal to autograd through shiftkit's "
            "losses and to torch.optim.SGD on nn.Linear(2, 2) (tests/test_repro_wang_synthetic.py).",
            "lr = 0.1: [W]'s training cell says 1.0 but its figure loads checkpoints named lr 0.1 (docs/METHODS.md#quirk-two-gaussians-lr).",
            "Angles: the boundary line's angle from the x0 axis, in [0, 180) degrees; x1 = x0 is 45.",
        ]
        return Summary(key=key, rows=rows, claims=claims, figures=figures, notes=notes)


def _findings(key: Dict, epochs: np.ndarray, history: np.ndarray):
    """Rows of summary.md and the claims, from the key figures and the angle history."""
    angles = {k: v[-1] for k, v in key["angles_by_epoch"].items()}
    off = {k: abs(a - TRUE_ANGLE) for k, a in angles.items()}
    gap_ce, gap_poly, train = key["gap_ce"], key["gap_poly"], list(key["train_acc"].values())
    gaps = np.abs(history[:, 0] - history[:, 1])
    decade = int(np.searchsorted(epochs, epochs[-1] / 10))
    drawn = {"CE": "drawn, no number", "CE+IW": "drawn ≈ CE", "Poly": "drawn, no number",
             "Poly+IW": "drawn ≈ true boundary"}
    rows = [(f"boundary angle, {k} (deg)", drawn[k], f"{a:.2f}") for k, a in angles.items()]
    rows += [
        ("true boundary x1 = x0 (deg)", "45", f"{TRUE_ANGLE:.0f}"),
        ("hard-margin SVM boundary, CE's limit as epochs → ∞ (deg)", "not given", f"{key['angle_max_margin']:.2f}"),
        ("angle gap CE vs CE+IW (deg)", "≈ 0 (drawn)", f"{gap_ce:.2f}"),
        ("angle gap Poly vs Poly+IW (deg)", "clearly > 0 (drawn)", f"{gap_poly:.2f}"),
        (f"angle gap CE vs CE+IW at epoch {epochs[decade]} / {epochs[-1]} (deg)", "shrinks, slowly (docs/METHODS.md#scale)",
         f"{gaps[decade]:.2f} / {gaps[-1]:.2f}"),
        ("training accuracy, CE / CE+IW / Poly / Poly+IW", "1 (interpolation)", " / ".join(f"{a:.3f}" for a in train)),
        ("balanced test accuracy, same order", "not given",
         " / ".join(f"{a:.3f}" for a in key["test_balanced_acc"].values())),
    ]
    claims = [
        Claim("All four runs interpolate the training data", bool(min(train) == 1.0),
              "training accuracies " + ", ".join(f"{a:.3f}" for a in train)),
        Claim("With CE, IW stops mattering: the CE and CE+IW boundaries end closer together than Poly and Poly+IW",
              bool(gap_ce < gap_poly), f"|CE - CE+IW| = {gap_ce:.2f} deg, |Poly - Poly+IW| = {gap_poly:.2f} deg"),
        Claim("Poly+IW's boundary is closer to the true boundary than CE+IW's", bool(off["Poly+IW"] < off["CE+IW"]),
              f"off by {off['Poly+IW']:.2f} deg (Poly+IW) and {off['CE+IW']:.2f} deg (CE+IW)"),
        Claim("The CE gap is still closing over the last decade of epochs", bool(gaps[-1] < gaps[decade]),
              f"{gaps[decade]:.2f} deg at epoch {epochs[decade]}, {gaps[-1]:.2f} deg at epoch {epochs[-1]}"),
    ]
    return rows, claims


def _accuracy(delta: np.ndarray, split, metric: str) -> float:
    x = torch.cat([split.x.double(), torch.ones(len(split), 1, dtype=torch.float64)], 1)
    preds = (x @ torch.from_numpy(delta) > 0).long()
    return float(metrics.evaluate(preds, split.y, num_classes=2)[metric])


def boundary_figure(train, delta: np.ndarray, angles: Dict[str, float], train_acc: Dict[str, float]):
    """[W] Figure 1's four panels: the data, each run's learned boundary and the true boundary."""
    from ..plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(9.0, 8.6), sharex=True, sharey=True)
    x, y = train.x.numpy(), train.y.numpy()
    for ax, (label, _, _), d in zip(axes.T.flat, RUNS, delta):
        ax.scatter(*x[y == 1].T, s=10, color="tab:blue", alpha=0.6, label=f"majority (class 1, n={(y == 1).sum()})")
        ax.scatter(*x[y == 0].T, s=18, color="tab:orange", marker="^", label=f"minority (class 0, n={(y == 0).sum()})")
        ax.set(xlim=(-5.5, 10.5), ylim=(-5.5, 10.5), xticks=range(-4, 11, 2), yticks=range(-4, 11, 2))
        ax.axline((0.0, 0.0), (1.0, 1.0), color="gray", linestyle="--", label="true boundary x1 = x0")
        point = -d[2] * d[:2] / (d[:2] @ d[:2])
        ax.axline(point, point + np.array([-d[1], d[0]]), color="black", label="learned boundary")
        ax.set_title(f"{label}: {angles[label]:.2f}°, train acc {train_acc[label]:.2f}")
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("x0")
    for ax in axes[:, 0]:
        ax.set_ylabel("x1")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8)
    fig.suptitle("[W] Fig. 1: linear boundaries after full-batch GD (columns: CE, Poly; rows: no IW, IW)")
    fig.tight_layout(rect=(0, 0.035, 1, 1))
    return fig


def angle_figure(epochs: np.ndarray, history: np.ndarray, max_margin: float):
    """Boundary angles and the IW vs no-IW angle gaps over epochs, on a log axis."""
    from ..plots import _pyplot

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.0, 4.5))
    styles = {"CE": ("tab:red", "-"), "CE+IW": ("tab:red", "--"), "Poly": ("tab:green", "-"),
              "Poly+IW": ("tab:green", "--")}
    for i, (label, _, _) in enumerate(RUNS):
        color, line = styles[label]
        left.semilogx(epochs, history[:, i], color=color, linestyle=line, marker="o", markersize=3, label=label)
    left.axhline(TRUE_ANGLE, color="gray", linestyle=":", label="true boundary (45°)")
    left.axhline(max_margin, color="tab:red", linestyle=":", label=f"hard-margin SVM, CE's limit ({max_margin:.1f}°)")
    left.set_ylabel("boundary angle (degrees)")
    left.set_title("Boundary angle during training")
    right.semilogx(epochs, np.abs(history[:, 0] - history[:, 1]), color="tab:red", marker="o", markersize=3,
                   label="CE vs CE+IW")
    right.semilogx(epochs, np.abs(history[:, 2] - history[:, 3]), color="tab:green", marker="o", markersize=3,
                   label="Poly vs Poly+IW")
    right.set_ylabel("angle gap (degrees)")
    right.set_ylim(bottom=0)
    right.set_title("Effect of IW on the boundary: CE's gap closes only slowly")
    for ax in (left, right):
        ax.set_xlabel("epoch (full-batch GD steps)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
