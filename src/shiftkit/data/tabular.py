"""Tabular data from a CSV or Parquet file, with groups (docs/METHODS.md#data-tabular, docs/METHODS.md#groups).

One row per example, every column named once (a repeated name in the header is refused: pandas would
rename the second ``label`` to ``label.1`` and train on it as a feature). ``label`` names the class
column; string (or other non-id) labels become ids in sorted order, recorded in ``info["classes"]``, while
integer labels must be the ids ``0..K-1`` (a class they skip is refused). Groups come from a ``group``
column, or from a binary ``attribute`` column with a binary label as ``g = 2·y + a`` (the cells of
docs/METHODS.md#groups), or are the classes. Group and attribute values of any kind (7, 1000, 3000, -1, text) become
ids ``0..G-1`` in sorted order, as ``ShiftClassifier`` numbers its groups; ``info["group_values"]``
(``info["attribute_values"]``) maps each id back to its value. A ``split`` column (0/1/2 or
train/val/test) gives the splits; without one, every (class, group) cell is split at random with
``val_fraction`` / ``test_fraction`` (``stratified_split``).

Features are every other column (or those listed in ``features``, minus ``ignore``): numeric and
boolean columns are standardized with the TRAINING split's mean and (population) std (a column that
overflows doing so, as values near 1e308 do, is refused), categorical (string) columns are one-hot
encoded over the training split's categories, and a category unseen in training encodes as all zeros.
``info`` records the statistics, the categories and the output feature names, so a model's inputs can be
traced back. Inputs are ``float32 [N, D]``, used as they are. Reading the file and checking its values
lives in :mod:`.tabular_read`.

>>> cells = np.array([0] * 10 + [1] * 5)
>>> split = stratified_split(cells, val_fraction=0.2, test_fraction=0.2, seed=0)
>>> [np.bincount(split[cells == c], minlength=3).tolist() for c in (0, 1)]   # [train, val, test] per cell
[[6, 2, 2], [3, 1, 1]]
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from ..errors import ShiftkitError
from . import register
from .base import Split, Splits, dense_ids, quote
from .tabular_read import check_values, read_table, where

_SPLIT_NAMES = {"train": 0, "val": 1, "valid": 1, "validation": 1, "test": 2, 0: 0, 1: 1, 2: 2}
_NAN = ("error", "drop")


def stratified_split(cells: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """The split (0 train, 1 val, 2 test) of each row: within each cell, in increasing cell order, one
    permutation by ``default_rng(seed)``; the first ``round(test_fraction · n)`` rows go to test, the next
    ``round(val_fraction · n)`` to validation, the rest (always at least one row) to training."""
    rng = np.random.default_rng(seed)
    split = np.zeros(len(cells), dtype=np.int64)
    for cell in np.unique(cells):
        members = rng.permutation(np.flatnonzero(cells == cell))
        n = len(members)
        n_test = min(int(np.floor(test_fraction * n + 0.5)), n - 1)
        n_val = min(int(np.floor(val_fraction * n + 0.5)), n - 1 - n_test)
        split[members[:n_test]] = 2
        split[members[n_test : n_test + n_val]] = 1
    return split


def _python(value):
    return value.item() if hasattr(value, "item") else value


def _values(column) -> np.ndarray:
    """The column as numpy values that sort as their user reads them: booleans, integers (also whole
    numbers stored as floats), other numbers, or text."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(column):
        return column.to_numpy(dtype=bool)
    if pd.api.types.is_signed_integer_dtype(column):
        return column.to_numpy(dtype=np.int64)  # not through float64, which merges ids above 2**53
    if pd.api.types.is_numeric_dtype(column):
        values = column.to_numpy(dtype=np.float64)
        whole = (values == np.round(values)).all() and (np.abs(values) < 2.0**63).all()
        return values.astype(np.int64) if whole else values
    return column.astype(str).to_numpy()


def _ids(column):
    """``(ids [N], names)``: the column's distinct values in sorted order are the ids ``0..K-1``
    (:func:`~.base.dense_ids`); ``names[k]`` is the value of id ``k``."""
    ids, distinct = dense_ids(_values(column))
    return ids, [_python(v) for v in distinct]


def _skipped(present: list):
    """The integers in ``0..max(present)`` missing from the sorted ``present``, lazily (ids 0 and 10**15
    skip that many)."""
    previous = -1
    for value in present:
        yield from range(previous + 1, value)
        previous = value


