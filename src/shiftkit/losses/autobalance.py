"""AutoBalance's parametric loss (SPEC §1.8, §5.4): the lower-level training loss of the bilevel search."""

from __future__ import annotations

import copy
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ShiftkitError
from . import Loss, register
from .logit_adjusted import check_classes, positive_counts


def _ce_init(pi: Tensor, ratio: Tensor, tau: float, gamma: float) -> tuple:
    """Released config ``dy_init: Ones, ly_init: Zeros``: σ(1)-scaled logits, no offsets."""
    return torch.ones_like(pi), torch.zeros_like(pi), True


def _la_init(pi: Tensor, ratio: Tensor, tau: float, gamma: float) -> tuple:
    """``dy_init: Ones, ly_init: LA``: ``l = tau·log π`` on σ(1)-scaled logits."""
    return torch.ones_like(pi), tau * pi.log(), True


def _cdt_init(pi: Tensor, ratio: Tensor, tau: float, gamma: float) -> tuple:
    """``dy_init: CDT``: ``Δ = (n/n_max)^gamma`` used without the sigmoid (``cdt_cross_entropy``)."""
    return ratio.pow(gamma), torch.zeros_like(pi), False


#: init name -> per-class (delta, l, through_sigmoid); one small table instead of a dispatch chain.
_INITS = {"ce": _ce_init, "la": _la_init, "cdt": _cdt_init}
_BY = ("class", "class_group")


