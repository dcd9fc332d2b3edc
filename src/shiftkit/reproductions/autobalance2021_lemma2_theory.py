"""The numerics of [AB] Lemma 2's reproduction (:mod:`.autobalance2021_lemma2`,
docs/METHODS.md#reproduction-autobalance-lemma2): separable 2-D data, the exact max-margin classifiers and
logistic regression trained with spherical augmentation or with per-class logit multipliers.

Exact classifiers (SLSQP, :func:`max_margin`): ``max γ`` over ``‖(w, b/s)‖ ≤ 1`` with
``y_i(w·x_i + b) − ε_{y_i}‖w‖ ≥ γ·c_{y_i}``: the plain SVM (ε = 0, c = 1), the augmented classifier (the
worst point of each ball of radius ε_y on the right side; c = 1) and the cost-sensitive SVM (ε = 0,
c = 1/Δ_y, the limit of gradient descent on the CE of Δ_y·f). ``s`` is ``bias_scale``: gradient descent that
trains the bias as a weight (``f = w·x + s·β``) converges to the version with ``(w, β)`` in the norm;
``s = ∞`` is the textbook SVM with the bias out of it.

Trained classifiers (:func:`train`): logistic regression with a bias, by loss-normalized gradient descent
(``θ ← θ − η ∇log L``, ``η = lr/R²`` with R the largest ‖(x + ε, s)‖·Δ), which grows ‖θ‖ linearly and so
reaches the max-margin direction at rate O(1/t) instead of plain GD's O(1/log t). Augmented runs draw the
augmentation afresh every step through ``augment.build("policy", ops=["spherical"])`` with per-class
magnitudes, each augmented example repeated ``copies`` times with weight 1/copies, so that the loss is an
estimate of the expected one; the gradient is analytic (no autograd). :func:`train_two_logits` trains
``loss=autobalance`` itself (Δ_k on each of two logits of a 2-output linear model).
"""

from __future__ import annotations

import math
from typing import Dict

import numpy as np
import torch
from scipy.optimize import minimize, minimize_scalar, nnls

from .. import augment, losses
from ..errors import ShiftkitError

#: The data: the true normal's angle (rad), class centres along it, spreads, the empty band around the boundary.
_NORMAL, _CENTRES, _SPREADS, _GAP = 0.3, (1.6, -1.2), (0.9, 0.5), 0.4


def draw_data(n_majority: int, n_minority: int, seed: int):
    """Separable 2-D data: ``(X [n, 2], sign [n])``, majority (+1) first, every point at least ``_GAP`` from
    the line through the origin with normal ``(cos 0.3, sin 0.3)``."""
    rng, normal = np.random.default_rng(seed), np.array([math.cos(_NORMAL), math.sin(_NORMAL)])
    parts = []
    for n, centre, spread, sign in zip((n_majority, n_minority), _CENTRES, _SPREADS, (1, -1)):
        kept = np.empty((0, 2))
        while len(kept) < n:
            p = centre * normal + spread * rng.standard_normal((4 * n, 2))
            kept = np.vstack([kept, p[sign * (p @ normal) >= _GAP]])
        parts.append(kept[:n])
    return np.vstack(parts), np.r_[np.ones(n_majority), -np.ones(n_minority)]


