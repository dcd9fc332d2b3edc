"""What an AutoBalance search tunes (α: the loss's hyperparameters and a learned augmentation's) and the
checks of its loss and settings, before anything trains, and the training batches as a function of a
learned augmentation's α (docs/METHODS.md#autobalance-algorithm,
docs/METHODS.md#augment-search)."""

from __future__ import annotations

import math
from typing import Dict, Optional

from torch import Tensor, nn
from torch.func import functional_call

from . import augment as augmentations
from .errors import ShiftkitError

#: Prefix of a learned augmentation's tensors among α (``augment.magnitude``, ...).
AUGMENT = "augment."


def learned(loss: nn.Module, augment=None) -> Dict[str, Tensor]:
    """α of a search, by name: the loss's ``hyperparameters()`` and a learned augmentation's, the latter
    prefixed ``augment.`` (docs/METHODS.md#augment-search)."""
    alpha = dict(loss.hyperparameters()) if hasattr(loss, "hyperparameters") else {}
    if augmentations.active(augment):
        alpha.update({AUGMENT + k: v for k, v in augment.hyperparameters().items()})
    return alpha


def check_loss(loss: nn.Module, where: str = "AutoBalanceSearch: the loss", augment=None) -> None:
    """A search needs something to learn: the loss's ``hyperparameters()`` or a learned augmentation's."""
    if not learned(loss, augment):
        raise ShiftkitError(f"{where} has nothing to learn; search with loss=autobalance (its loss.learn names"
                            " what the search tunes) or a learned augmentation (augment=policy)")


def check_search(*, epochs: int, start_epoch: Optional[int], every: int, batches: int, terms: int, step: float,
                 curvature_batches: Optional[int], batch_size: int = 1, prefix: str = "procedure.") -> None:
    """The search's schedule and series settings, named ``prefix + key`` (``procedure.every`` on the
    command line): refused before anything trains."""
    for key, value in (("every", every), ("batches", batches)):
        if value < 1:
            raise ShiftkitError(f"{prefix}{key} must be >= 1, got {value}")
    if batch_size < 1 or epochs < 1:
        raise ShiftkitError(f"{prefix}batch_size and epochs must be >= 1, got {batch_size} and {epochs}")
    if start_epoch is not None and not 0 <= start_epoch < epochs:
        raise ShiftkitError(f"{prefix}start_epoch must lie in [0, epochs={epochs}), got {start_epoch}")
    if terms < 0:
        raise ShiftkitError(f"{prefix}terms (of the Neumann series) must be >= 0, got {terms}")
    if not (math.isfinite(step) and step > 0):
        raise ShiftkitError(f"{prefix}step (of the Neumann series) must be a finite number > 0, got {step}")
    if curvature_batches is not None and not 1 <= curvature_batches <= batches:
        raise ShiftkitError(f"{prefix}curvature_batches must lie in [1, batches={batches}], got {curvature_batches}")


def augmenter(augment, raw: Tensor, y: Tensor, generator):
    """``augmented(hparams, s)``: train batches ``raw[s]`` (``[b, batch, ...]``) through ``augment`` at the
    augmentation's α in ``hparams`` (keys ``augment.*``), with relaxed gates and one draw for all calls."""
    draws = augment.draws(raw.flatten(0, 1), generator)

    def augmented(hparams, s):
        own = {k[len(AUGMENT):]: v for k, v in hparams.items() if k.startswith(AUGMENT)}
        mine = [{k: v.view(*raw.shape[:2], *v.shape[1:])[s].flatten(0, 1) for k, v in d.items()} for d in draws]
        out = functional_call(augment, own, (raw[s].flatten(0, 1), y[s].flatten()), {"draws": mine, "relaxed": True})
        return out.view(raw[s].shape)

    return augmented
