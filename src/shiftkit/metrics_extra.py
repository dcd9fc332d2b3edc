"""The reported metrics beyond accuracies (docs/METHODS.md#metrics): calibration (``ece``), ``macro_f1``,
per-class precision and recall, binary ``auroc`` and the fairness gaps ``dp_gap`` / ``eo_gap``.

:class:`shiftkit.metrics.Accumulator` keeps the counts these are computed from; this module holds what
turns a batch into those counts (on the device, without a host synchronization) and the counts into
numbers (on the host). Everything is an integer until the last division, so that evaluating in batches, in
any order, gives bit for bit the one-shot result:

- ``ece`` (docs/METHODS.md#metric-ece): per confidence bin the number of examples, of correct ones and the
  sum of the confidences in fixed point (integers of ``2**-32``; the sum of floats would depend on the
  order of the batches; exact up to ``2**31`` examples). The rounding moves ``ece`` by less than ``2**-33``.
- ``auroc`` (docs/METHODS.md#metric-auroc): the score ``f_1 − f_0`` of every example (``O(N)`` floats, two
  classes only); :func:`rank_sum2` gives twice the positives' rank sum with mid-ranks for ties, an integer.
- precision, recall, ``macro_f1`` (docs/METHODS.md#metric-precision_recall): the correct predictions per
  class (the accuracy cells) and the number of predictions per class. ``dp_gap`` and ``eo_gap``
  (docs/METHODS.md#metric-dp_gap, docs/METHODS.md#metric-eo_gap) need the predictions per (class, group)
  cell, which for two classes are the accuracy cells themselves (a miss predicts the other class). A full
  ``[K, G, K]`` confusion tensor would give the same numbers with ``K²G`` counters per member (``10**9``
  for 1000 classes whose groups are the classes); these need ``2KG + K + 30``.

>>> import torch
>>> scores = torch.tensor([[0.1], [0.4], [0.4], [0.8]], dtype=torch.float64)   # [N, members]
>>> r2 = rank_sum2(scores, torch.tensor([False, True, False, True]))           # ranks 1, 2.5, 2.5, 4
>>> r2.tolist(), auroc(int(r2[0]), 2, 2)
([13], 0.875)
>>> ece_of([0] * 14 + [4], [0] * 14 + [3], [0] * 14 + [3 * 2**32], 4)          # 4 at confidence 0.75, 3 right
0.0
"""

from __future__ import annotations

import functools
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

#: Equal-width confidence bins of ``ece`` (Guo et al. 2017's 15).
ECE_BINS = 15
#: Confidences are summed as integers of ``1 / CONFIDENCE_SCALE`` (exact in any batching).
CONFIDENCE_SCALE = 2**32


