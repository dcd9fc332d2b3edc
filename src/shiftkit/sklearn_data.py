"""The rows :class:`~shiftkit.sklearn.ShiftClassifier` trains on: labels and groups as ids, each example's
weight (``sample_weight`` times ``class_weight``) and the counts weighted by it, the held-out validation
rows and the standardization; for ``fit`` and ``evaluate``."""

from __future__ import annotations

from numbers import Real
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.validation import check_array, column_or_1d

from .data.base import Split, Splits, dense_ids
from .data.tabular import stratified_split


def encode(values: np.ndarray, known: np.ndarray, what: str) -> np.ndarray:
    """Ids of ``values`` in the sorted array ``known``; a value never seen in ``fit`` is an error."""
    ids = np.searchsorted(known, values).clip(0, len(known) - 1)
    unseen = values != known[ids]
    if unseen.any():
        raise ValueError(f"{what} not seen in fit: {', '.join(map(repr, np.unique(values[unseen])[:5].tolist()))}")
    return ids


def weighted_counts(train: Split, weights: np.ndarray) -> Dict[str, list]:
    """Class and group counts as sums of the training rows' weights, from one (class, group) table, so that
    sums equal in rows are equal here too (a class made of two groups; groups that are the classes)."""
    cells = np.bincount(train.y.numpy() * train.num_groups + train.g.numpy(), weights=weights,
                        minlength=train.num_classes * train.num_groups).reshape(train.num_classes, -1)

    def tidy(counts: np.ndarray) -> list:
        return [int(c) if float(c).is_integer() else float(c) for c in counts]

    return {"class_counts": tidy(cells.sum(1)), "group_counts": tidy(cells.sum(0))}


def standardized(est: BaseEstimator, X: np.ndarray) -> np.ndarray:
    """``X`` scaled by the training rows' ``mean_`` and ``scale_``."""
    return (X - est.mean_) / est.scale_


def fit_weights(est: BaseEstimator, sample_weight, y: np.ndarray, y_ids: np.ndarray) -> Optional[np.ndarray]:
    """Each row's weight, ``sample_weight × class_weight[y]`` (float64, checked), or ``None`` when
    neither is given."""
    if sample_weight is None and est.class_weight is None:
        return None
    n = len(y_ids)
    if sample_weight is None:
        weights = np.ones(n)
    elif isinstance(sample_weight, Real) and not isinstance(sample_weight, bool):
        weights = np.full(n, float(sample_weight))
    else:
        try:
            weights = check_array(sample_weight, ensure_2d=False, dtype=np.float64, ensure_all_finite=False,
                                  input_name="sample_weight", copy=True)
        except (TypeError, ValueError) as error:
            raise ValueError(f"sample_weight must be numbers: {error}") from None
        if weights.ndim != 1:
            raise ValueError(f"sample_weight must be one weight per example (1-D), got shape {weights.shape}")
        if len(weights) != n:
            raise ValueError(f"sample_weight has {len(weights)} entries for {n} examples")
    if not np.isfinite(weights).all():
        raise ValueError("sample_weight must be finite, got NaN or infinite values")
    if (weights < 0).any():
        raise ValueError(f"sample_weight must be >= 0, got a minimum of {weights.min():g}")
    if not weights.any():
        raise ValueError("sample_weight must not be all zero: at least one example needs a positive weight")
    if est.class_weight is not None:
        given = None if sample_weight is None else weights
        per_class = compute_class_weight(est.class_weight, classes=est.classes_, y=y, sample_weight=given)
        per_class = np.asarray(per_class, dtype=np.float64)
        if not (np.isfinite(per_class).all() and (per_class >= 0).all()):
            raise ValueError(f"class_weight must give finite weights >= 0, got {per_class.tolist()}")
        weights = weights * per_class[y_ids]
    return weights


def check_class_weights(est: BaseEstimator, weights: np.ndarray, y_ids: np.ndarray) -> None:
    """Every class needs a positive total weight among the training rows."""
    totals = np.bincount(y_ids, weights=weights, minlength=len(est.classes_))
    if (totals > 0).all():
        return
    what = "sample_weight" if est.class_weight is None else "sample_weight × class_weight"
    rows = " among the training rows (val_fraction holds some out)" if est.val_fraction > 0 else ""
    empty = ", ".join(map(repr, est.classes_[totals == 0][:5].tolist()))
    raise ValueError(f"{what} is 0 for every example of class {empty}{rows}: every class needs a positive weight")


