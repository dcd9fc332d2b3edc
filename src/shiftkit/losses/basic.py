"""Cross-entropy and the polynomially-tailed loss (SPEC §1.1-1.2)."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ShiftkitError
from . import Loss, margin, register


@register("ce")
class CrossEntropy(Loss):
    """Cross-entropy ``-f_y + log sum_k exp f_k`` (SPEC §1.1), per example.

    >>> CrossEntropy()(torch.zeros(1, 4), torch.tensor([2]))   # log 4
    tensor([1.3863])
    """

    def forward(self, logits: Tensor, y: Tensor, g: Optional[Tensor] = None) -> Tensor:
        return F.cross_entropy(logits, y, reduction="none")


def _softplus(x: float) -> float:
    """log(1 + e^x) for a Python float, without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@register("poly")
class PolyTail(Loss):
    """Polynomially-tailed loss of Wang et al. (SPEC §1.2, §11.2) on the margin ``v``.

    ``v <= beta``: a logistic left branch, ``log(1 + e^-v)`` divided by ``log(1 + e^-beta)``
    (``continuity="scale"``, the [W] code's ``logit`` type) or shifted by ``1 - log(1 + e^-beta)``
    (``continuity="shift"``, the [Z] text). ``v > beta``: ``(v - (beta - 1))^-alpha``. Both branches
    equal 1 at ``v = beta``; with ``beta = 1`` and ``scale`` this is exactly the [W] code, whose
    experiments use alpha = 1 by default and alpha = 2 for Poly+IW / Poly+DRO.

    The margin is ``f_y - max_{k != y} f_k``: [W]'s binary margin for two classes, its natural
    multiclass extension otherwise (SPEC §11.2, inferred). Finite values and gradients for any finite
    logits: the power branch is evaluated on a base clamped to >= 1.

    >>> loss = PolyTail(alpha=1.0)
    >>> loss(torch.tensor([[0.0, 1.0], [0.0, 4.0]]), torch.tensor([1, 1]))
    tensor([1.0000, 0.2500])
    """

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, continuity: str = "scale"):
        super().__init__()
        if not alpha > 0:
            raise ShiftkitError(f"loss 'poly': alpha must be > 0, got {alpha}")
        if continuity not in ("scale", "shift"):
            raise ShiftkitError(f"loss 'poly': continuity must be 'scale' or 'shift', got '{continuity}'")
        self.alpha, self.beta, self.continuity = float(alpha), float(beta), continuity
        self._left_at_beta = _softplus(-self.beta)

    def forward(self, logits: Tensor, y: Tensor, g: Optional[Tensor] = None) -> Tensor:
        v = margin(logits, y)
        left = F.softplus(-v)
        if self.continuity == "scale":
            left = left / self._left_at_beta
        else:
            left = left - self._left_at_beta + 1.0
        right = (v - self.beta + 1.0).clamp_min(1.0).pow(-self.alpha)
        return torch.where(v <= self.beta, left, right)
