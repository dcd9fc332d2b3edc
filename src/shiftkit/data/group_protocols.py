"""Group protocols on any :class:`~.sources.Source` (docs/METHODS.md#data-protocols): a spurious attribute with
Waterbirds' group fractions (:func:`spurious`, docs/METHODS.md#data-fmnist_spurious) and a source's own
partition or AutoBalance's 50/50 search split of it (:func:`partition`, docs/METHODS.md#data-waterbirds).
Groups are the cells ``g = A·y + a`` of docs/METHODS.md#groups (the classes when the source has no
attribute). One ``info`` schema per protocol; what only the source knows is under ``info["source"]``.

>>> part = Part(np.zeros((6, 1), np.float32), np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 1, 0]))
>>> toy = Source("toy", part, ["cat", "dog"], test=part, attribute_names=["indoors", "outdoors"])
>>> s = partition(toy, "toy", "autobalance")
>>> s.train.group_counts, s.val.group_counts, s.info["groups"][1]
([1, 1, 1, 1], [1, 0, 0, 1], 'cat, outdoors')
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ShiftkitError
from .base import Split, Splits
from .pipeline import Pipeline
from .shifts import check_binary_protocol, halves, per_class_permutations
from .sources import Part, Source, relabel, split_of

#: ``render(x, a)``: inputs ``x[index]`` with the attribute ``a`` (0 or 1 per example) drawn into them.
Render = Callable[[object, np.ndarray], object]
PARTITION_SPLITS = ("official", "autobalance")


def group_ids(source: Source, part: Part) -> np.ndarray:
    """``A·y + a`` for a source with an attribute of ``A`` values (names), else ``y``."""
    if not source.has_attribute:
        return part.y
    return len(source.attribute_names or (0, 1)) * part.y + part.attribute


def group_names(source: Source, classes: Optional[Sequence[int]] = None) -> List[str]:
    """``"<class>, <attribute>"`` per group id (the class names without an attribute)."""
    names = [source.class_names[c] for c in (range(source.num_classes) if classes is None else classes)]
    if not source.has_attribute:
        return names
    return [f"{n}, {a}" for n in names for a in (source.attribute_names or ("a=0", "a=1"))]


def _slices(perm: np.ndarray, start: int, counts: Sequence[int]) -> List[np.ndarray]:
    """Consecutive stretches of ``perm`` from ``start``, of ``counts[0]``, ``counts[1]``, ... indices."""
    edges = start + np.concatenate([[0], np.cumsum(counts)]).astype(int)
    return [perm[a:b] for a, b in zip(edges[:-1], edges[1:])]


def _assigned(y: np.ndarray, classes: List[int], counts: Tuple[list, int, int], seed: int,
              test_y: Optional[np.ndarray], name: str) -> Tuple[list, list, list]:
    """Train, validation and test indices per group when the protocol assigns the attribute: per class one
    permutation; its first examples get ``a = 0``, the next ``a = 1`` (then validation, then test)."""
    train_counts, per_val, per_test = counts
    perms = per_class_permutations(y, classes, seed)
    tests = per_class_permutations(test_y, classes, seed) if test_y is not None else None
    out: Tuple[list, list, list] = ([], [], [])
    for label, perm in enumerate(perms):
        used = train_counts[2 * label] + train_counts[2 * label + 1]
        test_pool, test_start = (perm, used + 2 * per_val) if tests is None else (tests[label], 0)
        if used + 2 * per_val > len(perm) or test_start + 2 * per_test > len(test_pool):
            raise ShiftkitError(f"{name}: class {classes[label]} has too few images for these counts")
        out[0].extend(_slices(perm, 0, train_counts[2 * label : 2 * label + 2]))
        out[1].extend(_slices(perm, used, [per_val, per_val]))
        out[2].extend(_slices(test_pool, test_start, [per_test, per_test]))
    return out


def _cells(source: Source, classes: List[int], counts: Tuple[list, int, int], seed: int,
           name: str) -> Tuple[list, list, list]:
    """Train, validation and test indices per group from the source's own attribute: one permutation per
    cell (class, attribute); validation follows training, the test set is the source's (or follows)."""
    table = relabel(classes, source.num_classes)
    if not np.isin(source.train.attribute, (0, 1)).all():
        raise ShiftkitError(f"{name}: the attribute of {source.name} must be 0 or 1 for a spurious-attribute split")

    def cell_perms(part: Part) -> list:
        label = table[part.y]
        return per_class_permutations(np.where(label >= 0, 2 * label + part.attribute, -1), range(4), seed)

    train_counts, per_val, per_test = counts
    perms = cell_perms(source.train)
    tests = cell_perms(source.test) if source.test is not None else None
    out: Tuple[list, list, list] = ([], [], [])
    for g, perm in enumerate(perms):
        test_pool, test_start = (perm, train_counts[g] + per_val) if tests is None else (tests[g], 0)
        if train_counts[g] + per_val > len(perm) or test_start + per_test > len(test_pool):
            raise ShiftkitError(f"{name}: group {g} has too few examples for these counts")
        out[0].append(perm[: train_counts[g]])
        out[1].append(perm[train_counts[g] : train_counts[g] + per_val])
        out[2].append(test_pool[test_start : test_start + per_test])
    return out