def _check_classes(classes: list, label: str, file: Path) -> None:
    """At least two classes, and integer labels that are the ids ``0..K-1``: a skipped id is more likely a
    class missing from the file than a numbering to redo, so it is refused rather than remapped."""
    if len(classes) < 2:
        raise ShiftkitError(
            f"tabular: label column '{label}' of {file} holds a single class ({quote(classes)}); "
            "a classifier needs at least 2"
        )
    ids = all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes)
    if ids and classes[-1] != len(classes) - 1:
        skipped = quote(list(itertools.islice(_skipped(classes), 100)), total=classes[-1] + 1 - len(classes))
        raise ShiftkitError(
            f"tabular: label column '{label}' of {file} holds integer ids up to {classes[-1]} but no row of "
            f"class(es) {skipped}; number the classes 0..K-1 (or use text labels)"
        )


def _split_ids(column, file: Path) -> np.ndarray:
    keys = [v.strip().lower() if isinstance(v, str) else _python(v) for v in column.to_numpy()]
    unknown = sorted({str(k) for k in keys if k not in _SPLIT_NAMES})
    if unknown:
        raise ShiftkitError(
            f"tabular: split column '{column.name}' of {file} holds {quote(unknown)}; use 0/1/2 or train/val/test"
        )
    return np.array([_SPLIT_NAMES[k] for k in keys], dtype=np.int64)


def _fill_hint(part: int, split: Optional[str], val_fraction: float, test_fraction: float) -> str:
    """How to give split ``part`` (0 train, 1 val, 2 test) some rows."""
    if split:
        return f"mark some rows {('train', 'val', 'test')[part]} in the column '{split}'"
    if part == 0:
        return "add rows"
    key, value = ("data.val_fraction", val_fraction) if part == 1 else ("data.test_fraction", test_fraction)
    if value == 0:
        return f"set {key} > 0"
    return f"add rows or raise {key} (now {value}): each (class, group) cell gives round({key} * its rows)"


def _encode(table, features: List[str], train: np.ndarray, info: dict, file: Path) -> np.ndarray:
    """``float32 [N, D]``: standardized numeric columns and one-hot categorical ones (training stats). A
    column whose training mean or std overflows float64, or whose standardized values overflow float32,
    is refused naming its largest value (the features must be finite: :class:`~.base.Split`)."""
    import pandas as pd

    blocks, names = [], []
    info.update(mean={}, std={}, categories={})
    for col in features:
        column = table[col]
        if pd.api.types.is_datetime64_any_dtype(column) or pd.api.types.is_timedelta64_dtype(column):
            raise ShiftkitError(f"tabular: column '{quote(col)}' has type {column.dtype}; list it in data.ignore=[...]")
        if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            values = column.to_numpy(dtype=np.float64)
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused below, not warned about
                mean, std = float(values[train].mean()), float(values[train].std())
                std = std if std > 0 else 1.0  # a constant training column stays finite (all zeros)
                scaled = ((values - mean) / std).astype(np.float32)
            bad = np.flatnonzero(train if not np.isfinite([mean, std]).all() else ~np.isfinite(scaled))
            if len(bad):
                row = int(bad[np.argmax(np.abs(values[bad]))])
                raise ShiftkitError(
                    f"tabular: column '{quote(col)}' of {file} overflows when standardized (the value "
                    f"{values[row]:.3g} on {where(file, row)}, with the training mean and standard deviation); "
                    "rescale the column or list it in data.ignore=[...]"
                )
            blocks.append(scaled[:, None])
            names.append(col)
            info["mean"][col], info["std"][col] = mean, std
        else:
            values = column.astype(str).to_numpy()
            categories = np.unique(values[train])
            codes = pd.Index(categories).get_indexer(values)  # -1: unseen in training
            onehot = np.zeros((len(values), len(categories)))
            seen = codes >= 0
            onehot[np.flatnonzero(seen), codes[seen]] = 1.0
            blocks.append(onehot)
            names.extend(f"{col}={c}" for c in categories)
            info["categories"][col] = categories.tolist()
    info["features"] = names
    return np.concatenate(blocks, axis=1).astype(np.float32)


def _check_options(nan: str, group: Optional[str], attribute: Optional[str], val_fraction: float,
                   test_fraction: float) -> None:
    """Refuse options that no file can satisfy."""
    if nan not in _NAN:
        raise ShiftkitError(f"tabular: nan must be one of {', '.join(_NAN)}, got '{nan}'")
    if group and attribute:
        raise ShiftkitError("tabular: give either a group column or an attribute column, not both")
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise ShiftkitError(
            f"tabular: need val_fraction, test_fraction >= 0 with a sum < 1, got {val_fraction}, {test_fraction}"
        )


