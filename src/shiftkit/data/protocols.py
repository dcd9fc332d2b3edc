"""Class-imbalance protocols on any :class:`~.sources.Source` (docs/METHODS.md#data-protocols): [W]'s imbalanced
binary protocol (:func:`binary`, docs/METHODS.md#data-cifar10_binary) and the long tail (:func:`long_tail`,
docs/METHODS.md#data-cifar10_lt). Each protocol records one ``info`` schema, the same keys whatever the source;
what only the source knows is under ``info["source"]``. The registered datasets (``digits_binary``,
``fmnist_lt``, ``cifar10_binary``, ...) are a source loader and one call of a protocol.

>>> from shiftkit.data import digits
>>> s = binary(digits.source(), "digits", [1, 8], imbalance=10.0, val_fraction=0.2, split_seed=0, test_per_class=50)
>>> s.info["kept"], s.test.class_counts, s.info["source"]
([132, 13], [50, 50], {'name': 'digits'})
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ShiftkitError
from .base import Split, Splits
from .pipeline import Pipeline
from .shifts import (
    autobalance_counts,
    check_binary_protocol,
    holdout_counts,
    long_tail_counts,
    per_class_permutations,
    step_imbalance,
    take,
    train_val_split,
    w_step_undersample,
)
from .sources import Part, Source, relabel, split_of

#: How :func:`binary` draws its step imbalance: ``"pair"``, one numpy permutation per class of the pair,
#: ``classes[1]`` the minority; ``"all_classes"``, [W]'s code (:func:`~.shifts.w_step_undersample`): every class
#: of the source, the upper half of the class ids the minority.
UNDERSAMPLE = ("pair", "all_classes")
#: The long tail's splits: ``"standard"`` or AutoBalance's (docs/METHODS.md#autobalance-schedules).
LT_SPLITS = ("standard", "autobalance")
#: How a validation fraction of a long-tailed class rounds: ``"floor"`` trains ``int((1 - f) n)`` (at least one
#: validation example, :func:`~.shifts.holdout_counts`); ``"round"`` validates ``round(f n)``, within ``1 .. n - 1``.
HOLDOUT = ("floor", "round")


def _pair_pool(y: np.ndarray, classes: List[int], imbalance: float, seed: int, n_majority: Optional[int],
               test_per_class: Optional[int], name: str) -> Tuple[np.ndarray, Optional[np.ndarray], list]:
    """``(pool, held-out test or None, kept)`` of the ``"pair"`` draw: per class one permutation, whose first
    ``test_per_class`` indices (if given) are the test set; of the rest the majority keeps ``n_majority`` (or
    all) and the minority ``int(n / imbalance)``."""
    perms = per_class_permutations(y, classes, seed)
    held = None
    if test_per_class is not None:
        if test_per_class < 1 or test_per_class >= min(len(p) for p in perms) - 1:
            raise ShiftkitError(f"{name}: test_per_class={test_per_class} leaves no training data")
        held = np.concatenate([p[:test_per_class] for p in perms])
        perms = [p[test_per_class:] for p in perms]
    sizes = [len(p) for p in perms] if n_majority is None else [n_majority, n_majority]
    kept = step_imbalance(sizes, [False, True], imbalance)
    if kept[1] < 1:
        raise ShiftkitError(f"{name}: imbalance={imbalance} leaves no minority example")
    return take(perms, kept), held, kept


def _all_classes_pool(y: np.ndarray, classes: List[int], imbalance: float, seed: int, num_classes: int,
                      name: str) -> Tuple[np.ndarray, list, list]:
    """``(pool, kept, step counts of every class)`` of [W]'s draw, the pair kept in the order it left them."""
    index, step = w_step_undersample(y, num_classes, imbalance, seed)
    kept = [step[c] for c in classes]
    if min(kept) < 1:
        raise ShiftkitError(f"{name}: imbalance={imbalance} leaves no example of a class in {classes}")
    return index[np.isin(y[index], classes)], kept, step


