"""Input preparation on the training device, batched: no per-example Python work (docs/PERFORMANCE.md).

Images are held as ``uint8`` tensors ``[N, C, H, W]``; a :class:`Pipeline` turns a batch into floats in
``[0, 1]``, normalizes each channel and, in training only, applies a padded random crop (docs/METHODS.md#data-cifar10_lt, docs/METHODS.md#recipe-ldam-drw:
``RandomCrop(32, 4)``) or a random resized crop (group_DRO's Waterbirds and CelebA augmentation:
:func:`sample_boxes`, :func:`resample_boxes`), then a random horizontal flip. Float inputs (tabular data,
digits) pass through unchanged unless a mean and std are given.

>>> import torch
>>> p = Pipeline(mean=[0.5], std=[0.5])
>>> p(torch.tensor([[[[0, 255]]]], dtype=torch.uint8))
tensor([[[[-1.,  1.]]]])
>>> sample_boxes(2, 8, 8, (1.0, 1.0), (1.0, 1.0)).tolist()    # (top, left, height, width): the whole image
[[0, 0, 8, 8], [0, 0, 8, 8]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ShiftkitError

#: Candidate boxes drawn per example before the central fallback, as in torchvision's ``get_params``.
_TRIES = 10


def sample_boxes(
    n: int,
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    generator: Optional[torch.Generator] = None,
    device=None,
) -> Tensor:
    """``n`` crop boxes ``(top, left, h, w)``, ``int64 [n, 4]``, drawn as torchvision's
    ``RandomResizedCrop.get_params(img, scale, ratio)`` draws one (torchvision/transforms/transforms.py).

    Each of 10 candidates has an area ``A = H·W·U(scale)`` and an aspect ratio ``r = exp(U(log ratio))``,
    ``w = round(sqrt(A·r))``, ``h = round(sqrt(A/r))`` (half to even, as Python's ``round``); the first
    candidate with ``0 < w <= W`` and ``0 < h <= H`` is kept, at ``top ~ U{0..H-h}``, ``left ~ U{0..W-w}``.
    If none fits, the central crop of the whole image with its ratio ``W/H`` clamped to ``ratio``. All
    candidates of all examples are drawn at once on ``device`` from ``generator``.
    """
    area = height * width
    u = torch.rand(2, n, _TRIES, generator=generator, device=device)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # argmax returns the first maximum: the first fit
    w, h, fits = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], fits.any(1)
    # torchvision's fallback depends only on the image size and the ratio bounds, so it is one box.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fall_w, fall_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fall_w, fall_h = int(round(height * ratio[1])), height
    else:
        fall_w, fall_h = width, height
    w = torch.where(fits, w, torch.full_like(w, fall_w))
    h = torch.where(fits, h, torch.full_like(h, fall_h))
    pos = torch.rand(2, n, generator=generator, device=device)
    # floor(U[0, 1) · (m + 1)) is uniform on {0..m}; the minimum guards float rounding at U close to 1.
    top = torch.minimum(torch.floor(pos[0] * (height - h + 1)), height - h)
    left = torch.minimum(torch.floor(pos[1] * (width - w + 1)), width - w)
    top = torch.where(fits, top, torch.full_like(top, (height - fall_h) // 2))
    left = torch.where(fits, left, torch.full_like(left, (width - fall_w) // 2))
    return torch.stack([top, left, h, w], dim=1).long()


def resample_boxes(x: Tensor, boxes: Tensor) -> Tensor:
    """Crop box ``boxes[i] = (top, left, h, w)`` of image ``x[i]`` and resize it bilinearly back to the full
    ``H x W``: ``[N, C, H, W] -> [N, C, H, W]`` in one ``grid_sample`` call.

    Output row ``u`` reads source row ``y = top + (u + 1/2)·h/H - 1/2`` clamped to ``[top, top + h - 1]``
    (columns alike), which is ``F.interpolate(crop, (H, W), mode="bilinear", align_corners=False)`` on the
    cropped image: the clamp is that function's edge rule, so no pixel outside the box is ever read. Boxes
    lie inside the image (``h <= H``, ``w <= W``), so this is always an upscale, where Pillow's bilinear
    filter (group_DRO's ``interpolation=2`` on PIL images) has the same weights, up to its 8-bit rounding.
    """
    height, width = x.shape[-2:]
    top, left, h, w = boxes.to(device=x.device, dtype=x.dtype).unbind(1)

    def source(start: Tensor, extent: Tensor, size: int) -> Tensor:  # [N, size], normalized for grid_sample
        pixel = torch.arange(size, device=x.device, dtype=x.dtype) + 0.5
        p = start[:, None] + pixel * (extent / size)[:, None] - 0.5
        p = torch.minimum(torch.maximum(p, start[:, None]), (start + extent - 1)[:, None])
        return (2 * p + 1) / size - 1

    rows, cols = source(top, h, height), source(left, w, width)
    grid = torch.stack(torch.broadcast_tensors(cols[:, None, :], rows[:, :, None]), dim=-1)  # [N, H, W, (x, y)]
    # Every grid point lies inside the image; "border" only makes sure nothing else could ever be read.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass
class Pipeline:
    """``uint8 -> float / 255``, ``(x - mean) / std`` per channel, then (training) crop and flip.

    ``crop_padding``: ``RandomCrop(H, padding)`` on zero-padded images. ``resized_crop = [scale_min,
    scale_max, ratio_min, ratio_max]``: ``RandomResizedCrop((H, W), scale, ratio, interpolation=BILINEAR)``
    back to the stored size (:func:`sample_boxes`, :func:`resample_boxes`); at most one of the two.
    ``flip``: ``RandomHorizontalFlip()``, after the crop. Resampling after normalization equals resampling
    before it, bilinear interpolation being affine with weights summing to 1.

    Unlike torchvision on a file, the resized crop is taken from the stored image, already resized and
    center-cropped when it was decoded (:mod:`.images`), not from the original file: images are decoded
    once and kept as ``uint8`` tensors, so that augmentation stays batched on the device with no
    per-example Python work.
    """

    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    crop_padding: int = 0
    flip: bool = False
    resized_crop: Optional[List[float]] = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ShiftkitError("a pipeline needs both mean and std, or neither")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ShiftkitError(f"pipeline std must be > 0, got {self.std}")
        if self.crop_padding < 0:
            raise ShiftkitError(f"crop_padding must be >= 0, got {self.crop_padding}")
        if self.resized_crop is not None:
            self.resized_crop = _check_resized_crop(self.resized_crop)
            if self.crop_padding > 0:
                raise ShiftkitError("a pipeline takes crop_padding or resized_crop, not both")

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
        return self.crop_padding > 0 or self.resized_crop is not None or self.flip

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
        if self.resized_crop is not None:
            scale_min, scale_max, ratio_min, ratio_max = self.resized_crop
            boxes = sample_boxes(n, h, w, (scale_min, scale_max), (ratio_min, ratio_max), generator, x.device)
            x = resample_boxes(x, boxes)
        if self.flip:
            flip = torch.rand(n, generator=generator, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x


def _check_resized_crop(values) -> List[float]:
    """``values`` as a list of 4 floats ``0 < scale_min <= scale_max <= 1``, ``0 < ratio_min <= ratio_max``."""
    shape = "resized_crop must be [scale_min, scale_max, ratio_min, ratio_max]"
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ShiftkitError(f"{shape} (numbers), got {values!r}") from None
    if len(out) != 4:
        raise ShiftkitError(f"{shape}, got {len(out)} value(s): {values!r}")
    scale_min, scale_max, ratio_min, ratio_max = out
    if not 0 < scale_min <= scale_max <= 1:
        raise ShiftkitError(f"resized_crop scales must satisfy 0 < scale_min <= scale_max <= 1, got {out[:2]}")
    if not 0 < ratio_min <= ratio_max < math.inf:
        raise ShiftkitError(f"resized_crop ratios must satisfy 0 < ratio_min <= ratio_max (finite), got {out[2:]}")
    return out
