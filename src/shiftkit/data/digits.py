"""scikit-learn's bundled 8x8 digits, always available offline."""

from __future__ import annotations

from typing import List

import numpy as np
import torch

from ..errors import ShiftkitError
from . import register
from .base import Split, Splits
from .shifts import check_binary_protocol, long_tail_counts, per_class_permutations, step_imbalance, take, train_val_split


def _load_digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32) / 16.0, bunch.target.astype(np.int64)


def _split(x: np.ndarray, y: np.ndarray, index: np.ndarray) -> Split:
    xs = torch.from_numpy(x[index]).unsqueeze(1)  # [N, 1, 8, 8]
    ys = torch.from_numpy(y[index])
    return Split(xs, ys, ys.clone(), 2, 2)


@register("digits_binary")
def digits_binary(
    classes: List[int] = (1, 8),
    imbalance: float = 10.0,
    test_per_class: int = 50,
    val_fraction: float = 0.2,
    split_seed: int = 0,
) -> Splits:
    """[W]'s imbalanced binary protocol on two confusable digits (docs/METHODS.md#data-digits_binary).

    ``classes = [a, b]`` become labels 0 (majority) and 1 (minority). Per class, a permutation fixed by
    ``split_seed`` first sets aside ``test_per_class`` images for a balanced test set; of the rest, the
    majority keeps all and the minority ``int(n_majority / imbalance)`` (the step imbalance). The
    remaining pool is split 80/20 into train and validation by one fixed permutation, as in [W].
    The default pair 1 vs 8 is the pair a balanced logistic regression confuses most often among the
    45 digit pairs (5.3% five-fold error; 3 vs 8 and 7 vs 9 follow).
    Images are ``[N, 1, 8, 8]`` floats in ``[0, 1]``; groups are the classes.
    """
    classes = check_binary_protocol("digits_binary", classes, imbalance, val_fraction)
    x, y = _load_digits()
    perms = per_class_permutations(y, classes, split_seed)
    if test_per_class < 1 or test_per_class >= min(len(p) for p in perms) - 1:
        raise ShiftkitError(f"digits_binary: test_per_class={test_per_class} leaves no training data")
    tests = [p[:test_per_class] for p in perms]
    pools = [p[test_per_class:] for p in perms]
    kept = step_imbalance([len(p) for p in pools], [False, True], imbalance)
    if kept[1] < 1:
        raise ShiftkitError(f"digits_binary: imbalance={imbalance} leaves no minority example")
    relabel = np.zeros(10, dtype=np.int64)
    relabel[classes[1]] = 1
    y = relabel[y]
    pool = np.concatenate([p[:k] for p, k in zip(pools, kept)])
    train_idx, val_idx = train_val_split(len(pool), val_fraction, split_seed)
    return Splits(
        _split(x, y, pool[train_idx]),
        _split(x, y, pool[val_idx]),
        _split(x, y, np.concatenate(tests)),
        info={"classes": classes, "minority": classes[1], "imbalance": imbalance},
    )


@register("digits_lt")
def digits_lt(
    rho: float = 10.0,
    test_per_class: int = 30,
    val_fraction: float = 0.2,
    rounding: str = "int",
    split_seed: int = 0,
) -> Splits:
    """A 10-class long tail on the digits (CIFAR-LT's profile, docs/METHODS.md#data-digits_lt): after a balanced test set of
    ``test_per_class`` images per class is set aside, class ``i`` keeps ``n_max · rho^(-i/9)`` images,
    with ``n_max`` the smallest remaining pool (144 with the defaults, so every class can fill its
    quota); ``val_fraction`` of each class (at least one image, leaving at least one) is validation.
    The default rho = 10 keeps the tail class at 14 images; images as in ``digits_binary``."""
    if not 0 < val_fraction < 1:
        raise ShiftkitError(f"digits_lt: val_fraction must lie in (0, 1), got {val_fraction}")
    x, y = _load_digits()
    perms = per_class_permutations(y, range(10), split_seed)
    if test_per_class < 1 or test_per_class >= min(len(p) for p in perms) - 2:
        raise ShiftkitError(f"digits_lt: test_per_class={test_per_class} leaves no training data")
    counts = long_tail_counts(min(len(p) for p in perms) - test_per_class, 10, rho, rounding)
    if min(counts) < 2:
        raise ShiftkitError(f"digits_lt: rho={rho} leaves fewer than 2 images in a class: {counts}")
    val_counts = [min(max(1, int(round(val_fraction * c))), c - 1) for c in counts]
    train_counts = [c - v for c, v in zip(counts, val_counts)]
    offset = [test_per_class] * 10

    def split(index: np.ndarray) -> Split:
        ys = torch.from_numpy(y[index])
        return Split(torch.from_numpy(x[index]).unsqueeze(1), ys, ys.clone(), 10, 10)

    return Splits(
        split(take(perms, train_counts, offset)),
        split(take(perms, val_counts, [o + t for o, t in zip(offset, train_counts)])),
        split(take(perms, [test_per_class] * 10)),
        info={"rho": rho, "counts": counts},
    )
