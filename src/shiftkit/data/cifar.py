"""CIFAR-10 and CIFAR-100 from their "python version" pickle batches, and the papers' protocols on them:
[W]'s imbalanced binary cat-vs-dog (docs/METHODS.md#data-cifar10_binary) and CIFAR10-LT / CIFAR100-LT (docs/METHODS.md#data-cifar10_lt) with a standard or
AutoBalance's validation split (docs/METHODS.md#autobalance-schedules), each :func:`source` and a protocol of
:mod:`.protocols`. Nothing is downloaded; ``root`` (or ``$SHIFTKIT_DATA/cifar10``,
``$SHIFTKIT_DATA/cifar100``) is the extracted folder (``cifar-10-batches-py``, ``cifar-100-python``) or its
parent. Images are decoded once, vectorized, into ``uint8 [N, 3, 32, 32]`` (a row of a batch's ``data`` is
the red, green and blue 32x32 planes, each row-major).

>>> autobalance_counts(5000, 10, 100, "ceil")[1]        # AutoBalance's CIFAR-10 validation counts
[1000, 600, 360, 216, 130, 78, 47, 28, 17, 11]
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..errors import ShiftkitError
from . import register
from .base import Splits, optional_root, quote
from .pipeline import Pipeline
from .protocols import binary, long_tail
from .roots import find_root, open_maybe_gz
from .shifts import autobalance_counts, holdout_counts, w_step_undersample
from .sources import Part, Source

__all__ = ["CIFAR10", "CIFAR100", "CifarData", "CifarFormat", "autobalance_counts", "cifar100_lt", "cifar10_binary",
           "cifar10_lt", "holdout_counts", "load", "locate", "source", "w_step_undersample"]


@dataclass(frozen=True)
class CifarFormat:
    """Where one CIFAR variant's files live, which keys they use, and its normalization statistics."""

    name: str  # also the folder under $SHIFTKIT_DATA
    folder: str
    archive: str
    train: Tuple[str, ...]
    test: str
    meta: str
    label_key: str
    names_key: str
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    autobalance: str  # AutoBalance's split arithmetic for this variant (docs/METHODS.md#autobalance-schedules)


CIFAR10 = CifarFormat(
    "cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz", tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch", "batches.meta", "labels", "label_names", 10,
    (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "ceil",
)  # fmt: skip
CIFAR100 = CifarFormat(
    "cifar100", "cifar-100-python", "cifar-100-python.tar.gz", ("train",), "test", "meta",
    "fine_labels", "fine_label_names", 100, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), "round",
)  # fmt: skip
#: [W]'s normalization for the binary protocol (docs/METHODS.md#data-cifar10_binary), rounded differently from AutoBalance's.
W_MEAN, W_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)