@register("autobalance")
class AutoBalance(Loss):
    """AutoBalance's parametric loss (Li et al. 2021, eq. 2.2 and 4.2; SPEC §1.8, §5.4), per example:

    ``w_y · CE(σ(Δ) ⊙ f + l, y)``, the released code's ``x = logits * sigmoid(dy) + ly``. The weight
    multiplies each example's CE and is not divided by ``Σ w`` (the training loop takes the mean).

    Learnable tensors (``nn.Parameter`` s of this module, returned by :meth:`hyperparameters` for a
    bilevel optimizer; the training loop's optimizer sees only the model's parameters, so they stay fixed
    there): ``l`` (additive), ``delta`` (multiplicative, through the sigmoid) and, with ``learn_w=True``,
    ``w`` (otherwise a buffer of ones, as the released configs' ``wy: false``).

    ``init`` (the released code's initializations; ``w = 1`` for all):

    - ``"ce"`` (default, ``configs/cifar10/dyly_no_init/1.yaml``): ``delta = 1``, so every logit is
      scaled by σ(1) = 0.7311, and ``l = 0``;
    - ``"la"``: ``delta = 1`` and ``l = tau·log π`` (``ly_init: LA``, ``ly_LA_tau = tau``);
    - ``"cdt"``: ``delta = (n/n_max)^gamma`` used **without** the sigmoid, as the code's
      ``cdt_cross_entropy``: the multiplier is ``delta`` itself (attribute ``through_sigmoid`` is
      ``False``), since a logit-domain init cannot reach the head class's Δ = 1.

    ``cluster_size`` C (SPEC §5.4, the dictionary D_π): classes sorted by decreasing training count
    (ties by index) form consecutive blocks of C that share one entry of ``l`` and ``delta``;
    K' = ceil(K/C). The code's ``repeat_interleave(C)`` over the sorted order is mapped back to class
    indices, so labels need not be frequency-sorted: entry ``cluster_of[k]`` of ``l`` and ``delta`` is
    class k's (the identity when the classes are already sorted). A block starts at the mean of its
    classes' init values [INFERRED: the released code has no clustered LA/CDT init]. ``w`` stays per
    class, as in the code.

    ``tau = 1`` is the paper's "LA init" row (``ly_LA_tau: 1``); the released configs leave
    ``ly_LA_tau`` and ``dy_CDT_gamma`` unset, so ``gamma = 0.3`` is the VS-Loss repo's CDT default.

    ``by="class_group"`` (paper eq. 4.2, no released code): every tensor gets one row per group, and an
    example of group g uses row g across all classes; rows start at the class-level init (class
    priors, not π_{k|g}, since only marginal counts are known). Needs groups in ``forward``.

    >>> loss = AutoBalance(class_counts=[3, 1])
    >>> round(loss(torch.tensor([[0.0, 2.0]]), torch.tensor([1])).item(), 4)   # log(1 + e^(-2σ(1)))
    0.2084
    >>> sorted(loss.hyperparameters())
    ['delta', 'l']
    """

    def __init__(
        self,
        class_counts: Optional[Sequence[int]] = None,
        group_counts: Optional[Sequence[int]] = None,
        num_groups: Optional[int] = None,
        init: str = "ce",
        tau: float = 1.0,
        gamma: float = 0.3,
        cluster_size: int = 1,
        by: str = "class",
        learn_w: bool = False,
    ):
        super().__init__()
        if init not in _INITS:
            raise ShiftkitError(f"loss 'autobalance': init must be one of {', '.join(_INITS)}, got '{init}'")
        if by not in _BY:
            raise ShiftkitError(f"loss 'autobalance': by must be 'class' or 'class_group', got '{by}'")
        if not cluster_size >= 1:
            raise ShiftkitError(f"loss 'autobalance': cluster_size must be >= 1, got {cluster_size}")
        n = positive_counts("autobalance", "class_counts", class_counts)
        rows = self._rows(by, group_counts, num_groups)
        self.by, self.cluster_size, self.num_classes = by, int(cluster_size), n.numel()

        # Cluster of each class: its rank by decreasing count (stable for ties), in blocks of C.
        order = torch.sort(n, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n.numel())
        self.register_buffer("cluster_of", rank // self.cluster_size)
        sizes = torch.bincount(self.cluster_of).to(torch.float64)

        delta, l, self.through_sigmoid = _INITS[init](n / n.sum(), n / n.max(), tau, gamma)
        per_cluster = [torch.zeros_like(sizes).index_add_(0, self.cluster_of, v) / sizes for v in (delta, l)]
        dtype = torch.get_default_dtype()
        self.delta = nn.Parameter(per_cluster[0].to(dtype).expand(rows, -1).clone())
        self.l = nn.Parameter(per_cluster[1].to(dtype).expand(rows, -1).clone())
        w = torch.ones(rows, n.numel(), dtype=dtype)
        if learn_w:
            self.w = nn.Parameter(w)
        else:
            self.register_buffer("w", w)

    @staticmethod
    def _rows(by: str, group_counts: Optional[Sequence[int]], num_groups: Optional[int]) -> int:
        """One parameter row for ``by="class"``, one per group for ``"class_group"``."""
        if by == "class":
            return 1
        groups = len(group_counts) if group_counts is not None else num_groups
        if not groups:
            raise ShiftkitError("loss 'autobalance' with by='class_group' needs group_counts or num_groups")
        return int(groups)

    def per_class(self) -> "AutoBalance":
        """A copy with one entry per class (``cluster_size = 1``), the released retraining's expansion of the
        cluster values (SPEC §5.4): along the classes sorted by decreasing count, each cluster's value sits
        at its centre, rank ``start + size // 2`` (the code's ``range(C//2, K, C)``), and every class takes
        the linear interpolation between the two nearest centres, extrapolated linearly beyond the first
        and last. A single cluster gives its value to all classes; ``w`` is already per class. The copy's
        tensors are plain (frozen) values with no gradient.

        >>> loss = AutoBalance(class_counts=[50, 40, 30, 20, 10, 5], cluster_size=2)
        >>> with torch.no_grad():
        ...     _ = loss.l.copy_(torch.tensor([[0.0, 1.0, 2.0]]))   # centres at ranks 1, 3, 5
        >>> loss.per_class().l.tolist()
        [[-0.5, 0.0, 0.5, 1.0, 1.5, 2.0]]
        """
        clone = copy.deepcopy(self).requires_grad_(False)
        if self.cluster_size == 1:
            return clone
        rank = self.cluster_of.new_empty(self.num_classes)
        order = torch.sort(self.cluster_of, stable=True).indices  # classes by rank (cluster_of is rank // C)
        rank[order] = torch.arange(self.num_classes, device=rank.device)
        sizes = torch.bincount(self.cluster_of)
        starts = torch.cumsum(sizes, 0) - sizes
        centres = (starts + sizes // 2).to(self.l.dtype)
        r = rank.to(self.l.dtype)
        if len(centres) == 1:
            weight, lo = torch.zeros_like(r), torch.zeros_like(rank)
        else:
            lo = (torch.searchsorted(centres, r, right=True) - 1).clamp(0, len(centres) - 2)
            weight = (r - centres[lo]) / (centres[lo + 1] - centres[lo])
        hi = (lo + 1).clamp_max(len(centres) - 1)
        for name in ("l", "delta"):
            v = getattr(self, name).detach()
            setattr(clone, name, nn.Parameter(v[:, lo] + weight * (v[:, hi] - v[:, lo]), requires_grad=False))
        clone.cluster_of = torch.arange(self.num_classes, device=rank.device)
        clone.cluster_size = 1
        return clone

    def hyperparameters(self) -> Dict[str, nn.Parameter]:
        """The learnable tensors by name (``l``, ``delta``, and ``w`` if ``learn_w``), for the outer loop.

        Shapes: ``[1, K']`` for ``by="class"``, ``[G, K']`` for ``"class_group"`` (``w``: ``[., K]``).
        """
        return dict(self.named_parameters())

    def forward(self, logits: Tensor, y: Tensor, g: Optional[Tensor] = None) -> Tensor:
        check_classes("autobalance", logits, self.num_classes)
        mult = torch.sigmoid(self.delta) if self.through_sigmoid else self.delta
        # D_π: expand the K' cluster entries to the K classes (one gather; no per-class Python work).
        mult, add = mult[:, self.cluster_of], self.l[:, self.cluster_of]
        if self.by == "class":  # one row, broadcast over the batch
            mult, add, weight = mult[0], add[0], self.w[0, y]
        elif g is None:
            raise ShiftkitError("loss 'autobalance' with by='class_group' needs the groups g")
        else:  # each example uses its own group's row across all classes (eq. 4.2)
            mult, add, weight = mult[g], add[g], self.w[g, y]
        return weight * F.cross_entropy(logits * mult + add, y, reduction="none")

