"""Logit-adjusted cross-entropies: LDAM, LA, CDT, VS and group VS (docs/METHODS.md#losses-logit-adjusted, docs/METHODS.md#quirk-vs-group).

Each loss rewrites the logits with constants computed once from the training counts (``n_k`` per class or
``n_g`` per group) and returns the per-example cross-entropy of the rewritten logits. The constants are
float64 buffers, so ``.to(device)`` moves them and the closed forms keep full precision; they are cast
to the logits' dtype in ``forward``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import guards
from ..errors import ShiftkitError
from . import Loss, register


def positive_counts(option: str, counts: Optional[Sequence[int]]) -> Tensor:
    """Training counts as a float64 tensor; a missing or non-positive entry is a one-line error (which the
    loss registry prefixes with the loss's name).

    Every entry must be positive: log π, n^(-1/4) and (n/n_max)^-gamma are infinite at 0.
    """
    if counts is None:
        raise ShiftkitError(f"needs {option} (computed from the training data)")
    n = torch.as_tensor(list(counts), dtype=torch.float64)
    if n.ndim != 1 or n.numel() == 0:
        raise ShiftkitError(f"{option} must be a non-empty list of counts, got {list(counts)}")
    if not bool((n > 0).all()):
        kind = option.split("_")[0]
        empty = ", ".join(str(i) for i in torch.nonzero(n <= 0).flatten().tolist())
        raise ShiftkitError(
            f"every entry of {option} must be > 0, got {list(counts)}: {kind}(s) {empty} have no "
            f"training example; give each {kind} training data or choose a loss that does not use {option} "
            "(ce, focal, poly)"
        )
    return n


def check_classes(loss: str, logits: Tensor, k: int) -> None:
    """A one-line error when the logits' class count differs from the counts the loss was built with."""
    if logits.shape[1] != k:
        raise ShiftkitError(f"loss '{loss}' was built for {k} classes but got logits with {logits.shape[1]}")


@register("ldam")
class LDAM(Loss):
    """LDAM of Cao et al. 2019 (docs/METHODS.md#loss-ldam): ``CE(s·(f - m_y e_y), y)`` with ``m_j = C·n_j^(-1/4)``.

    ``C`` makes the largest margin (the rarest class's) equal ``max_margin``; the margin is subtracted
    from the true-class logit only. Defaults are the [W] code's (``max_margin = 0.5``, ``s = 1``,
    docs/METHODS.md#quirk-ldam-scale); the original and the VS-Loss repo use ``s = 30``. DRW is a weighting schedule, not part of
    this loss (the [W] code has none).

    >>> loss = LDAM(class_counts=[4000, 400], max_margin=1.0)      # [W] Figure 5 run
    >>> [round(m, 4) for m in loss.margins.tolist()]
    [0.5623, 1.0]
    >>> loss(torch.zeros(1, 2), torch.tensor([1])).round(decimals=4)   # log(1 + e^1)
    tensor([1.3133])
    """

    #: The search's space (docs/METHODS.md#search); SubpopBench's max_m, scale (and ours).
    search_space = {"max_margin": "loguniform(0.1, 0.8)", "s": "choice(1.0, 10.0, 30.0)"}

    def __init__(self, class_counts: Optional[Sequence[int]] = None, max_margin: float = 0.5, s: float = 1.0):
        super().__init__()
        if not max_margin >= 0:
            raise ShiftkitError(f"max_margin must be >= 0, got {max_margin}")
        if not s > 0:
            raise ShiftkitError(f"s must be > 0, got {s}")
        raw = positive_counts("class_counts", class_counts).pow(-0.25)
        self.register_buffer("margins", raw * (max_margin / raw.max()))
        self.s = float(s)

    def forward(self, logits: Tensor, y: Tensor, g: Optional[Tensor] = None) -> Tensor:
        guards.check("loss 'ldam'", y, g, logits=logits)
        check_classes("ldam", logits, self.margins.numel())
        is_true = F.one_hot(y, logits.shape[1]).bool()
        shifted = torch.where(is_true, logits - self.margins.to(logits.dtype)[y][:, None], logits)
        return F.cross_entropy(self.s * shifted, y, reduction="none")


class _ClassAdjusted(Loss):
    """``CE(Δ ⊙ f + ι, y)`` with per-class buffers ``delta`` (Δ) and ``iota`` (ι); the VS form (docs/METHODS.md#loss-vs).

    LA (Δ = 1) and CDT (ι = 0) are the two halves, so ``vs`` with ``gamma = 0`` computes exactly what
    ``la`` computes and ``vs`` with ``tau = 0`` exactly what ``cdt`` computes.
    """

    def __init__(self, class_counts: Optional[Sequence[int]], tau: float, gamma: float):
        super().__init__()
        n = positive_counts("class_counts", class_counts)
        self.register_buffer("delta", (n / n.max()).pow(gamma))
        self.register_buffer("iota", tau * torch.log(n / n.sum()))

    def forward(self, logits: Tensor, y: Tensor, g: Optional[Tensor] = None) -> Tensor:
        guards.check(f"loss '{self.name}'", y, g, logits=logits)
        check_classes(self.name, logits, self.delta.numel())
        adjusted = logits * self.delta.to(logits.dtype) + self.iota.to(logits.dtype)
        return F.cross_entropy(adjusted, y, reduction="none")


@register("la")
class LogitAdjusted(_ClassAdjusted):
    """Logit-adjusted loss of Menon et al. (docs/METHODS.md#loss-la): ``CE(f + tau·log π, y)``, ``π = n / Σn``.

    ``tau = 1`` is the [W] code's ``LogitAdjustedLoss`` default and [AB]'s Table 1 baseline; [W]'s
    Figure 5 LA run is ``vs`` with ``tau = 3, gamma = 0``, i.e. this loss with ``tau = 3``.

    >>> loss = LogitAdjusted(class_counts=[3, 1])
    >>> [round(v, 4) for v in loss.iota.tolist()]                      # log(3/4), log(1/4)
    [-0.2877, -1.3863]
    >>> loss(torch.zeros(1, 2), torch.tensor([0])).round(decimals=4)   # log(1 + 1/3)
    tensor([0.2877])
    """

    #: The search's space (docs/METHODS.md#search); our choice: around 1 (Menon et al.) to 3 ([W] Figure 5).
    search_space = {"tau": "uniform(0.5, 3.0)"}

    def __init__(self, class_counts: Optional[Sequence[int]] = None, tau: float = 1.0):
        super().__init__(class_counts, tau=tau, gamma=0.0)


@register("cdt")
class ClassDependentTemperature(_ClassAdjusted):
    """Class-dependent temperatures of Ye et al. (docs/METHODS.md#loss-cdt): ``CE(Δ ⊙ f, y)``, ``Δ_j = (n_j/n_max)^gamma``.

    Equivalently, logit j is divided by ``(n_max/n_j)^gamma``.

    Default ``gamma = 0.5``: the value of [W]'s CDT run (``VSLoss(tau=0, gamma=0.5)``, README Fig. 5),
    the setting this library reproduces; the VS-Loss repo's command-line default is ``gamma = 0.3``.

    >>> loss = ClassDependentTemperature(class_counts=[400, 100])
    >>> loss.delta.tolist()
    [1.0, 0.5]
    >>> loss(torch.tensor([[0.0, 2.0]]), torch.tensor([1])).round(decimals=4)   # log(1 + e^-1)
    tensor([0.3133])
    """

    #: The search's space (docs/METHODS.md#search); our choice: around the default.
    search_space = {"gamma": "uniform(0.0, 0.5)"}

    def __init__(self, class_counts: Optional[Sequence[int]] = None, gamma: float = 0.5):
        super().__init__(class_counts, tau=0.0, gamma=gamma)


@register("vs")
class VectorScaling(_ClassAdjusted):
    """VS loss of Kini et al. (docs/METHODS.md#loss-vs): ``CE(Δ ⊙ f + ι, y)``.

    ``Δ_j = (n_j/n_max)^gamma`` (CDT's temperatures) and ``ι_j = tau·log π_j`` (LA's offsets).

    Defaults ``tau = 1.5``, ``gamma = 0.2`` are the [W] code's ``vs_loss.yaml``; [W]'s Figure 5 run uses
    ``tau = 3, gamma = 0.3``; the VS-Loss repo's command-line defaults are ``tau = 1, gamma = 0.3``.

    >>> loss = VectorScaling(class_counts=[4000, 400], tau=3.0, gamma=0.3)   # [W] Figure 5
    >>> [round(v, 4) for v in loss.delta.tolist()], [round(v, 3) for v in loss.iota.tolist()]
    ([1.0, 0.5012], [-0.286, -7.194])
    """

    #: The search's space (docs/METHODS.md#search); our choice.
    search_space = {"tau": "uniform(0.5, 3.0)", "gamma": "uniform(0.0, 0.5)"}

    def __init__(self, class_counts: Optional[Sequence[int]] = None, tau: float = 1.5, gamma: float = 0.2):
        super().__init__(class_counts, tau=tau, gamma=gamma)


def _group_terms(n: Tensor, gamma: float) -> tuple:
    """Group VS constants (docs/METHODS.md#loss-vs_group): ``Δ = (n/n_max)^gamma`` and ``ι = -(n/n_max)^-gamma``."""
    ratio = n / n.max()
    return ratio.pow(gamma), -ratio.pow(-gamma)


@register("vs_group")
class VSGroup(Loss):
    """Group VS loss of the [W] code (docs/METHODS.md#loss-vs_group): per example of group g, ``Δ_g·f + ι_g``.

    ``Δ_g = (n_g/n_max)^gamma`` and ``ι_g = -(n_g/n_max)^-gamma``. With ``additive="all"`` (default,
    faithful to the [W] code and the VS-Loss repo) the same ``ι_g`` is added to every class logit, where
    it cancels inside the softmax: the loss equals ``CE(Δ_g·f, y)``, a per-group temperature.
    ``additive="true_class"`` adds ``ι_g`` to the true-class logit only, so that it acts as a group margin
    (the opt-in variant of docs/METHODS.md#quirk-vs-group). ``gamma = 0.3`` is the [W] config default; its README runs use 0.4.

    Groups come from ``group_counts``; called with ``g=None`` the classes serve as groups
    (``class_counts`` and ``y``).

    >>> loss = VSGroup(group_counts=[1446, 1308, 468, 33], gamma=0.4)   # [W] README CelebA runs
    >>> [round(v, 4) for v in loss.group_delta.tolist()]   # docs/METHODS.md#loss-vs_group: 1.0, 0.961, 0.637, 0.221
    [1.0, 0.9607, 0.6368, 0.2205]
    """

    #: The search's space (docs/METHODS.md#search); our choice, around [W]'s 0.3 and 0.4.
    search_space = {"gamma": "uniform(0.0, 0.6)"}

    def __init__(
        self,
        group_counts: Optional[Sequence[int]] = None,
        class_counts: Optional[Sequence[int]] = None,
        gamma: float = 0.3,
        additive: str = "all",
    ):
        super().__init__()
        if additive not in ("all", "true_class"):
            raise ShiftkitError(f"additive must be 'all' or 'true_class', got '{additive}'")
        if group_counts is None and class_counts is None:
            raise ShiftkitError("needs group_counts (or class_counts, used when g is None)")
        self.additive = additive
        # Class terms serve calls with g=None (classes as groups); a missing table stays a None buffer.
        for prefix, counts in (("group", group_counts), ("class", class_counts)):
            terms = (None, None)
            if counts is not None:
                terms = _group_terms(positive_counts(f"{prefix}_counts", counts), gamma)
            self.register_buffer(f"{prefix}_delta", terms[0])
            self.register_buffer(f"{prefix}_iota", terms[1])

    def forward(self, logits: Tensor, y: Tensor, g: Optional[Tensor] = None) -> Tensor:
        if g is None:
            index, delta, iota = y, self.class_delta, self.class_iota
        else:
            index, delta, iota = g, self.group_delta, self.group_iota
        if delta is None:
            missing = "class_counts (g is None)" if g is None else "group_counts"
            raise ShiftkitError(f"loss 'vs_group' was built without {missing}")
        guards.check("loss 'vs_group'", y, g, logits=logits, num_groups=None if g is None else delta.numel())
        if g is None:  # the class table must cover the logits' classes
            check_classes("vs_group", logits, delta.numel())
        scale = delta.to(logits.dtype)[index][:, None]
        shift = iota.to(logits.dtype)[index][:, None]
        if self.additive == "true_class":
            shift = shift * F.one_hot(y, logits.shape[1]).to(logits.dtype)
        return F.cross_entropy(scale * logits + shift, y, reduction="none")
