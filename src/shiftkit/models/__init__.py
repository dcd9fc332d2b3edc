"""Models by name: ``models.build(name, input_shape=..., num_classes=..., **options)``.

Every model maps a float batch ``[N, *input_shape]`` (already normalized by the data pipeline) to logits
``[N, num_classes]``. ``input_shape`` and ``num_classes`` are data statistics; the other keyword arguments
are hyperparameters and become the model's config schema. The families live one per file:
:mod:`.convnets` (``cnn``, [W]'s ``convnet``), :mod:`.resnets` (``resnet32``, ``preact_resnet18``) and
:mod:`.imagenet` (``resnet18``, ``resnet34``, ``resnet50`` in torchvision's layout). Every model takes
``weights`` and ``freeze`` too (:mod:`.weights`).

>>> import torch
>>> net = build("mlp", input_shape=(1, 8, 8), num_classes=2, width=16, depth=2)
>>> net(torch.zeros(5, 1, 8, 8)).shape
torch.Size([5, 2])
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

from torch import nn

from ..errors import ShiftkitError
from ..registry import Registry
from .weights import finish

#: Every model also takes ``weights`` (a file, or ``imagenet``) and ``freeze`` (``none``, ``backbone``):
#: :mod:`.weights`.
MODELS = Registry("model", shared=finish)
register = MODELS.register
names = MODELS.names


def build(name: str, **kwargs) -> nn.Module:
    return MODELS.build(name, **kwargs)


def _features(input_shape: Sequence[int]) -> int:
    return int(math.prod(input_shape))


def image_shape(model: str, input_shape: Sequence[int], min_size: int = 1) -> Tuple[int, int, int]:
    """``(C, H, W)`` of an image input, or a one-line error for flat or too-small inputs.

    >>> image_shape("cnn", (1, 28, 28), min_size=4)
    (1, 28, 28)
    >>> image_shape("cnn", (784,))
    Traceback (most recent call last):
    ...
    shiftkit.errors.ShiftkitError: model 'cnn' needs image input (C, H, W), got input_shape (784,)
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3:
        raise ShiftkitError(f"model '{model}' needs image input (C, H, W), got input_shape {shape}")
    channels, height, width = shape
    if channels < 1 or height < min_size or width < min_size:
        raise ShiftkitError(
            f"model '{model}' needs images of at least {min_size}x{min_size} with >= 1 channel, got input_shape {shape}"
        )
    return shape


def check_width(width: int) -> None:
    """A one-line error for a width below 1 (the model registry prefixes it with the model's name)."""
    if width < 1:
        raise ShiftkitError(f"width must be >= 1, got {width}")


@register("linear")
def linear(input_shape: Sequence[int], num_classes: int, bias: bool = True) -> nn.Module:
    """A linear classifier on the flattened input: ``f(x) = W x + b``."""
    return nn.Sequential(nn.Flatten(), nn.Linear(_features(input_shape), num_classes, bias=bias))


@register("mlp")
def mlp(input_shape: Sequence[int], num_classes: int, width: int = 512, depth: int = 2) -> nn.Module:
    """A ReLU multilayer perceptron with ``depth`` hidden layers of ``width`` units ([W]'s MLP has 3
    layers of 200, docs/METHODS.md#model-mlp); wide enough, it interpolates small training sets."""
    if width < 1 or depth < 1:
        raise ShiftkitError(f"width and depth must be >= 1, got width={width}, depth={depth}")
    layers: list = [nn.Flatten()]
    fan_in = _features(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    layers.append(nn.Linear(fan_in, num_classes))
    return nn.Sequential(*layers)


from . import convnets, imagenet, resnets  # noqa: E402,F401  (registration; one file per family)
