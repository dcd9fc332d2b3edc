"""Batch objectives as weightings: train directly on CE_deo, (1 - λ)·CE + λ·CE_deo or CE^G_bal (docs/METHODS.md#autobalance-objectives).

[AB]'s group baselines (Table 3, docs/METHODS.md#headline-autobalance-table3) train on a loss of the whole batch, not a sum over examples:
``CE_deo = Σ_y |L_{y,a=0} - L_{y,a=1}|`` compares cell means. Such an objective ``O(ℓ_1..ℓ_B)`` of the
per-example losses fits the one loop unchanged: the objectives of :mod:`shiftkit.objectives` are
positively homogeneous of degree one and piecewise linear in ℓ, so with the per-example weights

    ``w_i = B · ∂O/∂ℓ_i``   (computed from the detached losses, as every weighting is),

``mean(w·ℓ) = O(ℓ)`` (Euler's theorem) and ``∇_θ mean(w·ℓ) = ∇_θ O`` (chain rule): the loop minimizes
exactly O, with any per-example loss in place of CE (``loss=poly`` gives Poly_deo). For CE_deo the
weights are **signed**: the examples of the cell with the lower mean loss get ``-B/n_cell``, since
closing the gap also pushes that cell's loss up. Weights are ``0`` for a pair with an empty cell in
the batch (no estimate of its gap), like :func:`shiftkit.objectives.ce_deo`.

>>> import torch
>>> w = build("deo_mix", lam=1.0).weights(torch.tensor([1.0, 3.0, 2.0, 2.0]), torch.tensor([0, 0, 1, 1]),
...                                         torch.tensor([0, 1, 2, 3]))
>>> w        # |1 - 3| for y = 0: raise cell (0, a=0), lower cell (0, a=1); y = 1 has no gap
tensor([-4.,  4.,  0.,  0.])
"""

from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor
from torch.func import grad

from .. import guards, objectives
from ..errors import ShiftkitError
from . import Weighting, build, groups_are_classes, register  # noqa: F401  (build: doctest)


class ObjectiveWeighting(Weighting):
    """``w = B·∂O/∂ℓ`` for a registered objective O (module docstring). ``signed``: weights may be < 0.

    Labels must lie in ``[0, num_classes)`` and groups in ``[0, num_groups)`` (the objective's cells);
    ``g=None`` stands for ``g = y`` only where the groups are the classes (``g_is_y``)."""

    signed, g_is_y = False, False
    objective: objectives.Objective
    num_classes: int
    num_groups: int

    def weigh(self, losses: Tensor, y: Tensor, g: Optional[Tensor], state) -> Tensor:
        if g is None and not self.g_is_y:
            raise ShiftkitError(f"weighting '{self.name}' needs the groups g of each example")
        g = y if g is None else g
        guards.check(f"weighting '{self.name}'", y, g, losses=losses, num_classes=self.num_classes,
                     num_groups=self.num_groups)
        values = losses.detach()
        return len(values) * grad(lambda v: self.objective.reduce(v, y, g))(values)


@register("deo_mix")
class DeoMixWeighting(ObjectiveWeighting):
    """Train on ``(1 - lam)·mean ℓ + lam·ℓ_deo`` (docs/METHODS.md#weighting-deo_mix; ℓ = CE gives [AB]'s ``(1-λ)·CE + λ·CE_deo``).

    ``lam = 1`` is [AB] Table 3's "CE_deo" row, ``lam = 0.9`` its "0.1·CE + 0.9·CE_deo" row. Needs two
    classes and four groups ``g = 2y + a`` (binary attribute a); given the training counts, it checks
    that each class's count is the sum of its two groups'."""

    signed, num_classes, num_groups = True, 2, 4

    def __init__(
        self,
        lam: float = 0.9,
        class_counts: Optional[Sequence[int]] = None,
        group_counts: Optional[Sequence[int]] = None,
    ):
        super().__init__()
        if class_counts is not None and group_counts is not None:
            n, m = list(class_counts), list(group_counts)
            if len(n) != 2 or len(m) != 4 or any(n[y] != m[2 * y] + m[2 * y + 1] for y in (0, 1)):
                raise ShiftkitError("needs two classes and four groups g = 2*y + a (binary attribute a); got class "
                                    f"counts {n} and group counts {m}")
        self.objective = objectives.build("deo_mix", lam=lam)
        self.lam = self.objective.lam


@register("group_balanced")
class GroupBalancedWeighting(ObjectiveWeighting):
    """Train on CE^G_bal (docs/METHODS.md#weighting-group_balanced): the mean over the (class, group) cells present in the batch of the
    cell's mean loss, i.e. ``w_i = B / (|C_B| · n_{cell(i)})`` with batch counts (a per-batch importance
    weighting by (class, group) cell; :class:`ImportanceWeighting` uses the training set's counts)."""

    def __init__(self, class_counts: Optional[Sequence[int]] = None, group_counts: Optional[Sequence[int]] = None):
        super().__init__()
        if class_counts is None or group_counts is None:
            raise ShiftkitError("needs the training class and group counts")
        self.num_classes, self.num_groups = len(class_counts), len(group_counts)
        self.g_is_y = groups_are_classes(class_counts, group_counts)
        self.objective = objectives.build("group_balanced_ce", num_classes=self.num_classes,
                                          num_groups=self.num_groups)