def fit_splits(est: BaseEstimator, X: np.ndarray, y_ids: np.ndarray, g_ids: np.ndarray, num_groups: int, seed: int,
               weights: Optional[np.ndarray] = None) -> Tuple[Splits, Optional[np.ndarray]]:
    """Training rows and validation rows (``val_fraction`` of every (class, group) cell, drawn by
    ``stratified_split`` as ``data=tabular`` does), and the training rows' weights (``None`` without
    ``weights``); sets ``mean_`` and ``scale_`` from the training rows, weighted by ``weights``. The
    training split carries its weights scaled to mean 1."""
    held_out = np.zeros(len(X), dtype=bool)
    if est.val_fraction > 0:
        held_out = stratified_split(y_ids * num_groups + g_ids, est.val_fraction, 0.0, seed) == 1
    train = ~held_out
    train_weights = None if weights is None else weights[train]
    if train_weights is not None:
        check_class_weights(est, train_weights, y_ids[train])
    mean = np.average(X[train], axis=0, weights=train_weights)
    scale = np.sqrt(np.average((X[train] - mean) ** 2, axis=0, weights=train_weights))
    est.mean_ = mean if est.standardize else np.zeros_like(mean)
    est.scale_ = np.where(scale > 0, scale, 1.0) if est.standardize else np.ones_like(scale)
    x = torch.from_numpy(np.ascontiguousarray(standardized(est, X), dtype=np.float32))
    y_t, g_t = torch.from_numpy(y_ids.astype(np.int64)), torch.from_numpy(g_ids.astype(np.int64))

    def split(rows: np.ndarray, weight: Optional[torch.Tensor] = None) -> Split:
        index = torch.from_numpy(np.flatnonzero(rows))
        return Split(x[index], y_t[index], g_t[index], len(est.classes_), num_groups, weight)

    # The loop's objective is mean(weight · w · loss): weights of mean 1 over the training rows make it
    # the weighted mean, sum(s · w · loss) / sum(s), as over repeated rows.
    multiplier = None
    if train_weights is not None:
        scaled = train_weights * (len(train_weights) / train_weights.sum())
        multiplier = torch.from_numpy(scaled.astype(np.float32))
    # Splits needs validation and test rows: without held-out rows validation repeats the training rows,
    # and test repeats validation (the caller keeps its own test data). Evaluation ignores the weights.
    training = split(train, multiplier)
    val = split(held_out) if est.val_fraction > 0 else training
    return Splits(training, val, val), train_weights


def fit_groups(est: BaseEstimator, groups, y_ids: np.ndarray) -> Tuple[np.ndarray, int]:
    """``(group ids, number of groups)``; without ``groups`` the groups are the classes."""
    if groups is None:
        est.groups_ = None
        return y_ids, len(est.classes_)
    groups = column_or_1d(check_array(groups, ensure_2d=False, dtype=None, input_name="groups"))
    if len(groups) != len(y_ids):
        raise ValueError(f"groups has {len(groups)} entries for {len(y_ids)} examples")
    g_ids, est.groups_ = dense_ids(groups)  # sorted, as data=tabular numbers a group column
    return g_ids, len(est.groups_)


def evaluation_groups(est: BaseEstimator, groups, y_ids: np.ndarray) -> Tuple[np.ndarray, Optional[list]]:
    """``(group ids, training group counts or None)`` for :meth:`~shiftkit.sklearn.ShiftClassifier.evaluate`."""
    if groups is None:
        if est.groups_ is not None:
            raise ValueError("this model was fitted with groups: pass groups to evaluate")
        return y_ids, est.class_counts_
    groups = column_or_1d(check_array(groups, ensure_2d=False, dtype=None, input_name="groups"))
    if est.groups_ is None:
        return dense_ids(groups)[0], None
    return encode(groups, est.groups_, "groups"), est.group_counts_
