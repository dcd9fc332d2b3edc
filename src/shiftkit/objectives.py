"""Validation (upper-level) objectives of AutoBalance's search, L_fair of docs/METHODS.md#autobalance-objectives.

Each objective is ``(logits [B, K], y [B], g [B]) -> scalar``, differentiable in ``logits`` and free of
host synchronization (class/cell statistics by one-hot matrix products, so they also run under
``torch.func.grad``). A registered objective is a small class whose constructor takes its options
(``OBJECTIVES.build("deo_mix", lam=0.9)``) and whose instances are the callables.

>>> logits, y = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 0, 1])
>>> round(float(balanced_ce(logits, y, y)), 4)   # ((log(1+e^-2) + log 2)/2 + log 2) / 2
0.5516
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ShiftkitError
from .registry import Registry

OBJECTIVES = Registry("objective")
register = OBJECTIVES.register


def build(name: str, **kwargs):
    return OBJECTIVES.build(name, **kwargs)


def cell_means(values: Tensor, cells: Tensor, num_cells: int):
    """Per-cell means of ``values [B]`` over ``cells [B]`` in ``[0, num_cells)``: ``(means [C], present [C])``.

    An absent cell has mean 0 and ``present`` False. One-hot products keep it differentiable and
    sync-free (a boolean index or ``unique`` would need the host, and so would ``F.one_hot``'s range
    check, which also rules out ``torch.func.vmap``; a comparison with the cell ids needs neither).
    """
    onehot = (cells[:, None] == torch.arange(num_cells, device=cells.device)).to(values.dtype)  # [B, C]
    counts = onehot.sum(0)
    return (values @ onehot) / counts.clamp_min(1), counts > 0


def _mean_present(means: Tensor, present: Tensor) -> Tensor:
    return torch.where(present, means, torch.zeros_like(means)).sum() / present.sum().clamp_min(1)


def balanced_ce(logits: Tensor, y: Tensor, g: Optional[Tensor] = None) -> Tensor:
    """CE_bal (docs/METHODS.md#objective-balanced_ce): ``(1/|K_B|) Σ_{k ∈ K_B} mean_{i: y_i = k} CE(f(x_i), k)``, the mean over
    the classes K_B present in the batch of their class-conditional mean CE. ``g`` is ignored.

    The released code instead uses ``F.cross_entropy(logits, y, weight=w)`` with ``w_k ∝ 1/n_val,k`` (the
    counts of the whole validation set), i.e. ``Σ_k (b_k/n_k) L̄_k / Σ_k (b_k/n_k)`` for batch counts b_k
    (the ``/||w||_2`` normalization cancels in the weighted mean). That equals this objective exactly when
    the batch has the validation proportions (b_k ∝ n_k) and in expectation only approximately otherwise;
    here every batch is exactly class-balanced, whatever its composition [INFERRED: same population
    objective, the balanced risk of docs/METHODS.md#metrics].
    """
    return _balanced(F.cross_entropy(logits, y, reduction="none"), y, logits.shape[1])


def _balanced(values: Tensor, cells: Tensor, num_cells: int) -> Tensor:
    return _mean_present(*cell_means(values, cells, num_cells))


def ce_deo(logits: Tensor, y: Tensor, g: Tensor, check: bool = True) -> Tensor:
    """CE_deo (docs/METHODS.md#objective-deo_mix): ``|L_{0,a=0} - L_{0,a=1}| + |L_{1,a=0} - L_{1,a=1}|`` with ``L_{y,a}`` the mean
    CE of the cell (label y, attribute a), where groups are ``g = 2y + a`` (binary labels and attribute,
    e.g. Waterbirds). A pair with an empty cell in the batch contributes 0 (no estimate of its gap).
    ``check=True`` verifies ``g // 2 == y`` (one host sync; callers validate once and pass False).
    """
    return _deo(_binary_ce(logits, y, g, check), g)


def _binary_ce(logits: Tensor, y: Tensor, g: Tensor, check: bool) -> Tensor:
    """Per-example CE after the checks of CE_deo's layout (two logits; with ``check``, g = 2y + a)."""
    if logits.shape[1] != 2:
        raise ShiftkitError(f"objective CE_deo needs binary labels (2 logits), got {logits.shape[1]} classes")
    if check:
        _check_deo_layout(y, g)
    return F.cross_entropy(logits, y, reduction="none")


def _check_deo_layout(y: Tensor, g: Tensor) -> None:
    if g is None or bool(((g // 2 != y) | (g < 0) | (g > 3)).any()):
        raise ShiftkitError("objective CE_deo needs groups g = 2*y + a with a binary attribute a in {0, 1}")


def _deo(values: Tensor, g: Tensor) -> Tensor:
    """``Σ_y |mean_{y,a=0} - mean_{y,a=1}|`` of per-example ``values`` over the cells ``g = 2y + a``."""
    means, present = cell_means(values, g, 4)
    means, present = means.view(2, 2), present.view(2, 2)  # rows: label y, columns: attribute a
    gaps = (means[:, 0] - means[:, 1]).abs()
    return torch.where(present.all(1), gaps, torch.zeros_like(gaps)).sum()


def deo_mix(logits: Tensor, y: Tensor, g: Tensor, lam: float = 0.9, check: bool = True) -> Tensor:
    """``(1 - lam)·CE + lam·CE_deo`` (docs/METHODS.md#objective-deo_mix). The default lam = 0.9 is the inferred intent of the
    paper's Table 3 ("0.1·CE + 0.9·CE_deo" in its caption; the formula read literally gives lam = 0.1)."""
    return _deo_mix(_binary_ce(logits, y, g, check), g, lam)


def _deo_mix(values: Tensor, g: Tensor, lam: float) -> Tensor:
    return (1.0 - lam) * values.mean() + lam * _deo(values, g)


def group_balanced_ce(logits: Tensor, y: Tensor, g: Tensor, num_groups: Optional[int] = None) -> Tensor:
    """CE^G_bal (docs/METHODS.md#objective-group_balanced_ce): the mean over the (class, group) cells present in the batch of the cell mean CE,
    ``(1/|C_B|) Σ_{(k,j) ∈ C_B} L_{k,j}`` (the paper's ``1/(KG) Σ L_{k,j}`` when all cells are present).
    ``num_groups`` defaults to ``max(g) + 1`` (one host sync; pass it to avoid that)."""
    groups = int(g.max()) + 1 if num_groups is None else int(num_groups)
    return _balanced(F.cross_entropy(logits, y, reduction="none"), y * groups + g, logits.shape[1] * groups)


class Objective:
    """A registered objective: ``reduce(values, y, g)`` maps the batch's per-example losses ``values [B]`` to
    a scalar; called on logits, it reduces their cross-entropies. Every objective here is positively
    homogeneous of degree one and piecewise linear in ``values`` (means of cell means, absolute
    differences, non-negative mixtures), so ``reduce(v) = Σ_i v_i ∂reduce/∂v_i`` (Euler): the training
    loop can minimize it as ``mean(w·ℓ)`` with ``w = B·∂reduce/∂v`` (:mod:`shiftkit.weighting.objective`)."""

    def validate(self, y: Tensor, g: Tensor) -> None:
        """Check a whole split once (so that calls need no host sync)."""

    def reduce(self, values: Tensor, y: Tensor, g: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, logits: Tensor, y: Tensor, g: Tensor) -> Tensor:
        return self.reduce(F.cross_entropy(logits, y, reduction="none"), y, g)


@register("balanced_ce")
class BalancedCE(Objective):
    """Class-balanced CE (:func:`balanced_ce`); the class-imbalance objective (docs/METHODS.md#objective-balanced_ce)."""

    def __init__(self, num_classes: Optional[int] = None):
        self.num_classes = num_classes

    def validate(self, y: Tensor, g: Tensor) -> None:
        if self.num_classes is None:
            self.num_classes = int(y.max()) + 1

    def __call__(self, logits: Tensor, y: Tensor, g: Tensor) -> Tensor:
        return balanced_ce(logits, y, g)

    def reduce(self, values: Tensor, y: Tensor, g: Tensor) -> Tensor:
        return _balanced(values, y, self.num_classes)


@register("deo_mix")
class DeoMix(Objective):
    """``(1 - lam)·CE + lam·CE_deo`` (:func:`deo_mix`); lam = 0.9 by default (docs/METHODS.md#objective-deo_mix, our reading)."""

    def __init__(self, lam: float = 0.9):
        if not 0.0 <= lam <= 1.0:
            raise ShiftkitError(f"lam must lie in [0, 1], got {lam}")
        self.lam = float(lam)

    def validate(self, y: Tensor, g: Tensor) -> None:
        """Check the binary label/attribute layout once, on a whole split (so calls need no sync)."""
        _check_deo_layout(y, g)

    def __call__(self, logits: Tensor, y: Tensor, g: Tensor) -> Tensor:
        return deo_mix(logits, y, g, self.lam, check=False)

    def reduce(self, values: Tensor, y: Tensor, g: Tensor) -> Tensor:
        return _deo_mix(values, g, self.lam)


@register("group_balanced_ce")
class GroupBalancedCE(Objective):
    """Mean over (class, group) cells of the cell mean CE (:func:`group_balanced_ce`)."""

    def __init__(self, num_classes: Optional[int] = None, num_groups: Optional[int] = None):
        self.num_classes, self.num_groups = num_classes, num_groups

    def validate(self, y: Tensor, g: Tensor) -> None:
        if self.num_groups is None:
            self.num_groups = int(g.max()) + 1
        if self.num_classes is None:
            self.num_classes = int(y.max()) + 1

    def __call__(self, logits: Tensor, y: Tensor, g: Tensor) -> Tensor:
        return group_balanced_ce(logits, y, g, self.num_groups)

    def reduce(self, values: Tensor, y: Tensor, g: Tensor) -> Tensor:
        return _balanced(values, y * self.num_groups + g, self.num_classes * self.num_groups)
