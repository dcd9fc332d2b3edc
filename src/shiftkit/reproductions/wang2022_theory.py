"""The numerics of [W] Figure 2's theory simulation (docs/METHODS.md#reproduction-wang2022-fig2), exact and in the span of the data.

Model: ``z ~ N(mu_c, I_p)`` with label-signed features (``z . v > 0`` is correct), ``mu_1 = |mu| e_1``,
``mu_2 = |mu| e_2``, ``|mu| = p^0.251``; ``n_1`` majority and ``n_2`` minority points. The poly-tailed
(alpha = 1) objective with minority weight ``b`` and ridge term is

    L(v) = [sum_{i in 1} 1/(z_i . v) + b sum_{i in 2} 1/(z_i . v)] / (n_1 + b n_2) + |v|^2,

minimized as [W]'s notebook does: ``torch.optim.SGD(lr=1e-3, momentum=0.9)``, full batch, stepping until
the gradient's norm is at most ``1e-5``. Test error ``(1/2)[Phi(-mu_1 . v^) + Phi(-mu_2 . v^)]``.

Reduction: ``grad L = Z^T (dL/dm) + 2 v`` stays in ``span{w_0, z_1..z_n}``, so with the basis
``B = [w_0; Z]`` (``k = n + 1`` rows, or ``Z`` alone when ``w_0`` is in its span) every iterate is
``v = B^T beta``: margins ``m = G[data] beta``, ``|v|^2 = beta^T G beta``, the gradient is ``B^T u`` with
``u = 2 beta + [0; dL/dm]`` and ``|grad| = sqrt(u^T G u)``, ``G = B B^T``. SGD with momentum is linear,
so its steps in ``beta`` are exactly the ``p``-dimensional steps. ``G`` needs only the two mean
coordinates of each ``z`` and the Gram matrix ``W`` of the other ``p - 2`` (pure noise) coordinates:
drawn explicitly in chunks (``"explicit"``: [W]'s construction, ``O(n^2 p)``), or as the Wishart matrix
``W_n(p - 2, I)`` it is, by Bartlett's decomposition (``"bartlett"``: the same distribution in ``O(n^2)``).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import ndtr

from ..errors import ShiftkitError

#: The notebook's fixed start of the left panel, (mu_1 + mu_2)/|mu_1 + mu_2| in the (e_1, e_2) plane.
DIAGONAL = np.array([1.0, 1.0]) / math.sqrt(2.0)


def imbalance_splits(n: int, t_values) -> List[Tuple[int, int]]:
    """``(n_1, n_2)`` per ``t`` as [W]'s notebook: ``n_1 = min(round(t n / (1 + t)), n - 1)``, the larger
    count first, repeats of ``n_1`` skipped (``tau = n_1 / n_2``).

    >>> imbalance_splits(100, range(1, 12))
    [(50, 50), (67, 33), (75, 25), (80, 20), (83, 17), (86, 14), (88, 12), (89, 11), (90, 10), (91, 9), (92, 8)]
    """
    splits: List[Tuple[int, int]] = []
    for t in t_values:
        n1 = min(round(t * n / (1 + t)), n - 1)
        n1 = max(n1, n - n1)
        if n1 not in [s[0] for s in splits]:
            splits.append((n1, n - n1))
    return splits


def wishart_bartlett(n: int, df: int, rng: np.random.Generator) -> np.ndarray:
    """A draw of ``E E^T`` for ``E [n, df]`` standard normal (Wishart ``W_n(df, I)``), in ``O(n^2)``:
    ``L L^T`` with ``L`` lower triangular, ``L_ii^2 ~ chi^2(df - i)``, ``L_ij ~ N(0, 1)`` below the diagonal."""
    if df < n:
        raise ShiftkitError(f"features 'bartlett' needs p - 2 >= n, got p - 2 = {df} < n = {n}; use 'explicit'")
    lower = np.tril(rng.standard_normal((n, n)), -1)
    lower[np.diag_indices(n)] = np.sqrt(rng.chisquare(df - np.arange(n)))
    return lower @ lower.T


def noise_gram(n: int, df: int, seed: int, device: str = "cpu", chunk: int = 1 << 16) -> np.ndarray:
    """``E E^T`` with ``E [n, df]`` drawn explicitly, ``chunk`` coordinates at a time (memory ``n x chunk``)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    gram = torch.zeros(n, n, dtype=torch.float64, device=device)
    for start in range(0, df, chunk):
        noise = torch.randn(n, min(chunk, df - start), generator=gen, dtype=torch.float64, device=device)
        gram.addmm_(noise, noise.T)
    return gram.cpu().numpy()


