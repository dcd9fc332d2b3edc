"""Static weightings: ERM and importance weighting (docs/METHODS.md#weighting-iw)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from .. import guards
from ..errors import ShiftkitError
from . import Categories, Weighting, normalized_inverse_counts, register


@register("erm")
class ERM(Weighting):
    """Empirical risk minimization: every weight is 1."""

    elementwise = True
    unit = True

    def weigh(self, losses: Tensor, y: Tensor, g: Optional[Tensor], state) -> Tensor:
        guards.check("weighting 'erm'", y, g, losses=losses)
        return torch.ones_like(losses)


@register("iw")
class ImportanceWeighting(Weighting):
    """Importance weighting with exponentiated weights ([W], docs/METHODS.md#weighting-iw).

    ``w_i ∝ (1/n_{c(i)})^exponent`` where ``c(i)`` is the example's group (``by="group"``, the [W] code;
    for data without an attribute the group is the class) or its class (``by="class"``), normalized to
    mean 1 over the training set. ``exponent = 1`` is classical IW; [W] uses 1.5 (CIFAR) and 2 (CelebA)
    for IW-Exp and up to 3 with the polynomially-tailed loss.
    """

    elementwise = True

    #: The search's space (docs/METHODS.md#search); our choice: [W] runs exponents 1 to 3.
    search_space = {"exponent": "uniform(0.5, 3.0)"}

    def __init__(
        self,
        exponent: float = 1.0,
        by: str = "group",
        class_counts: Optional[Sequence[int]] = None,
        group_counts: Optional[Sequence[int]] = None,
    ):
        super().__init__()
        if not 0 <= exponent < math.inf:
            raise ShiftkitError(f"exponent must be >= 0 and finite (0 is ERM, 1 classical IW), got {exponent}")
        self.categories = Categories(self.name, by, class_counts, group_counts)
        self.exponent, self.by = float(exponent), by
        self.register_buffer("table", normalized_inverse_counts(self.categories.counts.tolist(), self.exponent))

    def weigh(self, losses: Tensor, y: Tensor, g: Optional[Tensor], state) -> Tensor:
        return self.table[self.categories.index(losses, y, g)].to(losses.dtype)
