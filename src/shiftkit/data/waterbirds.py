"""Waterbirds from a user's directory: group_DRO's ``metadata.csv`` and images (docs/METHODS.md#data-waterbirds, docs/METHODS.md#metrics).

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

from ..errors import ShiftkitError
from . import register
from .base import Splits, optional_root, quote
from .celeba import IMAGENET_MEAN, IMAGENET_STD
from .group_protocols import partition
from .images import DecodedOnDemand
from .pipeline import Pipeline
from .roots import find_root, read_csv
from .sources import Part, Source

_COLUMNS = ("img_filename", "y", "split", "place")
_HOW = (
    "Waterbirds needs metadata.csv (columns img_filename, y, split, place) and its images, as in "
    "group_DRO's waterbird_complete95_forest2water2 tarball; nothing is downloaded: pass data.root=<folder> "
    "or set $SHIFTKIT_DATA to a folder holding waterbirds/"
)
CLASSES, PLACES = ["landbird", "waterbird"], ["land", "water"]
GROUPS = [f"{c}, {p}" for c in CLASSES for p in PLACES]
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


def source(root: Optional[str] = None, image_size: int = 224) -> Source:
    """group_DRO's three partitions: labels ``y``, the attribute ``place``, and images decoded on demand as
    [W]'s datamodule does (resize to ``int(image_size · 256/224)``, center crop ``image_size``)."""
    folder = find_root("waterbirds", optional_root(root), ["metadata.csv"], _HOW)
    names, y, place, which = read_metadata(folder / "metadata.csv")
    resized = int(image_size * 256.0 / 224.0)

    def part(k: int) -> Part:
        index = np.flatnonzero(which == k)
        files = [folder / n for n in names[index]]
        return Part(DecodedOnDemand(files, (resized, resized), (image_size, image_size)), y[index], place[index])

    return Source("waterbirds", part(0), list(CLASSES), test=part(2), val=part(1), attribute_names=list(PLACES),
                  info={"root": str(folder), "image_size": image_size})


@register("waterbirds")
def waterbirds(image_size: int = 224, augment: bool = False, split: str = "official", split_seed: int = 0,
               root: Optional[str] = None) -> Splits:
    """Waterbirds with group_DRO's official splits (docs/METHODS.md#data-waterbirds): ``g = 2·y + place``, so 0 landbird/land,
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

    ``split="autobalance"``: [AB]'s search split (§4: "the original training data is split 50% train / 50%
    validation"): each training group is halved at random (``default_rng(split_seed)``, the larger half
    trains: 1749 / 92 / 28 / 529 train and 1749 / 92 / 28 / 528 validation images), so the validation set
    keeps the training set's imbalance; the official validation split is not used; the test split is the
    official one.
    """
    if image_size < 1:
        raise ShiftkitError(f"waterbirds: image_size must be >= 1, got {image_size}")
    crop = AUGMENT_CROP if augment else None
    pipeline = Pipeline(mean=IMAGENET_MEAN, std=IMAGENET_STD, flip=augment, resized_crop=crop)
    return partition(source(root, image_size), "waterbirds", split, split_seed, pipeline=pipeline)
