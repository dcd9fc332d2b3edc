"""Hypergradients (docs/METHODS.md#autobalance-hypergradient) against exact implicit differentiation with full Hessians on small problems."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import hessian, jacobian
from torch.func import functional_call

from shiftkit import losses
from shiftkit.bilevel import hypergradient, neumann_inverse_hvp, output_hypergradient
from shiftkit.errors import ShiftkitError

D = torch.float64


# ---- brute-force references on flattened vectors (small problems only) -------------------------------

def flat(tree):
    return torch.cat([t.reshape(-1) for t in tree.values()])


def unflat(vec, like):
    out, i = {}, 0
    for k, t in like.items():
        out[k] = vec[i:i + t.numel()].reshape(t.shape)
        i += t.numel()
    return out


def solve_inner(inner, params, hparams, steps=50):
    """θ*(α) by Newton's method with the full Hessian (strongly convex inner losses)."""
    a = {k: t.detach() for k, t in hparams.items()}
    f = lambda x: inner(unflat(x, params), a)  # noqa: E731
    x = flat(params).detach().clone()
    for _ in range(steps):
        g = torch.func.grad(f)(x)
        if g.norm() < 1e-12:  # quadratic convergence: a handful of steps
            break
        x = x - torch.linalg.solve(hessian(f, x), g)
    assert torch.func.grad(f)(x).norm() < 1e-10
    return unflat(x, params)


def exact_ift(inner, outer, params, hparams):
    """-(∂²L_in/∂θ∂α)ᵀ H⁻¹ ∇_θ L_out with H and the mixed block materialized; also returns H."""
    x, a = flat(params).detach(), flat(hparams).detach()
    f = lambda x_, a_: inner(unflat(x_, params), unflat(a_, hparams))  # noqa: E731
    h = hessian(lambda x_: f(x_, a), x)
    mixed = jacobian(lambda a_: torch.func.grad(f)(x, a_), a)  # [d_θ, d_α]
    v = torch.func.grad(lambda x_: outer(unflat(x_, params)))(x)
    return unflat(-mixed.T @ torch.linalg.solve(h, v), hparams), h


def cosine_relerr(got, ref):
    g, r = flat(got), flat(ref)
    return float(g @ r / (g.norm() * r.norm())), float((g - r).norm() / r.norm())


# ---- 1. weighted L2-regularized logistic regression -------------------------------------------------

LAM = 0.01


def logistic_problem(seed=0, n=60, n_val=40, d=5):
    gen = torch.Generator().manual_seed(seed)
    w_true = torch.randn(d, generator=gen, dtype=D)

    def sample(m):
        x = torch.randn(m, d, generator=gen, dtype=D)
        y = torch.where(x @ w_true + 0.5 * torch.randn(m, generator=gen, dtype=D) > 0.8, 1.0, -1.0)
        return x, y

    (x, y), (xv, yv) = sample(n), sample(n_val)
    cls = (y > 0).long()

    def inner(p, h):  # per-example weight exp(α[class]): the loss's reweighting hyperparameter
        w = h["alpha"].exp()[cls]
        return (w * F.softplus(-y * (x @ p["theta"]))).mean() + 0.5 * LAM * p["theta"].pow(2).sum()

    def outer(p):
        return F.softplus(-yv * (xv @ p["theta"])).mean()

    hparams = {"alpha": torch.tensor([0.3, -0.4], dtype=D)}
    params = solve_inner(inner, {"theta": torch.zeros(d, dtype=D)}, hparams)
    return inner, outer, params, hparams


def test_exact_ift_matches_finite_differences():
    inner, outer, params, hparams = logistic_problem()
    ref, _ = exact_ift(inner, outer, params, hparams)
    eps, fd = 1e-5, torch.zeros(2, dtype=D)
    for k in range(2):
        e = torch.zeros(2, dtype=D)
        e[k] = eps
        up = outer(solve_inner(inner, params, {"alpha": hparams["alpha"] + e}))
        down = outer(solve_inner(inner, params, {"alpha": hparams["alpha"] - e}))
        fd[k] = (up - down) / (2 * eps)
    torch.testing.assert_close(ref["alpha"], fd, rtol=1e-6, atol=1e-9)