def draw(n1: int, n2: int, p: int, mu: float, rng: np.random.Generator, features: str = "bartlett",
         device: str = "cpu") -> Tuple[np.ndarray, np.ndarray]:
    """One data set in reduced form: ``S [n, 2]`` (the ``e_1, e_2`` coordinates of the ``z``'s, majority
    rows first) and ``W [n, n]`` (the Gram matrix of their other ``p - 2`` coordinates)."""
    if features not in ("bartlett", "explicit"):
        raise ShiftkitError(f"features must be 'bartlett' or 'explicit', got '{features}'")
    n = n1 + n2
    first = rng.standard_normal((n, 2))
    first[:n1, 0] += mu
    first[n1:, 1] += mu
    if features == "bartlett":
        return first, wishart_bartlett(n, p - 2, rng)
    return first, noise_gram(n, p - 2, int(rng.integers(2**62)), device)


def reduce(first: np.ndarray, rest: np.ndarray, mu: float, start: Optional[np.ndarray] = None):
    """``G = B B^T [k, k]`` and ``B mu_c [2, k]`` for the basis ``B = [start; Z]`` (``Z`` alone without a
    ``start``, a vector in the ``e_1, e_2`` plane)."""
    gram, means = first @ first.T + rest, mu * first.T
    if start is None:
        return gram, means
    cross = first @ start
    gram = np.block([[np.array([[start @ start]]), cross[None]], [cross[:, None], gram]])
    return gram, np.concatenate([mu * start[:, None], means], 1)


def class_weights(n1: int, n2: int, b: float) -> np.ndarray:
    """Per-point weights of the objective: ``1`` (majority) or ``b`` (minority), over ``n_1 + b n_2``.

    >>> class_weights(2, 1, 4.0)
    array([0.16666667, 0.16666667, 0.66666667])
    """
    return np.concatenate([np.ones(n1), np.full(n2, b)]) / (n1 + b * n2)


def descend(gram, weights, beta, lr: float = 1e-3, momentum: float = 0.9, tol: float = 1e-5,
            max_steps: int = 100_000) -> Tuple[np.ndarray, np.ndarray]:
    """SGD with momentum on ``L`` in the reduced coordinates, for a batch of problems.

    ``gram [Q, k, k]``; ``weights [Q, n, A]`` (the data are the last ``n`` basis rows; ``A`` objectives
    share each Gram matrix); ``beta [Q, k, A]`` the starts. Each problem steps until the norm of the
    gradient it just stepped with is ``<= tol``, as the notebook's loop. Returns ``beta`` and the steps.

    A fast path: it equals [W]'s notebook loop, ``torch.optim.SGD(lr=1e-3, momentum=0.9)`` on the
    ``p``-dimensional ``v``, step for step and with the same number of steps (held equal in
    tests/test_repro_wang_synthetic.py::test_reduced_descent_equals_p_dimensional_sgd_from_the_fixed_start).
    No registered loss goes through it: ``1/(z . v)`` with the ridge term is [W]'s theory objective, not
    ``loss=poly``, whose tail is ``(v - beta + 1)^-alpha`` and whose left branch is logistic. It exists for
    speed: ``n + 1`` coordinates instead of ``p = 10^6``, and the figure's hundreds of runs stacked in one batch.
    """
    n = weights.shape[1]
    beta, velocity = beta.copy(), np.zeros_like(beta)
    active = np.ones((beta.shape[0], beta.shape[2]), dtype=bool)
    steps = np.zeros(active.shape, dtype=int)
    for _ in range(max_steps):
        margins = (gram @ beta)[:, -n:]
        if (margins.min(1)[active] <= 0).any():
            raise ShiftkitError("a margin z.v reached <= 0, where the loss 1/(z.v) is not a tail; use a larger p")
        u = 2.0 * beta
        u[:, -n:] -= weights / margins**2
        norm = np.sqrt(np.maximum((u * (gram @ u)).sum(1), 0.0))
        velocity = momentum * velocity + u
        beta -= lr * velocity * active[:, None, :]
        steps += active
        active &= norm > tol
        if not active.any():
            return beta, steps
    raise ShiftkitError(f"gradient descent did not reach |grad| <= {tol} within {max_steps} steps")