def _mean(values: List[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def confidence_cells(logits: Tensor) -> "tuple[Tensor, Tensor]":
    """``(bin, fixed)`` of logits ``[..., K]``: the bin ``0..14`` of the maximum softmax probability
    ``p = 1 / Σ_j exp(f_j − max f)`` (in float64; bins ``(lo, hi]`` with edges ``i/15``, the first holding 0)
    and ``round(p · 2**32)``."""
    scores = logits.double()
    confidence = (scores - scores.amax(-1, keepdim=True)).exp_().sum(-1).reciprocal_()
    return confidence_bin(confidence), (confidence * CONFIDENCE_SCALE).round().long()


def confidence_bin(confidence: Tensor) -> Tensor:
    """The bin ``b`` with ``edge_b < p <= edge_{b+1}`` of confidences ``p`` in ``[0, 1]``, edges ``i/15``
    (the nearest float64), ``p = 0`` in the first bin.

    >>> confidence_bin(torch.tensor([0.0, 1 / 15, 0.0667, 0.5, 1.0], dtype=torch.float64)).tolist()
    [0, 0, 1, 7, 14]
    """
    return torch.bucketize(confidence, _upper_edges(confidence.device), right=False).clamp_(max=ECE_BINS - 1)


@functools.lru_cache(maxsize=None)
def _upper_edges(device: torch.device) -> Tensor:
    """The bins' upper edges ``i/15``, ``i = 1..15``, once per device (not one tensor per batch)."""
    return torch.arange(1, ECE_BINS + 1, dtype=torch.float64, device=device) / ECE_BINS


def binary_score(logits: Tensor) -> Tensor:
    """The score of class 1, ``f_1 − f_0`` in float64 (monotone in the softmax probability of class 1,
    without its rounding to 1 that ties confident examples)."""
    return logits[..., 1].double() - logits[..., 0].double()


def rank_sum2(scores: Tensor, positive: Tensor) -> Tensor:
    """Twice the rank sum of the ``positive`` examples per column of ``scores`` ``[N, S]``, with tied
    scores sharing their mid-rank: ``[S]`` integers, on the device (no host synchronization).

    A value that occupies the sorted positions ``left .. right - 1`` has the 1-based mid-rank
    ``(left + 1 + right) / 2``, so twice it is the integer ``left + right + 1``; ``left`` is the running
    maximum of the starts of runs of equal values, ``right`` the running minimum (from the end) of their ends.
    """
    ordered, order = scores.t().sort(-1)
    n = ordered.shape[-1]
    if n == 0:
        return torch.zeros(ordered.shape[0], dtype=torch.long, device=scores.device)
    at = torch.arange(n, device=scores.device).expand_as(ordered)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    left = torch.where(starts, at, 0).cummax(-1).values
    right = torch.where(ends, at + 1, n).flip(-1).cummin(-1).values.flip(-1)
    return ((left + right + 1) * positive.long()[order]).sum(-1)


def auroc(r2: int, negatives: int, positives: int) -> Optional[float]:
    """The Mann-Whitney form of the area under the ROC curve, ``(R - n1(n1+1)/2) / (n0 n1)``, from twice the
    positives' rank sum ``r2`` (docs/METHODS.md#metric-auroc); ``None`` when a class is absent."""
    if negatives == 0 or positives == 0:
        return None
    return (r2 - positives * (positives + 1)) / (2 * negatives * positives)


def ece_of(count: Sequence[int], hits: Sequence[int], fixed: Sequence[int], n: int) -> Optional[float]:
    """``Σ_b |B_b|/n · |acc(B_b) − conf(B_b)| = Σ_b |hits_b − Σ_{i∈B_b} p_i| / n`` from per-bin counts, hits
    and fixed-point confidence sums (docs/METHODS.md#metric-ece); one division of integers."""
    if n == 0:
        return None
    gap = sum(abs(h * CONFIDENCE_SCALE - q) for c, h, q in zip(count, hits, fixed) if c)
    return gap / (CONFIDENCE_SCALE * n)


def _ratio(num: int, den: int) -> Optional[float]:
    return num / den if den else None


def precision_recall_f1(true_positives: Sequence[int], actual: Sequence[int],
                        predicted: Sequence[int]) -> Dict[str, object]:
    """Per-class precision ``tp/predicted`` and recall ``tp/actual`` (``None`` where undefined) and
    ``macro_f1``, the mean of ``2·tp / (actual + predicted)`` over classes present in the labels or the
    predictions (docs/METHODS.md#metric-macro_f1, docs/METHODS.md#metric-precision_recall)."""
    rows = list(zip(true_positives, actual, predicted))
    f1 = [2 * tp / (a + p) for tp, a, p in rows if a + p]
    return {
        "macro_f1": _mean(f1),
        "per_class_precision": [_ratio(tp, p) for tp, _, p in rows],
        "per_class_recall": [_ratio(tp, a) for tp, a, _ in rows],
    }


def fairness_gaps(total: Tensor, correct: Tensor) -> Dict[str, Optional[float]]:
    """``dp_gap`` and ``eo_gap`` from the ``[2, 4]`` (class, group) cells, the attribute ``a = g mod 2``
    (``g = 2y + a``, docs/METHODS.md#groups) and positive class 1 (docs/METHODS.md#metric-dp_gap,
    docs/METHODS.md#metric-eo_gap). ``None`` where an attribute value (for ``dp_gap``) or a
    (class, attribute) cell (for ``eo_gap``) has no example."""
    total, correct = total.tolist(), correct.tolist()
    # predictions of class 1 per cell: the hits of class 1, the misses of class 0
    ones = [[t - c for t, c in zip(total[0], correct[0])], correct[1]]
    cells_n = [[sum(total[y][a::2]) for a in (0, 1)] for y in (0, 1)]
    cells_one = [[sum(ones[y][a::2]) for a in (0, 1)] for y in (0, 1)]
    by_a_n = [cells_n[0][a] + cells_n[1][a] for a in (0, 1)]
    by_a_one = [cells_one[0][a] + cells_one[1][a] for a in (0, 1)]
    dp = None
    if all(by_a_n):
        dp = abs(by_a_one[0] / by_a_n[0] - by_a_one[1] / by_a_n[1])
    eo = None
    if all(cells_n[0]) and all(cells_n[1]):
        rates = [[cells_one[y][a] / cells_n[y][a] for a in (0, 1)] for y in (0, 1)]
        eo = max(abs(rates[0][0] - rates[0][1]), abs(rates[1][0] - rates[1][1]))
    return {"dp_gap": dp, "eo_gap": eo}


def reported(total: Tensor, correct: Tensor, parts: Dict[str, Tensor], scored: bool) -> Dict[str, object]:
    """The metrics of this module from one member's counts: the ``[K, G]`` cells and the accumulator's
    ``predicted``, ``bins``, ``confidence`` and ``r2`` (empty unless two classes and ``scored``: every
    batch gave logits)."""
    num_classes, num_groups = total.shape
    n, per_class = int(total.sum()), total.sum(1).tolist()
    scored = scored and n > 0
    bins = parts["bins"].view(ECE_BINS, 2)
    out: Dict[str, object] = {
        "ece": ece_of(bins.sum(1).tolist(), bins[:, 1].tolist(), parts["confidence"].tolist(), n) if scored else None,
        "auroc": auroc(int(parts["r2"][0]), per_class[0], per_class[1]) if scored and num_classes == 2 else None,
    }
    out.update(precision_recall_f1(correct.sum(1).tolist(), per_class, parts["predicted"].tolist()))
    layout = num_classes == 2 and num_groups == 4
    out.update(fairness_gaps(total, correct) if layout else {"dp_gap": None, "eo_gap": None})
    return out
