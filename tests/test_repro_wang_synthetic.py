"""[W] Figures 1 and 2 (docs/METHODS.md#data-two_gaussians, docs/METHODS.md#reproduction-wang2022-fig2): the fast numerics of ``wang2022-fig1`` and ``wang2022-fig2``
against plain torch references (autograd through shiftkit's losses, torch.optim.SGD, p-dimensional
gradient descent, scikit-learn's LinearSVC) and closed forms."""

import math

import numpy as np
import pytest
import torch
from scipy.special import ndtr
from torch import nn

from shiftkit import data, losses
from shiftkit.errors import ShiftkitError
from shiftkit.reproductions import wang2022_fig1 as fig1
from shiftkit.reproductions import wang2022_theory as theory


def _linear(theta: np.ndarray) -> nn.Linear:
    """``nn.Linear(2, 2)`` in float64 with ``[W | b] = theta``."""
    layer = nn.Linear(2, 2).double()
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(theta[:, :2]))
        layer.bias.copy_(torch.from_numpy(theta[:, 2]))
    return layer


def _signed(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    return ((2 * y - 1).double()[:, None] * torch.cat([x.double(), torch.ones(len(y), 1, dtype=torch.float64)], 1)).numpy()


@pytest.mark.parametrize(
    "name, options",
    [("ce", {}), ("poly", {}), ("poly", {"alpha": 2.0}), ("poly", {"alpha": 0.5, "beta": 0.3, "continuity": "shift"})],
)
def test_margin_gradient_equals_autograd_through_shiftkit_losses(name, options):
    gen = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(200, 2, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (200,), generator=gen)
    ratio = 10 * torch.rand(200, generator=gen, dtype=torch.float64)
    theta = torch.randn(2, 3, generator=gen, dtype=torch.float64).numpy()
    loss, layer = losses.build(name, **options), _linear(theta)
    (ratio * loss(layer(x), y)).mean().backward()
    signed, delta = _signed(x, y), (theta[1] - theta[0])[None]
    margins = signed @ delta[0]
    assert (margins < options.get("beta", 1.0)).sum() > 20 and (margins > options.get("beta", 1.0)).sum() > 20
    assert margins.min() > -20  # torch's softplus is linear beyond 20: slope 1 instead of 1 - 2e-9
    g = fig1.margin_gradient(delta, signed, ratio.numpy()[None], fig1.MarginSlope([loss]))[0]
    grad = torch.cat([layer.weight.grad, layer.bias.grad[:, None]], 1).numpy()
    np.testing.assert_allclose(grad[1], g, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grad[0], -g, rtol=1e-12, atol=1e-15)


def test_fast_gradient_descent_follows_torch_sgd_on_nn_linear_for_all_four_runs():
    splits = data.build("two_gaussians")
    x, y = splits.train.x.double(), splits.train.y
    theta = fig1.notebook_init()
    ratios = torch.stack([torch.where(y == 0, 10.0, 1.0) if iw else torch.ones(len(y)) for _, _, iw in fig1.RUNS]).double()
    modules = [losses.build(name) for _, name, _ in fig1.RUNS]
    fast = fig1.gradient_descent(np.tile(theta[1] - theta[0], (4, 1)), _signed(x, y), ratios.numpy(),
                                 fig1.MarginSlope(modules), lr=0.1, steps=300)
    for run, loss in enumerate(modules):
        layer = _linear(theta)
        sgd = torch.optim.SGD(layer.parameters(), lr=0.1)
        for _ in range(300):
            sgd.zero_grad()
            (ratios[run] * loss(layer(x), y)).mean().backward()
            sgd.step()
        params = torch.cat([layer.weight, layer.bias[:, None]], 1).detach().numpy()
        np.testing.assert_allclose(fast[run], params[1] - params[0], rtol=1e-10)


def test_notebook_init_is_the_default_nn_linear_drawn_right_after_the_data():
    with torch.random.fork_rng():
        torch.manual_seed(1)
        torch.randn(20, 2), torch.randn(200, 2)
        layer = nn.Linear(2, 2)
    expected = torch.cat([layer.weight, layer.bias[:, None]], 1).detach().double().numpy()
    np.testing.assert_array_equal(fig1.notebook_init(1, 20, 200), expected)


def test_boundary_angle_convention_and_the_true_boundary_at_45_degrees():
    # Bayes boundary of two equal isotropic Gaussians: normal mu_1 - mu_0, offset -(|mu_1|^2 - |mu_0|^2)/2.
    mu0, mu1 = np.array([0.0, 5.0]), np.array([5.0, 0.0])
    bayes = np.concatenate([mu1 - mu0, [-(mu1 @ mu1 - mu0 @ mu0) / 2]])
    assert fig1.boundary_angle(bayes)[0] == pytest.approx(fig1.TRUE_ANGLE) == 45.0
    deltas = np.random.default_rng(0).standard_normal((50, 3))
    angles = fig1.boundary_angle(deltas)
    assert ((angles >= 0) & (angles < 180)).all()
    # The line runs along the angle: its direction is orthogonal to the normal (delta_w0, delta_w1).
    direction = np.stack([np.cos(np.radians(angles)), np.sin(np.radians(angles))], 1)
    np.testing.assert_allclose((direction * deltas[:, :2]).sum(1), 0.0, atol=1e-12)
    # A line, not a side: flipping or scaling delta keeps the angle; rotating the normal by 30 rotates it.
    np.testing.assert_allclose(fig1.boundary_angle(-2.5 * deltas), angles)
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    rotated = deltas.copy()
    rotated[:, :2] = deltas[:, :2] @ np.array([[c, s], [-s, c]])
    np.testing.assert_allclose((fig1.boundary_angle(rotated) - angles - 30 + 90) % 180 - 90, 0.0, atol=1e-9)


def test_max_margin_boundary_of_two_points_is_their_perpendicular_bisector():
    delta = fig1.max_margin_boundary(np.array([[0.0, 0.0], [2.0, 2.0]]), np.array([0, 1]))
    np.testing.assert_allclose(delta, [0.5, 0.5, -1.0], atol=1e-6)  # x0 + x1 = 2 at margin 1
    assert fig1.boundary_angle(delta)[0] == pytest.approx(135.0)


def test_margin_slope_rejects_losses_without_a_margin_form():
    with pytest.raises(ShiftkitError, match="margin slopes exist for CrossEntropy, PolyTail only"):
        fig1.MarginSlope([losses.build("la", class_counts=[20, 200])])


def _data(n1: int, n2: int, p: int, mu: float, seed: int = 0) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n1 + n2, p, generator=gen, dtype=torch.float64)
    z[:n1, 0] += mu
    z[n1:, 1] += mu
    return z.numpy()