def _grouped(part: Part, by_group: List[np.ndarray], render: Optional[Render]) -> Split:
    index = np.concatenate(by_group)
    g = np.repeat(np.arange(len(by_group)), [len(i) for i in by_group])
    x = None if render is None else render(part.x[index], g % 2)
    return split_of(part, index, g // 2, g, 2, 4, x=x)


def _check_spurious(name: str, fractions: Sequence[float], n_train: int) -> list:
    fractions = list(fractions)
    if len(fractions) != 4 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ShiftkitError(f"{name}: fractions must be 4 non-negative numbers summing to 1, got {fractions}")
    train_counts = [int(round(f * n_train)) for f in fractions]
    if min(train_counts) < 1:
        raise ShiftkitError(f"{name}: a training group is empty: {train_counts}")
    return train_counts


def spurious(source: Source, name: str, classes: Sequence[int], fractions: Sequence[float], n_train: int,
             val_per_group: int, test_per_group: int, split_seed: int, *, render: Optional[Render] = None,
             attribute_names: Sequence[str] = ("a=0", "a=1"), pipeline: Optional[Pipeline] = None) -> Splits:
    """A spurious attribute (docs/METHODS.md#data-fmnist_spurious): ``classes = [a, b]`` become labels 0, 1 and
    groups ``g = 2y + a``; training has ``round(fractions[g] · n_train)`` examples of group ``g``, validation
    ``val_per_group`` and test ``test_per_group`` of every group (the source's test set, else more of its
    training examples). The attribute is the source's own, or, for a source without one, assigned and
    drawn into the inputs by ``render`` (``attribute_names`` then name its values)."""
    classes = check_binary_protocol(name, classes, 1.0, 0.5, source.num_classes)
    counts = (_check_spurious(name, fractions, n_train), val_per_group, test_per_group)
    if source.has_attribute:
        parts, render, attribute = _cells(source, classes, counts, split_seed, name), None, "source"
    elif render is None:
        raise ShiftkitError(f"{name}: the source {source.name} has no attribute; pass render= to draw one")
    else:
        test_y = None if source.test is None else source.test.y
        parts, attribute = _assigned(source.train.y, classes, counts, split_seed, test_y, name), "rendered"
    test = source.test if source.test is not None else source.train
    names = [source.class_names[c] for c in classes]
    values = (source.attribute_names or ("a=0", "a=1")) if source.has_attribute else attribute_names
    info = {"protocol": "spurious", "classes": classes, "class_names": names, "names": list(names),
            "fractions": list(fractions), "train_group_counts": counts[0], "val_per_group": val_per_group,
            "test_per_group": test_per_group, "attribute": attribute,
            "groups": [f"{n}, {v}" for n in names for v in values], "split_seed": split_seed,
            "source": source.describe()}
    splits = [_grouped(p, by_group, render) for p, by_group in zip((source.train, source.train, test), parts)]
    return Splits(*splits, info=info, pipeline=Pipeline() if pipeline is None else pipeline)


def partition(source: Source, name: str, split: str = "official", split_seed: int = 0, *,
              pipeline: Optional[Pipeline] = None) -> Splits:
    """The source's own partition (``split="official"``: its train, val and test parts), or [AB]'s search
    split (``"autobalance"``, docs/METHODS.md#data-waterbirds): every training group halved at random by
    ``default_rng(split_seed)`` (:func:`~.shifts.halves`, the larger half trains), so validation keeps the
    training imbalance; the test part is the source's. Groups as :func:`group_ids`."""
    if split not in PARTITION_SPLITS:
        raise ShiftkitError(f"{name}: split must be 'official' or 'autobalance', got '{split}'")
    train, test = source.train, source.part("test", name)
    if split == "official":
        val = source.part("val", name)
        chosen = [(train, np.arange(len(train))), (val, np.arange(len(val))), (test, np.arange(len(test)))]
    else:
        first, second = halves(np.arange(len(train)), group_ids(source, train), split_seed)
        chosen = [(train, first), (train, second), (test, np.arange(len(test)))]
    names = group_names(source)
    splits = [split_of(p, i, p.y[i], group_ids(source, p)[i], source.num_classes, len(names)) for p, i in chosen]
    info: Dict[str, object] = {"protocol": "partition", "split": split,
                               "split_seed": split_seed if split == "autobalance" else None,
                               "class_names": list(source.class_names), "groups": names, "source": source.describe()}
    return Splits(*splits, info=info, pipeline=Pipeline() if pipeline is None else pipeline)
