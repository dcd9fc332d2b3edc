"""Classification metrics for every class and group (docs/METHODS.md#metrics), from accumulated counts.

Counts of examples and of correct predictions are kept per (class, group) cell and metrics are computed
at the end, so that evaluating in batches gives exactly the one-shot result (no averaging of batch ratios).
Means and minima run over the classes / groups that have at least one example; an empty group reports
``None`` in ``per_group_acc`` and takes no part in the means. Errors are ``1 - accuracy``.

Groups: ``g`` is the example's group id. Where a dataset has a binary attribute ``a``, ``g = 2·y + a``
(docs/METHODS.md#groups) and ``deo`` is the symmetric difference of equal opportunity (docs/METHODS.md#metric-deo),
``|E_{0,a=0} − E_{0,a=1}| + |E_{1,a=0} − E_{1,a=1}|``; it is ``None`` where that layout does not apply
(not two classes and four groups) or a needed cell is empty.

>>> import torch
>>> m = evaluate(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]))
>>> m["acc"], m["balanced_acc"], m["worst_class_acc"]
(0.75, 0.75, 0.5)
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from . import guards
from .errors import ShiftkitError

#: Metrics where lower is better (all others are accuracies).
LOWER_IS_BETTER = frozenset({"deo"})
#: Scalar metrics ``evaluate`` returns (``train_weighted_acc`` only given training counts).
SCALAR_METRICS = (
    "acc",
    "balanced_acc",
    "worst_class_acc",
    "group_balanced_acc",
    "worst_group_acc",
    "deo",
    "train_weighted_acc",
)


def _mean(values: List[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def _ratios(correct: Tensor, total: Tensor) -> List[Optional[float]]:
    return [c / t if t > 0 else None for c, t in zip(correct.tolist(), total.tolist())]


class Accumulator:
    """Counts per (class, group) cell on the device of the data; one host sync in :meth:`compute`.

    With ``members=S`` it counts ``S`` models' predictions on the same examples at once (an ensemble's
    member axis): ``update`` takes logits ``[S, B, K]`` or predictions ``[S, B]`` with the batch's shared
    ``y`` and ``g`` ``[B]``, and :meth:`compute_members` gives each member's metrics in one transfer.

    >>> acc = Accumulator(num_classes=2, num_groups=2)
    >>> acc.update(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0, 1]))
    >>> acc.update(torch.tensor([1]), torch.tensor([0]), torch.tensor([1]))
    >>> acc.compute()["per_group_acc"]
    [1.0, 0.5]
    >>> both = Accumulator(num_classes=2, num_groups=2, members=2)
    >>> both.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([0, 1]), torch.tensor([0, 1]))
    >>> [m["acc"] for m in both.compute_members()]
    [1.0, 0.5]
    """

    def __init__(self, num_classes: int, num_groups: Optional[int] = None, device=None,
                 members: Optional[int] = None):
        self.num_classes = int(num_classes)
        self.num_groups = int(num_groups) if num_groups is not None else self.num_classes
        self.members = members
        cells = self.num_classes * self.num_groups * (members or 1)
        self.total = torch.zeros(cells, dtype=torch.long, device=device)
        self.correct = torch.zeros(cells, dtype=torch.long, device=device)

    def update(self, logits_or_preds: Tensor, y: Tensor, g: Optional[Tensor] = None) -> None:
        """Count one batch; ids outside ``[0, num_classes)`` / ``[0, num_groups)`` are an error
        (:mod:`shiftkit.guards`), not a count in another cell."""
        scores = logits_or_preds
        per_member = self.members is not None
        first = scores[0] if per_member else scores  # one member's batch stands for the shapes of all
        batch = {"logits" if first.dim() == 2 else "preds": first}
        guards.check("metrics", y, g, **batch, num_classes=self.num_classes, num_groups=self.num_groups)
        preds = scores.argmax(-1) if first.dim() == 2 else scores
        g = y if g is None else g
        cell = y.long() * self.num_groups + g.long()
        hit = (preds.to(y.device) == y).long()
        if per_member:  # each member's cells after the previous member's
            cells = self.num_classes * self.num_groups
            cell = cell + cells * torch.arange(self.members, device=cell.device).unsqueeze(1)
        joint = torch.bincount((cell * 2 + hit).reshape(-1), minlength=2 * self.total.numel()).view(-1, 2)
        self.total = self.total.to(cell.device) + joint.sum(1)
        self.correct = self.correct.to(cell.device) + joint[:, 1]

    def compute(self, train_group_counts: Optional[Sequence[int]] = None) -> Dict[str, object]:
        """The metrics of the counts (of one model: without ``members``)."""
        if self.members is not None:
            raise ShiftkitError("an accumulator of several members computes with compute_members()")
        return self._metrics(self.total.cpu(), self.correct.cpu(), train_group_counts)

    def compute_members(self, train_group_counts: Optional[Sequence[int]] = None) -> List[Dict[str, object]]:
        """Every member's metrics (one device-to-host transfer)."""
        both = torch.stack([self.total, self.correct]).cpu().view(2, self.members or 1, -1)
        return [self._metrics(both[0, s], both[1, s], train_group_counts) for s in range(both.shape[1])]

    def _metrics(self, total: Tensor, correct: Tensor, train_group_counts: Optional[Sequence[int]]) -> Dict[str, object]:
        total = total.view(self.num_classes, self.num_groups)
        correct = correct.view(self.num_classes, self.num_groups)
        per_class = _ratios(correct.sum(1), total.sum(1))
        per_group = _ratios(correct.sum(0), total.sum(0))
        present_classes = [a for a in per_class if a is not None]
        present_groups = [a for a in per_group if a is not None]
        n = int(total.sum())
        out: Dict[str, object] = {
            "n": n,
            "acc": int(correct.sum()) / n if n else None,
            "balanced_acc": _mean(present_classes),
            "worst_class_acc": min(present_classes, default=None),
            "group_balanced_acc": _mean(present_groups),
            "worst_group_acc": min(present_groups, default=None),
            "deo": _deo(per_group) if self.num_classes == 2 and self.num_groups == 4 else None,
            "per_class_acc": per_class,
            "per_group_acc": per_group,
            "per_group_n": total.sum(0).tolist(),
        }
        if train_group_counts is not None:
            out["train_weighted_acc"] = _train_weighted(per_group, train_group_counts)
        return out


