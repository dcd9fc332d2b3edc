"""Datasets and protocols, by name (docs/METHODS.md#datasets).

>>> from shiftkit import data
>>> splits = data.build("digits_binary")
>>> splits.train.class_counts, splits.test.class_counts
([107, 9], [50, 50])
"""

from __future__ import annotations

from ..registry import Registry
from .base import Split, Splits
from .features import finish

#: Every dataset also takes ``features_from``, ``features_weights`` and ``features_options`` (:mod:`.features`).
DATASETS = Registry("data", shared=finish)
register = DATASETS.register
names = DATASETS.names


def build(name: str, **kwargs) -> Splits:
    """Build the registered dataset ``name`` with its protocol options."""
    return DATASETS.build(name, **kwargs)


from . import celeba, cifar, digits, fmnist, image_folder, mnist, synthetic, tabular, waterbirds  # noqa: E402,F401  (registration)

__all__ = ["Split", "Splits", "build", "names", "register", "DATASETS"]