@dataclass
class CifarData:
    """A decoded CIFAR variant: ``uint8`` images ``[N, 3, 32, 32]`` and ``int64`` labels, per split."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: List[str]
    folder: Path


# Real batches were pickled by Python 2 and name numpy.core; numpy >= 2 keeps that module at numpy._core.
_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"
# What pickled uint8 arrays need (``_codecs.encode``: how Python 3 writes bytes at protocol 2), nothing else.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy.core.numeric", "_frombuffer"), ("numpy", "ndarray"),
            ("numpy", "dtype"), ("_codecs", "encode")}  # fmt: skip


class _ArraysOnly(pickle.Unpickler):
    """Unpickles containers, strings, numbers and numpy arrays only, so a data file can never run code."""

    def find_class(self, module: str, name: str):
        canonical = module.replace("numpy._core", "numpy.core")
        if (canonical, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR file never does")
        return super().find_class(canonical.replace("numpy.core", _CORE), name)


def _unpickle(path: Path) -> dict:
    try:
        with open_maybe_gz(path) as f:
            obj = _ArraysOnly(f, encoding="bytes").load()
    except Exception as e:  # a broken file fails in many ways (EOF, bad opcode, bad gzip); all mean the same
        reason = quote((str(e).splitlines() or [""])[0])
        raise ShiftkitError(f"{path}: not a CIFAR python pickle ({type(e).__name__}: {reason})") from None
    if not isinstance(obj, dict):
        raise ShiftkitError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _batch(path: Path, fmt: CifarFormat) -> Tuple[np.ndarray, np.ndarray]:
    """One batch file: images ``uint8 [N, 3, 32, 32]`` and labels ``int64 [N]``, checked."""
    d = _unpickle(path)
    missing = [k for k in ("data", fmt.label_key) if k not in d]
    if missing:
        raise ShiftkitError(f"{path}: missing key(s) {', '.join(missing)} (found {quote(list(map(str, d)))})")
    data = d["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        found = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ShiftkitError(f"{path}: 'data' must be a uint8 array [N, 3072], found {found}")
    try:
        y = np.asarray(d[fmt.label_key])
    except (TypeError, ValueError):  # ragged or odd label lists: reported by the shape check below
        y = np.asarray(None)
    if y.shape != (len(data),) or (y.size and y.dtype.kind not in "iu"):
        raise ShiftkitError(f"{path}: '{fmt.label_key}' must be {len(data)} integers, found {y.dtype} {list(y.shape)}")
    if y.size and (y.min() < 0 or y.max() >= fmt.num_classes):
        raise ShiftkitError(f"{path}: labels must lie in [0, {fmt.num_classes}), found {y.min()}..{y.max()}")
    return data.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _class_names(path: Path, fmt: CifarFormat) -> List[str]:
    names = _unpickle(path).get(fmt.names_key)
    if not isinstance(names, list) or len(names) != fmt.num_classes:
        raise ShiftkitError(f"{path}: expected '{fmt.names_key}', a list of {fmt.num_classes} class names")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def locate(fmt: CifarFormat, root: Optional[str] = None) -> Path:
    """The folder holding ``fmt``'s files: ``root`` or its ``fmt.folder``; without a root,
    ``$SHIFTKIT_DATA/<name>`` or ``$SHIFTKIT_DATA/<name>/<folder>``."""
    root = optional_root(root)
    if root and (Path(root).expanduser() / fmt.folder).is_dir():
        root = str(Path(root).expanduser() / fmt.folder)
    env = os.environ.get("SHIFTKIT_DATA")
    nested = [str(Path(env).expanduser() / fmt.name / fmt.folder)] if env else []
    how = (
        f"Nothing is downloaded: extract the 'python version' archive {fmt.archive} (https://www.cs.toronto.edu/"
        f"~kriz/cifar.html); pass data.root=<{fmt.folder} or its parent> or put it in $SHIFTKIT_DATA/{fmt.name}."
    )
    return find_root(fmt.name, root, [*fmt.train, fmt.test, fmt.meta], how, system=nested)


def load(fmt: CifarFormat, root: Optional[str] = None) -> CifarData:
    """Read and check every file of ``fmt`` under its root (see :func:`locate`)."""
    folder = locate(fmt, root)
    batches = [_batch(folder / name, fmt) for name in fmt.train]
    test_x, test_y = _batch(folder / fmt.test, fmt)
    train_x, train_y = (np.concatenate(parts) for parts in zip(*batches))
    return CifarData(train_x, train_y, test_x, test_y, _class_names(folder / fmt.meta, fmt), folder)


def source(fmt: CifarFormat, root: Optional[str] = None) -> Source:
    """``fmt``'s official partition (:func:`load`): images ``uint8 [N, 3, 32, 32]``; its folder in ``info``."""
    data = load(fmt, root)
    return Source(fmt.name, Part(data.train_x, data.train_y), data.class_names, test=Part(data.test_x, data.test_y),
                  info={"root": str(data.folder)})


