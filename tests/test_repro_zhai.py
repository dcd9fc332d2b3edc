"""[Z]'s six-image experiments (docs/METHODS.md#protocol-zhai2023): the reduced 6-dimensional iteration of
``shiftkit.reproductions.zhai2023`` against a direct 784-dimensional gradient descent through shiftkit's
losses and Group DRO, the protocol's weights and the closed-form limits of the squared loss."""

import json

import numpy as np
import pytest
import torch

from shiftkit import losses, reproductions, weighting
from shiftkit.errors import ShiftkitError
from shiftkit.reproductions import zhai2023 as z

METHODS = {"ERM": 0, "IW": 1, "GDRO": 2}


@pytest.fixture(scope="module")
def unit():
    return z.problem("unit", signed=False)


def test_erm_and_iw_weights_are_the_spec_values_and_shiftkit_iw(unit):  # docs/METHODS.md#protocol-zhai2023, docs/METHODS.md#weighting-iw
    g0, eta = z.start(unit.counts, 0.01)
    q = g0 @ unit.pool  # q_i = g_k / n_k
    zeros, one = unit.group == 0, unit.group == 1
    np.testing.assert_allclose(q[0], np.full(6, 1 / 6), rtol=1e-15)
    np.testing.assert_allclose(q[1][zeros], 0.1, rtol=1e-15)
    np.testing.assert_allclose(q[1][one], 0.5, rtol=1e-15)
    np.testing.assert_allclose(q[2], q[1], rtol=1e-15)  # Group DRO starts from uniform group weights
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-15)
    assert eta.tolist() == [0.0, 0.0, 0.01]
    g = torch.as_tensor(unit.group)
    iw = weighting.build("iw", group_counts=[5, 1]).weights(torch.ones(6, dtype=torch.float64), g, g)
    np.testing.assert_allclose(iw.numpy() / 6, q[1], rtol=1e-7)  # shiftkit's table is float32


def _direct(p, kind, method, lr, steps, mu=0.0, eta=0.01, alpha=1.0, beta=1.0):
    """784-dimensional GD with autograd; per-example losses from shiftkit (2-logit inputs [0, θᵀx]) and
    Group DRO from shiftkit's GroupDRO in [Z]'s paper form: step t uses the q that the call at step t − 1
    returned (the first step uses the uniform q). Returns θ [steps + 1, 784] and GDRO's q per step."""
    x, digit = torch.as_tensor(p.x), torch.as_tensor((p.y > 0).astype(np.int64))
    module = {"logistic": losses.build("ce"),
              "poly": losses.build("poly", alpha=alpha, beta=beta, continuity="shift")}.get(kind)

    def per_example(f):
        if module is None:
            return 0.5 * (f - torch.as_tensor(p.y)) ** 2
        return module(torch.stack([torch.zeros_like(f), f], dim=1), digit)

    n_k = torch.as_tensor(p.counts)[digit]
    w = {"ERM": torch.ones(6, dtype=torch.float64), "IW": 6 / (2 * n_k), "GDRO": 6 / (2 * n_k)}[method]
    dro = weighting.build("group_dro", eta=eta, group_counts=[5, 1]).double()
    theta = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    thetas, qs = [], []
    for _ in range(steps + 1):
        thetas.append(theta.detach().clone())
        qs.append(w[[0, 5]].numpy() * p.counts / 6)
        values = per_example(x @ theta)
        objective = (w * values).mean() + mu / 2 * theta.dot(theta)
        (grad,) = torch.autograd.grad(objective, theta)
        if method == "GDRO":
            w = dro.weights(values.detach(), digit, digit)
        theta = (theta - lr * grad).detach().requires_grad_()
    return torch.stack(thetas).numpy(), np.array(qs)


CASES = [
    ("squared", False, 0.5, {}),
    ("squared", True, 0.5, {"mu": 0.05}),
    ("logistic", True, 1.0, {}),
    ("poly", True, 1.0, {"alpha": 1.0, "beta": 1.0}),
    ("poly", True, 1.0, {"alpha": 2.0, "beta": 0.0}),
]


@pytest.mark.parametrize("kind, signed, lr_rel, extra", CASES)
def test_reduced_iteration_is_the_784_dimensional_gradient_descent(kind, signed, lr_rel, extra):
    p = z.problem("unit", signed=signed)
    lr, steps = lr_rel / p.lambda_max, 300
    g0, eta = z.start(p.counts, 0.5)  # a large η, so that the GDRO weights move visibly
    if kind == "squared":
        loss = z.squared(p.y)
    else:
        loss = z.margin_losses(p.y, np.full(3, kind == "poly"), extra.get("alpha", 1.0), extra.get("beta", 1.0))
    tr = z.descend(p, loss, g0, eta, np.full(3, extra.get("mu", 0.0)), lr, steps)
    ours = tr.thetas(p.x)
    for method, row in METHODS.items():
        thetas, qs = _direct(p, kind, method, lr, steps, eta=0.5, **extra)
        scale = np.abs(thetas).max()
        np.testing.assert_allclose(ours[:, row], thetas[tr.epochs], atol=1e-11 * scale, rtol=0)
        np.testing.assert_allclose(tr.groups[:, row], qs[tr.epochs], atol=1e-12, rtol=0)
    if kind == "poly":  # both branches of the loss were used
        margins = ours[:, 0] @ p.x.T * p.y
        assert (margins <= extra["beta"]).any() and (margins > extra["beta"]).any()
    assert abs(tr.groups[-1, 2, 0] - 0.5) > 0.01  # the GDRO weights moved visibly