def test_hypergradient_matches_exact_ift_on_logistic_regression():
    inner, outer, params, hparams = logistic_problem()
    ref, h = exact_ift(inner, outer, params, hparams)
    step = float(1.0 / torch.linalg.eigvalsh(h).max())
    errs = []
    for terms in (0, 5, 20, 80, 200):
        cos, err = cosine_relerr(hypergradient(inner, outer, params, hparams, terms, step), ref)
        errs.append(err)
    assert cos >= 0.99 and err <= 0.05
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-6  # condition number ~ λ_max/λ; geometric convergence


def test_released_constants_converge_when_hessian_is_small():
    # λ_max(H) < 2 here, so the released J = 5, η = 1 converges in direction; the magnitude is off
    # (about 6v against H⁻¹v with λ_min(H) ≈ 0.04): the outer optimizer's learning rate absorbs the scale.
    inner, outer, params, hparams = logistic_problem()
    ref, h = exact_ift(inner, outer, params, hparams)
    assert torch.linalg.eigvalsh(h).max() < 2
    cos, _ = cosine_relerr(hypergradient(inner, outer, params, hparams), ref)
    assert cos > 0.95


# ---- 2. the Neumann series itself ---------------------------------------------------------------------

def random_spd(d=6, seed=1):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=D))
    return q @ torch.diag(torch.linspace(0.5, 2.0, d, dtype=D)) @ q.T, torch.randn(d, generator=gen, dtype=D)


def test_neumann_converges_to_solve():
    h, v = random_spd()
    step = 1 / 2.5  # ‖ηH‖ = 0.8 < 1
    exact = torch.linalg.solve(h, v)
    errs = [(neumann_inverse_hvp(lambda c: h @ c, v, j, step) - exact).norm() for j in (0, 10, 40, 160)]
    assert all(a > b for a, b in zip(errs, errs[1:]))
    torch.testing.assert_close(neumann_inverse_hvp(lambda c: h @ c, v, 160, step), exact, rtol=1e-10, atol=1e-12)


def test_neumann_truncated_closed_forms_and_pytrees():
    h, v = random_spd()
    step = 0.3
    torch.testing.assert_close(neumann_inverse_hvp(lambda c: h @ c, v, 0, step), step * v)
    # J = 1: η (v + (I - ηH) v)
    torch.testing.assert_close(neumann_inverse_hvp(lambda c: h @ c, v, 1, step), step * (2 * v - step * h @ v))
    # A dict pytree with a block-diagonal H gives the same as the flat vector.
    tree = {"a": v[:2].reshape(1, 2), "b": v[2:]}
    hvp = lambda c: unflat(h @ flat(c), tree)  # noqa: E731
    torch.testing.assert_close(flat(neumann_inverse_hvp(hvp, tree, 7, step)),
                               neumann_inverse_hvp(lambda c: h @ c, v, 7, step))


@pytest.mark.parametrize("step", [0.1, 0.4, 0.79])  # ηλ_max = 2η·... < 2: every term shrinks
def test_neumann_stop_on_growth_changes_nothing_where_the_series_converges(step):
    h, v = random_spd()  # eigenvalues in [0.5, 2], so the series converges for η < 1
    for terms in (0, 1, 5, 40):
        torch.testing.assert_close(neumann_inverse_hvp(lambda c: h @ c, v, terms, step),
                                   neumann_inverse_hvp(lambda c: h @ c, v, terms, step, stop_on_growth=False))


