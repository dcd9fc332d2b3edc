"""Residual networks for CIFAR-size images: ResNet-32 (LDAM-DRW / AutoBalance) and PreAct ResNet-18 ([W]).

Both pool globally (``AdaptiveAvgPool2d(1)``) before the classifier, so they accept any ``H, W >= 1``;
on 32×32 inputs this equals the references' fixed ``avg_pool2d`` (8×8 and 4×4 windows). Both have
BatchNorm: train them with the ordinary loop, not with a ``functional_call`` + ``vmap`` ensemble.
Input ``[N, C, H, W]`` float, output logits ``[N, K]``.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from . import check_width, image_shape, register


class ShortcutA(nn.Module):
    """Option-A shortcut of He et al. (2016): subsample by ``stride`` and zero-pad the new channels,
    parameter-free (LDAM-DRW's ``LambdaLayer``; a module rather than a lambda so the net pickles)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        # LDAM pads planes//4 on each side, i.e. planes/2 = in_planes new channels in total; splitting
        # the difference also covers odd widths.
        self.pad_front = (planes - in_planes) // 2
        self.pad_back = planes - in_planes - self.pad_front

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))`` with 3×3 convolutions (post-activation)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        changed = stride != 1 or in_planes != planes
        self.shortcut = ShortcutA(in_planes, planes, stride) if changed else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """``conv(relu(bn(conv(relu(bn(x)))))) + shortcut``, the shortcut a 1×1 conv of ``relu(bn(x))`` where
    the shape changes, else ``x`` (He et al. 2016b; Kuang Liu's pytorch-cifar ``PreActBlock``)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        changed = stride != 1 or in_planes != planes
        self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False) if changed else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


def _stages(block: type, widths: Sequence[int], blocks: Sequence[int], in_planes: int) -> nn.Sequential:
    """Stages of ``blocks[i]`` blocks of width ``widths[i]``; every stage after the first halves H, W."""
    layers = []
    for i, (width, count) in enumerate(zip(widths, blocks)):
        for j in range(count):
            layers.append(block(in_planes, width, 2 if i > 0 and j == 0 else 1))
            in_planes = width
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """``stem -> stages -> global average pool -> Linear(features, num_classes)``."""

    def __init__(self, stem: nn.Module, stages: nn.Sequential, features: int, num_classes: int):
        super().__init__()
        self.stem = stem
        self.stages = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.stages(self.stem(x))
        return self.linear(self.pool(out).flatten(1))


@register("resnet32")
def resnet32(input_shape: Sequence[int], num_classes: int, width: int = 16) -> nn.Module:
    """ResNet-32 for CIFAR (He et al. 2016, §4.2) as used by LDAM-DRW and AutoBalance (docs/METHODS.md#model-resnet32;
    ``kaidic/LDAM-DRW models/resnet_cifar.py: resnet32``): a 3×3 conv + BN + ReLU stem of ``width``
    channels, 3 stages × 5 :class:`BasicBlock` of widths ``w, 2w, 4w`` (16/32/64) with option-A shortcuts,
    global average pooling, ``Linear(4w, K)``; Kaiming-normal (fan-in) weights in every conv and linear
    layer, as LDAM's ``_weights_init``. The classifier is a plain ``nn.Linear``, not LDAM's optional
    ``NormedLinear``. 464,154 parameters for 10 classes at width 16.

    >>> import torch
    >>> net = resnet32((3, 32, 32), num_classes=10)
    >>> sum(p.numel() for p in net.parameters()), net(torch.zeros(2, 3, 32, 32)).shape
    (464154, torch.Size([2, 10]))
    """
    check_width(width)
    channels, _, _ = image_shape("resnet32", input_shape)
    stem = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
    stages = _stages(BasicBlock, (width, 2 * width, 4 * width), (5, 5, 5), width)
    net = ResNet(stem, stages, 4 * width, num_classes)
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)
    return net


@register("preact_resnet18")
def preact_resnet18(input_shape: Sequence[int], num_classes: int, width: int = 64) -> nn.Module:
    """PreAct ResNet-18 (He et al. 2016b), [W]'s ``CIFARResNet`` with ``init_channels`` 64 (docs/METHODS.md#model-preact_resnet18), as
    Kuang Liu's pytorch-cifar ``PreActResNet18``: a 3×3 conv stem of ``width`` channels (no BN, no
    max-pool), 4 stages × 2 :class:`PreActBlock` of widths ``w, 2w, 4w, 8w`` (64/128/256/512), global
    average pooling, ``Linear(8w, K)``; PyTorch's default initialization. Like the reference, no BN-ReLU
    follows the last block. 11,171,146 parameters for 10 classes at width 64.

    >>> import torch
    >>> net = preact_resnet18((1, 8, 8), num_classes=3, width=4)
    >>> net(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 3])
    """
    check_width(width)
    channels, _, _ = image_shape("preact_resnet18", input_shape)
    stem = nn.Conv2d(channels, width, 3, padding=1, bias=False)
    widths = (width, 2 * width, 4 * width, 8 * width)
    stages = _stages(PreActBlock, widths, (2, 2, 2, 2), width)
    return ResNet(stem, stages, 8 * width, num_classes)
