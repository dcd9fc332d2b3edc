"""Group metrics of predictions and their scorers for scikit-learn's searches (``GridSearchCV``,
``cross_val_score``): worst-group, group-balanced and balanced accuracy, the groups arriving through
scikit-learn's metadata routing."""

from __future__ import annotations

import numpy as np
from sklearn import config_context
from sklearn.metrics import make_scorer
from sklearn.utils.validation import check_array, column_or_1d

from .data.base import dense_ids


def _group_accuracies(y_true, y_pred, groups, metric: str) -> np.ndarray:
    """Accuracy within each group present in ``groups`` (any ids), in sorted group order."""
    if groups is None:
        raise ValueError(
            f"{metric} needs groups=: in GridSearchCV or cross_val_score, enable metadata routing "
            "(sklearn.set_config(enable_metadata_routing=True)) and pass groups to fit (or in params=)"
        )
    y_true = column_or_1d(check_array(y_true, ensure_2d=False, dtype=None, input_name="y_true"))
    y_pred = column_or_1d(check_array(y_pred, ensure_2d=False, dtype=None, input_name="y_pred"))
    groups = column_or_1d(check_array(groups, ensure_2d=False, dtype=None, input_name="groups"))
    if not len(y_true) == len(y_pred) == len(groups) > 0:
        raise ValueError(f"{metric}: y_true has {len(y_true)} entries, y_pred {len(y_pred)} and groups {len(groups)}")
    ids, _ = dense_ids(groups)
    hits = np.bincount(ids, weights=(y_true == y_pred).astype(np.float64))
    return hits / np.bincount(ids)


def worst_group_accuracy(y_true, y_pred, *, groups=None) -> float:
    """The lowest accuracy over the groups present in ``groups`` (shiftkit's ``worst_group_acc``).

    >>> worst_group_accuracy([0, 0, 1, 1], [0, 1, 1, 1], groups=["a", "a", "b", "b"])
    0.5
    """
    return float(_group_accuracies(y_true, y_pred, groups, "worst_group_accuracy").min())


def group_balanced_accuracy(y_true, y_pred, *, groups=None) -> float:
    """The mean over the groups present in ``groups`` of their accuracy (shiftkit's ``group_balanced_acc``).

    >>> group_balanced_accuracy([0, 0, 1, 1, 1], [0, 1, 1, 1, 1], groups=["a", "a", "b", "b", "b"])
    0.75
    """
    return float(_group_accuracies(y_true, y_pred, groups, "group_balanced_accuracy").mean())


def balanced_accuracy(y_true, y_pred) -> float:
    """The mean over the classes present in ``y_true`` of their recall: the group-balanced accuracy with
    the classes as groups, equal to ``sklearn.metrics.balanced_accuracy_score`` (shiftkit's
    ``balanced_acc``).

    >>> balanced_accuracy([0, 0, 0, 1], [0, 0, 1, 1])
    0.8333333333333333
    """
    return float(_group_accuracies(y_true, y_pred, y_true, "balanced_accuracy").mean())


def _group_scorer(metric):
    """A scorer of ``metric`` that asks scikit-learn's metadata routing for ``groups``."""
    scorer = make_scorer(metric)
    with config_context(enable_metadata_routing=True):  # set_score_request exists only with routing on
        return scorer.set_score_request(groups=True)


#: Scorers for ``GridSearchCV(scoring=...)`` and ``cross_val_score``. The group scorers request ``groups``
#: through metadata routing: enable it (``sklearn.set_config(enable_metadata_routing=True)``) and pass
#: ``groups`` to the search's ``fit``; each test fold's groups then reach the scorer.
worst_group_scorer = _group_scorer(worst_group_accuracy)
group_balanced_scorer = _group_scorer(group_balanced_accuracy)
balanced_accuracy_scorer = make_scorer(balanced_accuracy)
