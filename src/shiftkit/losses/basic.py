"""Cross-entropy, the focal loss and the polynomially-tailed loss (docs/METHODS.md#loss-ce, docs/METHODS.md#loss-poly)."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import guards
from ..errors import ShiftkitError
from . import Loss, margin, register


@register("ce")
class CrossEntropy(Loss):
    """Cross-entropy ``-f_y + log sum_k exp f_k`` (docs/METHODS.md#loss-ce), per example.

    >>> CrossEntropy()(torch.zeros(1, 4), torch.tensor([2]))   # log 4
    tensor([1.3863])
    """

    def forward(self, logits: Tensor, y: Tensor, g: Optional[Tensor] = None) -> Tensor:
        guards.check("loss 'ce'", y, g, logits=logits)
        return F.cross_entropy(logits, y, reduction="none")


@register("focal")
class Focal(Loss):
    """Focal loss ``-(1 - p_y)^gamma log p_y`` with ``p = softmax(f)`` (Lin et al., ICCV 2017), per example.

    The multiclass softmax form that RGD's Figure 5 compares against on long-tailed CIFAR (docs/METHODS.md#reproduction-rgd-fig5).
    ``gamma = 0`` is cross-entropy exactly (docs/METHODS.md#loss-ce); the default ``gamma = 2`` is Lin et al.'s
    choice (their α-balancing factor is left to a weighting scheme, e.g. ``cb``). Forks of the LDAM-DRW
    code use ``gamma = 1`` on long-tailed CIFAR.

    Stable for any finite logits: ``log p_y`` comes from ``log_softmax`` and ``1 - p_y`` from
    ``-expm1(log p_y)`` (no cancellation as ``p_y -> 1``). ``1 - p_y`` is clamped at the smallest
    positive float so that ``(1 - p_y)^gamma`` has a finite derivative where ``p_y`` rounds to 1; the
    loss and its true gradient are 0 there anyway.

    >>> Focal(gamma=2.0)(torch.zeros(1, 2), torch.tensor([0]))   # (1/2)^2 log 2
    tensor([0.1733])
    """

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        if not gamma >= 0:
            raise ShiftkitError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def forward(self, logits: Tensor, y: Tensor, g: Optional[Tensor] = None) -> Tensor:
        guards.check("loss 'focal'", y, g, logits=logits)
        log_p = F.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
        rest = (-torch.expm1(log_p)).clamp_min(torch.finfo(log_p.dtype).tiny)
        return -rest.pow(self.gamma) * log_p


def _softplus(x: float) -> float:
    """log(1 + e^x) for a Python float, without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@register("poly")
class PolyTail(Loss):
    """Polynomially-tailed loss of Wang et al. (docs/METHODS.md#loss-poly) on the margin ``v``.

    ``type="logit"`` (default): for ``v <= beta``, a logistic left branch, ``log(1 + e^-v)`` divided by
    ``log(1 + e^-beta)`` (``continuity="scale"``, the [W] code's ``logit`` type) or shifted by
    ``1 - log(1 + e^-beta)`` (``continuity="shift"``, the [Z] text). ``v > beta``: ``(v - (beta - 1))^-alpha``.
    Both branches equal 1 at ``v = beta``; with ``beta = 1`` and ``scale`` this is exactly the [W] code,
    whose experiments use alpha = 1 by default and alpha = 2 for Poly+IW / Poly+DRO.

    The [W] code's two other types, both with the knot at ``v = 1`` (so ``beta`` and ``continuity``,
    which place and join the logistic branch, apply to ``logit`` only; other values are refused):

    - ``type="exp"``: ``e^-v`` for ``v <= 1``, ``v^-alpha`` above; discontinuous at 1 (``e^-1`` against
      1), as the code is (its docstring's ``e^(-v+1)`` would be continuous). ``e^-v`` overflows to
      ``inf`` for margins below about -88 in float32, as the code's does.
    - ``type="linear"`` (``alpha > 1``): ``-v + alpha / (alpha - 1)`` for ``v <= 1``,
      ``v^-alpha / (alpha - 1)`` above; continuous, value ``1 / (alpha - 1)`` at the knot.

    The margin is ``f_y - max_{k != y} f_k``: [W]'s binary margin for two classes, its natural
    multiclass extension otherwise (our choice, docs/METHODS.md#quirk-poly). Finite gradients for any
    finite logits (values too, but for ``exp``'s overflow): the power branch is evaluated on a base
    clamped to >= 1; the [W] code's ``|v|^-alpha`` multiplied by a 0 indicator gives NaN at ``v = 0``.

    The space searched (our choice; neither SubpopBench nor DomainBed has the loss) covers [W]'s
    alpha = 1 and 2; ``linear`` needs it narrowed to alpha > 1.

    >>> loss = PolyTail(alpha=1.0)
    >>> loss(torch.tensor([[0.0, 1.0], [0.0, 4.0]]), torch.tensor([1, 1]))
    tensor([1.0000, 0.2500])
    >>> PolyTail(alpha=2.0, type="linear")(torch.tensor([[0.0, 1.0], [0.0, 4.0]]), torch.tensor([1, 1]))
    tensor([1.0000, 0.0625])
    """

    search_space = {"alpha": "uniform(0.5, 3.0)"}

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, continuity: str = "scale", type: str = "logit"):
        super().__init__()
        if not alpha > 0:
            raise ShiftkitError(f"alpha must be > 0, got {alpha}")
        if continuity not in ("scale", "shift"):
            raise ShiftkitError(f"continuity must be 'scale' or 'shift', got '{continuity}'")
        if type not in ("logit", "exp", "linear"):
            raise ShiftkitError(f"type must be 'logit', 'exp' or 'linear', got '{type}'")
        if type != "logit" and (beta != 1 or continuity != "scale"):
            raise ShiftkitError(f"beta and continuity apply to type 'logit' only (type '{type}' has its knot at "
                                f"v = 1), got beta={beta}, continuity='{continuity}'")
        if type == "linear" and not alpha > 1:
            raise ShiftkitError(f"type 'linear' needs alpha > 1, got {alpha}")
        self.alpha, self.beta, self.continuity, self.type = float(alpha), float(beta), continuity, type
        self._left_at_beta = _softplus(-self.beta)

    def forward(self, logits: Tensor, y: Tensor, g: Optional[Tensor] = None) -> Tensor:
        guards.check("loss 'poly'", y, g, logits=logits)
        v = margin(logits, y)
        right = (v - self.beta + 1.0).clamp_min(1.0).pow(-self.alpha)
        if self.type == "exp":
            return torch.where(v <= 1.0, torch.exp(-v), right)
        if self.type == "linear":
            return torch.where(v <= 1.0, self.alpha / (self.alpha - 1) - v, right / (self.alpha - 1))
        left = F.softplus(-v)
        if self.continuity == "scale":
            left = left / self._left_at_beta
        else:
            left = left - self._left_at_beta + 1.0
        return torch.where(v <= self.beta, left, right)
