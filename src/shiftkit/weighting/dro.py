"""Distributionally robust weightings: Group DRO, RGD (KL-DRO) and CVaR-DRO
(docs/METHODS.md#weighting-group_dro, docs/METHODS.md#weighting-rgd, docs/METHODS.md#weighting-cvar).

All three turn the batch's detached losses into weights whose plain mean with the losses is the robust
objective (docs/METHODS.md#one-loop): ``mean(w * loss)``. Only Group DRO keeps state (``q``), changed only in training
mode.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from .. import guards
from ..errors import ShiftkitError
from . import Categories, Weighting, register


@register("group_dro")
class GroupDRO(Weighting):
    """Group DRO by online multiplicative weights (Sagawa et al. 2020; docs/METHODS.md#weighting-group_dro).

    State ``q`` (a distribution over the G groups, uniform at the start). A training call computes the
    batch's per-group mean losses ``L_g`` (0 for a group absent from the batch), then::

        A_g = L_g + C / sqrt(n_g)                (generalization adjustment, n_g the TRAINING count)
        A   = A / sum(A)                         (only with normalize_loss)
        q  <- q * exp(eta * A);  q <- q / sum(q)
        w_i = B * q_{g(i)} / count_{g(i)}        (count in the batch)

    so that ``mean(w * loss) = sum_g q_g L_g`` with the UPDATED ``q``, as in [W], group_DRO and [Z]'s
    code. [Z]'s paper form ``q_i = g_k / n_k`` is this with the full batch.

    Defaults: ``eta = 0.01``, the [W] configs' ``adv_probs_lr`` (``celeba_dro``, ``cifar_dro``), the
    group_DRO ``--robust_step_size`` and [Z]'s ``dro_step_size``; [W]'s README Figure 5 runs override it
    to 0.05. ``adjustment = 0`` and ``normalize_loss = False`` are group_DRO's defaults ([W] has
    neither). [W] starts from unnormalized ones, which gives the same ``q`` after the first update.

    Choices (docs/METHODS.md#weighting-group_dro, docs/METHODS.md#quirk-dro-eval):

    - group_DRO adds the adjustment only ``if torch.all(adj > 0)``; here it is added whenever ``C > 0``
      (the same for one scalar C). A group with no training example gets no adjustment (C/sqrt(0)
      would be infinite).
    - ``q`` changes only in training mode. The [W] code also updates it on validation and test
      batches; that cannot happen here because shiftkit's evaluation never calls the weighting.
    - The update is computed as ``softmax(log q + eta * A)``: the same value, without overflow of
      ``exp`` for large ``eta * A``. A zero sum in ``normalize_loss`` (all losses 0) divides by the
      smallest positive float instead of giving NaN.
    - Non-finite losses (NaN, ±inf) take no part in the update: ``L_g`` is the mean of the group's
      *finite* batch losses, and a group left with none counts as absent (``L_g = 0``). So ``q`` after
      such a batch is ``q`` after the same batch without those examples: it stays finite, where one NaN
      would otherwise make every later ``q`` NaN. The masking is a ``torch.where`` (no host
      synchronization). The weights keep the full batch counts, so the batch's objective is as
      non-finite as its losses, for the loop's divergence check to see (:mod:`shiftkit.divergence`).

    >>> dro = GroupDRO(eta=1.0, group_counts=[3, 1])
    >>> g = torch.tensor([0, 0, 0, 1])
    >>> w = dro.weights(torch.tensor([1.0, 1.0, 1.0, 2.0]), g, g)
    >>> dro.q.round(decimals=4), w.round(decimals=4)
    (tensor([0.2689, 0.7311]), tensor([0.3586, 0.3586, 0.3586, 2.9242]))
    """

    def __init__(
        self,
        eta: float = 0.01,
        adjustment: float = 0.0,
        normalize_loss: bool = False,
        by: str = "group",
        class_counts: Optional[Sequence[int]] = None,
        group_counts: Optional[Sequence[int]] = None,
    ):
        super().__init__()
        if not 0 <= eta < math.inf:
            raise ShiftkitError(f"eta must be >= 0 and finite, got {eta}")
        if not adjustment >= 0:
            raise ShiftkitError(f"adjustment must be >= 0, got {adjustment}")
        self.categories = Categories(self.name, by, class_counts, group_counts)
        n = self.categories.counts
        self.eta, self.adjustment, self.by = float(eta), float(adjustment), by
        self.normalize_loss = bool(normalize_loss)
        bonus = torch.where(n > 0, self.adjustment / n.clamp_min(1).sqrt(), torch.zeros_like(n))
        # Derived from the counts, so not part of the state (moves with .to(), not in state_dict).
        self.register_buffer("bonus", bonus.float(), persistent=False)
        self.register_buffer("q", torch.full((n.numel(),), 1.0 / n.numel()))

    def weigh(self, losses: Tensor, y: Tensor, g: Optional[Tensor], state) -> Tensor:
        losses = losses.detach()
        index = self.categories.index(losses, y, g)
        zeros = losses.new_zeros(self.bonus.numel())
        count = zeros.index_add(0, index, torch.ones_like(losses)).clamp_min(1)  # absent group: mean 0
        return (losses.numel() * state["q"].to(losses.dtype) / count)[index]

    def update(self, losses: Tensor, y: Tensor, g: Optional[Tensor], state):
        """``q`` after a batch, from its groups' means over their finite losses (class docstring)."""
        losses = losses.detach()
        index = self.categories.index(losses, y, g)
        zeros = losses.new_zeros(self.bonus.numel())
        finite = torch.isfinite(losses)
        total = zeros.index_add(0, index, torch.where(finite, losses, 0.0))
        adjusted = total / zeros.index_add(0, index, finite.to(losses.dtype)).clamp_min(1) + self.bonus.to(losses.dtype)
        if self.normalize_loss:
            adjusted = adjusted / adjusted.sum().clamp_min(torch.finfo(adjusted.dtype).tiny)
        q = state["q"]
        return {**state, "q": torch.softmax(q.to(adjusted.dtype).log() + self.eta * adjusted, dim=0).to(q.dtype)}


@register("rgd")
class RGD(Weighting):
    """Re-weighted gradient descent (Kumar et al., TMLR 2024; docs/METHODS.md#weighting-rgd).

    ``w_i = exp(min(loss_i, clip) / temperature)``, detached: the KL-DRO (Donsker-Varadhan) weight with
    the loss clipped. ``normalize="mean"`` rescales each batch to mean weight 1 (``B * w / sum(w)``,
    i.e. ``B * softmax(min(loss, clip) / temperature)``, the ``"mean"`` and ``"softmax"`` options of docs/METHODS.md#weighting-rgd,
    which are the same quantity); ``"none"`` (default) matches the available code.

    Defaults ``clip = 1``, ``temperature = 2`` are ``tau`` and ``tau + 1`` with ``tau = 1``, from
    third-party code citing the paper (our choice, docs/METHODS.md#quirk-rgd-formula; no official code). For losses
    ``>= 0`` the weights lie in ``[1, e^(clip / temperature)]``.

    >>> RGD().weights(torch.tensor([0.0, 0.5, 3.0]), torch.zeros(3, dtype=torch.long), None).round(decimals=4)
    tensor([1.0000, 1.2840, 1.6487])
    """

    def __init__(self, clip: float = 1.0, temperature: float = 2.0, normalize: str = "none"):
        super().__init__()
        if not temperature > 0:
            raise ShiftkitError(f"temperature must be > 0, got {temperature}")
        if normalize not in ("none", "mean"):
            raise ShiftkitError(f"normalize must be 'none' or 'mean', got '{normalize}'")
        self.clip, self.temperature, self.normalize = float(clip), float(temperature), normalize

    def weigh(self, losses: Tensor, y: Tensor, g: Optional[Tensor], state) -> Tensor:
        guards.check("weighting 'rgd'", y, g, losses=losses)
        w = torch.exp(losses.detach().clamp_max(self.clip) / self.temperature)
        if self.normalize == "mean":
            w = w / w.mean()
        return w


@register("cvar")
class CVaR(Weighting):
    """CVaR-DRO at level ``alpha``: the mean of the batch's worst ``alpha`` fraction of losses.

    With ``k = ceil(alpha * B)``, the ``k`` largest losses get weight ``B / k`` and the rest 0, so
    ``mean(w * loss)`` is the mean of the top-``k`` losses and the weights have mean 1. ``alpha = 1``
    is ERM. Losses tied with the ``k``-th largest share its remaining mass equally, so the weights do
    not depend on the order of the batch. ``alpha * B`` is rounded to 6 decimals before the ceiling so
    that ``0.1 * 30`` gives 3, not 4. Default ``alpha = 0.1`` (a common CVaR level, our choice; docs/METHODS.md#weighting-cvar).

    A NaN loss ranks as ``+inf``, the worst (as ``torch.topk`` orders it), tied with infinite losses: the
    weights then still have mean 1 and none exceeds ``B / k``. Compared as a number, NaN would be neither
    above nor tied with the ``k``-th largest loss, and the places it holds in the top ``k`` would go to
    the tied losses (above ``B / k`` each) or, with ``k`` or more NaNs, to nobody (all weights 0). The
    objective of such a batch is non-finite either way, as its losses are.

    >>> CVaR(alpha=0.5).weights(torch.tensor([0.3, 2.0, 1.0, 0.1]), torch.zeros(4, dtype=torch.long), None)
    tensor([0., 2., 2., 0.])
    """

    def __init__(self, alpha: float = 0.1):
        super().__init__()
        if not 0 < alpha <= 1:
            raise ShiftkitError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = float(alpha)

    def weigh(self, losses: Tensor, y: Tensor, g: Optional[Tensor], state) -> Tensor:
        guards.check("weighting 'cvar'", y, g, losses=losses)
        losses = losses.detach()
        size = losses.numel()
        if size == 0:
            return torch.ones_like(losses)
        k = min(size, max(1, math.ceil(round(self.alpha * size, 6))))
        ranked = losses.nan_to_num(nan=math.inf, posinf=math.inf, neginf=-math.inf)  # NaN is the worst loss
        threshold = ranked.topk(k).values[-1]
        above, tied = ranked > threshold, ranked == threshold
        # The tied examples fill the k - (#above) places left, each with an equal share.
        share = (k - above.sum()).to(losses.dtype) / tied.sum().clamp_min(1).to(losses.dtype)
        ones, zeros = torch.ones_like(losses), torch.zeros_like(losses)
        return (size / k) * torch.where(above, ones, torch.where(tied, share, zeros))
