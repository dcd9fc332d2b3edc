"""Sources: a dataset's examples before any protocol (docs/METHODS.md#data-protocols).

A :class:`Source` holds inputs ``x``, integer labels ``y`` and, where the data have one, an attribute
``a``, for each official partition it has (``train`` always; ``val`` and ``test`` when the data define
them), and the names of its classes. A loader (``digits.source``, ``fmnist.source``, ``cifar.source``,
``waterbirds.source``) returns one; a protocol (:mod:`.protocols`, :mod:`.group_protocols`) turns it into
:class:`~.base.Splits`. Protocols only index a partition, so ``x`` may be an array or anything that
``x[index]`` turns into one (images decoded on demand).

>>> part = Part(np.arange(6, dtype=np.float32).reshape(3, 2), np.array([0, 1, 1]))
>>> split_of(part, np.array([2, 0]), part.y[[2, 0]], part.y[[2, 0]], 2, 2).x.tolist()
[[4.0, 5.0], [0.0, 1.0]]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..errors import ShiftkitError
from .base import Split


@dataclass
class Part:
    """One official partition: inputs ``x [N, ...]``, ``int64`` labels ``y [N]``, an optional ``int64``
    attribute ``attribute [N]``."""

    x: Any
    y: np.ndarray
    attribute: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.y)

    def inputs(self, index: np.ndarray) -> torch.Tensor:
        """``x[index]`` as a tensor (fancy indexing copies, so the tensor owns writable memory)."""
        x = self.x[index]
        return x if isinstance(x, torch.Tensor) else torch.from_numpy(x)


@dataclass
class Source:
    """A dataset's partitions and names. ``info`` holds what only this source knows (its folder, its
    image size), recorded under ``info["source"]`` by every protocol."""

    name: str
    train: Part
    class_names: List[str]
    test: Optional[Part] = None
    val: Optional[Part] = None
    attribute_names: Optional[List[str]] = None
    info: Dict[str, object] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_attribute(self) -> bool:
        return self.train.attribute is not None

    def describe(self) -> Dict[str, object]:
        """``info["source"]``: the source's name and its own facts."""
        return {"name": self.name, **self.info}

    def part(self, which: str, dataset: str) -> Part:
        """The official partition ``which``; a one-line error naming ``dataset`` if the source has none."""
        found = getattr(self, which)
        if found is None:
            raise ShiftkitError(f"{dataset}: the source {self.name} has no official {which} partition")
        return found


def split_of(part: Part, index: np.ndarray, y: np.ndarray, g: np.ndarray, num_classes: int, num_groups: int,
             x: Optional[Any] = None) -> Split:
    """The :class:`~.base.Split` of ``part``'s examples ``index`` with labels ``y`` and groups ``g``
    (``x``: inputs already taken, e.g. with an attribute rendered into them). Labels and groups are copied,
    so they never share memory."""
    inputs = part.inputs(index) if x is None else (x if isinstance(x, torch.Tensor) else torch.from_numpy(x))
    ys, gs = (torch.from_numpy(np.array(v, dtype=np.int64)) for v in (y, g))
    return Split(inputs, ys, gs, num_classes, num_groups)


def relabel(classes: Sequence[int], num_classes: int) -> np.ndarray:
    """A lookup from a source's class ids to ``0 .. len(classes) - 1`` (``-1`` for the others).

    >>> relabel([3, 5], 6)[[3, 5]].tolist()
    [0, 1]
    """
    table = np.full(num_classes, -1, dtype=np.int64)
    table[list(classes)] = np.arange(len(classes))
    return table
