"""CelebA from a user's directory, with [W]'s subsampled protocol (docs/METHODS.md#data-celeba, docs/METHODS.md#groups).

Files, in either standard format (the folder ``root``, else ``$SHIFTKIT_DATA/celeba``):

- ``list_attr_celeba.csv`` (group_DRO's tarball: header ``image_id,5_o_Clock_Shadow,...``) or the
  original ``list_attr_celeba.txt`` (line 1 the count, line 2 the 40 names, then ``name v1 ... v40``);
  values are 1 / -1 and -1 becomes 0;
- ``list_eval_partition.csv`` (``image_id,partition``) or ``.txt`` (``name partition``): 0/1/2 =
  train/val/test;
- the images under ``img_align_celeba/``.

>>> int(np.round(162770 * 0.02))    # [W]'s training set: 2% of the official train partition
3255
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import ShiftkitError
from . import register
from .base import Split, Splits, optional_root, quote
from .images import decode_images
from .pipeline import Pipeline
from .roots import find_root, read_csv

#: ImageNet statistics used by [W]'s ``Normalize`` (docs/METHODS.md#data-celeba).
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
#: group_DRO's training ``RandomResizedCrop(scale=(0.7, 1.0), ratio=(1.0, 1.3333333333333333))``
#: (data/celebA_dataset.py, ``get_transform_celebA`` with ``augment_data``), as ``Pipeline.resized_crop``.
AUGMENT_CROP = [0.7, 1.0, 1.0, 1.3333333333333333]

_HOW = (
    "CelebA needs list_attr_celeba.csv (or .txt), list_eval_partition.csv (or .txt) and the folder "
    "img_align_celeba/ side by side (group_DRO's tarball, or the official files as torchvision lays them "
    "out); nothing is downloaded: pass data.root=<folder> or set $SHIFTKIT_DATA to a folder holding celeba/"
)


def _pick(folder: Path, stem: str) -> Path:
    for suffix in (".csv", ".txt", ".csv.gz", ".txt.gz"):
        if (folder / f"{stem}{suffix}").exists():
            return folder / f"{stem}{suffix}"
    raise ShiftkitError(f"celeba: {folder} has no {stem}.csv or {stem}.txt. {_HOW}")


def read_attributes(file: Path):
    """``(names [N], attribute names [40], values [N, 40] in {0, 1})`` from either attribute format."""
    needs = "it needs a line of attribute names and a line of 1 / -1 values per image"
    if ".csv" in file.suffixes:
        table = read_csv("celeba", file, needs)
        if "image_id" not in table.columns:
            raise ShiftkitError(f"celeba: {file} has no 'image_id' column; columns: {quote(list(table.columns))}")
        table = table.set_index("image_id")
    else:
        # Line 1 is the count; line 2 names 40 attributes while rows have 41 fields, so pandas takes
        # the image names as the index.
        table = read_csv("celeba", file, needs, sep=r"\s+", skiprows=1)
    values = table.to_numpy()
    if not np.isin(values, (-1, 0, 1)).all():
        raise ShiftkitError(f"celeba: {file} holds attribute values other than 1 / -1")
    return table.index.to_numpy(dtype=str), list(table.columns), (values == 1).astype(np.int64)


def read_partition(file: Path, names: np.ndarray) -> np.ndarray:
    """The official partition (0 train, 1 val, 2 test) of each image in ``names``; another value is
    refused, naming the first image that has one."""
    import pandas as pd

    needs = "it needs a line 'image partition' per image"
    if ".csv" in file.suffixes:
        table = read_csv("celeba", file, needs)
    else:
        table = read_csv("celeba", file, needs, sep=r"\s+", header=None, names=["image_id", "partition"])
    missing = [c for c in ("image_id", "partition") if c not in table.columns]
    if missing:
        raise ShiftkitError(f"celeba: {file} has no column {missing[0]!r}; columns: {quote(list(table.columns))}")
    # The files list the images in the same order; aligning by name is cheap and guards other orders.
    partition = table.set_index(table["image_id"].astype(str))["partition"].reindex(names)
    if partition.isna().any():
        image = quote(partition.index[partition.isna()][0])
        raise ShiftkitError(f"celeba: {file} gives no partition for image {image}")
    numbers = pd.to_numeric(partition, errors="coerce")  # text becomes NaN, outside 0/1/2 as well
    unknown = np.flatnonzero(~numbers.isin((0, 1, 2)).to_numpy())
    if len(unknown):
        k = int(unknown[0])
        raise ShiftkitError(
            f"celeba: {file} gives image {quote(partition.index[k])} the partition {quote(partition.iloc[k])}; "
            f"partitions are 0 (train), 1 (val), 2 (test) ({len(unknown)} image(s) with another value)"
        )
    return numbers.to_numpy(dtype=np.int64)


def _column(names: list, attribute: str, role: str) -> int:
    if attribute not in names:
        raise ShiftkitError(f"celeba: unknown {role} attribute '{attribute}'; available: {quote(names)}")
    return names.index(attribute)


def subsample_test(groups: np.ndarray, candidates: np.ndarray, per_group: int, seed: int) -> np.ndarray:
    """``per_group`` indices of each group among ``candidates``, drawn without replacement by one
    ``default_rng(seed)`` visiting groups 0, 1, 2, 3 in order; returned sorted (file order)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for k in range(4):
        members = candidates[groups[candidates] == k]
        if len(members) < per_group:
            raise ShiftkitError(f"celeba: test group {k} has {len(members)} images, test_per_group={per_group}")
        chosen.append(rng.permutation(members)[:per_group])
    return np.sort(np.concatenate(chosen))


