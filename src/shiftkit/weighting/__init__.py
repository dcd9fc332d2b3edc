"""Weighting schemes: per-example losses in, per-example weights out (docs/METHODS.md#weightings).

The training loop minimizes ``(w * losses).mean()`` over the batch (docs/METHODS.md#one-loop: the plain mean, not
divided by the batch's sum of weights). A scheme is an ``nn.Module`` so that its state (none for static
schemes; Group DRO's ``q`` for dynamic ones) moves with ``.to(device)`` and round-trips through
``state_dict()`` / ``load_state_dict()``. Dynamic schemes change their state only in training mode.

Every ``weights`` call checks its arguments (:mod:`shiftkit.guards`): ``losses``, ``y`` and ``g`` of one
batch length, and the ids a scheme reads within the categories it was built for.

>>> import torch
>>> from shiftkit import weighting
>>> iw = weighting.build("iw", group_counts=[4000, 400])
>>> iw.weights(torch.ones(3), torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]))
tensor([0.5500, 0.5500, 5.5000])
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from .. import guards
from ..errors import ShiftkitError
from ..registry import Registry

WEIGHTINGS = Registry("weighting")
register = WEIGHTINGS.register
names = WEIGHTINGS.names


def build(name: str, **kwargs) -> "Weighting":
    """Build a registered weighting scheme; data statistics it does not use are ignored."""
    return WEIGHTINGS.build(name, **kwargs)


class Weighting(nn.Module):
    """Base class of the weighting schemes, stateless or not, in the manner of optax's transformations.

    A scheme is two pure functions of an explicit **state** (a dict of tensors: the scheme's persistent
    buffers, ``{}`` for static schemes; Group DRO's ``{"q": ...}``; a chain's nests its parts' under
    ``parts.<i>.``):

    - ``weigh(losses, y, g, state) -> Tensor[B]``, the weights of a batch (>= 0 unless the class sets
      ``signed = True``) given detached per-example losses;
    - ``update(losses, y, g, state) -> state``, the state after a training batch (default: unchanged),
      and ``begin_epoch(epoch, state) -> state`` before each training epoch (0-based; default:
      unchanged), for schedules such as deferred re-weighting.

    A training step is ``state = update(...)`` then ``weigh(..., state)`` (:meth:`step`): the weights use
    the updated state, as Group DRO's do. Being pure, both run under ``torch.func.vmap`` over the members
    of an ensemble (one state per member, stacked) and under data parallelism on the gathered batch.

    The stateful interface of earlier versions stays: :meth:`weights` with no ``state`` reads the
    module's own buffers and, in training mode, stores the updated state there (so ``state_dict()`` /
    ``load_state_dict()`` and ``.to(device)`` carry it); :meth:`start_epoch` does the same with
    ``begin_epoch``. ``weights(losses, y, g, state)`` with a state is pure.
    """

    signed = False
    #: Whether each weight depends on its own example only (and on a state training does not change), so
    #: that ``weigh`` applies to the examples of many batches at once (an ensemble's members, flattened).
    elementwise = False
    #: Whether every weight is 1 (ERM): the loop then takes the mean of the losses without multiplying
    #: by ones, which gives the same numbers bit for bit and saves a step's multiply and its backward pass.
    unit = False
    #: The registered name (set by :meth:`~shiftkit.registry.Registry.register`).
    name: str

    # ---- the pure interface: subclasses implement weigh (and update / begin_epoch if they keep state) --
    def weigh(self, losses: Tensor, y: Tensor, g: Optional[Tensor], state: Dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def update(self, losses: Tensor, y: Tensor, g: Optional[Tensor], state: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The state after a training batch; static schemes return it unchanged."""
        return state

    def begin_epoch(self, epoch: int, state: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The state entering training epoch ``epoch``; schemes without a schedule return it unchanged."""
        return state

    #: Whether the training loop passes each epoch's validation losses to :meth:`after_validation`
    #: (Group DRO's automatic adjustment); a property where an option decides it.
    needs_validation_losses = False

    def after_validation(self, losses: Tensor, y: Tensor, g: Optional[Tensor], state: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The state after an epoch's validation, from the validation split's per-example losses (of the
        run's loss, unweighted, in evaluation mode); called only when :attr:`needs_validation_losses`."""
        return state

    def step(self, losses: Tensor, y: Tensor, g: Optional[Tensor], state: Dict[str, Tensor]):
        """One training batch: ``(weights, new state)``, the weights at the updated state."""
        state = self.update(losses, y, g, state)
        return self.weigh(losses, y, g, state), state

    @property
    def stateful(self) -> bool:
        """Whether training changes the state (``update`` or ``begin_epoch`` overridden)."""
        cls = type(self)
        return cls.update is not Weighting.update or cls.begin_epoch is not Weighting.begin_epoch

    # ---- the stateful interface over the module's own buffers ---------------------------------------
    def state(self) -> Dict[str, Tensor]:
        """The scheme's current state: its persistent buffers (the live tensors, by state_dict name)."""
        return dict(self.state_dict(keep_vars=True))

    @torch.no_grad()
    def assign(self, state: Dict[str, Tensor]) -> None:
        """Store ``state`` in the module's buffers, in place."""
        live = self.state()
        for key, value in state.items():
            if value is not live[key]:
                live[key].copy_(value)

    def weights(self, losses: Tensor, y: Tensor, g: Optional[Tensor], state: Optional[Dict[str, Tensor]] = None) -> Tensor:
        """The batch's weights: pure at ``state`` when one is given; else at the module's own state,
        which a training-mode call first updates (the interface of earlier versions)."""
        if state is not None:
            return self.weigh(losses, y, g, state)
        if self.training and self.stateful:
            weights, new = self.step(losses, y, g, self.state())
            self.assign(new)
            return weights
        return self.weigh(losses, y, g, self.state())

    def start_epoch(self, epoch: int) -> None:
        """Move the module's own state to training epoch ``epoch`` (``begin_epoch``)."""
        if type(self).begin_epoch is not Weighting.begin_epoch:
            self.assign(self.begin_epoch(epoch, self.state()))

    def forward(self, losses: Tensor, y: Tensor, g: Optional[Tensor] = None) -> Tensor:
        return self.weights(losses, y, g)


def normalized_inverse_counts(counts: Sequence[int], exponent: float) -> Tensor:
    """Per-category weights ``(1/n_k)^e``, scaled to mean 1 over the training set (docs/METHODS.md#weighting-iw).

    A category with no training example gets weight 0 (it cannot occur in training).

    >>> normalized_inverse_counts([4000, 400], 1.5).round(decimals=3)
    tensor([0.2640, 8.3570])
    """
    n = torch.as_tensor(list(counts), dtype=torch.float64)
    if n.numel() == 0 or (n < 0).any() or n.sum() <= 0:
        raise ShiftkitError(f"counts must be non-negative with a positive total, got {list(counts)}")
    raw = torch.where(n > 0, n.clamp_min(1).pow(-exponent), torch.zeros_like(n))
    mean_over_examples = (n * raw).sum() / n.sum()
    return (raw / mean_over_examples).float()


def groups_are_classes(class_counts: Optional[Sequence[int]], group_counts: Optional[Sequence[int]]) -> bool:
    """Whether the data's groups are its classes (g = y: data without an attribute), as the training
    statistics show it: equal class and group counts (``Splits.statistics()`` gives both to ``build``)."""
    return class_counts is not None and group_counts is not None and list(class_counts) == list(group_counts)


class Categories:
    """The categories a scheme weighs by (``by="group"`` or ``"class"``): their training ``counts``
    (float64) and, per call, each example's category, checked (:func:`shiftkit.guards.check`).

    ``g=None`` stands for ``g = y`` only where that is true: when weighing by class, or when the groups
    are the classes (:func:`groups_are_classes`). Otherwise a call without ``g`` is an error: weighing
    the classes with the group table would be silently wrong.
    """

    def __init__(
        self, scheme: str, by: str, class_counts: Optional[Sequence[int]], group_counts: Optional[Sequence[int]]
    ):
        if by not in ("group", "class"):
            raise ShiftkitError(f"by must be 'group' or 'class', got '{by}'")
        counts = group_counts if by == "group" else class_counts
        if counts is None:
            raise ShiftkitError(f"weighting '{scheme}' needs the training {by} counts ({by}_counts=...)")
        n = torch.as_tensor(list(counts), dtype=torch.float64)
        if n.numel() == 0 or (n < 0).any():
            raise ShiftkitError(f"{by}_counts must be non-negative and non-empty, got {list(counts)}")
        self.where, self.by, self.counts = f"weighting '{scheme}'", by, n
        self.g_is_y = by == "class" or groups_are_classes(class_counts, group_counts)

    def index(self, losses: Tensor, y: Tensor, g: Optional[Tensor]) -> Tensor:
        """Each example's category id, in ``[0, len(counts))``."""
        if g is None and not self.g_is_y:
            raise ShiftkitError(
                f"{self.where} weighs by group but got g=None: pass each example's group g, or by='class' to "
                "weigh by class (g = y is assumed only when built with class_counts equal to group_counts)"
            )
        if self.by == "group" and g is not None:
            guards.check(self.where, y, g, losses=losses, num_groups=self.counts.numel())
            return g
        guards.check(self.where, y, g, losses=losses, num_classes=self.counts.numel())
        return y


from . import drw, dro, fastdro, objective, static  # noqa: E402,F401  (registration; one file per family)
from .chain import Chain, chain  # noqa: E402,F401