def class_errors(gram, means, beta) -> np.ndarray:
    """``Phi(-mu_c . v / |v|)`` per class for ``v = B^T beta``: ``[Q, 2, A]`` from ``gram [Q, k, k]``,
    ``means [Q, 2, k]``, ``beta [Q, k, A]``."""
    norm = np.sqrt((beta * (gram @ beta)).sum(1))
    return ndtr(-(means @ beta) / norm[:, None, :])


def max_margin(kernel: np.ndarray, c: float = 1.0) -> np.ndarray:
    """``alpha`` of the L1-loss linear SVM without intercept on label-signed points (``v = Z^T alpha``):
    ``max sum(alpha) - alpha^T K alpha / 2`` over ``0 <= alpha <= c``, ``K = Z Z^T`` (no equality
    constraint without an intercept): [W]'s ``LinearSVC(loss='hinge', fit_intercept=False)`` baseline.
    Solved by L-BFGS-B on ``K`` scaled to unit mean diagonal, in ``n`` dual variables instead of ``p = 10^6``
    weights; the weights ``Z^T alpha`` equal ``LinearSVC``'s (held equal in
    tests/test_repro_wang_synthetic.py::test_reduced_svm_dual_equals_sklearn_linear_svc)."""
    scale = 1.0 / float(np.mean(np.diag(kernel)))
    hessian = scale * kernel

    def objective(u):
        hu = hessian @ u
        return 0.5 * u @ hu - u.sum(), hu - 1.0

    bounds = [(0.0, c / scale)] * len(kernel)
    result = minimize(objective, np.zeros(len(kernel)), jac=True, method="L-BFGS-B", bounds=bounds,
                      options={"ftol": 1e-15, "gtol": 1e-11, "maxiter": 10_000})
    return scale * result.x


def weight_sweep(gram, means, n1: int, n2: int, exponents, beta, **descent) -> Tuple[np.ndarray, np.ndarray]:
    """[W]'s right panel: minority weight ``b = tau^a`` for each ``a`` in turn, warm-started from the
    previous ``a``'s solution with a fresh momentum buffer. ``gram [Q, n, n]``, ``means [Q, 2, n]``,
    ``beta [Q, n, 1]`` the start. Returns per-class errors ``[len(exponents), Q, 2]`` and the steps.

    A fast path through :func:`descend`: it equals the notebook's warm-started ``p``-dimensional SGD loop
    (held equal in tests/test_repro_wang_synthetic.py::test_warm_started_weight_sweep_equals_p_dimensional_sgd)."""
    errors, steps = [], []
    for a in exponents:
        weights = np.broadcast_to(class_weights(n1, n2, (n1 / n2) ** a)[None, :, None], beta.shape)
        beta, taken = descend(gram, weights, beta, **descent)
        errors.append(class_errors(gram, means, beta)[..., 0])
        steps.append(taken)
    return np.array(errors), np.array(steps)
