"""AutoBalance's parametric loss (docs/METHODS.md#loss-autobalance, docs/METHODS.md#autobalance-parameters): the lower-level training loss of the bilevel search."""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import guards
from ..errors import ShiftkitError
from . import Loss, register
from .logit_adjusted import check_classes, positive_counts

# Each init maps (class counts n [K], group counts or None, rows, gamma) to (delta, l at tau = 1, w), each
# [K] (shared by every row) or [rows, K], and whether Δ goes through the sigmoid. l is linear in tau for
# every init, so "l at tau = 1" is also the log-prior that a learned τ scales (learn=tau).


def _ce_init(n: Tensor, groups, rows: int, gamma: float) -> tuple:
    """Released config ``dy_init: Ones, ly_init: Zeros``: σ(1)-scaled logits, no offsets."""
    return torch.ones_like(n), torch.zeros_like(n), torch.ones_like(n), True


def _la_init(n: Tensor, groups, rows: int, gamma: float) -> tuple:
    """``dy_init: Ones, ly_init: LA``: ``l = tau·log π`` on σ(1)-scaled logits."""
    return torch.ones_like(n), torch.log(n / n.sum()), torch.ones_like(n), True


def _cdt_init(n: Tensor, groups, rows: int, gamma: float) -> tuple:
    """CDT's multiplier ``Δ = (n/n_max)^gamma`` used without the sigmoid (the form of the released
    ``cdt_cross_entropy``, which its search never calls: see :class:`AutoBalance`)."""
    return (n / n.max()).pow(gamma), torch.zeros_like(n), torch.ones_like(n), False


def _group_la_init(n: Tensor, groups, rows: int, gamma: float) -> tuple:
    """[AB]'s Group-LA baseline (docs/METHODS.md#loss-autobalance) as a point of eq. 4.2: row g (cell ``g = A·y + a``) gets
    ``l_k = tau·log π_{k|a}`` and ``w = 1/(A·π̄_a)``, with Δ = 1 used without the sigmoid."""
    k = len(n)
    if groups is None or rows != len(groups) or len(groups) % k:
        raise ShiftkitError("init 'group_la' needs by='class_group' and group counts of "
                            f"(class, attribute) cells g = A*y + a, a multiple of the {k} classes")
    cells = positive_counts("group_counts", groups).view(k, -1)  # [K, A]: row y, column a
    if not torch.equal(cells.sum(1), n):
        raise ShiftkitError(f"group counts {list(groups)} are not (class, attribute) cells "
                            f"g = A*y + a of the class counts {n.long().tolist()}")
    attribute = torch.arange(len(groups)) % cells.shape[1]  # a of row g
    prior = (cells / cells.sum(0)).log().T  # [A, K]: log π_{k|a}
    weight = 1.0 / (cells.shape[1] * cells.sum(0) / cells.sum())  # 1/(A·π̄_a): mean 1 over the training set
    return torch.ones(rows, k, dtype=n.dtype), prior[attribute], weight[attribute, None].expand(-1, k), False


#: init name -> its function; one small table instead of a dispatch chain.
_INITS = {"ce": _ce_init, "la": _la_init, "cdt": _cdt_init, "group_la": _group_la_init}
_BY = ("class", "class_group")
_LEARNABLE = ("l", "delta", "tau")
_CLUSTER_INITS = ("mean", "centre")


def _check_learn(learn: Sequence[str], init: str) -> tuple:
    """``learn`` as a tuple, or a one-line error."""
    learn = tuple(learn)
    if not learn or len(set(learn)) < len(learn) or not set(learn) <= set(_LEARNABLE) or {"l", "tau"} <= set(learn):
        raise ShiftkitError(f"learn must name some of l, delta, tau (each once; not both l and tau), got {list(learn)}")
    if "tau" in learn and init not in ("la", "group_la"):
        raise ShiftkitError(f"learn=tau scales the log-prior of init 'la' or 'group_la', got init '{init}'")
    return learn


