"""Fashion-MNIST protocols: the papers' constructions on real images we have offline (docs/METHODS.md#datasets-offline).

- ``fmnist_binary``: [W]'s imbalanced binary protocol (docs/METHODS.md#data-fmnist_binary) on T-shirt/top vs shirt.
- ``fmnist_lt``: a 10-class long tail with imbalance factor rho (docs/METHODS.md#data-fmnist_lt), or AutoBalance's search
  split (docs/METHODS.md#autobalance-schedules).
- ``fmnist_spurious``: a Waterbirds-like group shift (docs/METHODS.md#data-fmnist_spurious) with an attribute rendered into the
  background of every image.
- ``fmnist_pretrain``: the classes those protocols do not use, for pretraining a backbone offline.

Each is :func:`source` (the official 60,000 / 10,000 partition) and a protocol of :mod:`.protocols` or
:mod:`.group_protocols`. Images are uint8 ``[N, 1, 28, 28]``; the pipeline normalizes with the Fashion-MNIST
training statistics.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from ..errors import ShiftkitError
from . import register
from .base import Split, Splits
from .group_protocols import spurious
from .idx import load_idx
from .pipeline import Pipeline
from .protocols import binary, long_tail
from .shifts import per_class_permutations, take
from .sources import Part, Source, relabel, split_of

HOW = (
    "Install Debian's dataset-fashion-mnist (`make data`, or `apt-get install dataset-fashion-mnist`), or pass "
    "data.root=DIR (or set $SHIFTKIT_DATA) with the four IDX files of Fashion-MNIST."
)
SYSTEM = ("/usr/share/datasets/fashion-mnist",)
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MEAN, STD = [0.2860], [0.3530]
#: The two values of ``fmnist_spurious``'s attribute, as :func:`render_attribute` draws them.
TEXTURES = ("vertical stripes", "horizontal stripes")


def source(root: Optional[str] = None) -> Source:
    """Fashion-MNIST's official partition: images ``uint8 [N, 1, 28, 28]``, labels 0-9 (:data:`CLASSES`)."""
    data = load_idx("fashion-mnist", root, HOW, SYSTEM)
    (x, y), (xt, yt) = data["train"], data["test"]
    return Source("fashion-mnist", Part(x, y), list(CLASSES), test=Part(xt, yt))


def _pipeline(augment: bool) -> Pipeline:
    # A 2-pixel padded crop on 28 px is the CIFAR recipe's 4 on 32, scaled; clothes survive a flip.
    return Pipeline(MEAN, STD, crop_padding=2 if augment else 0, flip=augment)


@register("fmnist_binary")
def fmnist_binary(
    root: Optional[str] = None,
    classes: List[int] = (0, 6),
    n_majority: int = 5000,
    imbalance: float = 10.0,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    augment: bool = False,
) -> Splits:
    """[W]'s imbalanced binary protocol on Fashion-MNIST (docs/METHODS.md#data-fmnist_binary).

    ``classes = [a, b]`` become labels 0 (majority) and 1 (minority). Per class, a permutation fixed by
    ``split_seed`` keeps ``n_majority`` images of ``a`` and ``int(n_majority / imbalance)`` of ``b`` (the
    step imbalance: 5000 and 500, as CIFAR's 5000 cats and 500 dogs); one fixed permutation splits them
    80/20 into train (about 4000/400) and validation; the test set is every test image of the two
    classes (1000/1000, balanced). The default pair, T-shirt/top vs shirt, is the pair a balanced
    logistic regression confuses most (16.8% test error, against 15.1% for pullover vs coat and 14.5%
    for coat vs shirt), and the pair of docs/METHODS.md#scale. No augmentation, as in [W].
    """
    return binary(source(root), "fmnist_binary", classes, imbalance, val_fraction, split_seed,
                  n_majority=n_majority, pipeline=_pipeline(augment))


@register("fmnist_lt")
def fmnist_lt(
    root: Optional[str] = None,
    rho: float = 100.0,
    n_max: int = 5000,
    rounding: str = "int",
    split: str = "standard",
    val_per_class: int = 100,
    split_seed: int = 0,
    augment: bool = False,
) -> Splits:
    """Long-tailed Fashion-MNIST (docs/METHODS.md#data-fmnist_lt): class ``i`` keeps ``n_max · rho^(-i/9)`` training images.

    ``split="standard"``: the LDAM / [W] counts (``rounding="int"``: 5000, 2997, ..., 50 for rho = 100,
    12406 in all) for training and a balanced validation set of ``val_per_class`` images per class from
    the images training does not use (Fashion-MNIST has 6000 per class). ``split="autobalance"``: [AB]'s
    search split (docs/METHODS.md#autobalance-schedules), train ``ceil(4000 μ^i)`` and validation ``ceil(1000 μ^i)`` per class (9931 and
    2487 for rho = 100; the validation set is imbalanced like the training set). The test set is the
    balanced original (1000 per class). ``augment`` adds a padded random crop and flips.
    """
    standard = split == "standard"  # the autobalance split is AutoBalance's CIFAR-10 one: n_max, rounding unused
    return long_tail(source(root), "fmnist_lt", rho, rounding if standard else "int", split_seed, split=split,
                     n_max=n_max if standard else 5000, val_per_class=val_per_class, pipeline=_pipeline(augment))