def max_margin(X, sign, eps, cost, bias_scale: float = 1.0) -> np.ndarray:
    """``(w_1, w_2, b, γ)`` maximizing γ subject to ``sign_i(w·x_i + b) − eps_i‖w‖ ≥ γ·cost_i`` and
    ``‖w‖² + (b/s)² ≤ 1`` (``s = bias_scale``; ``inf``: b free), by SLSQP from the class-mean direction.
    SLSQP's own verdict is not trusted either way: the answer is accepted on a certificate, feasibility and
    the KKT conditions (non-negative multipliers on the active constraints, by NNLS)."""
    s2 = 0.0 if math.isinf(bias_scale) else 1.0 / bias_scale ** 2

    def margins(v):
        return sign * (X @ v[:2] + v[2]) - eps * np.linalg.norm(v[:2]) - v[3] * cost

    def jac(v):
        return np.c_[sign[:, None] * X - eps[:, None] * v[:2] / np.linalg.norm(v[:2]), sign, -cost]

    def ball_jac(v):
        return np.r_[-2 * v[:2], -2 * s2 * v[2], 0.0]

    d = X[sign > 0].mean(0) - X[sign < 0].mean(0)
    start = np.r_[0.9 * d / np.linalg.norm(d), 0.0, 0.0]
    start[3] = (margins(start) / cost).min()
    ball = {"type": "ineq", "fun": lambda v: 1 - v[:2] @ v[:2] - s2 * v[2] ** 2, "jac": ball_jac}
    v = minimize(lambda v: -v[3], start, jac=lambda v: np.r_[0.0, 0.0, 0.0, -1.0], method="SLSQP",
                 constraints=[{"type": "ineq", "fun": margins, "jac": jac}, ball],
                 options={"ftol": 1e-12, "maxiter": 1000}).x
    g = margins(v)
    _, residual = nnls(np.vstack([jac(v)[g < 1e-7], ball_jac(v)]).T, np.r_[0.0, 0.0, 0.0, -1.0])
    if v[3] <= 0 or g.min() < -1e-9 or ball["fun"](v) < -1e-9 or residual > 1e-6:
        raise ShiftkitError(f"autobalance-lemma2: no max-margin classifier found (margin {v[3]:.3g}, "
                            f"KKT residual {residual:.2g})")
    return v


def geometry(v, X, sign) -> Dict[str, float]:
    """A classifier ``(w, b, ...)`` as its boundary: unit normal angle, offset ``b/‖w‖``, and the distance of the
    boundary to each class's nearest point (negative: that point is on the wrong side)."""
    n = np.linalg.norm(v[:2])
    dist = sign * (X @ v[:2] + v[2]) / n
    return {"normal": v[:2] / n, "offset": v[2] / n,
            "d_majority": dist[sign > 0].min(), "d_minority": dist[sign < 0].min()}


def compare(a, b) -> tuple:
    """(angle between the normals in degrees, absolute offset difference) of two :func:`geometry` dicts."""
    (u, v) = a["normal"], b["normal"]
    return math.degrees(math.atan2(abs(u[0] * v[1] - u[1] * v[0]), u @ v)), abs(a["offset"] - b["offset"])


def matching_epsilon(X, sign, target: Dict, limit: float, bias_scale: float) -> float:
    """The ε_min (ε_maj = 0) whose augmented classifier is nearest ``target`` in (unit normal, offset), by a
    bounded 1-D search over ``[0, limit]``."""
    def gap(e):
        g = geometry(max_margin(X, sign, np.where(sign < 0, e, 0.0), np.ones(len(X)), bias_scale), X, sign)
        return float(np.sum((g["normal"] - target["normal"]) ** 2) + (g["offset"] - target["offset"]) ** 2)

    return float(minimize_scalar(gap, bounds=(0.0, limit), method="bounded", options={"xatol": 1e-10}).x)


def _log_softplus(z: torch.Tensor) -> torch.Tensor:
    """``log(softplus(z))`` without underflow: ``z`` itself below −30."""
    return torch.where(z < -30, z, torch.log(torch.nn.functional.softplus(z.clamp(min=-30))))


