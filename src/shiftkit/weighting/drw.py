"""Class-balanced weights (Cui et al. 2019) and deferred re-weighting (DRW) of LDAM-DRW (Cao et al. 2019;
docs/METHODS.md#weighting-cb, docs/METHODS.md#weighting-drw): DRW is the class-balanced scheme switched on at a given epoch, so it extends ``cb``."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..errors import ShiftkitError
from . import Categories, Weighting, register


def class_balanced(counts: Tensor, beta: float) -> Tensor:
    """Class-balanced weights ``(1 - beta) / (1 - beta^n_j)`` scaled to sum to K (docs/METHODS.md#weighting-cb).

    A category with no training example gets 0; the others then sum to K.

    >>> class_balanced(torch.tensor([4000.0, 400.0], dtype=torch.float64), 0.9999).round(decimals=4)
    tensor([0.2126, 1.7874], dtype=torch.float64)
    """
    present = counts > 0
    raw = torch.where(present, (1 - beta) / (1 - beta ** counts.clamp_min(1)), torch.zeros_like(counts))
    return raw / raw.sum() * counts.numel()


@register("cb")
class ClassBalanced(Weighting):
    """Class-balanced weighting (Cui et al., CVPR 2019, "Class-Balanced Loss Based on Effective Number of
    Samples"): each example of class ``j`` weighs ``(1 - beta) / (1 - beta^n_j)``, the inverse of the
    class's effective number of samples, normalized to sum to K over the classes (docs/METHODS.md#weighting-cb).

    With ``loss=ce`` this is Cui et al.'s class-balanced softmax cross-entropy, one of the baselines of
    RGD's Figure 5 (docs/METHODS.md#reproduction-rgd-fig5); with ``loss=focal``, their class-balanced focal loss. ``beta = 0`` gives
    all ones (ERM), ``beta -> 1`` inverse class frequencies. The default ``beta = 0.9999`` is DRW's
    (docs/METHODS.md#weighting-drw) and among the values Cui et al. search on long-tailed CIFAR. ``by="group"`` uses the
    group counts instead (an extension). The weights enter the plain mean ``mean(w * loss)``
    (docs/METHODS.md#one-loop); PyTorch code that passes them to ``F.cross_entropy(weight=...)`` divides by the batch's sum
    of weights instead (see ``drw``).

    >>> cb = ClassBalanced(class_counts=[4000, 400])
    >>> cb.weights(torch.ones(2), torch.tensor([0, 1]), None).round(decimals=4)
    tensor([0.2126, 1.7874])
    """

    elementwise = True

    def __init__(
        self,
        beta: float = 0.9999,
        by: str = "class",
        class_counts: Optional[Sequence[int]] = None,
        group_counts: Optional[Sequence[int]] = None,
    ):
        super().__init__()
        if not 0 <= beta < 1:
            raise ShiftkitError(f"beta must be in [0, 1), got {beta}")
        self.categories = Categories(self.name, by, class_counts, group_counts)
        n = self.categories.counts
        if not n.sum() > 0:
            raise ShiftkitError(f"{by}_counts must have a positive total, got {n.long().tolist()}")
        self.beta, self.by = float(beta), by
        self.register_buffer("table", class_balanced(n, self.beta).float(), persistent=False)

    def weigh(self, losses: Tensor, y: Tensor, g: Optional[Tensor], state) -> Tensor:
        return self.table[self.categories.index(losses, y, g)].to(losses.dtype)


@register("drw")
class DRW(ClassBalanced):
    """Deferred re-weighting: weight 1 until epoch ``start_epoch``, class-balanced weights (``cb``) from then on.

    From epoch ``start_epoch`` (0-based, as the loop's ``start_epoch(epoch)`` hook counts) each example
    of class ``j`` weighs ``(1 - beta) / (1 - beta^n_j)``, normalized to sum to K over the classes. This
    is the VS-Loss / LDAM-DRW code's ``--train_rule DRW`` (docs/METHODS.md#weighting-drw): ``beta = [0, 0.9999][epoch // 160]``
    (``beta = 0`` gives all ones) with 200 epochs, hence the defaults ``beta = 0.9999``,
    ``start_epoch = 160``. ``by="group"`` uses the group counts instead (an extension; the DRW code has classes).
    With ``start_epoch = 0`` it is ``cb``.

    That code passes the weights to ``F.cross_entropy(weight=...)``, whose mean divides by the batch's
    sum of weights; shiftkit's objective is the plain mean (docs/METHODS.md#one-loop), so the two differ by a per-batch
    factor (an effective learning-rate scale).

    The current epoch is a buffer, so a checkpoint resumes with the right phase.

    >>> drw = DRW(start_epoch=2, class_counts=[4000, 400])
    >>> y = torch.tensor([0, 1])
    >>> drw.start_epoch(1); drw.weights(torch.ones(2), y, None)
    tensor([1., 1.])
    >>> drw.start_epoch(2); drw.weights(torch.ones(2), y, None).round(decimals=4)
    tensor([0.2126, 1.7874])
    """

    def __init__(
        self,
        beta: float = 0.9999,
        start_epoch: int = 160,
        by: str = "class",
        class_counts: Optional[Sequence[int]] = None,
        group_counts: Optional[Sequence[int]] = None,
    ):
        super().__init__(beta, by, class_counts, group_counts)
        if start_epoch < 0:
            raise ShiftkitError(f"start_epoch must be >= 0, got {start_epoch}")
        # Named so as not to shadow the start_epoch() hook.
        self.switch_epoch = int(start_epoch)
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))

    def begin_epoch(self, epoch: int, state):
        return {**state, "epoch": torch.full_like(state["epoch"], epoch)}

    def weigh(self, losses: Tensor, y: Tensor, g: Optional[Tensor], state) -> Tensor:
        balanced = super().weigh(losses, y, g, state)
        return torch.where(state["epoch"] >= self.switch_epoch, balanced, torch.ones_like(balanced))
