"""Dataset splits: tensors of inputs, labels and groups, with counts computed from the data.

>>> import torch
>>> s = Split(torch.zeros(3, 2), torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]), 2, 2)
>>> s.class_counts, s.group_counts
([1, 2], [1, 2])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import ShiftkitError
from .pipeline import Pipeline


@dataclass
class Split:
    """One split: ``x [N, ...]``, labels ``y [N]`` in ``[0, num_classes)``, groups ``g [N]`` in
    ``[0, num_groups)``. Validated on construction: matching lengths, ids in range, finite features.

    ``weight [N]`` (optional, finite, >= 0) multiplies each example's weight from the weighting scheme in
    the training loop's objective (``ShiftClassifier``'s ``sample_weight``); ``None`` is 1 for every example.
    """

    x: Tensor
    y: Tensor
    g: Tensor
    num_classes: int
    num_groups: int
    weight: Optional[Tensor] = None

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
        if self.weight is not None:
            self.weight = torch.as_tensor(self.weight, dtype=torch.float32)
            if self.weight.shape != (n,) or not (torch.isfinite(self.weight) & (self.weight >= 0)).all():
                raise ShiftkitError(
                    f"a split's weights must be {n} finite numbers >= 0, got shape {tuple(self.weight.shape)}"
                )

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def class_counts(self) -> list:
        return torch.bincount(self.y, minlength=self.num_classes).tolist()

    @property
    def group_counts(self) -> list:
        return torch.bincount(self.g, minlength=self.num_groups).tolist()

    def subset(self, index: Tensor) -> "Split":
        weight = None if self.weight is None else self.weight[index]
        return Split(self.x[index], self.y[index], self.g[index], self.num_classes, self.num_groups, weight)

    def to(self, device) -> "Split":
        weight = None if self.weight is None else self.weight.to(device)
        return Split(self.x.to(device), self.y.to(device), self.g.to(device), self.num_classes, self.num_groups, weight)


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
        """The data statistics handed to every ``build`` (training split only)."""
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


def dense_ids(values) -> Tuple[np.ndarray, np.ndarray]:
    """``(ids int64 [N], distinct [K])``: each value's rank among the sorted distinct values, so that ids are
    ``0..K-1`` whatever the values are (7, 1000, 3000, negative numbers, text) and no id is left without
    members; ``distinct[k]`` is the value of id ``k``, the mapping to record. ``data=tabular``'s groups and
    attributes and ``ShiftClassifier``'s classes and groups are numbered so.

    >>> ids, distinct = dense_ids([3000, 7, 1000, 7])
    >>> ids.tolist(), distinct.tolist()
    ([2, 0, 1, 0], [7, 1000, 3000])
    """
    distinct, ids = np.unique(np.asarray(values), return_inverse=True)
    return ids.astype(np.int64).reshape(-1), distinct


#: At most this many characters of a file's content go into an error message (one value, or a list).
QUOTE_LIMIT = 200
# Every character that ``str.splitlines`` breaks at, written as its escape so a message stays one line.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


def quote(data, total: Optional[int] = None) -> str:
    """``data`` as an error message may quote it: on one line (line breaks escaped) and about
    ``QUOTE_LIMIT`` characters at most, so a 10,000-character cell or a header of thousands of columns does
    not flood the one-line error. A list is joined by ", " and cut after the items that fit, saying how
    many are left out (of ``total`` items, when ``data`` holds only the first ones).

    >>> quote("one\\ntwo"), quote("a" * 300)[-24:], quote(list(range(100)), total=10**6)[-25:]
    ('one\\\\ntwo', 'aaaa... (300 characters)', '51, 52, ... (999947 more)')
    """
    if not isinstance(data, (list, tuple)):
        text = str(data).translate(_LINE_BREAKS)
        return text if len(text) <= QUOTE_LIMIT else f"{text[:QUOTE_LIMIT]}... ({len(text)} characters)"
    items = [quote(item) for item in data]
    total = len(items) if total is None else total
    shown = max(1, int((np.cumsum([len(item) + 2 for item in items]) <= QUOTE_LIMIT + 2).sum()))
    if shown >= total:
        return ", ".join(items)
    return ", ".join(items[:shown] + [f"... ({total - shown} more)"])