def render_attribute(images: np.ndarray, attribute: np.ndarray, strength: float) -> np.ndarray:
    """Stripes behind each garment: vertical for ``a = 0`` ("land"), horizontal for ``a = 1``
    ("water"), of brightness ``strength · 255``, drawn where the image is darker: ``max(x, pattern)``.

    >>> img = np.zeros((2, 1, 4, 4), dtype=np.uint8)
    >>> render_attribute(img, np.array([0, 1]), 0.5)[:, 0, 0].tolist()
    [[128, 128, 0, 0], [128, 128, 128, 128]]
    """
    h, w = images.shape[-2:]
    level = np.uint8(round(strength * 255))
    vertical = np.where((np.arange(w) % 4) < 2, level, 0).astype(np.uint8)[None, :].repeat(h, 0)
    horizontal = np.where((np.arange(h) % 4) < 2, level, 0).astype(np.uint8)[:, None].repeat(w, 1)
    patterns = np.stack([vertical, horizontal])[attribute][:, None]
    return np.maximum(images, patterns)


@register("fmnist_spurious")
def fmnist_spurious(
    root: Optional[str] = None,
    classes: List[int] = (2, 4),
    fractions: List[float] = (0.73, 0.038, 0.012, 0.22),
    n_train: int = 4795,
    val_per_group: int = 250,
    test_per_group: int = 500,
    strength: float = 0.5,
    split_seed: int = 0,
    augment: bool = False,
) -> Splits:
    """A Waterbirds-like spurious correlation on real images (docs/METHODS.md#data-fmnist_spurious).

    The label is the class (``classes = [a, b]`` → 0, 1: pullover vs coat by default, a hard pair, so
    the background is the easier cue). The attribute ``a`` is a background texture rendered into the
    image (:func:`render_attribute`); groups are ``g = 2y + a``. Training groups follow Waterbirds'
    fractions, ``fractions[g]`` of ``n_train`` (0.73 / 0.038 / 0.012 / 0.22 for landbird-land,
    landbird-water, waterbird-land, waterbird-water: 3500 / 182 / 58 / 1055 of 4795), so the attribute
    agrees with the label in 95% of training images. Validation (from unused training images) and test
    (from the test set) have ``val_per_group`` / ``test_per_group`` images in every group, as in
    Waterbirds. ``strength`` is the texture's brightness in [0, 1].
    """
    if not 0 < strength <= 1:
        raise ShiftkitError(f"fmnist_spurious: strength must lie in (0, 1], got {strength}")
    garments = source(root)
    garments.info["strength"] = strength
    return spurious(garments, "fmnist_spurious", classes, fractions, n_train, val_per_group, test_per_group,
                    split_seed, render=lambda x, a: render_attribute(x, a, strength), attribute_names=TEXTURES,
                    pipeline=_pipeline(augment))


@register("fmnist_pretrain")
def fmnist_pretrain(
    root: Optional[str] = None,
    exclude: List[int] = (2, 4),
    n_per_class: int = 5000,
    val_per_class: int = 500,
    split_seed: int = 0,
    augment: bool = True,
) -> Splits:
    """Our offline stand-in for ImageNet pretraining (docs/PRETRAINED.md): Fashion-MNIST without the
    classes ``exclude`` (default pullover and coat, the two that ``fmnist_spurious`` labels), so that a
    backbone pretrained here has never seen the task's classes, nor its background textures.

    The kept classes are labelled 0, 1, ... in their Fashion-MNIST order (default: T-shirt/top, trouser,
    dress, sandal, shirt, sneaker, bag, ankle boot); per class, a permutation fixed by ``split_seed``
    gives ``n_per_class`` training and the next ``val_per_class`` validation images; the test set is every
    test image of the kept classes. ``g = y``. Augmented by default (padded crop and flips), as
    pretraining recipes are.
    """
    dropped = sorted({int(c) for c in exclude})
    if any(not 0 <= c < 10 for c in dropped) or len(dropped) > 8:
        raise ShiftkitError(f"fmnist_pretrain: exclude must list at most 8 classes of 0..9, got {list(exclude)}")
    if n_per_class < 1 or val_per_class < 1 or n_per_class + val_per_class > 6000:
        raise ShiftkitError(f"fmnist_pretrain: n_per_class + val_per_class must lie in 2..6000 (both >= 1), got "
                            f"{n_per_class} + {val_per_class}")
    kept = [c for c in range(10) if c not in dropped]
    garments = source(root)
    train, test, table, k = garments.train, garments.test, relabel(kept, 10), len(kept)
    perms = per_class_permutations(train.y, kept, split_seed)

    def split(part: Part, index: np.ndarray) -> Split:
        labels = table[part.y[index]]
        return split_of(part, index, labels, labels, k, k)

    return Splits(
        split(train, take(perms, [n_per_class] * k)),
        split(train, take(perms, [val_per_class] * k, offset=[n_per_class] * k)),
        split(test, np.flatnonzero(np.isin(test.y, kept))),
        info={"classes": kept, "names": [CLASSES[c] for c in kept], "excluded": dropped},
        pipeline=_pipeline(augment),
    )