def _descent(z: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """``∂ log L / ∂z_i`` for ``L = Σ_i w_i softplus(z_i)`` (z the negated margins), computed in log space."""
    log_l = _log_softplus(z)
    return torch.softmax(log_w + log_l, 0) * torch.exp(torch.nn.functional.logsigmoid(z) - log_l)


def _policy(counts, eps) -> augment.Augmentation:
    """The spherical policy with class k's radius ``eps[k]``: radius max ε, magnitude logit of ε_k / max ε."""
    radius = max(eps)
    pol = augment.build("policy", class_counts=counts, input_shape=(2,), ops=["spherical"], learn=False, radius=radius)
    with torch.no_grad():
        for k, e in enumerate(eps):
            logit = math.log(e) - math.log(radius - e) if 0 < e < radius else (math.inf if e > 0 else -math.inf)
            pol.magnitude[pol.cluster_of[k]] = logit
    return pol


def train(X, sign, eps, mult, s: Dict, seed: int) -> np.ndarray:
    """Logistic regression ``f = w·x + s·β`` by loss-normalized GD on the mean of ``softplus(−Δ_y·y·f(A_y(x)))``,
    class radii ``eps`` and multipliers ``mult`` (majority, minority); returns ``(w, b)`` with ``b = s·β``."""
    cls = (sign < 0).astype(int)
    reps = np.where(np.asarray(eps)[cls] > 0, s["copies"], 1)
    rows = np.repeat(np.arange(len(X)), reps)
    x, y = torch.tensor(X[rows]), torch.tensor(sign[rows] * np.asarray(mult)[cls[rows]])
    c, log_w, bias = torch.tensor(cls[rows]), torch.tensor(-np.log(reps[rows])), s["bias_scale"]
    pol = _policy([int((cls == k).sum()) for k in (0, 1)], eps) if max(eps) > 0 else None
    gen = torch.Generator().manual_seed(seed)
    eta = s["lr"] / (max(mult) ** 2 * float(((np.linalg.norm(X, axis=1) + max(eps)) ** 2).max() + bias ** 2))
    theta = torch.zeros(3, dtype=torch.float64)
    for _ in range(s["steps"] if pol is not None else s["steps_plain"]):
        xa = pol(x, c, gen) if pol is not None else x
        q = _descent(-y * (xa @ theta[:2] + bias * theta[2]), log_w) * y
        theta -= eta * torch.cat([-q @ xa, -q.sum(0, keepdim=True) * bias])
    w = theta.numpy()
    return np.r_[w[:2], bias * w[2]]


def train_two_logits(X, sign, loss, s: Dict) -> np.ndarray:
    """``loss`` (``autobalance``, Δ_k on logit k) on a 2-output linear model ``f = W·[x, 1]`` by the same descent,
    in log space (checked against ``loss`` itself first); returns the boundary ``f_maj − f_min``. The margin is
    ``Σ_k S_ik Δ_k θ_k·x_i`` with ``S_ik = +1`` for the example's class and −1 for the other."""
    xt, y = torch.tensor(np.c_[X, np.ones(len(X))]), torch.tensor((sign < 0).astype(int))
    delta = loss.delta.detach().double()[0, loss.cluster_of]
    S = 2 * torch.nn.functional.one_hot(y, 2).double() - 1
    eta = s["lr"] / (2 * float(delta.max()) ** 2 * float((xt ** 2).sum(1).max()))
    W = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = torch.nn.functional.softplus(-((xt @ W.T) * delta * S).sum(1))
    if not torch.allclose(loss(xt @ W.T, y).double(), ours, atol=1e-5):
        raise ShiftkitError("autobalance-lemma2: the log-space form disagrees with loss 'autobalance'")
    W.zero_()
    log_w = torch.zeros(len(X), dtype=torch.float64)
    for _ in range(s["steps_plain"]):
        q = _descent(-((xt @ W.T) * delta * S).sum(1), log_w)
        W -= eta * -(delta[:, None] * ((q[:, None] * S).T @ xt))
    v = W.numpy()
    return v[0] - v[1]


def delta_of(s: Dict) -> tuple:
    """(Δ_maj, Δ_min) of ``losses.build("autobalance", init="cdt")``: ``(n/n_max)^gamma``, and the loss."""
    loss = losses.build("autobalance", class_counts=[s["n_majority"], s["n_minority"]], init="cdt", gamma=s["gamma"])
    d = loss.delta.detach()[0, loss.cluster_of].tolist()
    return (d[0], d[1]), loss


def exact_solver(X, sign, bias_scale: float):
    """``solve(e, cost=None)``: the geometry of the exact classifier with ε_min = e (ε_maj = 0)."""
    def solve(e: float, cost=None):
        cost = np.ones(len(X)) if cost is None else cost
        return geometry(max_margin(X, sign, np.where(sign < 0, e, 0.0), cost, bias_scale), X, sign)
    return solve


def match(X, sign, delta, bias_scale: float) -> Dict:
    """Plain SVM, cost-sensitive SVM of ``delta`` and the augmented classifier at the searched ε."""
    solve = exact_solver(X, sign, bias_scale)
    plain = solve(0.0)
    cs = solve(0.0, np.where(sign < 0, delta[0] / delta[1], 1.0))  # c_y = 1/Δ_y, up to Δ_maj
    eps = matching_epsilon(X, sign, cs, 2 * plain["d_majority"], bias_scale)
    aug = solve(eps)
    angle, offset = compare(aug, cs)
    return {"plain": plain, "cs": cs, "aug": aug, "eps": eps, "closed": cs["d_minority"] - cs["d_majority"],
            "angle": angle, "offset": offset, "plain_vs_cs": compare(plain, cs)}


def _slope(eps, d_majority) -> float:
    """Least-squares slope of the boundary's move toward the majority, ``d_maj(0) − d_maj(ε)``, against ε."""
    return float(np.polyfit(eps, d_majority[0] - np.asarray(d_majority), 1)[0])


def _trained(X, sign, s: Dict, seed: int, delta, loss, exact: Dict, eps_star: float) -> Dict:
    """Trained classifiers: augmented on a grid of radii with ``eps_star`` among them, the Δ loss, the two-logit loss."""
    solve = exact_solver(X, sign, s["bias_scale"])
    grid = np.sort(np.r_[np.linspace(0.0, s["eps_max"] * exact["plain"]["d_majority"], s["trained_points"] + 1),
                         eps_star])
    fit = [geometry(train(X, sign, (0.0, e), (1.0, 1.0), s, seed * 100 + j), X, sign) for j, e in enumerate(grid)]
    to_exact = [compare(f, solve(e)) for f, e in zip(fit, grid)]
    aug = fit[int(np.flatnonzero(grid == eps_star)[0])]
    dl = geometry(train(X, sign, (0.0, 0.0), delta, s, seed * 100 + 99), X, sign)
    two = geometry(train_two_logits(X, sign, loss, s), X, sign)
    return {"eps": grid.tolist(), "fit": fit, "aug": aug, "delta": dl, "to_exact": to_exact,
            "match": compare(aug, dl), "aug_to_exact": compare(aug, exact["aug"]),
            "delta_to_exact": compare(dl, exact["cs"]),
            "two_logits": (compare(two, exact["plain"]), compare(two, exact["cs"]))}


def data_set(s: Dict, seed: int, log=print) -> Dict:
    """Everything for one data set: its data, exact classifiers (both geometries), trained classifiers."""
    X, sign = draw_data(s["n_majority"], s["n_minority"], seed)
    delta, loss = delta_of(s)
    exact, textbook = match(X, sign, delta, s["bias_scale"]), match(X, sign, delta, float("inf"))
    solve = exact_solver(X, sign, s["bias_scale"])
    eps = np.linspace(0.0, s["eps_max"] * exact["plain"]["d_majority"], s["grid"])
    curve = [solve(e) for e in eps]
    trained = _trained(X, sign, s, seed, delta, loss, exact, exact["eps"])
    log(f"data set {seed}: matched ε = {exact['eps']:.4f}, exact angle {exact['angle']:.3f}°, trained "
        f"angle {trained['match'][0]:.3f}°")
    return {"X": X, "sign": sign, "delta": delta, "exact": exact, "textbook": textbook, "eps": eps.tolist(),
            "curve": curve, "trained": trained, "gamma0": exact["plain"]["d_majority"],
            "slope": _slope(eps, [c["d_majority"] for c in curve]),
            "slope_trained": _slope(trained["eps"], [f["d_majority"] for f in trained["fit"]])}