def binary(source: Source, name: str, classes: Sequence[int], imbalance: float, val_fraction: float,
           split_seed: int, *, n_majority: Optional[int] = None, test_per_class: Optional[int] = None,
           undersample: str = "pair", pipeline: Optional[Pipeline] = None) -> Splits:
    """[W]'s imbalanced binary protocol (docs/METHODS.md#data-cifar10_binary) on ``source``: ``classes = [a, b]``
    become labels 0 and 1; a step imbalance (``undersample``, :data:`UNDERSAMPLE`) keeps a pool of the two,
    one ``default_rng(split_seed)`` permutation splits it into train and ``val_fraction`` validation; the
    test set is the source's test images of the two classes, or ``test_per_class`` per class set aside first.
    Groups are the classes. ``name`` (the dataset) starts every error message."""
    classes = check_binary_protocol(name, classes, imbalance, val_fraction, source.num_classes)
    if undersample not in UNDERSAMPLE:
        raise ShiftkitError(f"{name}: undersample must be one of {', '.join(UNDERSAMPLE)}, got '{undersample}'")
    if n_majority is not None and n_majority < 2:
        raise ShiftkitError(f"{name}: n_majority must be >= 2, got {n_majority}")
    train, step, held = source.train, None, None
    if undersample == "pair":
        pool, held, kept = _pair_pool(train.y, classes, imbalance, split_seed, n_majority, test_per_class, name)
    elif test_per_class is not None or n_majority is not None:
        raise ShiftkitError(f"{name}: undersample=all_classes keeps every pool and the source's test set")
    else:
        pool, kept, step = _all_classes_pool(train.y, classes, imbalance, split_seed, source.num_classes, name)
    test = train if held is not None else source.part("test", name)
    test_index = held if held is not None else np.flatnonzero(np.isin(test.y, classes))
    table = relabel(classes, source.num_classes)
    train_index, val_index = train_val_split(len(pool), val_fraction, split_seed)

    def split(part: Part, index: np.ndarray) -> Split:
        labels = table[part.y[index]]
        return split_of(part, index, labels, labels, 2, 2)

    info = _binary_info(source, classes, imbalance, kept, step, undersample)
    info.update(n_majority=n_majority, test_per_class=test_per_class, val_fraction=val_fraction,
                split_seed=split_seed, source=source.describe())
    return Splits(split(train, pool[train_index]), split(train, pool[val_index]), split(test, test_index),
                  info=info, pipeline=Pipeline() if pipeline is None else pipeline)