def test_neumann_stop_on_growth_bounds_a_diverging_series():
    """Negative curvature (a saddle) or η > 2/λ_max: the plain series grows geometrically; the guarded one
    keeps the partial sum up to the last shrinking term."""
    h = torch.diag(torch.tensor([1.0, -3.0], dtype=D))  # (I - 0.5 H) = diag(0.5, 2.5): the 2nd grows
    v = torch.tensor([1.0, 1e-2], dtype=D)
    plain = neumann_inverse_hvp(lambda c: h @ c, v, 12, 0.5, stop_on_growth=False)
    guarded = neumann_inverse_hvp(lambda c: h @ c, v, 12, 0.5)
    assert plain.norm() > 1e2 and guarded.norm() < 2.0
    # The terms shrink while the first coordinate dominates: exactly the plain partial sums up to there.
    c, partial, sizes = v.clone(), v.clone(), [v.norm()]
    for _ in range(12):
        c = c - 0.5 * h @ c
        sizes.append(c.norm())
        if sizes[-1] > sizes[-2]:
            break
        partial = partial + c
    torch.testing.assert_close(guarded, 0.5 * partial)


@pytest.mark.parametrize("terms, step", [(-1, 1.0), (2.5, 1.0), (3, 0.0), (3, -1.0)])
def test_neumann_rejects_bad_constants(terms, step):
    with pytest.raises(ShiftkitError, match="Neumann"):
        neumann_inverse_hvp(lambda c: c, torch.ones(2), terms, step)


# ---- 3. closed form: θ*(α) = α ------------------------------------------------------------------------

def test_closed_form_quadratic():
    a_mat, _ = random_spd(d=4, seed=3)
    b = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=D)
    inner = lambda p, h: 0.5 * (p["t"] - h["a"]) @ a_mat @ (p["t"] - h["a"])  # noqa: E731
    outer = lambda p: torch.log(torch.cosh(p["t"])).sum() + (p["t"] @ b) ** 2  # noqa: E731
    alpha = {"a": torch.tensor([0.2, -0.7, 1.1, 0.4], dtype=D)}
    theta = {"t": alpha["a"].clone()}  # θ*(α) = α, so dθ*/dα = I and dL_out/dα = ∇L_out(α)
    expected = torch.func.grad(outer)(theta)["t"]
    got = hypergradient(inner, outer, theta, alpha, terms=300, step=0.5)  # λ_max(A) = 2
    torch.testing.assert_close(got["a"], expected, rtol=1e-10, atol=1e-10)
    # H = c·I with η = 1/c: exact with no extra terms.
    iso = lambda p, h: 2.5 * ((p["t"] - h["a"]) ** 2).sum()  # noqa: E731
    torch.testing.assert_close(hypergradient(iso, outer, theta, alpha, 0, 0.2)["a"], expected)


# ---- 4. the AutoBalance loss --------------------------------------------------------------------------

def autobalance_problem(seed=0, d=4):
    gen = torch.Generator().manual_seed(seed)
    counts, val_counts = [30, 3], [10, 2]

    def sample(cs):
        y = torch.cat([torch.full((c,), k) for k, c in enumerate(cs)])
        x = torch.randn(len(y), d, generator=gen, dtype=D) + 1.5 * y[:, None].to(D)
        return x, y

    (x, y), (xv, yv) = sample(counts), sample(val_counts)
    model = torch.nn.Linear(d, 2).to(D)
    loss = losses.build("autobalance", class_counts=counts).to(D)
    w_val = 1.0 / torch.tensor(val_counts, dtype=D)
    w_val = w_val / w_val.norm()  # docs/METHODS.md#autobalance-hypergradient CE_bal: (Σn / n_k) / ‖·‖₂; the Σn cancels

    def inner(p, h):  # mean AutoBalance loss with l, delta supplied as α, plus weight decay (H ≻ 0)
        per_example = functional_call(loss, h, (functional_call(model, p, (x,)), y))
        return per_example.mean() + 0.5 * 1e-2 * sum(t.pow(2).sum() for t in p.values())

    def outer(p):
        return F.cross_entropy(functional_call(model, p, (xv,)), yv, weight=w_val)

    hparams = loss.hyperparameters()
    hparams["l"].data += torch.tensor([[0.3, -0.2]], dtype=D)  # away from the symmetric init
    params = solve_inner(inner, dict(model.named_parameters()), hparams)
    return inner, outer, params, hparams


