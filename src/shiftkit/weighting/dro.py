"""Distributionally robust weightings: Group DRO, RGD (KL-DRO) and CVaR-DRO
(docs/METHODS.md#weighting-group_dro, docs/METHODS.md#weighting-rgd, docs/METHODS.md#weighting-cvar).

All three turn the batch's detached losses into weights whose plain mean with the losses is the robust
objective (docs/METHODS.md#one-loop): ``mean(w * loss)``. Only Group DRO keeps state (``q``; with
``automatic_adjustment`` also its moving averages), changed only in training mode. The chi-square and
KL-regularized CVaR balls of Levy et al. are in :mod:`shiftkit.weighting.fastdro`.

One module: the family's three schemes, of which Group DRO with its generalization adjustments (given,
per group, and automatic from each epoch's validation losses) is one class whose parts change together.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Union

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

        A_g = L_g + C_g / sqrt(n_g)              (generalization adjustment, n_g the TRAINING count)
        A   = A / sum(A)                         (only with normalize_loss)
        q  <- q * exp(eta * A);  q <- q / sum(q)
        w_i = B * q_{g(i)} / count_{g(i)}        (count in the batch)

    so that ``mean(w * loss) = sum_g q_g L_g`` with the UPDATED ``q``, as in [W], group_DRO and [Z]'s
    code. [Z]'s paper form ``q_i = g_k / n_k`` is this with the full batch.

    Defaults: ``eta = 0.01``, the [W] configs' ``adv_probs_lr`` (``celeba_dro``, ``cifar_dro``), the
    group_DRO ``--robust_step_size`` and [Z]'s ``dro_step_size``; [W]'s README Figure 5 runs override it
    to 0.05. ``adjustment = 0`` and ``normalize_loss = False`` are group_DRO's defaults ([W] has
    neither). [W] starts from unnormalized ones, which gives the same ``q`` after the first update.

    ``adjustment`` is one C for every group or a list of one ``C_g >= 0`` per group (per class with
    ``by="class"``), as group_DRO's ``--generalization_adjustment`` (one value, or one per group).

    ``automatic_adjustment`` is group_DRO's ``--automatic_adjustment``: the state also keeps a moving
    average of each group's training loss (``train_loss``; step ``gamma``, group_DRO's ``--gamma`` 0.1,
    the first batch where a group is present sets it) and the adjustment in use (``gap``, starting from
    ``C_g / sqrt(n_g)``). After a validation pass, :meth:`adjust` (or the pure :meth:`adjusted`) sets
    ``gap_g = val_g - train_loss_g`` from the validation group mean losses: group_DRO's
    ``adj = gap * sqrt(n_g)`` divided again by ``sqrt(n_g)``. The training loop does this after every
    training epoch, as group_DRO's ``train.py`` does: the scheme then asks for validation losses
    (``needs_validation_losses``) and :meth:`after_validation` turns the validation split's per-example
    losses into the group means (docs/METHODS.md#weighting-group_dro). A group absent from validation
    keeps the gap it had.

    Choices (docs/METHODS.md#weighting-group_dro, docs/METHODS.md#quirk-dro-eval):

    - group_DRO adds the adjustment only ``if torch.all(adj > 0)``; here a given adjustment is added
      whenever ``C_g > 0`` (the same for one scalar C; for a list with a zero entry group_DRO adds
      none of it, we add the positive entries). The automatic one keeps group_DRO's test, since its
      gaps can be negative: all of it when every group with training examples has a positive gap,
      else none. A group with no training example gets no adjustment (C/sqrt(0) would be infinite).
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

    search_space = {"eta": "loguniform(0.001, 0.1)"}  # SubpopBench's (and DomainBed's) groupdro_eta

    def __init__(
        self,
        eta: float = 0.01,
        adjustment: Union[float, List[float]] = 0.0,
        normalize_loss: bool = False,
        automatic_adjustment: bool = False,
        gamma: float = 0.1,
        by: str = "group",
        class_counts: Optional[Sequence[int]] = None,
        group_counts: Optional[Sequence[int]] = None,
    ):
        super().__init__()
        if not 0 <= eta < math.inf:
            raise ShiftkitError(f"eta must be >= 0 and finite, got {eta}")
        if not 0 < gamma <= 1:
            raise ShiftkitError(f"gamma must be in (0, 1], got {gamma}")
        self.categories = Categories(self.name, by, class_counts, group_counts)
        n = self.categories.counts
        self.eta, self.by, self.gamma = float(eta), by, float(gamma)
        self.adjustment = _adjustment(adjustment, n.numel(), by)
        self.normalize_loss, self.automatic = bool(normalize_loss), bool(automatic_adjustment)
        per_group = self.adjustment if isinstance(self.adjustment, float) else torch.tensor(self.adjustment, dtype=n.dtype)
        bonus = torch.where(n > 0, per_group / n.clamp_min(1).sqrt(), torch.zeros_like(n))
        # Derived from the counts, so not part of the state (moves with .to(), not in state_dict).
        self.register_buffer("bonus", bonus.float(), persistent=False)
        self.register_buffer("q", torch.full((n.numel(),), 1.0 / n.numel()))
        if self.automatic:  # group_DRO's exp_avg_loss, exp_avg_initialized and adjustment in use
            self.register_buffer("train_loss", torch.zeros(n.numel()))
            self.register_buffer("seen", torch.zeros(n.numel()))
            self.register_buffer("gap", bonus.float())

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
        present = zeros.index_add(0, index, finite.to(losses.dtype))
        means = total / present.clamp_min(1)
        bonus = state["gap"] if self.automatic else self.bonus
        adjusted = means + bonus.to(losses.dtype)
        if self.normalize_loss:
            adjusted = adjusted / adjusted.sum().clamp_min(torch.finfo(adjusted.dtype).tiny)
        q = state["q"]
        new = {**state, "q": torch.softmax(q.to(adjusted.dtype).log() + self.eta * adjusted, dim=0).to(q.dtype)}
        if self.automatic:  # group_DRO's update_exp_avg_loss, on the same finite-loss means
            seen, average = state["seen"], state["train_loss"]
            keep = (1 - self.gamma * (present > 0).to(seen.dtype)) * seen
            new["train_loss"] = average * keep + means.to(average.dtype) * (1 - keep)
            new["seen"] = torch.maximum(seen, (present > 0).to(seen.dtype))
        return new

    @property
    def needs_validation_losses(self) -> bool:
        """Whether the training loop passes each epoch's validation losses to :meth:`after_validation`:
        with ``automatic_adjustment`` only."""
        return self.automatic

    def after_validation(self, losses: Tensor, y: Tensor, g: Optional[Tensor], state: Dict[str, Tensor]):
        """The state after a validation pass, from its per-example losses (pure): :meth:`adjusted` at each
        group's mean over its finite losses, NaN (the group keeps its gap) for a group with none. The state
        unchanged without ``automatic_adjustment``.

        >>> dro = GroupDRO(automatic_adjustment=True, group_counts=[4, 1, 1])
        >>> state = {**dro.state(), "train_loss": torch.tensor([0.5, 1.0, 1.0]), "gap": torch.full((3,), 0.5)}
        >>> g = torch.tensor([0, 0, 1])
        >>> dro.after_validation(torch.tensor([1.0, 2.0, 3.0]), g, g, state)["gap"]
        tensor([1.0000, 2.0000, 0.5000])
        """
        if not self.automatic:
            return state
        losses = losses.detach().double()
        index = self.categories.index(losses, y, g)
        zeros = losses.new_zeros(self.bonus.numel())
        finite = torch.isfinite(losses)
        total = zeros.index_add(0, index, torch.where(finite, losses, 0.0))
        present = zeros.index_add(0, index, finite.to(losses.dtype))
        means = torch.where(present > 0, total / present.clamp_min(1), torch.full_like(total, math.nan))
        return self.adjusted(means, state)

    def adjusted(self, val_group_losses: Tensor, state: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The state after group_DRO's automatic adjustment from the validation group mean losses (one
        per group; pure; class docstring): ``gap = val - train_loss`` if every group with training
        examples has a positive gap, else no adjustment. A NaN entry stands for a group absent from
        validation: it keeps its gap (0 if the adjustment was off) and takes no part in the test."""
        if not self.automatic:
            raise ShiftkitError("weighting 'group_dro': adjust needs automatic_adjustment=True")
        val = torch.as_tensor(val_group_losses).to(state["train_loss"])
        if val.shape != state["train_loss"].shape:
            raise ShiftkitError(f"weighting 'group_dro': adjust needs one validation loss per {self.by} "
                                f"({self.bonus.numel()}), got shape {tuple(val.shape)}")
        trained = (self.categories.counts > 0).to(val.device)
        measured = trained & ~val.isnan()
        previous = torch.where(trained, state["gap"].to(val), torch.zeros_like(val))
        gap = torch.where(measured, val - state["train_loss"], previous)
        positive = torch.where(measured, gap > 0, torch.ones_like(measured)).all()
        return {**state, "gap": torch.where(positive, gap, torch.zeros_like(gap))}

    def adjust(self, val_group_losses: Tensor) -> None:
        """:meth:`adjusted` on the module's own state, stored in its buffers (after each validation)."""
        self.assign(self.adjusted(val_group_losses, self.state()))


