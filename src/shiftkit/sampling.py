"""Index samplers: which training examples enter each epoch, in which order (DESIGN.md).

A sampler never mutates a dataset; it returns indices. ``none`` is the plain shuffled epoch of the
[W] code (``shuffle=True``, SPEC §2.2).

>>> import torch
>>> s = build("none")
>>> sorted(s.epoch(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]), torch.Generator().manual_seed(0)).tolist())
[0, 1, 2]
"""

from __future__ import annotations

import torch
from torch import Tensor

from .registry import Registry

SAMPLERS = Registry("sampler")
register = SAMPLERS.register
names = SAMPLERS.names


def build(name: str, **kwargs) -> "Sampler":
    return SAMPLERS.build(name, **kwargs)


class Sampler:
    """Base class: ``epoch(y, g, generator) -> Tensor`` of training indices for one epoch."""

    def epoch(self, y: Tensor, g: Tensor, generator: torch.Generator) -> Tensor:
        raise NotImplementedError


@register("none")
class Shuffle(Sampler):
    """Every training example once per epoch, in a fresh random order."""

    def epoch(self, y: Tensor, g: Tensor, generator: torch.Generator) -> Tensor:
        return torch.randperm(y.shape[0], generator=generator)