def test_margin_losses_match_shiftkit_poly_and_logistic_values_and_slopes():  # docs/METHODS.md#loss-poly "shift"
    y = np.array([1.0, -1.0, 1.0, -1.0, 1.0, 1.0])
    f = np.array([[-3.0, 0.5, 1.0, -1.0, 2.5, 40.0], [0.2, -7.0, 0.999, 3.0, 1.001, -0.5]])
    f = np.vstack([f, f])
    for alpha, beta in [(1.0, 1.0), (2.0, 0.0), (0.5, 2.5)]:
        values, slopes = z.margin_losses(y, np.array([False, False, True, True]), alpha, beta)(f)
        digit = torch.as_tensor((y > 0).astype(np.int64))
        for row, module in enumerate([losses.build("ce")] * 2
                                     + [losses.build("poly", alpha=alpha, beta=beta, continuity="shift")] * 2):
            t = torch.tensor(f[row], dtype=torch.float64, requires_grad=True)
            v = module(torch.stack([torch.zeros_like(t), t], dim=1), digit)
            (grad,) = torch.autograd.grad(v.sum(), t)
            np.testing.assert_allclose(values[row], v.detach().numpy(), rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(slopes[row], grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("normalize, signed", [("unit", False), ("pixel", True)])
def test_squared_loss_reweightings_all_converge_to_the_min_norm_interpolant(normalize, signed):  # [Z] Thm 1
    p = z.problem(normalize, signed)
    g0, eta = z.start(p.counts, 0.01)
    tr = z.descend(p, z.squared(p.y), g0, eta, np.zeros(3), 0.2 / p.lambda_max, 30_000)
    limit = np.linalg.pinv(p.x) @ p.y
    np.testing.assert_allclose(tr.thetas(p.x)[-1], np.tile(limit, (3, 1)), atol=1e-9 * z.norm(limit), rtol=0)
    assert tr.groups[-1, 2].min() > 0.4  # the GDRO weights stayed positive


def test_regularized_static_weightings_converge_to_their_ridge_solutions(unit):  # docs/METHODS.md#reproduction-zhai2023-fig2
    g0, eta = z.start(unit.counts, 0.0)
    mu = 0.05 * unit.lambda_max
    tr = z.descend(unit, z.squared(unit.y), g0[:2], eta[:2], np.full(2, mu), 0.2 / unit.lambda_max, 20_000)
    for row in range(2):
        q = np.diag(g0[row] @ unit.pool)  # argmin Σ q_i ½(θᵀx_i − y_i)² + μ/2‖θ‖² = Xᵀ(QK + μI)⁻¹Qy
        exact = unit.x.T @ np.linalg.solve(q @ unit.gram + mu * np.eye(6), q @ unit.y)
        np.testing.assert_allclose(tr.thetas(unit.x)[-1, row], exact, atol=1e-10, rtol=0)


def test_direction_gap_and_marks():
    assert z.direction_gap(np.array([3.0, 4.0]), np.array([6.0, 8.0])) == pytest.approx(0.0, abs=1e-15)
    assert z.direction_gap(np.array([1.0, 0.0]), np.array([-2.0, 0.0])) == pytest.approx(2.0)
    at = z.marks(10**6, 20)
    assert at[0] == 0 and at[-1] == 10**6 and set(10 ** np.arange(7)) <= set(at.tolist())
    assert np.all(np.diff(at) > 0) and len(at) < 200


@pytest.mark.parametrize("override, message", [
    ("lr_rel=0", "lr_rel must be > 0"),
    ("lr_rel=50.0", "diverged by epoch"),
    ("eta=-1.0", "eta must be >= 0"),
    ("normalize=foo", "normalize must be one of"),
])
def test_bad_settings_give_one_line_errors(override, message, tmp_path):
    with pytest.raises(ShiftkitError, match=message):
        reproductions.reproduce("zhai2023-fig1", "tiny", tmp_path, device="cpu", overrides=[override])


def _claims(tmp_path, name, overrides):
    reproductions.reproduce(name, "tiny", tmp_path, device="cpu", overrides=overrides)
    return json.loads((tmp_path / "summary.json").read_text())


def test_figure1_claims_hold_once_converged_and_the_norm_is_left_undecided(tmp_path):
    payload = _claims(tmp_path, "zhai2023-fig1", ["epochs=30000"])
    assert [c["holds"] for c in payload["claims"]] == [True, True, True, True, None]
    assert payload["gap_iw_final"] < 1e-9 and payload["norm_erm"] == pytest.approx(1.1465, abs=1e-4)
    assert payload["norms_by_preprocessing"]["unit, y in {0,1}"] == pytest.approx(payload["norm_min_norm_interpolant"])


def test_figure2_claims_hold(tmp_path):
    payload = _claims(tmp_path, "zhai2023-fig2", ["epochs=60000"])
    assert all(c["holds"] for c in payload["claims"]), payload["claims"]
    assert payload["gap_iw_large_mu"] > 100 * payload["gap_iw_small_mu"]


def test_appendix_c_logistic_gap_shrinks_and_poly_gap_stays(tmp_path):
    payload = _claims(tmp_path, "zhai2023-appc", ["epochs=20000", "lr_rel=1.0"])
    claims = payload["claims"]  # logistic gap shrinks, poly gap stays, losses go to 0
    assert [claims[i]["holds"] for i in (0, 1, 3)] == [True, True, True], claims
    assert payload["gap_logistic"] < 0.1 < 0.15 < payload["gap_poly"]