def _deo(per_group: List[Optional[float]]) -> Optional[float]:
    """Symmetric DEO from the accuracies of groups ``g = 2y + a`` (docs/METHODS.md#metric-deo)."""
    if any(a is None for a in per_group):
        return None
    return abs(per_group[0] - per_group[1]) + abs(per_group[2] - per_group[3])


def _train_weighted(per_group: List[Optional[float]], counts: Sequence[int]) -> Optional[float]:
    """Accuracy re-weighted by training group frequencies (docs/METHODS.md#metric-train_weighted_acc, [AB]'s standard error)."""
    if len(counts) != len(per_group):
        raise ShiftkitError(f"metrics: train_group_counts has {len(counts)} entries for {len(per_group)} groups")
    pairs = [(a, c) for a, c in zip(per_group, counts) if a is not None and c > 0]
    weight = sum(c for _, c in pairs)
    return sum(a * c for a, c in pairs) / weight if weight else None


def evaluate(
    logits_or_preds: Tensor,
    y: Tensor,
    g: Optional[Tensor] = None,
    train_group_counts: Optional[Sequence[int]] = None,
    num_classes: Optional[int] = None,
    num_groups: Optional[int] = None,
) -> Dict[str, object]:
    """All metrics of docs/METHODS.md#metrics in one call: logits ``[N, K]`` or predictions ``[N]``, labels, groups.

    ``num_classes`` defaults to the logits' width (or the largest label or prediction + 1);
    ``num_groups`` to ``len(train_group_counts)`` or the largest group id + 1. Without ``g`` the groups
    are the classes.
    """
    if num_classes is None:
        if logits_or_preds.dim() == 2:
            num_classes = logits_or_preds.shape[1]
        else:
            num_classes = int(max(y.max(), logits_or_preds.max())) + 1 if y.numel() else 1
    if num_groups is None:
        if train_group_counts is not None:
            num_groups = len(train_group_counts)
        elif g is not None:
            num_groups = int(g.max()) + 1 if g.numel() else 1
        else:
            num_groups = num_classes
    acc = Accumulator(num_classes, num_groups, device=y.device)
    acc.update(logits_or_preds, y, g)
    return acc.compute(train_group_counts)
