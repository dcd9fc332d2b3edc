"""scikit-learn's bundled 8x8 digits, always available offline: a source (:func:`source`) and the protocols
of :mod:`.protocols` on it."""

from __future__ import annotations

from typing import List

import numpy as np

from . import register
from .base import Splits
from .protocols import binary, long_tail
from .sources import Part, Source


def source() -> Source:
    """The 1,797 digits: images ``float32 [N, 1, 8, 8]`` in ``[0, 1]``, labels 0-9, no official partition."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32) / 16.0
    return Source("digits", Part(x[:, None], bunch.target.astype(np.int64)), [str(d) for d in range(10)])


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
    return binary(source(), "digits_binary", classes, imbalance, val_fraction, split_seed,
                  test_per_class=test_per_class)


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
    return long_tail(source(), "digits_lt", rho, rounding, split_seed, val_fraction=val_fraction, holdout="round",
                     test_per_class=test_per_class)
