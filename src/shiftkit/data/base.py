"""Dataset splits: tensors of inputs, labels and groups, with counts computed from the data.

>>> import torch
>>> s = Split(torch.zeros(3, 2), torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]), 2, 2)
>>> s.class_counts, s.group_counts
([1, 2], [1, 2])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from torch import Tensor

from ..errors import ShiftkitError
from .pipeline import Pipeline


@dataclass
class Split:
    """One split: ``x [N, ...]``, labels ``y [N]`` in ``[0, num_classes)``, groups ``g [N]`` in
    ``[0, num_groups)``. Validated on construction: matching lengths, ids in range, finite features."""

    x: Tensor
    y: Tensor
    g: Tensor
    num_classes: int
    num_groups: int

    def __post_init__(self) -> None:
        self.y = torch.as_tensor(self.y, dtype=torch.long)
        self.g = torch.as_tensor(self.g, dtype=torch.long)
        n = self.x.shape[0]
        if self.y.shape != (n,) or self.g.shape != (n,):
            raise ShiftkitError(
                f"x, y and g must have the same length, got {n}, {tuple(self.y.shape)}, {tuple(self.g.shape)}"
            )
        for name, ids, bound in (("label", self.y, self.num_classes), ("group", self.g, self.num_groups)):
            if n and (ids.min() < 0 or ids.max() >= bound):
                raise ShiftkitError(f"{name}s must lie in [0, {bound}), found {int(ids.min())}..{int(ids.max())}")
        if self.x.is_floating_point() and not torch.isfinite(self.x).all():
            raise ShiftkitError("features contain NaN or infinite values")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def class_counts(self) -> list:
        return torch.bincount(self.y, minlength=self.num_classes).tolist()

    @property
    def group_counts(self) -> list:
        return torch.bincount(self.g, minlength=self.num_groups).tolist()

    def subset(self, index: Tensor) -> "Split":
        return Split(self.x[index], self.y[index], self.g[index], self.num_classes, self.num_groups)

    def to(self, device) -> "Split":
        return Split(self.x.to(device), self.y.to(device), self.g.to(device), self.num_classes, self.num_groups)


@dataclass
class Splits:
    """Train, validation and test splits of one dataset, a description of the protocol, and the
    :class:`~shiftkit.data.pipeline.Pipeline` that prepares its inputs on the training device."""

    train: Split
    val: Split
    test: Split
    info: Dict[str, object] = field(default_factory=dict)
    pipeline: Pipeline = field(default_factory=Pipeline)

    def __post_init__(self) -> None:
        if self.train.num_classes < 2:
            raise ShiftkitError(
                f"the data has {self.train.num_classes} class(es); a classifier needs at least 2 (check the labels)"
            )
        empty = [k for k, n in enumerate(self.train.class_counts) if n == 0]
        if empty:
            raise ShiftkitError(
                f"the training split has no example of class(es) {empty} of {self.train.num_classes}; "
                "every class needs training examples"
            )
        for name, split in (("validation", self.val), ("test", self.test)):
            if len(split) == 0:
                raise ShiftkitError(f"the {name} split is empty; the metrics and model selection need {name} examples")

    @property
    def input_shape(self) -> tuple:
        return tuple(self.train.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def num_groups(self) -> int:
        return self.train.num_groups

    def counts(self) -> Dict[str, Dict[str, list]]:
        """Class and group counts of each split, as recorded in ``run.json``."""
        return {
            name: {"n": len(s), "class_counts": s.class_counts, "group_counts": s.group_counts}
            for name, s in (("train", self.train), ("val", self.val), ("test", self.test))
        }

    def statistics(self) -> Dict[str, object]:
        """The data statistics handed to every ``build`` (training split only; DESIGN.md)."""
        return {
            "class_counts": self.train.class_counts,
            "group_counts": self.train.group_counts,
            "num_classes": self.num_classes,
            "num_groups": self.num_groups,
            "input_shape": self.input_shape,
        }


def optional_root(root: Optional[str]) -> Optional[str]:
    """Normalize an empty root string (as configs write it) to ``None``."""
    return root or None