def _binary_info(source: Source, classes: List[int], imbalance: float, kept: list, step: Optional[list],
                 undersample: str) -> Dict[str, object]:
    """The binary protocol's ``info`` (``names`` repeats ``class_names``, ``pool`` repeats ``kept``)."""
    names = [source.class_names[c] for c in classes]
    upper = [c for c in classes if c >= source.num_classes // 2]
    minority = classes[1] if undersample == "pair" else (upper[0] if len(upper) == 1 else None)
    return {"protocol": "binary", "classes": classes, "class_names": names, "names": list(names),
            "minority": minority, "imbalance": imbalance, "kept": list(kept), "pool": list(kept),
            "step_counts": step, "undersample": undersample}


def _lt_counts(split: str, n_max: int, k: int, rho: float, rounding: str, val_fraction: Optional[float],
               val_per_class: Optional[int], holdout: str, autobalance: str) -> Tuple[list, list, list, str]:
    """``(profile, train counts, validation counts, rounding used)`` of :func:`long_tail`."""
    profile = long_tail_counts(n_max, k, rho, rounding)  # also checks rho and rounding
    if split == "autobalance":
        n_train, n_val = autobalance_counts(n_max, k, rho, autobalance)
        return [t + v for t, v in zip(n_train, n_val)], n_train, n_val, autobalance
    if val_per_class is not None:
        return profile, list(profile), [val_per_class] * k, rounding
    if holdout == "floor":
        return (profile, *holdout_counts(profile, val_fraction), rounding)
    n_val = [min(max(1, int(round(val_fraction * c))), c - 1) for c in profile]
    return profile, [c - v for c, v in zip(profile, n_val)], n_val, rounding


def _check_lt(name: str, split: str, val_fraction: Optional[float], val_per_class: Optional[int],
              holdout: str) -> None:
    if split not in LT_SPLITS:
        raise ShiftkitError(f"{name}: split must be one of {', '.join(LT_SPLITS)}, got '{split}'")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise ShiftkitError(f"{name}: val_fraction must lie in (0, 1), got {val_fraction}")
    if holdout not in HOLDOUT:
        raise ShiftkitError(f"{name}: holdout must be one of {', '.join(HOLDOUT)}, got '{holdout}'")
    if split == "standard" and val_fraction is None and val_per_class is None:
        raise ShiftkitError(f"{name}: the standard split needs val_fraction or val_per_class")


def _check_filled(name: str, rho: float, n_train: list, n_val: list) -> None:
    """Every class needs a training and a validation example."""
    missing = []
    for what, counts in (("training", n_train), ("validation", n_val)):
        empty = [c for c, n in enumerate(counts) if n < 1]
        if empty:
            missing.append(f"class(es) {empty} with no {what} example")
    if missing:
        raise ShiftkitError(f"{name}: rho={rho} leaves {' and '.join(missing)}")


def long_tail(source: Source, name: str, rho: float, rounding: str, split_seed: int, *, split: str = "standard",
              n_max: Optional[int] = None, val_fraction: Optional[float] = None,
              val_per_class: Optional[int] = None, holdout: str = "floor", test_per_class: Optional[int] = None,
              autobalance: str = "ceil", pipeline: Optional[Pipeline] = None) -> Splits:
    """The long tail (docs/METHODS.md#data-cifar10_lt) on ``source``: class ``i`` keeps ``n_max · rho^(-i/(K-1))``
    examples (:func:`~.shifts.long_tail_counts`; ``n_max`` defaults to the smallest class), drawn by one
    permutation per class fixed by ``split_seed``. ``split="standard"`` validates ``val_fraction`` of each
    class (``holdout``, :data:`HOLDOUT`) or ``val_per_class`` more examples per class (a balanced set);
    ``split="autobalance"`` takes AutoBalance's counts (:func:`~.shifts.autobalance_counts` with the style
    ``autobalance``). The test set is the source's, or ``test_per_class`` per class set aside first."""
    _check_lt(name, split, val_fraction, val_per_class, holdout)
    train, k = source.train, source.num_classes
    perms = per_class_permutations(train.y, range(k), split_seed)
    held = test_per_class or 0
    if test_per_class is not None and (test_per_class < 1 or test_per_class >= min(len(p) for p in perms) - 2):
        raise ShiftkitError(f"{name}: test_per_class={test_per_class} leaves no training data")
    n_max = min(len(p) for p in perms) - held if n_max is None else n_max
    profile, n_train, n_val, rounding = _lt_counts(split, n_max, k, rho, rounding, val_fraction, val_per_class,
                                                   holdout, autobalance)
    _check_filled(name, rho, n_train, n_val)
    offset = [held] * k
    train_index = take(perms, n_train, offset)
    val_index = take(perms, n_val, [o + t for o, t in zip(offset, n_train)])
    test = train if test_per_class is not None else source.part("test", name)
    test_index = take(perms, [held] * k) if test_per_class is not None else np.arange(len(test))

    def subset(part: Part, index: np.ndarray) -> Split:
        return split_of(part, index, part.y[index], part.y[index], k, k)

    standard = split == "standard"
    info = {"protocol": "long_tail", "rho": rho, "rounding": rounding, "split": split, "n_max": n_max,
            "profile": profile, "counts": list(profile), "train_counts": n_train, "val_counts": n_val,
            "val_fraction": val_fraction if standard else 0.2, "val_per_class": val_per_class if standard else None,
            "test_per_class": test_per_class, "split_seed": split_seed, "class_names": list(source.class_names),
            "source": source.describe()}
    return Splits(subset(train, train_index), subset(train, val_index), subset(test, test_index), info=info,
                  pipeline=Pipeline() if pipeline is None else pipeline)
