"""Learned data augmentation before the model (docs/METHODS.md#augment): the ``augment`` config group.

An augmentation is an ``nn.Module`` applied to each training batch after the data pipeline and before
the model, with the labels in hand so that it can depend on the class (AutoBalance's personalized data
augmentation, [AB] eq. 2.2): ``augment(x, y, generator) -> x'``. It splits into a random draw and a
deterministic function of it, ``apply(x, y, draws(x, generator), relaxed)``, so that the bilevel search
can differentiate the training loss through the augmented inputs with the draw held fixed
(:class:`shiftkit.autobalance_search.AutoBalanceSearch`). Evaluation never augments.

>>> import torch
>>> from shiftkit import augment
>>> none = augment.build("none")
>>> none.active, none(torch.ones(2, 3), torch.tensor([0, 1])).tolist()
(False, [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from ..registry import Registry

AUGMENTATIONS = Registry("augment")
register = AUGMENTATIONS.register
names = AUGMENTATIONS.names


class Augmentation(nn.Module):
    """Base class: ``forward(x, y, generator)`` draws and applies the augmentation, without gradients to
    its parameters (the training step's use); :meth:`draws` and :meth:`apply` are the two halves."""

    #: The registered name (set by :meth:`~shiftkit.registry.Registry.register`).
    name: str
    #: Whether it changes the inputs at all (``none`` does not: the loop then skips it).
    active: bool = True

    def hyperparameters(self) -> Dict[str, nn.Parameter]:
        """The tensors a bilevel search tunes (none unless the augmentation is learned)."""
        return {}

    def draws(self, x: Tensor, generator: Optional[torch.Generator] = None) -> List[Dict[str, Tensor]]:
        return []

    def apply(self, x: Tensor, y: Tensor, draws: List[Dict[str, Tensor]], relaxed: Optional[bool] = None) -> Tensor:
        return x

    def forward(self, x: Tensor, y: Tensor, generator: Optional[torch.Generator] = None,
                draws: Optional[List[Dict[str, Tensor]]] = None, relaxed: Optional[bool] = None) -> Tensor:
        """Without ``draws``: draw from ``generator`` and apply, with no gradient (a training step). With
        ``draws``: :meth:`apply` at them, differentiable (what ``torch.func.functional_call`` calls)."""
        if not self.active:
            return x
        if draws is not None:
            return self.apply(x, y, draws, relaxed)
        with torch.no_grad():
            return self.apply(x, y, self.draws(x, generator))

    def record(self) -> dict:
        """What ``run.json`` keeps of it (nothing for an inactive augmentation)."""
        return {}


@register("none")
class NoAugmentation(Augmentation):
    """No augmentation beyond the data pipeline's (the default)."""

    active = False


def build(name: str, **kwargs) -> Augmentation:
    """Build a registered augmentation; data statistics it does not use are ignored (see :mod:`registry`)."""
    return AUGMENTATIONS.build(name, **kwargs)


def active(augmentation: Optional[Augmentation]) -> bool:
    """Whether ``augmentation`` is given and changes its inputs."""
    return augmentation is not None and augmentation.active


from . import policy  # noqa: E402,F401  (registration)
