"""Evaluation: the metrics of one model, or of every member of an ensemble, on a split
(docs/METHODS.md#metrics), counted in batches on the device with one host transfer at the end."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

from . import distributed, guards
from .data.base import Split
from .data.pipeline import Pipeline
from .metrics import Accumulator

__all__ = ["count", "evaluate_model", "evaluate_members"]


def count(forward: Callable[[Tensor], Tensor], split: Split, pipeline: Pipeline, batch_size: int = 4096,
          members: Optional[int] = None) -> Accumulator:
    """The counts of ``forward``'s predictions on ``split`` (inputs through ``pipeline`` without
    augmentation); ``members=S`` when ``forward`` gives ``[S, B, K]``. Under ``torchrun`` each rank counts
    its shard of the split; the counts are summed over ranks and the scores of ``auroc`` gathered."""
    acc = Accumulator(split.num_classes, split.num_groups, device=split.y.device, members=members)
    lo, hi = distributed.my_shard(len(split))
    for idx in torch.arange(lo, hi, device=split.y.device).split(batch_size):
        acc.update(forward(pipeline(split.x[idx])), split.y[idx], split.g[idx])
    acc.merge_ranks(distributed.sum_, lambda local: distributed.gather(local, len(split)))
    return acc


@torch.no_grad()
@guards.trusted()  # the split's ids were checked when it was built: no range check per batch
def evaluate_model(
    model: nn.Module,
    split: Split,
    batch_size: int = 4096,
    train_group_counts: Optional[list] = None,
    pipeline: Optional[Pipeline] = None,
) -> Dict[str, object]:
    """Metrics of ``model`` on ``split`` (docs/METHODS.md#metrics), accumulated over batches; inputs go through
    ``pipeline`` (without augmentation) when given. Under ``torchrun`` each rank counts its shard of the
    split and the counts are summed over ranks."""
    was_training = model.training
    model.eval()
    acc = count(model, split, pipeline or Pipeline(), batch_size)
    model.train(was_training)
    return acc.compute(train_group_counts)


@torch.no_grad()
@guards.trusted()
def evaluate_members(forward: Callable[[Tensor], Tensor], members: int, split: Split, pipeline: Pipeline,
                     train_group_counts: Optional[list] = None, batch_size: int = 4096) -> List[Dict[str, object]]:
    """Every member's metrics on ``split``: ``forward`` maps a batch ``[B, ...]`` to ``[S, B, K]`` (one
    vectorized pass for all members; the caller puts the models in evaluation mode)."""
    return count(forward, split, pipeline, batch_size, members=members).compute_members(train_group_counts)