def class_clusters(counts: Tensor, size: int) -> tuple:
    """D_π of docs/METHODS.md#autobalance-parameters: each class's cluster, its rank by decreasing count
    (stable for ties) in blocks of ``size``, and the classes in that order; ``(cluster_of [K], order [K])``.

    >>> class_clusters(torch.tensor([5.0, 50.0, 20.0]), 2)
    (tensor([1, 0, 0]), tensor([1, 2, 0]))
    """
    order = torch.sort(counts, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(counts.numel())
    return rank // size, order


@register("autobalance")
class AutoBalance(Loss):
    """AutoBalance's parametric loss (Li et al. 2021, eq. 2.2 and 4.2; docs/METHODS.md#loss-autobalance), per example:

    ``w_y · CE(σ(Δ) ⊙ f + l, y)``, the released code's ``x = logits * sigmoid(dy) + ly``. The weight
    multiplies each example's CE and is not divided by ``Σ w`` (the training loop takes the mean).

    ``learn`` picks α, the tensors the bilevel search tunes ([AB] Table 1's rows; docs/METHODS.md#autobalance-parameters): any of
    ``"l"`` (additive), ``"delta"`` (multiplicative, through the sigmoid) and ``"tau"``, one scalar τ
    with ``l = τ·log π`` ("AutoBalance: τ of LA loss", not in the released code; τ starts at the ``tau``
    option and scales the init's log-prior, so it needs init ``la`` or ``group_la``; ``l`` and ``tau``
    exclude each other). Learned tensors are ``nn.Parameter`` s, returned by :meth:`hyperparameters` for
    the outer loop; the others are buffers. ``w`` is learned only with ``learn_w=True`` (the released
    configs' ``wy: false``). The training loop's optimizer sees only the model's parameters, so α stays
    fixed there. :meth:`offsets` gives ``l`` (``τ·log π`` with ``learn=[tau]``).

    ``init``, the starting point of α (``w = 1`` except for ``group_la``):

    - ``"ce"`` (default, ``configs/cifar10/dyly_no_init/1.yaml``): ``delta = 1``, so every logit is
      scaled by σ(1) = 0.7311, and ``l = 0``;
    - ``"la"``: ``delta = 1`` and ``l = tau·log π`` (``ly_init: LA``, ``ly_LA_tau = tau``);
    - ``"cdt"`` (ours): the class-dependent temperatures of Ye et al. (loss ``cdt``) as the starting
      point, ``delta = (n/n_max)^gamma`` and ``l = 0``, with Δ used **without** the sigmoid: the
      multiplier is ``delta`` itself (attribute ``through_sigmoid`` is ``False``) in training, in the
      search's hypergradient and in the retraining, so the search starts exactly at CDT and tunes the
      multiplier itself. The sigmoid is dropped because σ(Δ) < 1 can never be the head class's
      multiplier 1. This is **not** the released code's ``dy_init: CDT``: there
      ``get_init_dy`` sets ``dy = (n/n_max)^gamma`` (``get_CDT_params``), but ``loss_search.py`` and
      ``retraining.py`` always train with ``loss_adjust_cross_entropy`` (``logits * sigmoid(dy) + ly``),
      whatever the init, so its multiplier is σ((n/n_max)^gamma), between σ(0) = 0.5 and σ(1) = 0.7311,
      which is not CDT. ``core/utils.py`` defines ``cdt_cross_entropy`` (``logits * dy + ly``, the
      form used here), but neither script calls it. The released ``dy_init: CDT`` is not offered here;
    - ``"group_la"`` (``by="class_group"``; ours): [AB]'s Group-LA baseline of Table 3 (docs/METHODS.md#autobalance-objectives),
      ``w_a · CE(f + tau·log π_{·|a}, y)`` for an example with attribute a: groups are the cells
      ``g = A·y + a`` (docs/METHODS.md#groups; A = 2 for a binary attribute), ``π_{k|a}`` the class
      frequencies among training examples with attribute a, ``w_a = 1/(A·π̄_a)`` with π̄_a the
      attribute's frequency, and the multiplier Δ = 1 (no sigmoid). [INFERRED: the paper says only
      "w_g = 1/π̄_g plus LA with τ = 1 over classes conditioned on group"; l_{kg} = log π_{k|g} is our
      reading, and dividing by A (mean weight 1 over the training set, as ``iw``) is ours.] Trained
      without the search it *is* that baseline; with the search, AutoBalance starts from it.

    ``cluster_size`` C (the released configs' ``group_size``): classes sorted by decreasing training
    count (ties by index) form consecutive blocks of C that share one entry of ``l`` and ``delta``;
    K' = ceil(K/C). The code's ``repeat_interleave(C)`` over the sorted order is mapped back to class
    indices, so labels need not be frequency-sorted: entry ``cluster_of[k]`` of ``l`` and ``delta`` is
    class k's (the identity when the classes are already sorted). ``w`` stays per class, as in the code.

    ``cluster_init`` says where a block of several classes starts (with C = 1 both choices agree):

    - ``"mean"`` (default; ours): the mean of its classes' init values, e.g. the mean of their
      ``tau·log π_k`` for ``la``;
    - ``"centre"``: the init value of the block's centre class, the one of rank ``start + size // 2``
      in the sorted order (the rank at which :meth:`per_class` places the block's value). This is the
      released code's clustered LA init: ``get_LA_params`` (``core/utils.py``) keeps ``tau·log π`` of
      the classes ``range(C//2, K, C)`` only, one per cluster (its labels are frequency-sorted). For a
      short last block (K not a multiple of C) we take that block's own centre; the released code takes
      rank ``start + C//2`` if it exists and otherwise returns one entry fewer than there are clusters.
      The released code clusters only the LA log-prior (``dy_init: Ones`` is constant and
      ``get_CDT_params`` has no clustering); here ``"centre"`` applies to ``delta`` and the log-prior of
      every init alike, so with ``ce`` and ``la`` (Δ = 1) only ``l`` differs from ``"mean"``.

    ``tau = 1`` is the paper's "LA init" row (``ly_LA_tau: 1``); the released configs leave
    ``ly_LA_tau`` and ``dy_CDT_gamma`` unset, so ``gamma = 0.3`` is the VS-Loss repo's CDT default.

    ``by="class_group"`` (paper eq. 4.2, no released code): every tensor gets one row per group, and an
    example of group g uses row g across all classes; rows start at the class-level init (class
    priors), except with ``init="group_la"``. Needs groups in ``forward``.

    >>> loss = AutoBalance(class_counts=[3, 1])
    >>> round(loss(torch.tensor([[0.0, 2.0]]), torch.tensor([1])).item(), 4)   # log(1 + e^(-2σ(1)))
    0.2084
    >>> sorted(loss.hyperparameters())
    ['delta', 'l']
    >>> tau = AutoBalance(class_counts=[3, 1], init="la", tau=2.0, learn=["tau"])
    >>> list(tau.hyperparameters()), [round(v, 4) for v in tau.offsets()[0].tolist()]   # 2·log(3/4), 2·log(1/4)
    (['tau'], [-0.5754, -2.7726])
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
        learn: List[str] = ("l", "delta"),
        learn_w: bool = False,
        cluster_init: str = "mean",
    ):
        super().__init__()
        if init not in _INITS:
            raise ShiftkitError(f"init must be one of {', '.join(_INITS)}, got '{init}'")
        if by not in _BY:
            raise ShiftkitError(f"by must be 'class' or 'class_group', got '{by}'")
        if not cluster_size >= 1:
            raise ShiftkitError(f"cluster_size must be >= 1, got {cluster_size}")
        if cluster_init not in _CLUSTER_INITS:
            raise ShiftkitError(f"cluster_init must be 'mean' or 'centre', got '{cluster_init}'")
        self.learn = _check_learn(learn, init)
        n = positive_counts("class_counts", class_counts)
        rows = self._rows(by, group_counts, num_groups)
        self.by, self.cluster_size, self.num_classes, self.init = by, int(cluster_size), n.numel(), init

        cluster_of, order = class_clusters(n, self.cluster_size)
        self.register_buffer("cluster_of", cluster_of)
        blocks = torch.bincount(self.cluster_of)  # classes per cluster
        sizes = blocks.to(torch.float64)

        delta, prior, w, self.through_sigmoid = _INITS[init](n, group_counts, rows, gamma)
        if cluster_init == "centre":  # each block takes its centre class's value: rank start + size // 2
            centre = order[torch.cumsum(blocks, 0) - blocks + blocks // 2]
            delta, prior = (v.expand(rows, -1)[:, centre] for v in (delta, prior))
        else:  # "mean": each block starts at the mean of its classes' values
            delta, prior = (torch.zeros(rows, len(sizes), dtype=torch.float64).index_add_(
                1, self.cluster_of, v.expand(rows, -1)) / sizes for v in (delta, prior))
        self._keep("delta", delta, "delta" in self.learn)
        if "tau" in self.learn:  # l = τ · log-prior, with the log-prior fixed
            self.tau = nn.Parameter(torch.tensor([float(tau)]))
            self._keep("log_prior", prior, False)
        else:
            self._keep("l", tau * prior, "l" in self.learn)
        self._keep("w", w.expand(rows, -1), learn_w)

    def _keep(self, name: str, value: Tensor, learned: bool) -> None:
        """Store ``value`` (default dtype) as a parameter if ``learned``, else as a buffer."""
        value = value.to(torch.get_default_dtype()).clone()
        if learned:
            self.register_parameter(name, nn.Parameter(value))
        else:
            self.register_buffer(name, value)

    @staticmethod
    def _rows(by: str, group_counts: Optional[Sequence[int]], num_groups: Optional[int]) -> int:
        """One parameter row for ``by="class"``, one per group for ``"class_group"``."""
        if by == "class":
            return 1
        groups = len(group_counts) if group_counts is not None else num_groups
        if not groups:
            raise ShiftkitError("by='class_group' needs group_counts or num_groups")
        return int(groups)

    def offsets(self) -> Tensor:
        """The additive term l per cluster, ``[rows, K']``: the tensor ``l``, or ``τ·log π`` with learn=tau."""
        return self.tau * self.log_prior if "tau" in self.learn else self.l

    def per_class(self) -> "AutoBalance":
        """A copy with one entry per class (``cluster_size = 1``): along the classes sorted by decreasing
        count, each cluster's value sits at its centre, rank ``start + size // 2``, and every class takes
        the linear interpolation between the two nearest centres, extrapolated linearly beyond the first
        and last. A single cluster gives its value to all classes; ``w`` is already per class (with
        learn=tau, the log-prior is interpolated and τ kept). The copy's tensors are frozen (no gradient).

        This is the expansion of the released ``retraining.py`` (the ``"Retrain"`` branch of
        ``get_init_dy`` / ``get_init_ly`` in ``core/utils.py``: ``scipy.interpolate.interp1d`` at the
        ranks ``range(C//2, K, C)``, ``fill_value="extrapolate"``), which the released code applies only
        when the search did not start from LA; :func:`shiftkit.autobalance.search_and_retrain` says when
        it is used here.

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
        centres = (starts + sizes // 2).to(self.delta.dtype)
        r = rank.to(self.delta.dtype)
        if len(centres) == 1:
            weight, lo = torch.zeros_like(r), torch.zeros_like(rank)
        else:
            lo = (torch.searchsorted(centres, r, right=True) - 1).clamp(0, len(centres) - 2)
            weight = (r - centres[lo]) / (centres[lo + 1] - centres[lo])
        hi = (lo + 1).clamp_max(len(centres) - 1)
        for name in ("delta", "log_prior" if "tau" in self.learn else "l"):
            v = getattr(self, name).detach()
            flat = v[:, lo] + weight * (v[:, hi] - v[:, lo])
            if name in self._parameters:
                setattr(clone, name, nn.Parameter(flat, requires_grad=False))
            else:
                clone.register_buffer(name, flat)
        clone.cluster_of = torch.arange(self.num_classes, device=rank.device)
        clone.cluster_size = 1
        return clone

    def hyperparameters(self) -> Dict[str, nn.Parameter]:
        """The learned tensors by name (those of ``learn``, and ``w`` if ``learn_w``), for the outer loop.

        Shapes: ``[1, K']`` for ``by="class"``, ``[G, K']`` for ``"class_group"`` (``w``: ``[., K]``;
        ``tau``: ``[1]``).
        """
        return dict(self.named_parameters())

    def forward(self, logits: Tensor, y: Tensor, g: Optional[Tensor] = None) -> Tensor:
        guards.check("loss 'autobalance'", y, g, logits=logits,
                     num_groups=self.w.shape[0] if self.by == "class_group" else None)
        check_classes("autobalance", logits, self.num_classes)
        mult = torch.sigmoid(self.delta) if self.through_sigmoid else self.delta
        # D_π: expand the K' cluster entries to the K classes (one gather; no per-class Python work).
        mult, add = mult[:, self.cluster_of], self.offsets()[:, self.cluster_of]
        if self.by == "class":  # one row, broadcast over the batch
            mult, add, weight = mult[0], add[0], self.w[0, y]
        elif g is None:
            raise ShiftkitError("loss 'autobalance' with by='class_group' needs the groups g")
        else:  # each example uses its own group's row across all classes (eq. 4.2)
            mult, add, weight = mult[g], add[g], self.w[g, y]
        return weight * F.cross_entropy(logits * mult + add, y, reduction="none")