def _sgd(z: np.ndarray, n1: int, b: float, w: torch.Tensor):
    """[W]'s notebook loop, p-dimensional, in float64: SGD steps until the last gradient's norm <= 1e-5."""
    z1, z2 = torch.from_numpy(z[:n1]), torch.from_numpy(z[n1:])
    w = w.clone().requires_grad_(True)
    sgd, steps = torch.optim.SGD([w], lr=1e-3, momentum=0.9), 0
    while w.grad is None or torch.norm(w.grad) > 1e-5:
        sgd.zero_grad()
        loss = (torch.sum(1.0 / (z1 @ w)) + b * torch.sum(1.0 / (z2 @ w))) / (len(z1) + b * len(z2)) + torch.norm(w) ** 2
        loss.backward()
        sgd.step()
        steps += 1
    return w.detach(), steps


def _error(w: torch.Tensor, mu: float) -> np.ndarray:
    return ndtr(-mu * w[:2].numpy() / float(torch.norm(w)))


def test_reduced_descent_equals_p_dimensional_sgd_from_the_fixed_start():
    n1, n2, p, mu = 15, 5, 200, 5.0
    z = _data(n1, n2, p, mu)
    gram, means = theory.reduce(z[:, :2], z[:, 2:] @ z[:, 2:].T, mu, start=theory.DIAGONAL)
    exponents = (0.0, 1.0, 3.0)
    weights = np.stack([theory.class_weights(n1, n2, (n1 / n2) ** a) for a in exponents], 1)[None]
    start = np.zeros((1, n1 + n2 + 1, len(exponents)))
    start[:, 0] = 1.0
    beta, steps = theory.descend(gram[None], weights, start)
    errors = theory.class_errors(gram[None], means[None], beta)[0]
    basis = np.concatenate([np.r_[theory.DIAGONAL, np.zeros(p - 2)][None], z])
    w0 = torch.from_numpy(basis[0].copy())
    for j, a in enumerate(exponents):
        w, direct_steps = _sgd(z, n1, (n1 / n2) ** a, w0)
        assert steps[0, j] == direct_steps
        np.testing.assert_allclose(basis.T @ beta[0, :, j], w.numpy(), rtol=1e-8, atol=1e-11)
        np.testing.assert_allclose(errors[:, j], _error(w, mu), rtol=1e-7, atol=1e-12)


