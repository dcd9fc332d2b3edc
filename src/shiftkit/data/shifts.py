"""Building blocks of the data protocols: fixed-seed permutations, per-class subsets, splits (SPEC §7)."""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np

from ..errors import ShiftkitError


def per_class_permutations(y: np.ndarray, classes: Sequence[int], seed: int) -> list:
    """For each class in ``classes``, its indices in ``y`` in a random order fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(y == c)) for c in classes]


def step_imbalance(pool_sizes: Sequence[int], minority: Sequence[bool], ratio: float) -> list:
    """Kept counts under a step imbalance (SPEC §7.1): majority classes keep their whole pool, minority
    classes keep ``int(n_max / ratio)`` (at most their pool), where ``n_max`` is the largest majority pool.

    >>> step_imbalance([5000, 5000], [False, True], 10)
    [5000, 500]
    """
    n_max = max(n for n, m in zip(pool_sizes, minority) if not m)
    return [min(n, int(n_max / ratio)) if m else n for n, m in zip(pool_sizes, minority)]


def train_val_split(n: int, val_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """[W]'s split (SPEC §7.1): one permutation by ``default_rng(seed)``, the first
    ``int((1 - val_fraction) n)`` indices train, the rest validation."""
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int((1.0 - val_fraction) * n)
    return perm[:n_train], perm[n_train:]


#: How long-tail counts are rounded: the LDAM / [W] code truncates, AutoBalance's code rounds up (SPEC §7.4).
_ROUNDING = {"int": math.floor, "ceil": math.ceil, "round": round}


def long_tail_counts(n_max: int, num_classes: int, rho: float, rounding: str = "int") -> list:
    """Exponential profile ``n_i = n_max · rho^(-i/(K-1))`` (SPEC §7.4), so ``n_0 / n_{K-1} = rho``.

    >>> long_tail_counts(5000, 10, 100)
    [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    >>> sum(long_tail_counts(5000, 10, 100, rounding="ceil"))    # AutoBalance's train+val (SPEC §5.6)
    12415
    """
    if rounding not in _ROUNDING:
        raise ShiftkitError(f"rounding must be one of {', '.join(_ROUNDING)}, got '{rounding}'")
    if rho < 1 or num_classes < 2:
        raise ShiftkitError(f"a long tail needs rho >= 1 and at least 2 classes, got rho={rho}")
    mu = rho ** (-1.0 / (num_classes - 1))
    # The product is taken in floating point and rounded as the reference code does (e.g. int(x)).
    return [int(_ROUNDING[rounding](n_max * mu**i)) for i in range(num_classes)]


def take(perms: Sequence[np.ndarray], counts: Sequence[int], offset: Sequence[int] = None) -> np.ndarray:
    """The first ``counts[k]`` indices of each ``perms[k]`` (after ``offset[k]``), concatenated."""
    offset = offset or [0] * len(perms)
    for k, (p, o, c) in enumerate(zip(perms, offset, counts)):
        if o + c > len(p):
            raise ShiftkitError(f"class {k} has {len(p) - o} examples left, {c} are needed")
    return np.concatenate([p[o : o + c] for p, o, c in zip(perms, offset, counts)])
