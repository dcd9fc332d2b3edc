"""ShiftClassifier's sample_weight and class_weight, and the group scorers for scikit-learn's searches."""

import copy

import numpy as np
import pytest
from sklearn import config_context
from sklearn.metrics import accuracy_score, balanced_accuracy_score, make_scorer
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.utils.class_weight import compute_class_weight, compute_sample_weight

from shiftkit.sklearn import (
    ShiftClassifier,
    balanced_accuracy,
    balanced_accuracy_scorer,
    group_balanced_accuracy,
    group_balanced_scorer,
    worst_group_accuracy,
    worst_group_scorer,
)


def _data(n=48, seed=0):
    """Two overlapping classes with a 3:1 imbalance and a binary attribute; groups g = 2y + a."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.25).astype(int)
    a = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 3)) + 1.5 * y[:, None] + 0.5 * a[:, None]
    return X, y, 2 * y + a


def _proba(X, y, **fit_params):
    options = {"epochs": 4, "random_state": 0, **fit_params.pop("options", {})}
    return ShiftClassifier(**options).fit(X, y, **fit_params).predict_proba(X)


# Constant weights: the multipliers are scaled to mean 1 over the training rows, so they are exactly 1; the
# class and group counts the parts are built with double, which IW's table (normalized to mean 1 over the
# training rows) and Group DRO (batch counts; its adjustment, off by default, would see the scale) ignore.
@pytest.mark.parametrize("weighting", ["erm", "iw", "group_dro"])
def test_weights_of_two_on_every_example_equal_no_weights(weighting):
    X, y, g = _data()
    options = {"weighting": weighting, "batch_size": 16}
    plain = _proba(X, y, groups=g, options=options)
    np.testing.assert_allclose(_proba(X, y, groups=g, sample_weight=np.full(len(y), 2.0), options=options), plain,
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(_proba(X, y, groups=g, sample_weight=2, options=options), plain, rtol=1e-6, atol=1e-7)


# Full batch: one step per epoch over all rows, so a row of weight k is exactly k copies of it (the weighted
# standardization and counts too), up to float32 rounding in the sums. IW sees the repeated rows' counts.
@pytest.mark.parametrize("weighting", ["erm", "iw"])
def test_integer_weights_equal_repeated_rows_with_full_batches(weighting):
    X, y, g = _data()
    k = np.random.default_rng(1).integers(0, 4, len(y))
    options = {"weighting": weighting, "batch_size": 0}
    repeated = ShiftClassifier(epochs=4, random_state=0, **options).fit(X.repeat(k, 0), y.repeat(k), g.repeat(k))
    weighted = ShiftClassifier(epochs=4, random_state=0, **options).fit(X, y, g, sample_weight=k)
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), rtol=1e-5, atol=1e-6)
    assert weighted.class_counts_ == repeated.class_counts_ and weighted.group_counts_ == repeated.group_counts_
    np.testing.assert_allclose(weighted.mean_, repeated.mean_)
    np.testing.assert_allclose(weighted.scale_, repeated.scale_)


@pytest.mark.parametrize("weighting", ["erm", "iw"])
def test_zero_weight_equals_removing_the_rows_with_full_batches(weighting):
    X, y, g = _data()
    keep = np.arange(len(y)) % 3 != 0
    options = {"weighting": weighting, "batch_size": 0}
    removed = _proba(X[keep], y[keep], groups=g[keep], options=options)
    zeroed = ShiftClassifier(epochs=4, random_state=0, **options).fit(X, y, g, sample_weight=keep.astype(float))
    np.testing.assert_allclose(zeroed.predict_proba(X[keep]), removed, rtol=1e-5, atol=1e-6)


# With mini-batches a zero-weighted row still takes its place in a batch (so the fit is not the one without the
# row), but it adds nothing to the gradient, the standardization or the counts: its features and labels do not
# matter, exactly. (Loss-based weightings such as Group DRO still see its loss in the batch's group losses.)
@pytest.mark.parametrize("weighting", ["erm", "iw"])
def test_zero_weighted_rows_get_no_gradient_with_mini_batches(weighting):
    X, y, g = _data()
    zero = np.arange(len(y)) % 4 == 0
    w = np.where(zero, 0.0, np.random.default_rng(2).uniform(0.5, 2.0, len(y)))
    options = {"weighting": weighting, "batch_size": 8}
    X2, y2 = X.copy(), y.copy()
    X2[zero] = 50 * np.random.default_rng(3).normal(size=X2[zero].shape)
    y2[zero] = 1 - y2[zero]
    first = ShiftClassifier(epochs=4, random_state=0, **options).fit(X, y, 2 * y + g % 2, sample_weight=w)
    second = ShiftClassifier(epochs=4, random_state=0, **options).fit(X2, y2, 2 * y2 + g % 2, sample_weight=w)
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))


@pytest.mark.parametrize(
    "weights, message",
    [
        (np.ones(47), r"^sample_weight has 47 entries for 48 examples$"),
        (np.ones((48, 2)), r"^sample_weight must be one weight per example \(1-D\), got shape \(48, 2\)$"),
        (np.r_[-1.0, np.ones(47)], r"^sample_weight must be >= 0, got a minimum of -1$"),
        (np.r_[np.nan, np.ones(47)], r"^sample_weight must be finite"),
        (np.r_[np.inf, np.ones(47)], r"^sample_weight must be finite"),
        (np.zeros(48), r"^sample_weight must not be all zero"),
        (["heavy"] * 48, r"^sample_weight must be numbers: could not convert"),
    ],
)
def test_bad_sample_weights_are_one_line_value_errors(weights, message):
    X, y, _ = _data()
    with pytest.raises(ValueError, match=message) as info:
        ShiftClassifier(epochs=1).fit(X, y, sample_weight=weights)
    assert "\n" not in str(info.value)


def test_a_class_without_weight_is_refused_and_the_weights_are_not_modified():
    X, y, _ = _data()
    w = (y == 1).astype(float)
    with pytest.raises(ValueError, match=r"^sample_weight is 0 for every example of class 0: every class needs"):
        ShiftClassifier(epochs=1).fit(X, y, sample_weight=w)
    with pytest.raises(ValueError, match=r"^sample_weight × class_weight is 0 for every example of class 'b'"):
        ShiftClassifier(epochs=1, class_weight={"a": 1.0, "b": 0.0}).fit(X, np.array(["a", "b"])[y])
    w = np.linspace(0.5, 2, len(y))
    kept = w.copy()
    ShiftClassifier(epochs=1, class_weight="balanced").fit(X, y, sample_weight=w)
    np.testing.assert_array_equal(w, kept)


def test_balanced_class_weight_is_scikit_learns():
    X, y, _ = _data()
    labels = np.array(["no", "yes"])[y]
    clf = ShiftClassifier(epochs=4, random_state=0, class_weight="balanced").fit(X, labels)
    reference = compute_sample_weight("balanced", labels)
    np.testing.assert_allclose(reference, len(y) / (2 * np.bincount(y)[y]))
    np.testing.assert_allclose(clf.predict_proba(X), _proba(X, labels, sample_weight=reference), rtol=1e-6, atol=1e-7)
    # the weighted class counts: n_samples / n_classes for every class
    np.testing.assert_allclose(clf.class_counts_, [len(y) / 2] * 2)
    # with sample_weight, "balanced" counts the weighted rows, as compute_class_weight(sample_weight=...) does
    w = np.random.default_rng(4).uniform(0.5, 3.0, len(y))
    both = ShiftClassifier(epochs=4, random_state=0, class_weight="balanced").fit(X, labels, sample_weight=w)
    per_class = compute_class_weight("balanced", classes=np.array(["no", "yes"]), y=labels, sample_weight=w)
    expected = _proba(X, labels, sample_weight=w * per_class[y])
    np.testing.assert_allclose(both.predict_proba(X), expected, rtol=1e-6, atol=1e-7)


def test_class_weight_dict_is_keyed_by_the_original_labels():
    X, y, _ = _data()
    labels = np.array(["ham", "spam"])[y]
    weights = {"ham": 1.0, "spam": 5.0}
    clf = ShiftClassifier(epochs=4, random_state=0, class_weight=weights).fit(X, labels)
    reference = compute_sample_weight(weights, labels)
    np.testing.assert_allclose(clf.predict_proba(X), _proba(X, labels, sample_weight=reference), rtol=1e-6, atol=1e-7)
    assert clf.class_counts_ == [int((y == 0).sum()), 5 * int((y == 1).sum())]
    # as in scikit-learn, a class left out of the dict weighs 1, and a key that is no class is an error
    partial = ShiftClassifier(epochs=1, class_weight={"spam": 3.0}).fit(X, labels)
    assert partial.class_counts_ == [int((y == 0).sum()), 3 * int((y == 1).sum())]
    with pytest.raises(ValueError, match=r"classes, \['spam'\], are not in class_weight"):
        ShiftClassifier(epochs=1, class_weight={"ham": 2.0, "eggs": 1.0}).fit(X, labels)


def test_fairlearn_exponentiated_gradient_call_pattern():
    """ExponentiatedGradient copies the estimator and calls fit(X, y, sample_weight=w) with relabelled
    targets and weights n · |λ-signed weights| / sum (floats, some near 0), then predict(X)."""
    X, y, _ = _data(n=80)
    base = ShiftClassifier(epochs=10, random_state=0)
    rng = np.random.default_rng(5)
    recalls = []
    for up in (1.0, 8.0):
        signed = rng.uniform(0.01, 1.0, len(y)) * np.where(y == 1, up, 1.0)
        w = len(y) * signed / signed.sum()
        clf = copy.deepcopy(base).fit(X, y, sample_weight=w)
        pred = clf.predict(X)
        assert pred.shape == y.shape and set(pred) <= {0, 1}
        recalls.append((pred[y == 1] == 1).mean())
    assert recalls[1] >= recalls[0]  # up-weighting the rare class recalls more of it


def test_metrics_by_hand():
    y_true = np.array([0, 0, 1, 1, 1, 0])
    y_pred = np.array([0, 1, 1, 1, 0, 0])
    groups = np.array(["a", "a", "b", "b", "b", "c"])
    # per group: a 1/2, b 2/3, c 1/1
    assert worst_group_accuracy(y_true, y_pred, groups=groups) == pytest.approx(0.5)
    assert group_balanced_accuracy(y_true, y_pred, groups=groups) == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    # per class: 0 -> 2/3, 1 -> 2/3
    assert balanced_accuracy(y_true, y_pred) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="needs groups=: .*enable metadata routing"):
        worst_group_accuracy(y_true, y_pred)


def test_balanced_accuracy_equals_scikit_learns():
    rng = np.random.default_rng(6)
    for labels in (np.arange(4), np.array(["x", "y", "z"])):
        y_true, y_pred = rng.choice(labels, 50), rng.choice(labels, 50)
        assert balanced_accuracy(y_true, y_pred) == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    y_true, y_pred = rng.choice(3, 40), rng.choice(4, 40)  # a predicted class absent from y_true
    with pytest.warns(UserWarning):
        reference = balanced_accuracy_score(y_true, y_pred)
    assert balanced_accuracy(y_true, y_pred) == pytest.approx(reference)


def test_group_scorers_in_grid_search_with_routed_groups():
    X, y, g = _data(n=64)
    folds = [(np.arange(64)[np.arange(64) % 2 == k], np.arange(64)[np.arange(64) % 2 != k]) for k in (0, 1)]
    grid = {"lr": [1e-3, 1e-2]}
    with config_context(enable_metadata_routing=True):
        clf = ShiftClassifier(weighting="group_dro", epochs=3, random_state=0).set_fit_request(groups=True)
        scoring = {"worst": worst_group_scorer, "group_bal": group_balanced_scorer, "bal": balanced_accuracy_scorer}
        search = GridSearchCV(clf, grid, scoring=scoring, refit="worst", cv=folds).fit(X, y, groups=g)
        by_cv = cross_val_score(clf, X, y, scoring=worst_group_scorer, cv=folds, params={"groups": g})
    train, test = folds[0]
    for i, lr in enumerate(grid["lr"]):
        fold = ShiftClassifier(weighting="group_dro", epochs=3, random_state=0, lr=lr).fit(X[train], y[train], g[train])
        pred = fold.predict(X[test])
        worst = worst_group_accuracy(y[test], pred, groups=g[test])
        assert search.cv_results_["split0_test_worst"][i] == pytest.approx(worst)
        assert search.cv_results_["split0_test_group_bal"][i] == pytest.approx(
            group_balanced_accuracy(y[test], pred, groups=g[test]))
        assert search.cv_results_["split0_test_bal"][i] == pytest.approx(balanced_accuracy_score(y[test], pred))
        if lr == 1e-3:
            assert by_cv[0] == pytest.approx(worst)
    assert search.best_params_["lr"] in grid["lr"]


def test_sample_weight_is_routed_in_a_search():
    X, y, _ = _data(n=40)
    w = np.random.default_rng(7).uniform(0.5, 2.0, len(y))
    folds = [(np.arange(20), np.arange(20, 40))]
    with config_context(enable_metadata_routing=True):
        clf = ShiftClassifier(epochs=2, random_state=0).set_fit_request(sample_weight=True, groups=False)
        scorer = make_scorer(accuracy_score).set_score_request(sample_weight=False)
        search = GridSearchCV(clf, {"lr": [1e-3]}, cv=folds, scoring=scorer).fit(X, y, sample_weight=w)
    np.testing.assert_array_equal(
        search.best_estimator_.predict_proba(X), _proba(X, y, sample_weight=w, options={"epochs": 2}))
