"""Your own images, laid out as torchvision's ``ImageFolder`` reads them (docs/METHODS.md#data-image_folder).

Layout (``root``):

- ``root/<class>/<image>``: one folder per class, any number of classes (at least 2). The classes are the
  sorted folder names and a label is the index of its class in that list, as torchvision's
  ``ImageFolder`` numbers them (``info["classes"]``). Images in subfolders of a class folder belong to that
  class (all depths, as torchvision). Image files are recognized by their extension, in any case
  (:data:`EXTENSIONS`); hidden files and folders (names starting with ``.``) and other files are
  ignored, and so are files directly in ``root``. The splits are drawn at random (below).
- ``root/train/<class>/...`` with optional ``root/val/`` (or ``valid/``, ``validation/``) and
  ``root/test/``, each laid out as above: the folders are the splits (chosen whenever ``root/train/``
  exists, so a class must not be called ``train``). The classes are ``train/``'s; ``val/`` and ``test/``
  may lack some but hold no other.

The splits the layout does not give are drawn from the training images (all images without a
``train/`` folder): within each (class, group) cell one permutation by ``default_rng(split_seed)``, the
first ``round(test_fraction · n)`` images to test, the next ``round(val_fraction · n)`` to validation,
at least one left for training (:func:`~.tabular.stratified_split`, as ``data=tabular`` draws rows).
Every split must end up non-empty: the training loop selects models and reports metrics on validation and
test images, as every dataset of the library has them.

Groups (``groups=FILE.csv``): a CSV with a header, a column ``path`` (or ``file``, ``filename``,
``img_filename``) holding each image's path relative to ``root`` (``cat/001.png``, or ``train/cat/001.png``
in the split layout), one row per image, and any of:

- ``group``: the group of each image, used as it is (``num_groups`` = the distinct values);
- attribute columns: ``g = y · A + a``, the (class, attribute) cells like Waterbirds' ``2·y + place``
  (``A`` = the attribute's distinct values, ``K · A`` groups, some possibly empty). The attribute is the
  column named by ``attribute``, else the only column besides ``path``/``split``/``group``;
  ``attribute`` wins over a ``group`` column;
- ``split``: ``train``/``val``/``test`` (or ``valid``, ``validation``) or ``0``/``1``/``2`` as in Waterbirds'
  ``metadata.csv``; it then gives the splits (not with a ``train/`` folder: one source of splits), and
  a split it leaves empty is drawn as above.

Values may be integers or text; either way the sorted distinct values become ids ``0..G-1``
(``info["group_values"]`` / ``info["attribute_values"]`` map ids back). Without a CSV, the groups are
the classes. Every image must have exactly one row and every row an image: a missing or extra one is one
error naming the first few. Columns named ``Unnamed: ...`` (a pandas index) are ignored.

Images: each is opened with Pillow, converted to RGB (``channels=3``) or grayscale (``channels=1``)
and resized bilinearly to ``size x size`` (the aspect ratio is not kept; ``size=None`` keeps the images'
own size, which they must then share). The decoded ``uint8 [N, C, H, W]`` array of all the images is
cached under ``$SHIFTKIT_CACHE/images`` as one ``.npy`` named by a hash of the files' paths, sizes and
modification times and of ``size`` / ``channels``, written atomically (:mod:`.images`): a second build
reads it without decoding, a changed file decodes again. A corrupt image is one error naming the file.
Normalization runs on the training device (:class:`~.pipeline.Pipeline`): ``normalize="train"`` with
the training split's per-channel mean and std (``info["mean"]``, ``info["std"]``), ``"imagenet"``
with ImageNet's (for pretrained weights; their channel average for grayscale), ``"none"`` scales to
``[0, 1]`` only. ``augment`` adds a random resized crop (scale 0.7-1, ratio 3/4-4/3) and horizontal
flips to training batches. Finding and decoding the images lives in :mod:`.image_files`, reading the
groups file in :mod:`.image_groups`.

>>> sorted(["dog", "cat", "Zebra"])   # the class order: Python's sort of the folder names
['Zebra', 'cat', 'dog']
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ..errors import ShiftkitError
from . import register
from .base import Split, Splits, optional_root, quote
from .celeba import IMAGENET_MEAN, IMAGENET_STD
from .image_files import EXTENSIONS, LAYOUT, channel_stats, decode_folder, discover, is_image  # noqa: F401
from .image_groups import PATH_COLUMNS, csv_path, read_groups, split_ids, value_ids  # noqa: F401
from .pipeline import Pipeline
from .tabular import stratified_split

NORMALIZE = ("train", "imagenet", "none")
#: The training augmentation: ``RandomResizedCrop(scale=(0.7, 1.0), ratio=(3/4, 4/3))`` then flips.
AUGMENT_CROP = [0.7, 1.0, 0.75, 4.0 / 3.0]
_SPLIT_NAMES = ("training", "validation", "test")


def _hint(k: int, source: Optional[str], fraction: float) -> str:
    """How to give split ``k`` (0 train, 1 val, 2 test) some images; a val or test split is empty only
    when drawing it from the training images gave none."""
    if k == 0:
        return f"mark some rows train in the split column of {source}" if source else "add training images"
    key = "data.val_fraction" if k == 1 else "data.test_fraction"
    if fraction == 0:
        return f"set {key} > 0 (there is no {('train', 'val', 'test')[k]} split to read)"
    return (f"add images or raise {key} (now {fraction}): each (class, group) cell gives round({key} * its "
            "training images), keeping at least one for training")


@register("image_folder")
def image_folder(
    root: Optional[str] = None,
    size: Optional[int] = 64,
    channels: int = 3,
    groups: Optional[str] = None,
    attribute: Optional[str] = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    normalize: str = "train",
    augment: bool = False,
) -> Splits:
    """Your own images, ``root/<class>/<image>`` as torchvision's ImageFolder reads them, with optional groups
    from a CSV.

    ``root``: the folder (required); ``root/train/``, ``val/``, ``test/`` give the splits, else (and for a
    missing val or test) they are drawn per (class, group) cell with ``val_fraction`` / ``test_fraction``
    / ``split_seed``. ``size``: every image resized to ``size x size`` (``None``: keep, all alike);
    ``channels``: 3 (RGB) or 1 (grayscale). ``groups``: a CSV (``path`` column, then ``group``, an attribute
    or ``split``); ``attribute``: its column giving ``g = y · A + a``. ``normalize``: ``train``,
    ``imagenet`` or ``none``; ``augment``: random resized crops and flips in training. See the module
    docstring for the details; ``info["classes"]`` and ``info["groups"]`` name the ids.
    """
    folder = _checked_root(root, size, channels, groups, attribute, val_fraction, test_fraction, normalize)
    classes, files, y, split, layout = discover(folder)
    if len(classes) < 2:
        raise ShiftkitError(
            f"image_folder: {folder} has a single class folder ({quote(classes)}); a classifier needs at least 2"
        )
    num_classes = len(classes)

    info: Dict[str, object] = {"root": str(folder), "layout": layout, "classes": classes, "class_names": classes}
    g, num_groups, split, source = _groups(groups, attribute, folder, files, y, split, classes, info)
    split = _fill_splits(split, y * num_groups + g, val_fraction, test_fraction, split_seed, source, folder, info)

    images = decode_folder(folder, files, size, channels)
    mean, std = _normalization(normalize, images, split == 0, channels)
    info.update(size=list(images.shape[2:]), channels=channels, normalize=normalize, mean=mean, std=std,
                images=len(files))
    x = torch.from_numpy(images)
    y_t, g_t = torch.from_numpy(y), torch.from_numpy(g)

    def subset(k: int) -> Split:
        index = torch.from_numpy(np.flatnonzero(split == k))
        return Split(x[index], y_t[index], g_t[index], num_classes, num_groups)

    pipeline = Pipeline(mean=list(mean) if mean else None, std=list(std) if std else None, flip=augment,
                        resized_crop=list(AUGMENT_CROP) if augment else None)
    return Splits(subset(0), subset(1), subset(2), info=info, pipeline=pipeline)


def _checked_root(root: Optional[str], size: Optional[int], channels: int, groups: Optional[str],
                  attribute: Optional[str], val_fraction: float, test_fraction: float, normalize: str) -> Path:
    """The root folder, after refusing options out of range and a root that is not a folder."""
    if channels not in (1, 3):
        raise ShiftkitError(f"image_folder: channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if size is not None and size < 1:
        raise ShiftkitError(f"image_folder: size must be >= 1 (or null to keep the images' size), got {size}")
    if normalize not in NORMALIZE:
        raise ShiftkitError(f"image_folder: normalize must be one of {', '.join(NORMALIZE)}, got '{normalize}'")
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise ShiftkitError(
            f"image_folder: need val_fraction, test_fraction >= 0 with a sum < 1, got {val_fraction}, {test_fraction}"
        )
    if attribute is not None and not groups:
        raise ShiftkitError("image_folder: data.attribute names a column of the groups CSV; set data.groups=FILE.csv")
    if not optional_root(root):
        raise ShiftkitError("image_folder: set data.root=<a folder of class folders, root/<class>/<image>>")
    folder = Path(root).expanduser()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ShiftkitError(f"image_folder: the root {folder} {what}; {LAYOUT}")
    return folder


def _groups(groups: Optional[str], attribute: Optional[str], folder: Path, files: List[str], y: np.ndarray,
            split: Optional[np.ndarray], classes: List[str], info: dict) -> tuple:
    """``(g, num_groups, split, source of the split column or None)``: the groups (the classes without a
    groups file) and the splits a split column gives; records in ``info`` where they came from."""
    num_classes = len(classes)
    g, num_groups, names, source = y.copy(), num_classes, list(classes), None
    if groups:
        file = csv_path(groups, folder)
        table = read_groups(file, folder, files, attribute)
        info["groups_file"] = str(file)
        if table["values"] is not None:
            a, values = value_ids(table["values"])
            g, num_groups = y * len(values) + a, num_classes * len(values)
            names = [f"{c}, {table['attribute']}={v}" for c in classes for v in values]
            info.update(group_source=f"(class, {table['attribute']}) cells", attribute=table["attribute"],
                        attribute_values=values)
        elif table["group"] is not None:
            g, values = value_ids(table["group"])
            num_groups, names = len(values), [str(v) for v in values]
            info.update(group_source="column 'group'", group_values=values)
        if table["split"] is not None:
            if split is not None:
                raise ShiftkitError(
                    f"image_folder: {file} has a split column and {folder} has a train/ folder; give the splits "
                    "one way (remove the column, or lay the images out in one tree)"
                )
            split, source = split_ids(table["split"], file), str(file)
            info["layout"] = f"{info['layout']}, splits from the split column"
    if "group_source" not in info:
        info["group_source"] = "classes"
    info["groups"] = names
    return g, num_groups, split, source


def _fill_splits(split: Optional[np.ndarray], cells: np.ndarray, val_fraction: float, test_fraction: float,
                 split_seed: int, source: Optional[str], folder: Path, info: dict) -> np.ndarray:
    """Every image's split, drawing those the layout leaves empty from the training images within each
    (class, group) cell (``cells``); a split left without images is refused."""
    split = np.zeros(len(cells), dtype=np.int64) if split is None else split
    missing = [k for k in (1, 2) if not (split == k).any()]
    if missing:
        pool = np.flatnonzero(split == 0)
        fractions = [val_fraction if 1 in missing else 0.0, test_fraction if 2 in missing else 0.0]
        split[pool] = stratified_split(cells[pool], *fractions, split_seed)
        info["drawn"] = [("train", "val", "test")[k] for k in missing]
        info["split_rule"] = f"stratified by (class, group), seed {split_seed}"
    for k in range(3):
        if not (split == k).any():
            fraction = (0, val_fraction, test_fraction)[k]
            hint = _hint(k, source, fraction)
            raise ShiftkitError(f"image_folder: {folder} leaves no {_SPLIT_NAMES[k]} image; {hint}")
    return split


def _normalization(normalize: str, images: np.ndarray, train: np.ndarray, channels: int) -> tuple:
    """``(mean, std)`` per channel for the pipeline: the training images', ImageNet's, or ``(None, None)``."""
    if normalize == "train":
        return channel_stats(images[np.flatnonzero(train)])
    if normalize == "imagenet":
        return (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ([0.449], [0.226])
    return None, None