def test_warm_started_weight_sweep_equals_p_dimensional_sgd():
    n1, n2, p, mu = 12, 4, 150, 5.0
    z = _data(n1, n2, p, mu, seed=1)
    gram, means = theory.reduce(z[:, :2], z[:, 2:] @ z[:, 2:].T, mu)
    start = np.ones((1, n1 + n2, 1)) / math.sqrt(gram.sum())
    errors, _ = theory.weight_sweep(gram[None], means[None], n1, n2, [0.0, 2.0, 4.0], start)
    w = torch.from_numpy(z.mean(0))
    w = w / torch.norm(w)
    for k, a in enumerate([0.0, 2.0, 4.0]):
        w, _ = _sgd(z, n1, (n1 / n2) ** a, w)
        np.testing.assert_allclose(errors[k, 0], _error(w, mu), rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("c", [1.0, 0.002])
def test_reduced_svm_dual_equals_sklearn_linear_svc(c):
    from sklearn.svm import LinearSVC

    n1, n2, p, mu = 20, 10, 300, 4.0
    z = _data(n1, n2, p, mu, seed=2)
    alpha = theory.max_margin(z @ z.T, c)
    if c < 1:
        assert 0 < (alpha > c * (1 - 1e-6)).sum() < len(alpha)  # the box constraint is active for some points
    svc = LinearSVC(loss="hinge", fit_intercept=False, C=c, tol=1e-10, max_iter=100_000)
    svc.fit(np.vstack([z[:n1], -z[n1:]]), [0] * n1 + [1] * n2)
    np.testing.assert_allclose(z.T @ alpha, -svc.coef_[0], rtol=1e-6, atol=1e-9)


def test_bartlett_and_explicit_noise_grams_have_the_wishart_moments():
    n, df, draws = 3, 12, 3000
    rng = np.random.default_rng(0)
    samples = {
        "bartlett": np.array([theory.wishart_bartlett(n, df, rng) for _ in range(draws)]),
        "explicit": np.array([theory.noise_gram(n, df, seed, chunk=5) for seed in range(draws)]),
    }
    off = ~np.eye(n, dtype=bool)
    for name, w in samples.items():
        np.testing.assert_allclose(w, w.transpose(0, 2, 1), err_msg=name)
        np.testing.assert_allclose(w.mean(0), df * np.eye(n), atol=5 * math.sqrt(2 * df / draws), err_msg=name)
        variance = w.var(0)
        np.testing.assert_allclose(np.diag(variance), 2 * df, rtol=0.15, err_msg=name)
        np.testing.assert_allclose(variance[off], df, rtol=0.15, err_msg=name)
        assert abs(np.corrcoef(w[:, 0, 0], w[:, 1, 1])[0, 1]) < 0.1, name


def test_errors_of_the_diagonal_start_have_the_closed_form():
    rng = np.random.default_rng(3)
    first, rest = theory.draw(6, 2, 50, 3.0, rng)
    gram, means = theory.reduce(first, rest, 3.0, start=theory.DIAGONAL)
    beta = np.zeros((1, 9, 1))
    beta[0, 0] = 1.0
    np.testing.assert_allclose(theory.class_errors(gram[None], means[None], beta)[0, :, 0], ndtr(-3.0 / math.sqrt(2)))


def test_theory_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ShiftkitError, match="p - 2 >= n"):
        theory.draw(5, 5, 8, 1.0, rng)
    with pytest.raises(ShiftkitError, match="'bartlett' or 'explicit'"):
        theory.draw(5, 5, 50, 1.0, rng, features="exact")
    gram = np.array([[[1.0, -1.0], [-1.0, 2.0]]])  # basis [w0; z] with z . w0 = -1
    with pytest.raises(ShiftkitError, match="margin z.v reached <= 0"):
        theory.descend(gram, np.ones((1, 1, 1)), np.array([[[1.0], [0.0]]]))
    with pytest.raises(ShiftkitError, match="did not reach"):
        theory.descend(2 * np.eye(2)[None], np.ones((1, 1, 1)), np.array([[[1.0], [1.0]]]), max_steps=3)