@register("cifar10_binary")
def cifar10_binary(
    root: Optional[str] = None,
    classes: List[int] = (3, 5),
    imbalance: float = 10.0,
    val_fraction: float = 0.2,
    split_seed: int = 0,
) -> Splits:
    """[W]'s imbalanced binary CIFAR-10 (docs/METHODS.md#data-cifar10_binary), exactly as its code builds it.

    1. Step imbalance on all ten training classes (:func:`w_step_undersample`, torch generator seeded
       ``split_seed``): classes 0-4 keep 5000, classes 5-9 keep ``int(5000 / imbalance)`` = 500.
    2. Keep ``classes`` (default cat 3 vs dog 5), relabelled ``classes[0] -> 0``, ``classes[1] -> 1``,
       in the order step 1 left them: 5000 cats and 500 dogs.
    3. One ``np.random.default_rng(split_seed)`` permutation; the first ``int(0.8 · 5500) = 4400`` train,
       the other 1100 validation. On the real files cat precedes dog in first appearance, which gives
       3990 cats / 410 dogs for training and 1010 / 90 for validation ([W]'s README rounds to 4000 / 400).
    4. Test: the two classes' CIFAR-10 test images, 1000 each (balanced). Groups are the classes.

    Inputs are normalized with [W]'s statistics; no augmentation. Which class is the minority follows
    the class index (5-9), as in [W]; two classes from the same half are balanced.
    """
    return binary(source(CIFAR10, root), "cifar10_binary", classes, imbalance, val_fraction, split_seed,
                  undersample="all_classes", pipeline=Pipeline(mean=list(W_MEAN), std=list(W_STD)))


def _long_tailed(fmt: CifarFormat, root: Optional[str], rho: float, rounding: str, augment: bool, split: str,
                 val_fraction: float, split_seed: int) -> Splits:
    """CIFAR-LT (docs/METHODS.md#data-cifar10_lt): see :func:`cifar10_lt`."""
    images = source(fmt, root)
    images.info["augment"] = augment
    return long_tail(images, f"{fmt.name}_lt", rho, rounding, split_seed, split=split,
                     n_max=len(images.train) // fmt.num_classes, val_fraction=val_fraction,
                     autobalance=fmt.autobalance,
                     pipeline=Pipeline(list(fmt.mean), list(fmt.std), crop_padding=4 if augment else 0, flip=augment))


@register("cifar10_lt")
def cifar10_lt(
    root: Optional[str] = None,
    rho: float = 100.0,
    rounding: str = "int",
    augment: bool = True,
    split: str = "standard",
    val_fraction: float = 0.2,
    split_seed: int = 0,
) -> Splits:
    """CIFAR10-LT (docs/METHODS.md#data-cifar10_lt): class ``i`` keeps ``n_i = 5000 μ^i``, ``μ = ρ^(-1/9)``, of its training
    images, chosen by a per-class permutation fixed by ``split_seed``; the test set is the balanced
    original one (1000 per class). ``rounding="int"`` is LDAM's: [5000, 2997, ..., 50], 12406 images.

    ``split="standard"`` holds out ``val_fraction`` of each class of that set (:func:`holdout_counts`:
    4000/1000 ... 40/10: 9921 train and 2485 validation at ρ = 100). ``split="autobalance"`` uses
    AutoBalance's counts instead (:func:`autobalance_counts`: 9931 train, 2487 validation, rounding
    fixed to its ``ceil``; ``rounding`` and ``val_fraction`` are then unused). Groups are the classes.
    Training batches get ``RandomCrop(32, padding=4)`` and flips when ``augment``.
    """
    return _long_tailed(CIFAR10, root, rho, rounding, augment, split, val_fraction, split_seed)


@register("cifar100_lt")
def cifar100_lt(
    root: Optional[str] = None,
    rho: float = 100.0,
    rounding: str = "int",
    augment: bool = True,
    split: str = "standard",
    val_fraction: float = 0.2,
    split_seed: int = 0,
) -> Splits:
    """CIFAR100-LT (docs/METHODS.md#data-cifar100_lt): as :func:`cifar10_lt` with 100 classes of 500 (``μ = ρ^(-1/99)``, 10847
    images at ρ = 100 with int rounding; the standard split: 8636 train, 2211 validation) and a balanced
    test set of 100 per class. The autobalance split is AutoBalance's CIFAR-100 one: 8719 train, 2180
    validation (``round``)."""
    return _long_tailed(CIFAR100, root, rho, rounding, augment, split, val_fraction, split_seed)
