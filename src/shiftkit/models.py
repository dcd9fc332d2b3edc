"""Models by name: ``models.build(name, input_shape=..., num_classes=..., **options)``.

>>> import torch
>>> net = build("mlp", input_shape=(1, 8, 8), num_classes=2, width=16, depth=2)
>>> net(torch.zeros(5, 1, 8, 8)).shape
torch.Size([5, 2])
"""

from __future__ import annotations

import math
from typing import Sequence

from torch import nn

from .errors import ShiftkitError
from .registry import Registry

MODELS = Registry("model")
register = MODELS.register
names = MODELS.names


def build(name: str, **kwargs) -> nn.Module:
    return MODELS.build(name, **kwargs)


def _features(input_shape: Sequence[int]) -> int:
    return int(math.prod(input_shape))


@register("linear")
def linear(input_shape: Sequence[int], num_classes: int, bias: bool = True) -> nn.Module:
    """A linear classifier on the flattened input: ``f(x) = W x + b``."""
    return nn.Sequential(nn.Flatten(), nn.Linear(_features(input_shape), num_classes, bias=bias))


@register("mlp")
def mlp(input_shape: Sequence[int], num_classes: int, width: int = 512, depth: int = 2) -> nn.Module:
    """A ReLU multilayer perceptron with ``depth`` hidden layers of ``width`` units ([W]'s MLP has 3
    layers of 200, SPEC §8.1); wide enough, it interpolates small training sets."""
    if width < 1 or depth < 1:
        raise ShiftkitError(f"model 'mlp': width and depth must be >= 1, got width={width}, depth={depth}")
    layers: list = [nn.Flatten()]
    fan_in = _features(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    layers.append(nn.Linear(fan_in, num_classes))
    return nn.Sequential(*layers)
