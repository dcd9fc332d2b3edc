"""Input preparation on the training device, batched: no per-example Python work (DESIGN.md, "Data").

Images are held as ``uint8`` tensors ``[N, C, H, W]``; a :class:`Pipeline` turns a batch into floats in
``[0, 1]``, normalizes each channel and, in training only, applies a padded random crop and a random
horizontal flip (SPEC §7.4, §8.3: ``RandomCrop(32, 4)`` and flips). Float inputs (tabular data, digits)
pass through unchanged unless a mean and std are given.

>>> import torch
>>> p = Pipeline(mean=[0.5], std=[0.5])
>>> p(torch.tensor([[[[0, 255]]]], dtype=torch.uint8))
tensor([[[[-1.,  1.]]]])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ShiftkitError


@dataclass
class Pipeline:
    """``uint8 -> float / 255``, ``(x - mean) / std`` per channel, then (training) crop and flip."""

    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    crop_padding: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ShiftkitError("a pipeline needs both mean and std, or neither")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ShiftkitError(f"pipeline std must be > 0, got {self.std}")
        if self.crop_padding < 0:
            raise ShiftkitError(f"crop_padding must be >= 0, got {self.crop_padding}")

    def _stats(self, dtype: torch.dtype, device: torch.device):
        """Mean and std as tensors, made once per dtype and device: no host-to-device copy per batch."""
        cache = self.__dict__.setdefault("_cache", {})
        key = (dtype, str(device))
        if key not in cache:
            cache[key] = (torch.tensor(self.mean, dtype=dtype, device=device),
                          torch.tensor(self.std, dtype=dtype, device=device))
        return cache[key]

    @property
    def augments(self) -> bool:
        return self.crop_padding > 0 or self.flip

    def __call__(self, x: Tensor, train: bool = False, generator: Optional[torch.Generator] = None) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if self.mean is not None:
            mean, std = self._stats(x.dtype, x.device)
            shape = (1, -1) + (1,) * (x.dim() - 2)
            x = (x - mean.view(shape)) / std.view(shape)
        if train and self.augments:
            x = self._augment(x, generator)
        return x

    def _augment(self, x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        if x.dim() != 4:
            raise ShiftkitError("crop and flip augmentation needs images [N, C, H, W]")
        n, _, h, w = x.shape
        if self.crop_padding > 0:
            p = self.crop_padding
            padded = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=x.device)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=x.device)
            rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
            batch = torch.arange(n, device=x.device)[:, None, None, None]
            channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
            x = padded[batch, channel, rows, cols]
        if self.flip:
            flip = torch.rand(n, generator=generator, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x
