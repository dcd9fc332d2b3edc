"""Building blocks of the data protocols (:mod:`.protocols`): fixed-seed permutations, per-class subsets, splits
(docs/METHODS.md#datasets)."""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np

import torch

from ..errors import ShiftkitError


def check_binary_protocol(
    name: str, classes: Sequence[int], imbalance: float, val_fraction: float, num_classes: int = 10
) -> list:
    """The options every imbalanced binary protocol shares (docs/METHODS.md#data-cifar10_binary), as one-line errors."""
    classes = list(classes)
    if len(classes) != 2 or classes[0] == classes[1] or not all(0 <= c < num_classes for c in classes):
        raise ShiftkitError(f"{name}: classes must be two different class ids 0-{num_classes - 1}, got {classes}")
    if imbalance < 1:
        raise ShiftkitError(f"{name}: imbalance must be >= 1, got {imbalance}")
    if not 0 < val_fraction < 1:
        raise ShiftkitError(f"{name}: val_fraction must lie in (0, 1), got {val_fraction}")
    return classes


def per_class_permutations(y: np.ndarray, classes: Sequence[int], seed: int) -> list:
    """For each class in ``classes``, its indices in ``y`` in a random order fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(y == c)) for c in classes]


def step_imbalance(pool_sizes: Sequence[int], minority: Sequence[bool], ratio: float) -> list:
    """Kept counts under a step imbalance (docs/METHODS.md#data-cifar10_binary): majority classes keep their whole pool, minority
    classes keep ``int(n_max / ratio)`` (at most their pool), where ``n_max`` is the largest majority pool.

    >>> step_imbalance([5000, 5000], [False, True], 10)
    [5000, 500]
    """
    n_max = max(n for n, m in zip(pool_sizes, minority) if not m)
    return [min(n, int(n_max / ratio)) if m else n for n, m in zip(pool_sizes, minority)]


def train_val_split(n: int, val_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """[W]'s split (docs/METHODS.md#data-cifar10_binary): one permutation by ``default_rng(seed)``, the first
    ``int((1 - val_fraction) n)`` indices train, the rest validation."""
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int((1.0 - val_fraction) * n)
    return perm[:n_train], perm[n_train:]


#: How long-tail counts are rounded: the LDAM / [W] code truncates, AutoBalance's code rounds (docs/METHODS.md#data-cifar10_lt).
_ROUNDING = {"int": math.floor, "ceil": math.ceil, "round": round}


def long_tail_counts(n_max: int, num_classes: int, rho: float, rounding: str = "int") -> list:
    """Exponential profile ``n_i = n_max · rho^(-i/(K-1))`` (docs/METHODS.md#data-cifar10_lt), so ``n_0 / n_{K-1} = rho``.

    ``"int"`` evaluates ``n_max · (1/rho)^(i/(K-1))`` and truncates, exactly as the LDAM and [W] code;
    ``"ceil"`` and ``"round"`` evaluate ``n_max · μ^i`` with ``μ = (1/rho)^(1/(K-1))`` as AutoBalance's code
    does (the two expressions differ in the last bit, which rounding can see).

    >>> long_tail_counts(5000, 10, 100)
    [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    >>> long_tail_counts(5000, 10, 50)[-1], long_tail_counts(500, 100, 10)[-1]   # LDAM's 100 and 50
    (100, 50)
    >>> sum(long_tail_counts(5000, 10, 100, rounding="ceil"))    # AutoBalance's train+val (docs/METHODS.md#autobalance-schedules)
    12415
    """
    if rounding not in _ROUNDING:
        raise ShiftkitError(f"rounding must be one of {', '.join(_ROUNDING)}, got '{rounding}'")
    if rho < 1 or num_classes < 2:
        raise ShiftkitError(f"a long tail needs rho >= 1 and at least 2 classes, got rho={rho}")
    if rounding == "int":
        return [int(n_max * (1.0 / rho) ** (i / (num_classes - 1.0))) for i in range(num_classes)]
    mu = (1.0 / rho) ** (1.0 / (num_classes - 1))
    return [int(_ROUNDING[rounding](n_max * mu**i)) for i in range(num_classes)]


def holdout_counts(counts: Sequence[int], val_fraction: float) -> Tuple[list, list]:
    """Per class, ``int((1 - f) n)`` train and the rest (at least 1) validation: [W]'s 80/20 rule per class.

    >>> holdout_counts([5000, 2997, 50, 5], 0.2)
    ([4000, 2397, 40, 4], [1000, 600, 10, 1])
    """
    val = [max(1, n - int((1.0 - val_fraction) * n)) for n in counts]
    return [n - v for n, v in zip(counts, val)], val


def autobalance_counts(n_max: int, num_classes: int, rho: float, style: str) -> Tuple[list, list]:
    """AutoBalance's per-class train and validation counts (docs/METHODS.md#autobalance-schedules), with ``μ = (1/ρ)^(1/(K-1))``.

    ``"ceil"`` (CIFAR-10): train ``⌈0.8 n_max μ^i⌉``, val ``⌈0.2 n_max μ^i⌉``. ``"round"`` (CIFAR-100):
    total ``round(n_max μ^i)``, val ``max(1, round(0.2 n_max μ^i))``, train the rest. The code's constants
    4000/1000 and 500/100 are these fractions of ``n_max`` = 5000 and 500.

    >>> train, val = autobalance_counts(5000, 10, 100, "ceil")
    >>> train, sum(train), sum(val)
    ([4000, 2398, 1438, 862, 517, 310, 186, 112, 67, 41], 9931, 2487)
    >>> [sum(c) for c in autobalance_counts(500, 100, 100, "round")]
    [8719, 2180]
    """
    if rho < 1 or num_classes < 2:
        raise ShiftkitError(f"a long tail needs rho >= 1 and at least 2 classes, got rho={rho}")
    # The same float expression as the reference code: ceil sees its last bit (1000 μ^9 = 10.000000000000004 -> 11).
    mu = (1.0 / rho) ** (1.0 / (num_classes - 1))
    def scaled(size: int, rounded) -> list:
        return [rounded(size * mu**i) for i in range(num_classes)]

    if style == "ceil":
        return scaled(4 * n_max // 5, math.ceil), scaled(n_max // 5, math.ceil)
    val = [max(1, v) for v in scaled(n_max // 5, round)]
    return [t - v for t, v in zip(scaled(n_max, round), val)], val


def take(perms: Sequence[np.ndarray], counts: Sequence[int], offset: Sequence[int] = None) -> np.ndarray:
    """The first ``counts[k]`` indices of each ``perms[k]`` (after ``offset[k]``), concatenated."""
    offset = offset or [0] * len(perms)
    for k, (p, o, c) in enumerate(zip(perms, offset, counts)):
        if o + c > len(p):
            raise ShiftkitError(f"class {k} has {len(p) - o} examples left, {c} are needed")
    return np.concatenate([p[o : o + c] for p, o, c in zip(perms, offset, counts)])


def w_step_undersample(y: np.ndarray, num_classes: int, imbalance: float, seed: int = 0) -> Tuple[np.ndarray, list]:
    """[W]'s ``UndersampledByGroupDataset`` under a step imbalance (docs/METHODS.md#data-cifar10_binary).

    Classes ``0 .. K/2 - 1`` keep their pool, the others ``int(n_max / imbalance)``. One
    ``torch.Generator`` seeded ``seed`` draws ``randperm`` per class, in order of each class's first
    appearance in ``y``; the kept indices are concatenated in that order (the order the 80/20 split sees).

    >>> y = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    >>> index, kept = w_step_undersample(y, 2, 4.0)
    >>> kept, y[index].tolist()
    ([4, 1], [1, 0, 0, 0, 0])
    """
    pools = np.bincount(y, minlength=num_classes)
    kept = step_imbalance(pools.tolist(), [c >= num_classes // 2 for c in range(num_classes)], imbalance)
    present, first = np.unique(y, return_index=True)
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for c in present[np.argsort(first)]:  # one draw per class, not per example
        members = np.flatnonzero(y == c)
        parts.append(members[torch.randperm(len(members), generator=generator)[: kept[c]].numpy()])
    return np.concatenate(parts), kept


def halves(index: np.ndarray, groups: np.ndarray, seed: int) -> tuple:
    """``index`` split into two sorted halves within each group, the first taking the larger half
    (AutoBalance's 50/50 search split, docs/METHODS.md#data-waterbirds).

    >>> [len(h) for h in halves(np.arange(5), np.array([0, 0, 0, 1, 1]), seed=0)]
    [3, 2]
    """
    rng = np.random.default_rng(seed)
    first, second = [], []
    for k in np.unique(groups):
        members = rng.permutation(index[groups == k])
        cut = (len(members) + 1) // 2
        first.append(members[:cut])
        second.append(members[cut:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))