def _adjustment(adjustment: Union[float, Sequence[float]], size: int, by: str) -> Union[float, List[float]]:
    """One C >= 0 (a float) or one ``C_g >= 0`` per category (a list), checked."""
    if isinstance(adjustment, (int, float)):
        if not adjustment >= 0:
            raise ShiftkitError(f"adjustment must be >= 0, got {adjustment}")
        return float(adjustment)
    values = list(adjustment) if isinstance(adjustment, Sequence) and not isinstance(adjustment, str) else None
    if values is None:
        raise ShiftkitError(f"adjustment must be one number or a list of one per {by}, got {adjustment!r}")
    if len(values) != size:
        raise ShiftkitError(f"adjustment must be one number or one per {by} ({size}), got {len(values)} values")
    if not all(isinstance(v, (int, float)) and v >= 0 for v in values):
        raise ShiftkitError(f"adjustment values must be numbers >= 0, got {values}")
    return [float(v) for v in values]


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

    #: Our choice (neither SubpopBench nor DomainBed has RGD): a decade either side of the defaults.
    search_space = {"clip": "loguniform(0.1, 10.0)", "temperature": "loguniform(0.2, 20.0)"}

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

    ``form="top_k"`` (default): with ``k = ceil(alpha * B)``, the ``k`` largest losses get weight
    ``B / k`` and the rest 0, so ``mean(w * loss)`` is the mean of the top-``k`` losses and the weights
    have mean 1. ``alpha = 1`` is ERM. Losses tied with the ``k``-th largest share its remaining mass
    equally, so the weights do not depend on the order of the batch. ``alpha * B`` is rounded to 6
    decimals before the ceiling so that ``0.1 * 30`` gives 3, not 4. Default ``alpha = 0.1`` (a common
    CVaR level, our choice; docs/METHODS.md#weighting-cvar).

    ``form="fractional"``: the exact CVaR of the batch's empirical distribution for any ``r = alpha * B``
    (:func:`fractional_masses`): the ``floor(r)`` largest losses get weight ``B / r``, the next one the
    rest, ``B (r - floor(r)) / r``; the same as ``top_k`` where ``r`` is an integer, and the best response
    of fast-dro's ``RobustLoss(alpha, 0, "cvar")`` (SubpopBench's CVaRDRO) with ties sharing equally.

    A NaN loss ranks as ``+inf``, the worst (as ``torch.topk`` orders it), tied with infinite losses: the
    weights then still have mean 1 and none exceeds ``B / k``. Compared as a number, NaN would be neither
    above nor tied with the ``k``-th largest loss, and the places it holds in the top ``k`` would go to
    the tied losses (above ``B / k`` each) or, with ``k`` or more NaNs, to nobody (all weights 0). The
    objective of such a batch is non-finite either way, as its losses are.

    >>> CVaR(alpha=0.5).weights(torch.tensor([0.3, 2.0, 1.0, 0.1]), torch.zeros(4, dtype=torch.long), None)
    tensor([0., 2., 2., 0.])
    >>> CVaR(alpha=0.3, form="fractional").weights(torch.tensor([0.3, 2.0, 1.0, 0.1]),
    ...                                           torch.zeros(4, dtype=torch.long), None)
    tensor([0.0000, 3.3333, 0.6667, 0.0000])
    """

    search_space = {"alpha": "loguniform(0.01, 1.0)"}  # SubpopBench's CVaRDRO joint_dro_alpha

    def __init__(self, alpha: float = 0.1, form: str = "top_k"):
        super().__init__()
        if not 0 < alpha <= 1:
            raise ShiftkitError(f"alpha must be in (0, 1], got {alpha}")
        if form not in ("top_k", "fractional"):
            raise ShiftkitError(f"form must be 'top_k' or 'fractional', got '{form}'")
        self.alpha, self.form = float(alpha), form

    def weigh(self, losses: Tensor, y: Tensor, g: Optional[Tensor], state) -> Tensor:
        guards.check("weighting 'cvar'", y, g, losses=losses)
        losses = losses.detach()
        size = losses.numel()
        if size == 0:
            return torch.ones_like(losses)
        if self.form == "fractional":
            return size * fractional_masses(losses, self.alpha)
        k = min(size, max(1, math.ceil(round(self.alpha * size, 6))))
        ranked = losses.nan_to_num(nan=math.inf, posinf=math.inf, neginf=-math.inf)  # NaN is the worst loss
        threshold = ranked.topk(k).values[-1]
        above, tied = ranked > threshold, ranked == threshold
        # The tied examples fill the k - (#above) places left, each with an equal share.
        share = (k - above.sum()).to(losses.dtype) / tied.sum().clamp_min(1).to(losses.dtype)
        ones, zeros = torch.ones_like(losses), torch.zeros_like(losses)
        return (size / k) * torch.where(above, ones, torch.where(tied, share, zeros))


def fractional_masses(losses: Tensor, alpha: float) -> Tensor:
    """The exact CVaR best response ``p`` (summing to 1) of a 1-D batch at level ``alpha``
    (docs/METHODS.md#weighting-cvar): with ``r = alpha * B``, mass ``1 / r`` on each of the ``floor(r)``
    largest losses and the rest, ``(r - floor(r)) / r``, on the next; losses tied at the boundary share
    their places' mass equally. NaN ranks as the worst loss (:class:`CVaR`). Pure, for ``vmap``.

    >>> fractional_masses(torch.tensor([3.0, 1.0, 2.0, 0.0]), 0.625)   # r = 2.5
    tensor([0.4000, 0.2000, 0.4000, 0.0000])
    """
    size = losses.numel()
    r = alpha * size
    k = min(size, max(1, math.ceil(r)))
    ranked = losses.nan_to_num(nan=math.inf, posinf=math.inf, neginf=-math.inf)
    threshold = ranked.topk(k).values[-1]
    above, tied = ranked > threshold, ranked == threshold
    # The places above the k-th largest hold 1/r each (at most floor(r) of them, k - 1 < r); the tied
    # block covers the rest of the mass.
    share = (1 - above.sum().to(losses.dtype) / r) / tied.sum().clamp_min(1).to(losses.dtype)
    return torch.where(above, torch.full_like(losses, 1 / r), torch.where(tied, share, torch.zeros_like(losses)))