@register("celeba")
def celeba(
    target: str = "Blond_Hair",
    attribute: str = "Male",
    train_fraction: float = 0.02,
    test_per_group: int = 180,
    image_size: int = 224,
    train_seed: int = 0,
    test_seed: int = 1234,
    augment: bool = False,
    root: Optional[str] = None,
) -> Splits:
    """[W]'s subsampled CelebA (docs/METHODS.md#data-celeba). ``y = target``, ``a = attribute``, ``g = 2·y + a``: with the
    defaults 0 = not-blond female, 1 = not-blond male, 2 = blond female, 3 = blond male.

    - train: the official train partition, ``round(n · train_fraction)`` images drawn uniformly without
      replacement, ``np.sort(default_rng(train_seed).permutation(train)[:n])`` (162,770 -> 3,255 images,
      groups [1446, 1308, 468, 33] in [W]); ``train_fraction = 1`` keeps the whole partition;
    - val: the whole official val partition (19,867 images);
    - test: ``test_per_group`` images of each group from the official test partition (``subsample_test``
      with ``test_seed``; 4 x 180 = 720); ``test_per_group = 0`` keeps the whole partition.

    Images: center crop to the shorter side (``CenterCrop(178)`` on the 178x218 aligned images), bilinear
    resize to ``image_size`` squared, ImageNet normalization on the device, no augmentation by default. Inputs are
    ``uint8 [N, 3, image_size, image_size]``; at 224 the full val split alone is 3.0 GB, so on a CPU use
    e.g. ``image_size=64`` (240 MB). Decoding happens once per split and is cached (:mod:`.images`).

    ``augment``: group_DRO's ``--augment_data`` on training batches (kohpangwei/group_DRO,
    data/celebA_dataset.py, ``get_transform_celebA``): ``RandomResizedCrop(image_size, scale=(0.7, 1.0),
    ratio=(1.0, 1.3333333333333333), interpolation=2)`` (bilinear), then ``RandomHorizontalFlip()``, batched
    on the device (``Pipeline(resized_crop=AUGMENT_CROP, flip=True)``). group_DRO crops the original
    178x218 file; here the crop is taken from the stored, already center-cropped and resized square image
    (see :class:`~.pipeline.Pipeline`). Evaluation is unchanged: the center crop and resize above.
    """
    if not 0 < train_fraction <= 1:
        raise ShiftkitError(f"celeba: train_fraction must lie in (0, 1], got {train_fraction}")
    if test_per_group < 0 or image_size < 1:
        raise ShiftkitError(
            f"celeba: test_per_group must be >= 0 and image_size >= 1, got {test_per_group}, {image_size}"
        )
    folder = find_root("celeba", optional_root(root), ["img_align_celeba"], _HOW)
    names, columns, values = read_attributes(_pick(folder, "list_attr_celeba"))
    y = values[:, _column(columns, target, "target")]
    a = values[:, _column(columns, attribute, "group")]
    g = 2 * y + a
    partition = read_partition(_pick(folder, "list_eval_partition"), names)

    train = np.flatnonzero(partition == 0)
    n_train = int(np.round(len(train) * train_fraction))
    train = np.sort(np.random.default_rng(train_seed).permutation(train)[:n_train])
    val = np.flatnonzero(partition == 1)
    test = np.flatnonzero(partition == 2)
    if test_per_group:
        test = subsample_test(g, test, test_per_group, test_seed)

    def split(index: np.ndarray) -> Split:
        files = [folder / "img_align_celeba" / n for n in names[index]]
        images = decode_images(files, (image_size, image_size), square=True)
        return Split(images, torch.from_numpy(y[index]), torch.from_numpy(g[index]), 2, 4)

    groups = [f"{target}={k // 2}, {attribute}={k % 2}" for k in range(4)]
    info = {
        "root": str(folder),
        "target": target,
        "attribute": attribute,
        "groups": groups,
        "partition_sizes": np.bincount(partition, minlength=3).tolist(),
        "train_fraction": train_fraction,
        "test_per_group": test_per_group,
        "image_size": image_size,
    }
    crop = AUGMENT_CROP if augment else None
    pipeline = Pipeline(mean=IMAGENET_MEAN, std=IMAGENET_STD, flip=augment, resized_crop=crop)
    return Splits(split(train), split(val), split(test), info=info, pipeline=pipeline)
