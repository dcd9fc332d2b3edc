"""Per-example classification losses (docs/METHODS.md#losses).

Every loss is an ``nn.Module`` with one signature, ``loss(logits, y, g=None) -> Tensor[B]``: logits
``[B, K]``, labels ``[B]`` (long), groups ``[B]`` (long) or ``None``. Losses never reduce; the training
loop multiplies by the weighting scheme's weights and takes the mean (docs/METHODS.md#one-loop).

>>> import torch
>>> from shiftkit import losses
>>> loss = losses.build("poly", alpha=2.0)
>>> loss(torch.tensor([[0.0, 3.0]]), torch.tensor([1]))   # margin 3 > 1: 3^-2
tensor([0.1111])
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..registry import Registry

LOSSES = Registry("loss")
register = LOSSES.register
names = LOSSES.names


def build(name: str, **kwargs) -> nn.Module:
    """Build a registered loss; data statistics it does not use are ignored (see :mod:`registry`)."""
    return LOSSES.build(name, **kwargs)


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """Multiclass margin ``f_y - max_{k != y} f_k`` (docs/METHODS.md#quirk-poly), shape ``[B]``.

    For two classes it is exactly [W]'s binary margin ``(f_1 - f_0)(2y - 1)`` (docs/METHODS.md#loss-poly).

    >>> margin(torch.tensor([[1.0, 4.0, 2.0]]), torch.tensor([1]))
    tensor([2.])
    """
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], torch.finfo(logits.dtype).min)
    return true - others.amax(1)


class Loss(nn.Module):
    """Base class: ``forward(logits, y, g=None) -> Tensor[B]``, unreduced."""

    #: The registered name (set by :meth:`~shiftkit.registry.Registry.register`).
    name: str

    def forward(self, logits: Tensor, y: Tensor, g: Optional[Tensor] = None) -> Tensor:
        raise NotImplementedError


from . import autobalance, basic, logit_adjusted  # noqa: E402,F401  (registration; one file per family)