def test_autobalance_hypergradient_matches_full_hessian_ift():
    inner, outer, params, hparams = autobalance_problem()
    assert sorted(hparams) == ["delta", "l"]
    ref, h = exact_ift(inner, outer, params, hparams)
    step = float(1.0 / torch.linalg.eigvalsh(h).max())
    got = hypergradient(inner, outer, params, hparams, terms=300, step=step)
    assert {k: t.shape for k, t in got.items()} == {k: t.shape for k, t in hparams.items()}
    assert all(torch.isfinite(t).all() for t in got.values())
    cos, err = cosine_relerr(got, ref)
    assert cos >= 0.99 and err <= 0.05
    # The released constants give a finite hypergradient of the same shapes.
    assert all(torch.isfinite(t).all() for t in hypergradient(inner, outer, params, hparams).values())


def test_output_hypergradient_equals_the_generic_one():
    """α enters only through the loss of the outputs: the forward-mode mixed term gives the same result,
    and a curvature loss on fewer examples changes only the Hessian inside the series."""
    gen = torch.Generator().manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).to(D)
    x, y = torch.randn(12, 3, generator=gen, dtype=D), torch.randint(0, 2, (12,), generator=gen)
    xv, yv = torch.randn(8, 3, generator=gen, dtype=D), torch.randint(0, 2, (8,), generator=gen)
    loss = losses.build("autobalance", class_counts=[9, 3]).to(D)
    params, hparams = dict(model.named_parameters()), loss.hyperparameters()
    outputs = lambda p, xs=x: functional_call(model, p, (xs,))  # noqa: E731
    lossz = lambda z, h, ys=y: functional_call(loss, h, (z, ys)).mean()  # noqa: E731
    outer = lambda p: F.cross_entropy(outputs(p, xv), yv)  # noqa: E731
    want = hypergradient(lambda p, h: lossz(outputs(p), h), outer, params, hparams, 4, 0.3)
    got = output_hypergradient(outputs, lossz, outer, params, hparams, 4, 0.3)
    for k in want:
        torch.testing.assert_close(got[k], want[k])
    # Curvature from the first 4 examples: the same as the generic formula with that Hessian.
    fixed = {k: t.detach() for k, t in hparams.items()}
    theta = {k: t.detach() for k, t in params.items()}
    _, pull_h = torch.func.vjp(torch.func.grad(lambda p: lossz(outputs(p, x[:4]), fixed, y[:4])), theta)
    p = neumann_inverse_hvp(lambda c: pull_h(c)[0], torch.func.grad(outer)(theta), 4, 0.3)
    _, pull = torch.func.vjp(torch.func.grad(lambda p_, h: lossz(outputs(p_), h)), theta, fixed)
    sub = output_hypergradient(outputs, lossz, outer, params, hparams, 4, 0.3,
                               curvature_loss=lambda p_: lossz(outputs(p_, x[:4]), fixed, y[:4]))
    for k, t in pull(p)[1].items():
        torch.testing.assert_close(sub[k], -t)


# ---- 5. purity ----------------------------------------------------------------------------------------

def test_inputs_untouched_and_outputs_detached():
    inner, outer, params, hparams = autobalance_problem()
    params = {k: torch.nn.Parameter(t.clone()) for k, t in params.items()}  # as a model's parameters
    before = {k: t.detach().clone() for k, t in {**params, **hparams}.items()}
    got = hypergradient(inner, outer, params, hparams)
    for k, t in {**params, **hparams}.items():
        assert torch.equal(t.detach(), before[k]) and t.grad is None
    assert all(t.grad_fn is None and not t.requires_grad for t in got.values())
    with torch.no_grad():  # an outer update step may call it under no_grad
        again = hypergradient(inner, outer, params, hparams)
    for k in got:
        torch.testing.assert_close(again[k], got[k])
