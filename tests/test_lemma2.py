"""[AB] Lemma 2 (docs/METHODS.md#reproduction-autobalance-lemma2): the exact max-margin classifiers of
``autobalance-lemma2`` against their defining conditions, scikit-learn's SVM and closed forms, and the trained
logistic regressions against the exact classifiers they converge to."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import nnls
from sklearn.svm import SVC

from shiftkit.reproductions import autobalance2021_lemma2_theory as theory

SETTINGS = dict(n_majority=100, n_minority=10, gamma=0.3, bias_scale=1.0, lr=32.0, steps=1500, steps_plain=6000,
                copies=256)


@pytest.fixture(scope="module")
def data():
    return theory.draw_data(100, 10, 0)


def _solve(X, sign, eps_min, cost=None, bias_scale=1.0, eps_maj=0.0):
    eps = np.where(sign < 0, eps_min, eps_maj)
    return theory.max_margin(X, sign, eps, np.ones(len(X)) if cost is None else cost, bias_scale)


def test_data_are_separable_imbalanced_and_seeded(data):
    X, sign = data
    assert X.shape == (110, 2) and (sign > 0).sum() == 100 and (sign < 0).sum() == 10
    assert np.array_equal(theory.draw_data(100, 10, 0)[0], X) and not np.array_equal(theory.draw_data(100, 10, 1)[0], X)
    normal = np.array([math.cos(0.3), math.sin(0.3)])
    assert (sign * (X @ normal) >= 0.4).all()


@pytest.mark.parametrize("bias_scale", [1.0, math.inf])
def test_augmented_solution_meets_its_constraints_with_equality_at_support_points(data, bias_scale):
    X, sign = data
    eps = 0.3
    w1, w2, b, gamma = _solve(X, sign, eps, bias_scale=bias_scale)
    w = np.array([w1, w2])
    worst = sign * (X @ w + b) - np.where(sign < 0, eps, 0.0) * np.linalg.norm(w)  # the worst point of each ball
    assert worst.min() == pytest.approx(gamma, abs=1e-9)
    support = np.abs(worst - gamma) < 1e-7
    assert (sign[support] > 0).any() and (sign[support] < 0).any()  # both classes touch the margin
    norm = w @ w + (0.0 if math.isinf(bias_scale) else b * b / bias_scale ** 2)
    assert norm == pytest.approx(1.0, abs=1e-9)
    # the worst point of a minority ball, x − ε w/‖w‖ · sign, lies at margin exactly γ
    i = np.flatnonzero(support & (sign < 0))[0]
    point = X[i] - sign[i] * eps * w / np.linalg.norm(w)
    assert sign[i] * (point @ w + b) == pytest.approx(gamma, abs=1e-9)


def test_without_augmentation_it_is_the_plain_svm_of_scikit_learn(data):
    X, sign = data
    plain = theory.geometry(_solve(X, sign, 0.0, bias_scale=math.inf), X, sign)
    svc = SVC(kernel="linear", C=1e8, tol=1e-10).fit(X, sign)
    ref = theory.geometry(np.r_[svc.coef_[0], svc.intercept_[0]], X, sign)
    angle, offset = theory.compare(plain, ref)
    assert angle < 1e-3 and offset < 1e-5
    assert plain["d_majority"] == pytest.approx(plain["d_minority"], abs=1e-8)



def test_with_the_bias_in_the_norm_it_is_the_homogeneous_svm_on_x_and_one(data):
    """Optimality of min ‖θ‖ s.t. y θ·[x, 1] ≥ 1: θ is a non-negative combination of its support vectors' y·[x, 1]."""
    X, sign = data
    w1, w2, b, gamma = _solve(X, sign, 0.0)
    theta = np.array([w1, w2, b]) / gamma
    z = sign[:, None] * np.c_[X, np.ones(len(X))]
    support = z @ theta < 1 + 1e-7
    alpha, residual = nnls(z[support].T, theta)
    assert residual < 1e-6 and (alpha > 0).any()
    assert (z @ theta).min() == pytest.approx(1.0, abs=1e-8)


