"""ShiftClassifier: scikit-learn's estimator checks, plus shiftkit's methods behind the sklearn API."""

import pickle
import re

import numpy as np
import pytest
import torch
from sklearn import config_context
from sklearn.datasets import make_blobs
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from shiftkit.sklearn import ShiftClassifier


def _expected_failed_checks(estimator):
    """Integer sample weights equal repeated rows up to float32 rounding (a relative 2e-7 to 1e-6 in
    predict_proba after 50 epochs: the loop sums losses and gradients in float32, in a different order and
    over other batch sizes), not to the check's float64 tolerance of 1e-7. ``test_sklearn_weights.py``
    tests the equivalence at float32 precision."""
    return {"check_sample_weight_equivalence_on_dense_data":
            "equal to repeated rows up to float32 rounding (about 1e-6 relative), not to the check's rtol 1e-7"}


# The default estimator, and a linear model with [W]'s poly loss and importance weights (a linear model needs a
# larger step than Adam's default 1e-3 to fit in the default 50 epochs).
@parametrize_with_checks([ShiftClassifier(), ShiftClassifier(model="linear", loss="poly", weighting="iw", lr=0.03)],
                         expected_failed_checks=_expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _imbalanced(n=400, seed=0):
    """Two overlapping Gaussians with a 9:1 class imbalance; group = a random binary attribute."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.1).astype(int)
    X = rng.normal(size=(n, 3)) + 1.5 * y[:, None]
    return X, y, rng.integers(0, 2, n)


def test_accuracy_is_close_to_logistic_regression():
    X, y = make_blobs(n_samples=300, centers=3, cluster_std=2.0, random_state=0)
    train, test = slice(0, 200), slice(200, None)
    ours = ShiftClassifier(random_state=0).fit(X[train], y[train]).score(X[test], y[test])
    reference = LogisticRegression().fit(X[train], y[train]).score(X[test], y[test])
    assert ours >= reference - 0.05


def test_string_labels_round_trip_and_proba_columns_follow_classes():
    X, y, _ = _imbalanced()
    labels = np.array(["spam", "ham"])[y]
    clf = ShiftClassifier(random_state=0, epochs=10).fit(X, labels)
    assert clf.classes_.tolist() == ["ham", "spam"]
    assert set(clf.predict(X)) <= {"ham", "spam"}
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(1)], clf.predict(X))


def test_non_contiguous_integer_labels():
    X, y = make_blobs(n_samples=90, centers=3, random_state=1)
    labels = np.array([-5, 7, 100])[y]
    clf = ShiftClassifier(random_state=0, epochs=20).fit(X, labels)
    assert clf.classes_.tolist() == [-5, 7, 100]
    assert clf.score(X, labels) > 0.9


def test_group_dro_with_groups_fits_and_reports_group_metrics():
    X, y, a = _imbalanced()
    groups = 2 * y + a
    clf = ShiftClassifier(weighting="group_dro", weighting_options={"eta": 0.1}, random_state=0, epochs=10)
    clf.fit(X, y, groups=groups)
    assert clf.groups_.tolist() == [0, 1, 2, 3] and sum(clf.group_counts_) == len(y)
    q = clf.weighting_.q
    assert torch.isclose(q.sum(), torch.tensor(1.0)) and not torch.allclose(q, torch.full_like(q, 0.25))
    report = clf.evaluate(X, y, groups)
    assert len(report["per_group_acc"]) == 4 and report["deo"] is not None
    assert report["acc"] == pytest.approx(clf.score(X, y))


def test_groups_of_the_wrong_length_are_refused():
    X, y, a = _imbalanced(n=50)
    with pytest.raises(ValueError, match="groups has 49 entries for 50 examples"):
        ShiftClassifier(epochs=1).fit(X, y, groups=a[:-1])


def test_group_metrics_of_a_model_fitted_without_groups():
    X, y, a = _imbalanced()
    clf = ShiftClassifier(random_state=0, epochs=5).fit(X, y)
    assert len(clf.evaluate(X, y)["per_group_acc"]) == 2  # groups are the classes
    assert len(clf.evaluate(X, y, 2 * y + a)["per_group_acc"]) == 4


@pytest.mark.parametrize(
    "params, message",
    [
        ({"loss": "hinge"}, "unknown loss 'hinge'; choose one of: .*ce"),
        ({"weighting": "dro"}, "unknown weighting 'dro'; choose one of: .*group_dro"),
        ({"model": "resnet"}, "unknown model 'resnet'; choose one of: .*mlp"),
        ({"optimizer": "lbfgs"}, "unknown optim 'lbfgs'; choose one of: adam, sgd"),
        ({"loss_options": {"alpha": 2}}, "loss 'ce' has no option 'alpha'"),
        ({"weighting_options": {"group_counts": [1, 2]}}, "group_counts are computed from the training data"),
        ({"lr": 0.1, "optimizer_options": {"lr": 0.2}}, "set the learning rate once"),
        ({"select": "best:acc"}, "set val_fraction > 0"),
        ({"select": "first"}, "^select must be 'last' or 'best:<metric>'"),
        ({"epochs": 0}, r"^epochs must be an integer >= 1, got 0$"),
        ({"epochs": 2.5}, r"^epochs must be an integer >= 1, got 2.5$"),
        ({"batch_size": -1}, r"^batch_size must be an integer >= 0 \(0: full batch\), got -1$"),
        ({"lr": 0}, r"^lr must be a finite number > 0 or None, got 0$"),
        ({"lr": "fast"}, r"^lr must be a finite number > 0 or None, got 'fast'$"),
        ({"optimizer_options": {"lr": -1.0}}, r"^optimizer_options\['lr'\] must be > 0, got -1.0$"),
        ({"optimizer": "sgd", "optimizer_options": {"momentum": 1.5}},
         r"^optimizer_options\['momentum'\] must lie in \[0, 1\)"),
        ({"class_weight": "auto"}, "^class_weight must be None, 'balanced' or a dict"),
    ],
)
def test_bad_hyperparameters_are_one_line_value_errors(params, message):
    """Messages name the estimator's parameters, never shiftkit's configuration keys (train.epochs, optim.lr)."""
    X, y, _ = _imbalanced(n=40)
    with pytest.raises(ValueError, match=message) as info:
        ShiftClassifier(epochs=params.pop("epochs", 1), **params).fit(X, y)
    assert "\n" not in str(info.value)
    assert not re.search(r"\b(train|optim|loss|weighting|sampler|model)\.[a-z]", str(info.value)), str(info.value)


def test_a_diverging_fit_names_lr_not_the_configuration_key():
    X, y, _ = _imbalanced(n=40)
    with pytest.raises(ValueError, match="became non-finite .* try a lower lr$"):
        ShiftClassifier(optimizer="sgd", lr=1e30, epochs=3, standardize=False).fit(100 * X, y)


def test_bad_data_is_refused_with_a_value_error():
    X, y, _ = _imbalanced(n=40)
    with pytest.raises(ValueError, match="at least 2 classes in y, got 1 class"):
        ShiftClassifier(epochs=1).fit(X, np.zeros(40))
    with pytest.raises(ValueError, match="Unknown label type"):
        ShiftClassifier(epochs=1).fit(X, X[:, 0])
    X[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ShiftClassifier(epochs=1).fit(X, y)
    clf = ShiftClassifier(epochs=1).fit(np.nan_to_num(X), y)
    with pytest.raises(ValueError, match="labels not seen in fit: 7"):
        clf.evaluate(np.nan_to_num(X), np.full(40, 7))


def test_dataframe_feature_names_are_kept():
    pd = pytest.importorskip("pandas")
    X, y, _ = _imbalanced(n=60)
    frame = pd.DataFrame(X, columns=["age", "income", "score"])
    clf = ShiftClassifier(epochs=2, random_state=0).fit(frame, y)
    assert clf.feature_names_in_.tolist() == ["age", "income", "score"] and clf.n_features_in_ == 3
    with pytest.raises(ValueError, match="feature names"):
        clf.predict(frame.rename(columns={"age": "years"}))


def test_poly_loss_with_importance_weighting_fits_the_minority_class():
    X, y, _ = _imbalanced()
    erm = ShiftClassifier(random_state=0, epochs=20).fit(X, y)
    clf = ShiftClassifier(loss="poly", loss_options={"alpha": 1.0}, weighting="iw",
                          weighting_options={"exponent": 1.5}, random_state=0, epochs=20).fit(X, y)
    # Up-weighting the rare class moves the boundary towards it: more of it is recalled than by ERM.
    assert clf.evaluate(X, y)["worst_class_acc"] > erm.evaluate(X, y)["worst_class_acc"]
    assert clf.evaluate(X, y)["balanced_acc"] > 0.8


def test_same_random_state_gives_identical_probabilities_and_leaves_torch_rng_alone():
    X, y, _ = _imbalanced()
    state = torch.get_rng_state()
    first = ShiftClassifier(random_state=3, epochs=5).fit(X, y).predict_proba(X)
    second = ShiftClassifier(random_state=3, epochs=5).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(first, second)
    assert torch.equal(torch.get_rng_state(), state)
    other = ShiftClassifier(random_state=4, epochs=5).fit(X, y).predict_proba(X)
    assert not np.array_equal(first, other)


def test_pickle_round_trip_predicts_the_same():
    X, y, _ = _imbalanced(n=60)
    clf = ShiftClassifier(random_state=0, epochs=3).fit(X, y)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(clf)).predict_proba(X), clf.predict_proba(X))


def test_validation_split_and_best_epoch_selection():
    X, y, a = _imbalanced()
    clf = ShiftClassifier(weighting="iw", val_fraction=0.25, select="best:group_balanced_acc", random_state=0,
                          epochs=5).fit(X, y, groups=2 * y + a)
    result = clf.fit_result_
    assert result.final["val"]["n"] == pytest.approx(0.25 * len(y), abs=4)
    assert result.final["train"]["n"] + result.final["val"]["n"] == len(y)
    assert len(result.history) == 5 and 1 <= result.selected_epoch <= 5


def test_pipeline_cross_validation_and_grid_search():
    X, y = make_blobs(n_samples=120, centers=2, cluster_std=2.0, random_state=0)
    reference = cross_val_score(LogisticRegression(), X, y, cv=3).mean()
    pipe = make_pipeline(StandardScaler(), ShiftClassifier(standardize=False, epochs=10, random_state=0))
    assert cross_val_score(pipe, X, y, cv=3).mean() >= reference - 0.05
    search = GridSearchCV(ShiftClassifier(epochs=10, random_state=0), {"loss": ["ce", "poly"]}, cv=2).fit(X, y)
    assert search.best_params_["loss"] in ("ce", "poly") and search.best_score_ >= reference - 0.05


def test_groups_reach_fit_in_a_pipeline_and_through_metadata_routing():
    X, y, a = _imbalanced(n=120)
    groups = 2 * y + a
    pipe = make_pipeline(StandardScaler(), ShiftClassifier(weighting="group_dro", epochs=3, random_state=0))
    pipe.fit(X, y, shiftclassifier__groups=groups)
    assert pipe[-1].groups_.tolist() == [0, 1, 2, 3]
    with config_context(enable_metadata_routing=True):
        clf = ShiftClassifier(weighting="group_dro", epochs=3, random_state=0).set_fit_request(groups=True)
        search = GridSearchCV(clf, {"lr": [1e-3, 1e-2]}, cv=2).fit(X, y, groups=groups)
    assert search.best_estimator_.groups_.tolist() == [0, 1, 2, 3]


def test_array_api_input_passes_when_scipy_array_api_is_set():
    """scikit-learn skips its array API check unless SciPy's array API mode is on from the start; run it in a
    process where it is, so that the check is not skipped silently here."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "SCIPY_ARRAY_API": "1"}
    cmd = [sys.executable, "-m", "pytest", __file__, "-o", "addopts=", "-q", "-p", "no:cacheprovider", "-k", "check_array_api"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=os.path.dirname(__file__))
    assert res.returncode == 0, res.stdout[-2000:]
    assert " passed" in res.stdout and "skipped" not in res.stdout, res.stdout[-2000:]