def _feature_columns(table, file: Path, roles: List[str], features: List[str], ignore: List[str]) -> List[str]:
    """The feature columns (``features``, else every column), without the roles and ``ignore``; every
    column named must exist."""
    for col in roles + list(features) + list(ignore):
        if col not in table.columns:
            raise ShiftkitError(f"tabular: no column '{col}' in {file}; columns: {quote(list(table.columns))}")
    features = [c for c in (features or table.columns) if c not in set(roles) | set(ignore)]
    if not features:
        raise ShiftkitError(f"tabular: {file} has no feature column besides {', '.join(roles)}")
    return features


def _drop_missing(table, used: List[str], nan: str, file: Path) -> tuple:
    """``(table, dropped)``: the rows with a missing value in a ``used`` column refused (``nan="error"``,
    naming the first) or dropped, and how many there were."""
    missing = table[used].isna()
    dropped = int(missing.any(axis=1).sum())
    if dropped and nan == "error":
        col = used[int(np.argmax(missing.any(axis=0).to_numpy()))]
        first = int(np.argmax(missing[col].to_numpy()))
        raise ShiftkitError(
            f"tabular: column '{quote(col)}' of {file} has {int(missing[col].sum())} missing value(s) (NaN), the first "
            f"on {where(file, first)}; clean the file or set data.nan=drop"
        )
    table = table[~missing.any(axis=1)].reset_index(drop=True)
    if table.empty:
        raise ShiftkitError(f"tabular: every row of {file} has a missing value; data.nan=drop leaves no row")
    return table, dropped


def _groups(table, y: np.ndarray, classes: list, group: Optional[str], attribute: Optional[str],
            info: dict) -> tuple:
    """``(g, num_groups)``: ``2·y + a`` from a binary attribute, the ids of a group column, or the classes;
    the attribute's or the group's values go into ``info``."""
    if attribute:
        a, values = _ids(table[attribute])
        if len(classes) != 2 or len(values) > 2:
            raise ShiftkitError(
                f"tabular: g = 2·y + a needs a binary label and attribute, "
                f"got {len(classes)} classes and {len(values)} attribute values"
            )
        info.update(attribute=attribute, attribute_values=values)
        return 2 * y + a, 4
    if group:
        g, names = _ids(table[group])
        info.update(group=group, group_values=names)
        return g, len(names)
    return y.copy(), len(classes)


@register("tabular")
def tabular(
    path: Optional[str] = None,
    label: str = "label",
    group: Optional[str] = None,
    attribute: Optional[str] = None,
    split: Optional[str] = None,
    features: List[str] = (),
    ignore: List[str] = (),
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    nan: str = "error",
) -> Splits:
    """Load ``path`` (``.csv``, ``.tsv``, ``.parquet``; see the module docstring for the protocol).

    ``nan="error"`` refuses a missing value in any used column, naming the column; ``nan="drop"`` drops
    those rows (counted in ``info["dropped"]``). ``val_fraction`` / ``test_fraction`` / ``split_seed``
    apply only without a ``split`` column. Refused with the column and line named: a repeated column
    name, infinite numbers, text in a column of numbers, numbers that overflow when standardized, a single
    class, integer labels that skip a class, and a split left without rows. A quoted value is cut to
    about 200 characters (:func:`~.base.quote`).
    """
    _check_options(nan, group, attribute, val_fraction, test_fraction)
    file, table = read_table(path)
    table.columns = [str(c) for c in table.columns]
    roles = [c for c in (label, group, attribute, split) if c]
    features = _feature_columns(table, file, roles, features, ignore)
    if table.empty:
        raise ShiftkitError(f"tabular: {file} has a header but no data row")
    check_values(table, features, file)
    table, dropped = _drop_missing(table, roles + features, nan, file)

    y, classes = _ids(table[label])
    _check_classes(classes, label, file)
    info = {"path": str(file), "label": label, "classes": classes, "dropped": dropped}
    g, num_groups = _groups(table, y, classes, group, attribute, info)
    if split:
        parts = _split_ids(table[split], file)
    else:
        parts = stratified_split(y * num_groups + g, val_fraction, test_fraction, split_seed)
    for k, name in enumerate(("training", "validation", "test")):
        if not (parts == k).any():
            hint = _fill_hint(k, split, val_fraction, test_fraction)
            raise ShiftkitError(f"tabular: {file} leaves no {name} row; {hint}")
    info["split"] = split or f"stratified by (class, group), seed {split_seed}"
    x = torch.from_numpy(_encode(table, features, parts == 0, info, file))
    y, g = torch.from_numpy(y), torch.from_numpy(g)

    def subset(k: int) -> Split:
        index = torch.from_numpy(np.flatnonzero(parts == k))
        return Split(x[index], y[index], g[index], len(classes), num_groups)

    return Splits(subset(0), subset(1), subset(2), info=info)
