"""ResNet-18/34/50 for ImageNet-size images, in torchvision's layout (He et al. 2016; ``torchvision.models.resnet``).

Module names, parameter shapes, buffer names and the forward pass are torchvision's, so a torchvision state
dict (``resnet50-0676ba61.pth``, or a timm ResNet of the same depth, which uses the same names) loads with
``strict=True`` and gives the same logits; ``model.weights=FILE`` does that (:mod:`.weights`). The layout:

``conv1`` (7×7, stride 2, 64 channels, no bias) ``bn1`` ``relu`` ``maxpool`` (3×3, stride 2, padding 1), then
``layer1``..``layer4`` of :class:`BasicBlock` (ResNet-18: 2-2-2-2, ResNet-34: 3-4-6-3) or :class:`Bottleneck`
(ResNet-50: 3-4-6-3, expansion 4, the stride on the 3×3 convolution: "ResNet v1.5") of widths 64, 128, 256,
512, each block's ``downsample`` a ``Sequential(conv1x1, BatchNorm2d)`` where the shape changes, then
``avgpool`` (adaptive, 1×1) and ``fc``. Initialization as torchvision: Kaiming-normal (fan-out, ReLU)
convolutions, BatchNorm weight 1 and bias 0, PyTorch's default ``nn.Linear`` for ``fc``.

Two options torchvision does not have, off by default: the stem takes ``C`` input channels from the data
(torchvision: always 3; a 3-channel weight file loads into a 1-channel stem by summing over its channels,
:func:`.weights.load`), and ``width`` scales every stage (64 = torchvision's; 16 makes a CPU-size network
for our offline pretraining, docs/REPRODUCTION.md). Input ``[N, C, H, W]`` float (normalized by the data
pipeline; ImageNet statistics for CelebA and Waterbirds), output ``[N, K]``; any ``H, W >= 1`` (the pooling
is adaptive), 224 in the papers.

>>> import torch
>>> [sum(p.numel() for p in net((3, 224, 224), 1000).parameters()) for net in (resnet18, resnet50)]
[11689512, 25557032]
"""

from __future__ import annotations

from typing import Optional, Sequence, Type, Union

import torch
from torch import Tensor, nn

from . import check_width, image_shape, register


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x))``, two 3×3 convolutions (torchvision's)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """``1×1 (planes) -> 3×3 (planes, stride) -> 1×1 (4·planes)``, BN after each, ReLU after the first two
    and after the sum with ``downsample(x)`` (torchvision's v1.5 bottleneck)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


Block = Type[Union[BasicBlock, Bottleneck]]


class ImageNetResNet(nn.Module):
    """torchvision's ``ResNet`` (groups 1, no dilation): ``stem -> layer1..4 -> avgpool -> fc``."""

    def __init__(self, block: Block, layers: Sequence[int], num_classes: int, in_channels: int = 3,
                 width: int = 64, zero_init_residual: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for i, count in enumerate(layers):
            layer, inplanes = _layer(block, inplanes, width * 2**i, count, 1 if i == 0 else 2)
            self.add_module(f"layer{i + 1}", layer)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each residual branch starts at zero (Goyal et al. 2017), as torchvision's option
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_((m.bn3 if isinstance(m, Bottleneck) else m.bn2).weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _layer(block: Block, inplanes: int, planes: int, count: int, stride: int):
    """torchvision's ``_make_layer``: ``count`` blocks, the first with ``stride`` and a projection shortcut
    where the shape changes. Returns the layer and its output width."""
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(_conv1x1(inplanes, out, stride), nn.BatchNorm2d(out))
    blocks = [block(inplanes, planes, stride, downsample)] + [block(out, planes) for _ in range(1, count)]
    return nn.Sequential(*blocks), out


def _build(name: str, block: Block, layers: Sequence[int], input_shape, num_classes: int, width: int,
           zero_init_residual: bool) -> ImageNetResNet:
    check_width(width)
    channels, _, _ = image_shape(name, input_shape)
    return ImageNetResNet(block, layers, num_classes, channels, width, zero_init_residual)


@register("resnet18")
def resnet18(input_shape: Sequence[int], num_classes: int, width: int = 64,
             zero_init_residual: bool = False) -> nn.Module:
    """ResNet-18 in torchvision's layout (module docstring): :class:`BasicBlock` × 2-2-2-2, 512 features;
    11,689,512 parameters for 1000 classes. [AB]'s Waterbirds features ([AB] §4, Table 3) are this network's
    penultimate layer (``data.features_from=resnet18``).

    >>> import torch
    >>> resnet18((1, 28, 28), num_classes=3, width=8)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 3])
    """
    return _build("resnet18", BasicBlock, (2, 2, 2, 2), input_shape, num_classes, width, zero_init_residual)


@register("resnet34")
def resnet34(input_shape: Sequence[int], num_classes: int, width: int = 64,
             zero_init_residual: bool = False) -> nn.Module:
    """ResNet-34 in torchvision's layout: :class:`BasicBlock` × 3-4-6-3, 512 features; 21,797,672 parameters
    for 1000 classes."""
    return _build("resnet34", BasicBlock, (3, 4, 6, 3), input_shape, num_classes, width, zero_init_residual)


@register("resnet50")
def resnet50(input_shape: Sequence[int], num_classes: int, width: int = 64,
             zero_init_residual: bool = False) -> nn.Module:
    """ResNet-50 in torchvision's layout: :class:`Bottleneck` × 3-4-6-3, 2048 features; 25,557,032 parameters
    for 1000 classes. [W]'s CelebA model (ImageNet-pretrained in [W]'s code: ``model.weights=imagenet``)."""
    return _build("resnet50", Bottleneck, (3, 4, 6, 3), input_shape, num_classes, width, zero_init_residual)
