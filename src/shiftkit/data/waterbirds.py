"""Waterbirds from a user's directory: group_DRO's ``metadata.csv`` and images (SPEC §7.3, §10).

The folder (``root``, else ``$SHIFTKIT_DATA/waterbirds``; group_DRO's tarball unpacks to
``waterbird_complete95_forest2water2/``) holds ``metadata.csv`` with at least the columns
``img_filename`` (relative to the folder), ``y`` (0 landbird, 1 waterbird), ``split`` (0/1/2 =
train/val/test) and ``place`` (0 land, 1 water background).

>>> int(224 * 256.0 / 224.0)    # [W]'s resize before the 224 center crop
256
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..errors import ShiftkitError
from . import register
from .base import Split, Splits, optional_root, quote
from .celeba import IMAGENET_MEAN, IMAGENET_STD
from .images import decode_images
from .pipeline import Pipeline
from .roots import find_root, read_csv

_COLUMNS = ("img_filename", "y", "split", "place")
_HOW = (
    "Waterbirds needs metadata.csv (columns img_filename, y, split, place) and its images, as in "
    "group_DRO's waterbird_complete95_forest2water2 tarball; nothing is downloaded: pass data.root=<folder> "
    "or set $SHIFTKIT_DATA to a folder holding waterbirds/"
)
GROUPS = ["landbird, land", "landbird, water", "waterbird, land", "waterbird, water"]
#: group_DRO's training ``RandomResizedCrop(scale=(0.7, 1.0), ratio=(0.75, 1.3333333333333333))``
#: (data/cub_dataset.py, ``get_transform_cub`` with ``augment_data``), as ``Pipeline.resized_crop``.
AUGMENT_CROP = [0.7, 1.0, 0.75, 1.3333333333333333]


def read_metadata(file):
    """``(filenames [N], y [N], place [N], split [N])`` from ``metadata.csv``, validated (an empty or
    non-UTF-8 file too: :func:`~.roots.read_csv`)."""
    table = read_csv("waterbirds", file, f"it needs a header line ({', '.join(_COLUMNS)}, ...) and a row per image")
    for column in _COLUMNS:
        if column not in table.columns:
            listed = quote(list(map(str, table.columns)))
            raise ShiftkitError(f"waterbirds: {file} has no column '{column}'; columns: {listed}")
    arrays = []
    for column, allowed in (("y", (0, 1)), ("place", (0, 1)), ("split", (0, 1, 2))):
        values = table[column].to_numpy()
        if not np.isin(values, allowed).all():
            raise ShiftkitError(f"waterbirds: column '{column}' of {file} must hold only {allowed}")
        arrays.append(values.astype(np.int64))
    return (table["img_filename"].astype(str).to_numpy(), *arrays)


@register("waterbirds")
def waterbirds(image_size: int = 224, augment: bool = False, root: Optional[str] = None) -> Splits:
    """Waterbirds with group_DRO's official splits (SPEC §7.3): ``g = 2·y + place``, so 0 landbird/land,
    1 landbird/water, 2 waterbird/land, 3 waterbird/water (standard counts: train [3498, 184, 56, 1057],
    val [467, 466, 133, 133], test [2255, 2255, 642, 642]).

    Images as in [W]'s datamodule: bilinear ``Resize((s, s))`` with ``s = int(image_size · 256/224)``,
    ``CenterCrop(image_size)``, ImageNet normalization on the device, no augmentation by default; inputs are
    ``uint8 [N, 3, image_size, image_size]`` (1.8 GB for all 11,788 images at 224; ``image_size=64`` on a
    CPU). Decoding happens once per split and is cached (:mod:`.images`).

    ``augment``: group_DRO's ``--augment_data`` on training batches (kohpangwei/group_DRO,
    data/cub_dataset.py, ``get_transform_cub``): ``RandomResizedCrop(image_size, scale=(0.7, 1.0),
    ratio=(0.75, 1.3333333333333333), interpolation=2)`` (bilinear), then ``RandomHorizontalFlip()``, batched
    on the device (``Pipeline(resized_crop=AUGMENT_CROP, flip=True)``). group_DRO crops the original file;
    here the crop is taken from the stored, already resized and center-cropped image (see
    :class:`~.pipeline.Pipeline`). Evaluation is unchanged: the resize and center crop above.
    """
    if image_size < 1:
        raise ShiftkitError(f"waterbirds: image_size must be >= 1, got {image_size}")
    folder = find_root("waterbirds", optional_root(root), ["metadata.csv"], _HOW)
    names, y, place, split = read_metadata(folder / "metadata.csv")
    g = 2 * y + place
    resized = int(image_size * 256.0 / 224.0)

    def subset(k: int) -> Split:
        index = np.flatnonzero(split == k)
        images = decode_images([folder / n for n in names[index]], (resized, resized), crop=(image_size, image_size))
        return Split(images, torch.from_numpy(y[index]), torch.from_numpy(g[index]), 2, 4)

    info = {"root": str(folder), "groups": GROUPS, "image_size": image_size}
    crop = AUGMENT_CROP if augment else None
    pipeline = Pipeline(mean=IMAGENET_MEAN, std=IMAGENET_STD, flip=augment, resized_crop=crop)
    return Splits(subset(0), subset(1), subset(2), info=info, pipeline=pipeline)
