"""Classification metrics for every class and group (docs/METHODS.md#metrics), from accumulated counts.

Counts of examples and of correct predictions are kept per (class, group) cell and metrics are computed
at the end, so that evaluating in batches gives exactly the one-shot result (no averaging of batch ratios).
Means and minima run over the classes / groups that have at least one example; an empty group reports
``None`` in ``per_group_acc`` and takes no part in the means. Errors are ``1 - accuracy``.

Groups: ``g`` is the example's group id. Where a dataset has a binary attribute ``a``, ``g = 2·y + a``
(docs/METHODS.md#groups) and ``deo`` is the symmetric difference of equal opportunity (docs/METHODS.md#metric-deo),
``|E_{0,a=0} − E_{0,a=1}| + |E_{1,a=0} − E_{1,a=1}|``; it is ``None`` where that layout does not apply
(not two classes and four groups) or a needed cell is empty. ``dp_gap`` and ``eo_gap`` (fairlearn's
demographic parity and equalized odds differences with the attribute ``a = g mod 2``) follow the same rule.

Also reported, from counts kept beside the cells (:mod:`shiftkit.metrics_extra`): ``ece``
(docs/METHODS.md#metric-ece), ``macro_f1`` (docs/METHODS.md#metric-macro_f1), ``per_class_precision`` and
``per_class_recall`` (docs/METHODS.md#metric-precision_recall) and, for two classes, ``auroc``
(docs/METHODS.md#metric-auroc). ``ece`` and ``auroc`` need logits: they are ``None`` from predictions.

>>> import torch
>>> m = evaluate(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]))
>>> m["acc"], m["balanced_acc"], m["worst_class_acc"], m["macro_f1"]
(0.75, 0.75, 0.5, 0.7333333333333334)
>>> m = evaluate(torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, -1.0]]), torch.tensor([1, 1, 0]))
>>> m["auroc"], round(m["ece"], 4)
(1.0, 0.219)
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from . import guards
from .errors import ShiftkitError
from .metrics_extra import ECE_BINS, binary_score, confidence_cells, rank_sum2, reported

#: Metrics where lower is better (all others are accuracies or scores where higher is better).
LOWER_IS_BETTER = frozenset({"deo", "ece", "dp_gap", "eo_gap"})
#: Scalar metrics ``evaluate`` returns (``train_weighted_acc`` only given training counts).
SCALAR_METRICS = (
    "acc",
    "balanced_acc",
    "worst_class_acc",
    "group_balanced_acc",
    "worst_group_acc",
    "deo",
    "train_weighted_acc",
    "ece",
    "macro_f1",
    "auroc",
    "dp_gap",
    "eo_gap",
)
#: Metrics of the logits (``None`` when only predictions are given).
SCORE_METRICS = frozenset({"ece", "auroc"})


def _mean(values: List[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def _ratios(correct: Tensor, total: Tensor) -> List[Optional[float]]:
    return [c / t if t > 0 else None for c, t in zip(correct.tolist(), total.tolist())]


class Accumulator:
    """Counts per (class, group) cell on the device of the data; one host sync in :meth:`compute`.

    Besides the accuracy cells it counts the predictions per class (precision, recall, ``macro_f1``) and,
    when given logits, the confidence bins of ``ece`` and, for two classes, keeps each example's score for
    ``auroc`` (:mod:`shiftkit.metrics_extra`). Score metrics are ``None`` unless every batch gave logits.

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
        copies, cells = members or 1, self.num_classes * self.num_groups
        #: each member's row: (cell, hit) pairs of the accuracy cells, predictions per class, then
        #: (bin, hit) pairs of the confidence bins; one ``bincount`` per batch fills all three
        self._sizes = {"joint": 2 * cells, "predicted": self.num_classes, "bins": 2 * ECE_BINS}
        self._offsets = {"joint": 0, "predicted": 2 * cells, "bins": 2 * cells + self.num_classes}
        self._row = sum(self._sizes.values())
        self.counts = torch.zeros(copies * self._row, dtype=torch.long, device=device)
        #: fixed-point confidence sums per bin (docs/METHODS.md#metric-ece)
        self.confidence = torch.zeros(copies * ECE_BINS, dtype=torch.long, device=device)
        #: per batch, ``[B, S]`` scores of class 1 and ``[B]`` ``y == 1`` (two classes only, for ``auroc``)
        self.scores: List[Tensor] = []
        self.labels: List[Tensor] = []
        #: whether every batch so far gave logits (else the score metrics are None)
        self.scored = True

    @property
    def total(self) -> Tensor:
        """Examples per (member, class, group) cell, flat."""
        return self._part("joint").view(-1, 2).sum(1)

    @property
    def correct(self) -> Tensor:
        """Correct predictions per (member, class, group) cell, flat."""
        return self._part("joint").reshape(-1, 2)[:, 1]

    def _part(self, name: str) -> Tensor:
        start = self._offsets[name]
        return self.counts.view(self.members or 1, self._row)[:, start:start + self._sizes[name]].reshape(-1)

    def update(self, logits_or_preds: Tensor, y: Tensor, g: Optional[Tensor] = None) -> None:
        """Count one batch; ids outside ``[0, num_classes)`` / ``[0, num_groups)`` are an error
        (:mod:`shiftkit.guards`), not a count in another cell."""
        scores = logits_or_preds
        per_member = self.members is not None
        first = scores[0] if per_member else scores  # one member's batch stands for the shapes of all
        has_logits = first.dim() == 2
        batch = {"logits" if has_logits else "preds": first}
        guards.check("metrics", y, g, **batch, num_classes=self.num_classes, num_groups=self.num_groups)
        preds = (scores.argmax(-1) if has_logits else scores).to(y.device).long()
        g = y if g is None else g
        hit = (preds == y).long()
        # each member's counts after the previous member's
        row = self._row * torch.arange(self.members, device=y.device).unsqueeze(1) if per_member else 0
        cell = (y.long() * self.num_groups + g.long()) * 2 + hit + row
        index = [cell.reshape(-1), (preds + (self._offsets["predicted"] + row)).reshape(-1)]
        self.scored = self.scored and has_logits
        if self.scored:
            index.append(self._update_scores(scores.to(y.device), y, hit, row))
        found = torch.bincount(torch.cat(index), minlength=self.counts.numel())
        self.counts = self.counts.to(y.device) + found

    def _update_scores(self, logits: Tensor, y: Tensor, hit: Tensor, row) -> Tensor:
        """Sum the fixed-point confidences of ``ece`` per bin (for two classes keep the scores of
        ``auroc``); returns the (bin, hit) indices for the counts."""
        bins, fixed = confidence_cells(logits)
        member = row // self._row if self.members is not None else 0
        self.confidence = self.confidence.to(y.device).index_add_(0, (bins + ECE_BINS * member).reshape(-1),
                                                                  fixed.reshape(-1))
        if self.num_classes == 2:
            score = binary_score(logits)
            self.scores.append(score.t() if self.members is not None else score.unsqueeze(1))
            self.labels.append((y == 1).long())  # long: every backend gathers it
        return (bins * 2 + hit + (self._offsets["bins"] + row)).reshape(-1)

    def merge_ranks(self, sum_: Callable[[Tensor], Tensor], gather: Callable[[Tensor], Tensor]) -> None:
        """Combine every rank's counts (``sum_`` in place over ranks) and scores (``gather`` concatenates
        ``[B, ...]`` shards in rank order), as :func:`shiftkit.evaluation.count` does under ``torchrun``."""
        sum_(self.counts)
        sum_(self.confidence)
        if self.num_classes == 2 and self.scored:
            scores, labels = self._scores()
            self.scores, self.labels = [gather(scores)], [gather(labels)]

    def _scores(self) -> "tuple[Tensor, Tensor]":
        device = self.counts.device
        if not self.scores:
            return torch.zeros(0, self.members or 1, dtype=torch.float64, device=device), \
                torch.zeros(0, dtype=torch.long, device=device)
        return torch.cat(self.scores), torch.cat(self.labels)

    def _host(self) -> Tensor:
        """Every member's counts as rows of one ``[S, L]`` CPU tensor: the one device-to-host transfer."""
        copies, device = self.members or 1, self.counts.device
        parts = [self.counts, self.confidence.to(device)]
        if self.num_classes == 2 and self.scored:
            parts.append(rank_sum2(*self._scores()).to(device))
        return torch.cat([p.view(copies, -1) for p in parts], 1).cpu()

    def compute(self, train_group_counts: Optional[Sequence[int]] = None) -> Dict[str, object]:
        """The metrics of the counts (of one model: without ``members``)."""
        if self.members is not None:
            raise ShiftkitError("an accumulator of several members computes with compute_members()")
        return self._metrics(self._host()[0], train_group_counts)

    def compute_members(self, train_group_counts: Optional[Sequence[int]] = None) -> List[Dict[str, object]]:
        """Every member's metrics (one device-to-host transfer)."""
        rows = self._host()
        return [self._metrics(row, train_group_counts) for row in rows]

    def _unpack(self, row: Tensor) -> Dict[str, Tensor]:
        """One member's row of :meth:`_host` by name."""
        parts = {name: row[self._offsets[name]:self._offsets[name] + size] for name, size in self._sizes.items()}
        joint = parts["joint"].view(self.num_classes, self.num_groups, 2)
        parts["total"], parts["correct"] = joint.sum(-1), joint[..., 1]
        parts["confidence"] = row[self._row:self._row + ECE_BINS]
        parts["r2"] = row[self._row + ECE_BINS:]
        return parts

    def _metrics(self, row: Tensor, train_group_counts: Optional[Sequence[int]]) -> Dict[str, object]:
        parts = self._unpack(row)
        total, correct = parts["total"], parts["correct"]
        out = _accuracies(total, correct)
        out.update(reported(total, correct, parts, self.scored))
        if train_group_counts is not None:
            out["train_weighted_acc"] = _train_weighted(out["per_group_acc"], train_group_counts)
        return out


def _accuracies(total: Tensor, correct: Tensor) -> Dict[str, object]:
    """The accuracy metrics of the (class, group) cells (docs/METHODS.md#metrics)."""
    num_classes, num_groups = total.shape
    per_class = _ratios(correct.sum(1), total.sum(1))
    per_group = _ratios(correct.sum(0), total.sum(0))
    present_classes = [a for a in per_class if a is not None]
    present_groups = [a for a in per_group if a is not None]
    n = int(total.sum())
    return {
        "n": n,
        "acc": int(correct.sum()) / n if n else None,
        "balanced_acc": _mean(present_classes),
        "worst_class_acc": min(present_classes, default=None),
        "group_balanced_acc": _mean(present_groups),
        "worst_group_acc": min(present_groups, default=None),
        "deo": _deo(per_group) if num_classes == 2 and num_groups == 4 else None,
        "per_class_acc": per_class,
        "per_group_acc": per_group,
        "per_group_n": total.sum(0).tolist(),
    }


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
