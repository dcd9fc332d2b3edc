"""Building blocks of the data protocols: fixed-seed permutations, per-class subsets, splits (SPEC §7)."""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np


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
