"""Plain convolutional networks without BatchNorm: a small CNN and [W]'s ConvNet (docs/METHODS.md#model-convnet).

Neither has BatchNorm, so both run under ``torch.func.vmap`` ensembles with a plain ``functional_call``
(which cannot update BN running statistics) and give the same logits in training and evaluation mode.
Both are ``nn.Sequential``: input ``[N, C, H, W]`` float, output logits ``[N, K]``.
"""

from __future__ import annotations

from typing import List, Sequence

from torch import nn

from . import check_width, image_shape, register

#: [W]'s ConvNet, layer by layer: ("conv", out_channels) is an unpadded 3x3 convolution + ReLU.
CONVNET_FEATURES = (("conv", 64), ("conv", 64), ("pool", 0), ("conv", 128), ("conv", 128), ("conv", 128), ("pool", 0))
#: The smallest height/width for which every ConvNet stage keeps at least one pixel (20->...->1).
CONVNET_MIN_SIZE = 20


def convnet_spatial(size: int) -> List[int]:
    """The spatial sizes through [W]'s ConvNet: each unpadded 3x3 conv removes 2, each pool halves (floor).

    >>> convnet_spatial(32)
    [32, 30, 28, 14, 12, 10, 8, 4]
    >>> convnet_spatial(28)
    [28, 26, 24, 12, 10, 8, 6, 3]
    """
    sizes = [size]
    for kind, _ in CONVNET_FEATURES:
        sizes.append(sizes[-1] - 2 if kind == "conv" else sizes[-1] // 2)
    return sizes


@register("cnn")
def cnn(input_shape: Sequence[int], num_classes: int, width: int = 32) -> nn.Module:
    """A small MNIST-size CNN for fast CPU work (ours, not from a paper):

    ``Conv(C, w, 3, pad 1) ReLU MaxPool2  Conv(w, 2w, 3, pad 1) ReLU MaxPool2  Flatten
    Linear(2w * floor(H/4) * floor(W/4), 4w) ReLU  Linear(4w, K)``. Needs ``H, W >= 4``.

    >>> import torch
    >>> net = cnn((1, 28, 28), num_classes=3, width=8)
    >>> net(torch.zeros(2, 1, 28, 28)).shape, net[7].in_features   # 16 channels x 7 x 7
    (torch.Size([2, 3]), 784)
    """
    check_width(width)
    channels, height, breadth = image_shape("cnn", input_shape, min_size=4)
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * (height // 4) * (breadth // 4), 4 * width), nn.ReLU(),
        nn.Linear(4 * width, num_classes),
    )  # fmt: skip


@register("convnet")
def convnet(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """[W]'s ConvNet (Byrd & Lipton; docs/METHODS.md#model-convnet; [W] ``src/architectures/simple_models.py``), exactly:

    ``Conv(C,64,3) ReLU Conv(64,64,3) ReLU MaxPool2 Conv(64,128,3) ReLU Conv(128,128,3) ReLU
    Conv(128,128,3) ReLU MaxPool2 Flatten Linear(F,512) ReLU Linear(512,128) ReLU Linear(128,K)``,
    convolutions unpadded, PyTorch's default initialization. The flatten size ``F`` follows the input:
    2048 = 128·4·4 for 32×32 RGB (as in [W]), 1152 = 128·3·3 for 28×28. Needs ``H, W >= 20``.

    >>> import torch
    >>> net = convnet((3, 32, 32), num_classes=2)
    >>> net(torch.zeros(2, 3, 32, 32)).shape, net[13].in_features
    (torch.Size([2, 2]), 2048)
    """
    channels, height, breadth = image_shape("convnet", input_shape, min_size=CONVNET_MIN_SIZE)
    layers: list = []
    for kind, out in CONVNET_FEATURES:
        if kind == "conv":
            layers += [nn.Conv2d(channels, out, 3), nn.ReLU()]
            channels = out
        else:
            layers.append(nn.MaxPool2d(2))
    flat = channels * convnet_spatial(height)[-1] * convnet_spatial(breadth)[-1]
    layers += [
        nn.Flatten(),
        nn.Linear(flat, 512),
        nn.ReLU(),
        nn.Linear(512, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    ]
    return nn.Sequential(*layers)