def test_textbook_svm_keeps_its_normal_and_moves_its_intercept_by_half_the_radius_gap(data):
    X, sign = data
    plain = theory.geometry(_solve(X, sign, 0.0, bias_scale=math.inf), X, sign)
    for eps_maj, eps_min in [(0.0, 0.2), (0.1, 0.4), (0.25, 0.25)]:
        aug = theory.geometry(_solve(X, sign, eps_min, bias_scale=math.inf, eps_maj=eps_maj), X, sign)
        assert theory.compare(aug, plain)[0] < 1e-4
        assert plain["offset"] - aug["offset"] == pytest.approx((eps_min - eps_maj) / 2, abs=1e-7)
        assert aug["d_minority"] - aug["d_majority"] == pytest.approx(eps_min - eps_maj, abs=1e-7)


def test_cost_sensitive_svm_is_the_minimum_norm_solution_of_its_margins(data):
    X, sign = data
    delta = (1.0, 0.5)
    w1, w2, b, gamma = _solve(X, sign, 0.0, np.where(sign < 0, 1 / delta[1], 1 / delta[0]))
    theta = np.array([w1, w2, b]) / gamma  # min ‖θ‖ s.t. y θ·[x, 1] ≥ 1/Δ_y
    margins = sign * (X @ theta[:2] + theta[2]) * np.where(sign < 0, delta[1], delta[0])
    assert margins.min() == pytest.approx(1.0, abs=1e-7)
    assert (margins[sign > 0].min() - 1) < 1e-7 and (margins[sign < 0].min() - 1) < 1e-7


@pytest.mark.parametrize("bias_scale, tol", [(math.inf, 1e-6), (1.0, 0.1)])
def test_the_matched_radius_gives_the_delta_classifier(data, bias_scale, tol):
    X, sign = data
    (dmaj, dmin), _ = theory.delta_of(SETTINGS)
    assert (dmaj, dmin) == pytest.approx((1.0, 0.1 ** 0.3))
    out = theory.match(X, sign, (dmaj, dmin), bias_scale)
    assert out["angle"] < tol and out["offset"] < tol * 1e-2
    assert out["plain_vs_cs"][0] > 1.0 or out["plain_vs_cs"][1] > 0.1  # without the match they differ
    if math.isinf(bias_scale):
        assert out["eps"] == pytest.approx(out["closed"], abs=1e-6)
        gamma0 = out["plain"]["d_majority"]
        assert out["eps"] == pytest.approx(2 * gamma0 * (1 / dmin - 1) / (1 / dmin + 1), abs=1e-6)


def test_policy_gives_each_class_its_own_radius():
    pol = theory._policy([8, 2], (0.0, 0.3))
    x = torch.zeros(4000, 2, dtype=torch.float64)
    y = torch.tensor([0] * 2000 + [1] * 2000)
    out = pol(x, y, torch.Generator().manual_seed(0))
    r = out.norm(dim=1)
    assert (r[:2000] == 0).all()
    assert r[2000:].max() <= 0.3 + 1e-12 and r[2000:].max() > 0.29
    # uniform in the disc: P(r < ε/2) = 1/4
    assert float((r[2000:] < 0.15).double().mean()) == pytest.approx(0.25, abs=0.03)


def test_trained_logistic_regressions_approach_their_exact_classifiers(data):
    X, sign = data
    solve = theory.exact_solver(X, sign, 1.0)
    plain, eps = solve(0.0), 0.25
    exact = solve(eps)
    trained = theory.geometry(theory.train(X, sign, (0.0, eps), (1.0, 1.0), SETTINGS, 0), X, sign)
    angle, offset = theory.compare(trained, exact)
    assert angle < 0.5 and offset < 0.01
    assert angle < theory.compare(plain, exact)[0] / 4  # far closer to the augmented than to the plain SVM
    delta, loss = theory.delta_of(SETTINGS)
    cs = solve(0.0, np.where(sign < 0, delta[0] / delta[1], 1.0))
    fit = theory.geometry(theory.train(X, sign, (0.0, 0.0), delta, SETTINGS, 0), X, sign)
    assert theory.compare(fit, cs)[0] < 0.3 and theory.compare(fit, cs)[1] < 0.002


def test_autobalance_loss_on_two_logits_converges_to_the_plain_svm(data):
    X, sign = data
    solve = theory.exact_solver(X, sign, 1.0)
    delta, loss = theory.delta_of(SETTINGS)
    two = theory.geometry(theory.train_two_logits(X, sign, loss, SETTINGS), X, sign)
    cs = solve(0.0, np.where(sign < 0, delta[0] / delta[1], 1.0))
    assert theory.compare(two, solve(0.0))[0] < 0.2 and theory.compare(two, cs)[0] > 1.0
