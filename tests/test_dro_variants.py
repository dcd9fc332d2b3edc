"""chi2 and kl_cvar against fast-dro, cvar's fractional form, Group DRO's per-group and automatic adjustments,
and poly's exp and linear types against the [W] code (docs/METHODS.md#weighting-chi2,
docs/METHODS.md#weighting-kl_cvar, docs/METHODS.md#weighting-cvar, docs/METHODS.md#weighting-group_dro,
docs/METHODS.md#loss-poly).

The reference functions below are transcriptions of the original code, kept here for testing only."""

import logging
import math

import numpy as np
import pytest
import torch

from shiftkit import losses, testing, weighting
from shiftkit.errors import ShiftkitError
from shiftkit.weighting import fastdro

# ---- transcription of fast-dro's robust_losses.py (RobustLoss.forward, best_response, bisection), for testing --

MIN_REL_DIFFERENCE = 1e-5


def ref_chi_square_value(p, v, reg):
    m = p.shape[0]
    with torch.no_grad():
        chi2 = (0.5 / m) * reg * (torch.norm(m * p - torch.ones(m, dtype=p.dtype), p=2) ** 2)
    return torch.dot(p, v) - chi2


def ref_cvar_value(p, v, reg):
    m = p.shape[0]
    with torch.no_grad():
        idx = torch.nonzero(p)
        kl = np.log(m) + (p[idx] * torch.log(p[idx])).sum()
    return torch.dot(p, v) - reg * kl


def ref_bisection(eta_min, eta_max, f, tol=1e-6, max_iter=500):
    lower, upper = f(eta_min), f(eta_max)
    while lower > 0 or upper < 0:
        length = eta_max - eta_min
        if lower > 0:
            eta_max = eta_min
            eta_min = eta_min - 2 * length
        if upper < 0:
            eta_min = eta_max
            eta_max = eta_max + 2 * length
        lower, upper = f(eta_min), f(eta_max)
    for _ in range(max_iter):
        eta = 0.5 * (eta_min + eta_max)
        v = f(eta)
        if torch.abs(v) <= tol:
            return eta
        if v > 0:
            eta_max = eta
        elif v < 0:
            eta_min = eta
    logging.warning("Maximum number of iterations exceeded in bisection")
    return 0.5 * (eta_min + eta_max)


def ref_best_response(v, size, reg, geometry, tol, max_iter):  # noqa: C901 (the original's shape)
    m = v.shape[0]
    if geometry == "cvar":
        if reg > 0:
            if size == 1.0:
                return torch.ones_like(v) / m

            def p(eta):
                x = (v - eta) / reg
                return torch.min(torch.exp(x), torch.Tensor([1 / size]).type(x.dtype)) / m

            def bisection_target(eta):
                return 1.0 - p(eta).sum()

            eta_min = reg * torch.logsumexp(v / reg - np.log(m), 0)
            eta_max = v.max()
            if torch.abs(bisection_target(eta_min)) <= tol:
                return p(eta_min)
        else:
            cutoff = int(size * m)
            surplus = 1.0 - cutoff / (size * m)
            p = torch.zeros_like(v)
            idx = torch.argsort(v, descending=True)
            p[idx[:cutoff]] = 1.0 / (size * m)
            if cutoff < m:
                p[idx[cutoff]] = surplus
            return p
    if geometry == "chi-square":
        if (v.max() - v.min()) / v.max() <= MIN_REL_DIFFERENCE:
            return torch.ones_like(v) / m
        if size == float("inf"):
            assert reg > 0

            def p(eta):
                return torch.relu(v - eta) / (reg * m)

            def bisection_target(eta):
                return 1.0 - p(eta).sum()

            eta_min = min(v.sum() - reg * m, v.min())
            eta_max = v.max()
        else:
            if m <= 1 + 2 * size:
                out = (v == v.max()).to(v.dtype)
                out /= out.sum()
                return out
            if reg == 0:
                def p(eta):
                    pp = torch.relu(v - eta)
                    return pp / pp.sum()

                def bisection_target(eta):
                    pp = p(eta)
                    w = m * pp - torch.ones_like(pp)
                    return 0.5 * torch.mean(w ** 2) - size

                eta_min = -(1.0 / (np.sqrt(2 * size + 1) - 1)) * v.max()
                eta_max = v.max()
            else:
                def p(eta):
                    pp = torch.relu(v - eta)
                    opt_lam = max(reg, torch.norm(pp) / np.sqrt(m * (1 + 2 * size)))
                    return pp / (m * opt_lam)

                def bisection_target(eta):
                    return 1 - p(eta).sum()

                eta_min = v.min() - 1
                eta_max = v.max()
    eta_star = ref_bisection(eta_min, eta_max, bisection_target, tol=tol, max_iter=max_iter)
    return p(eta_star)


def ref_robust_loss(v, size, reg, geometry, tol=1e-4, max_iter=1000):
    """RobustLoss(size, reg, geometry, tol, max_iter)(v)."""
    if size == 0:
        return v.mean()
    with torch.no_grad():
        p = ref_best_response(v, size, reg, geometry, tol, max_iter)
    if geometry == "cvar":
        return ref_cvar_value(p, v, reg)
    return ref_chi_square_value(p, v, reg)


# ---- the cases ------------------------------------------------------------------------------------------

CHI2 = [(s, r) for s in (0.0, 0.05, 0.5, 1.0, 2.0, 7.5, 100.0, math.inf) for r in (0.0, 0.01, 1.0)
        if not (s == math.inf and r == 0)]
KL_CVAR = [(s, r) for s in (0.02, 0.1, 0.3, 0.5, 0.99, 1.0) for r in (0.0, 0.001, 0.1, 2.0)]
SIZES = (2, 3, 5, 16, 64)


def _batches(m):
    """Random positive losses, losses with many ties, and nearly equal ones (float64)."""
    gen = torch.Generator().manual_seed(m)
    yield torch.rand(m, generator=gen, dtype=torch.float64) * 3 + 0.01
    yield torch.randint(1, 4, (m,), generator=gen).to(torch.float64) / 2
    yield 2.0 + 1e-7 * torch.rand(m, generator=gen, dtype=torch.float64)


def _fast_dro_nan(v, size, reg, geometry):
    """Where fast-dro's chi-square best response is NaN: reg = 0 and the losses tied at the maximum already
    spread the mass enough (the uniform distribution on them is inside the ball), so that its bisection
    target stays < 0 up to eta = max(v), where relu(v - eta) / sum(...) is 0/0. The exact best response, which
    ours is, is that uniform distribution, of value max(v)."""
    top = (v == v.max()).to(v.dtype)
    m = len(v)
    return geometry == "chi-square" and reg == 0 and 0.5 / m * ((m * top / top.sum() - 1) ** 2).sum() < size


@pytest.mark.parametrize("geometry, cases", [("chi-square", CHI2), ("cvar", KL_CVAR)])
def test_value_is_fast_dros_robust_loss(geometry, cases):  # docs/METHODS.md#weighting-chi2 (a)
    logging.disable(logging.WARNING)  # the transcription warns where float64 cannot reach its tolerance
    try:
        for m in SIZES:
            for v in _batches(m):
                for size, reg in cases:
                    ours = fastdro.robust_value(v, geometry, size, reg)
                    ref = ref_robust_loss(v, size, reg, geometry, tol=1e-12, max_iter=200)
                    if math.isnan(ref.item()):  # fast-dro's p(eta) is 0/0 at eta = max: see _fast_dro_nan
                        assert _fast_dro_nan(v, size, reg, geometry) and ours.item() == pytest.approx(v.max().item(), rel=1e-12)
                        continue
                    assert ours.item() == pytest.approx(ref.item(), rel=1e-6, abs=1e-9), (m, v.tolist(), size, reg)
                    # at fast-dro's own tolerance (1e-4 on the bisection's target) the values agree as closely
                    loose = ref_robust_loss(v, size, reg, geometry)
                    assert ours.item() == pytest.approx(loose.item(), rel=1e-3, abs=1e-6)
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("geometry, cases", [("chi-square", CHI2), ("cvar", KL_CVAR)])
def test_the_training_gradient_is_fast_dros(geometry, cases):  # docs/METHODS.md#weighting-chi2 (b): Danskin
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(24, 3, generator=gen, dtype=torch.float64)
    t = torch.randn(24, generator=gen, dtype=torch.float64)
    theta = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    name = "chi2" if geometry == "chi-square" else "kl_cvar"
    for size, reg in cases:
        scheme = weighting.build(name, size=size, reg=reg)
        def per_example():  # distinct losses: no ties for fast-dro's argsort to order
            return (x @ theta - t) ** 2

        w = scheme.weights(per_example().detach(), torch.zeros(24, dtype=torch.long), None)
        ours, = torch.autograd.grad((w * per_example()).mean(), theta)
        ref, = torch.autograd.grad(ref_robust_loss(per_example(), size, reg, geometry, tol=1e-12, max_iter=200), theta)
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-9)
        value, = torch.autograd.grad(scheme.value(per_example()), theta)
        torch.testing.assert_close(value, ref, rtol=1e-6, atol=1e-9)


def test_weights_have_mean_one_and_respect_the_ball():
    gen = torch.Generator().manual_seed(2)
    v = torch.rand(40, generator=gen, dtype=torch.float64) * 5
    for rho in (0.1, 1.0, 5.0):
        p = weighting.build("chi2", size=rho).weights(v, torch.zeros(40, dtype=torch.long), None) / 40
        assert p.sum().item() == pytest.approx(1.0) and fastdro.divergence(p, "chi-square").item() == pytest.approx(rho)
    for alpha in (0.05, 0.5):
        w = weighting.build("kl_cvar", size=alpha, reg=0.1).weights(v, torch.zeros(40, dtype=torch.long), None)
        assert w.mean().item() == pytest.approx(1.0) and w.max().item() <= 1 / alpha * (1 + 1e-12)


def test_chi2_failsafe_and_uniform_cases():  # fast-dro's m <= 1 + 2 rho and MIN_REL_DIFFERENCE
    y = torch.zeros(5, dtype=torch.long)
    v = torch.tensor([1.0, 3.0, 2.0, 3.5, 0.0])
    torch.testing.assert_close(weighting.build("chi2", size=None, reg=0.5).weights(v, y, None),  # None: no ball
                               weighting.build("chi2", size=math.inf, reg=0.5).weights(v, y, None))
    w = weighting.build("chi2", size=2.0).weights(torch.tensor([1.0, 3.0, 2.0, 3.0, 0.0]), y, None)
    torch.testing.assert_close(w, torch.tensor([0.0, 2.5, 0.0, 2.5, 0.0]))
    w = weighting.build("chi2", size=1.0, reg=0.5).weights(torch.full((5,), 2.0) + torch.arange(5) * 1e-6, y, None)
    torch.testing.assert_close(w, torch.ones(5))


def test_non_finite_losses_count_as_the_largest_and_weights_stay_finite():  # docs/METHODS.md#weighting-chi2
    y = torch.zeros(6, dtype=torch.long)
    v = torch.tensor([0.5, float("nan"), 2.0, float("inf"), 1.0, -float("inf")])
    stand_in = torch.tensor([0.5, 2.0, 2.0, 2.0, 1.0, 0.5])
    for name, options in (("chi2", {}), ("chi2", dict(size=math.inf, reg=0.5)), ("kl_cvar", {}), ("kl_cvar", dict(reg=0.0))):
        scheme = weighting.build(name, **options)
        w = scheme.weights(v, y, None)
        assert torch.isfinite(w).all() and w[1] > 0 and w[3] > 0
        torch.testing.assert_close(w, scheme.weights(stand_in, y, None))
        assert not torch.isfinite((w * v).mean())
    torch.testing.assert_close(weighting.build("chi2").weights(torch.full((3,), float("nan")), y[:3], None), torch.ones(3))


@pytest.mark.parametrize("name, options", [
    ("chi2", dict(size=math.inf, reg=0.1)), ("chi2", dict(size=0.5, reg=0.2)), ("chi2", dict(size=10.0)),
    ("kl_cvar", dict(reg=0.0)), ("kl_cvar", dict(size=0.5, reg=1.0)), ("cvar", dict(form="fractional", alpha=0.3)),
    ("group_dro", dict(eta=1.0, adjustment=[0.5, 0.0, 2.0, 1.0])), ("group_dro", dict(eta=1.0, automatic_adjustment=True)),
])
def test_contract_with_options(name, options):  # vmap, purity, permutations, guards
    testing.check_weighting(name, **options)


@pytest.mark.parametrize("name, options, message", [
    ("chi2", dict(size=-1.0), "'chi2': size"), ("chi2", dict(size=math.inf), "'chi2': size = inf"),
    ("chi2", dict(reg=-0.1), "'chi2': reg"), ("kl_cvar", dict(size=0.0), "'kl_cvar': size"),
    ("kl_cvar", dict(size=1.5), "'kl_cvar': size"), ("kl_cvar", dict(reg=math.inf), "'kl_cvar': reg"),
    ("cvar", dict(form="exact"), "'cvar': form"),
    ("group_dro", dict(adjustment=[1.0, 2.0]), "'group_dro': adjustment must be one number or one per group .4."),
    ("group_dro", dict(adjustment=[1.0, -2.0, 0.0, 0.0]), "'group_dro': adjustment values"),
    ("group_dro", dict(gamma=0.0), "'group_dro': gamma"),
])
def test_bad_options_give_one_line(name, options, message):
    with pytest.raises(ShiftkitError, match=message) as err:
        weighting.build(name, class_counts=[3, 1], group_counts=[2, 1, 1, 1], **options)
    assert "\n" not in str(err.value)


# ---- cvar, form="fractional" --------------------------------------------------------------------------------


def _closed_form(values, alpha):
    """B * p with p the exact CVaR masses, ties sharing their places (docs/METHODS.md#weighting-cvar)."""
    b, r = len(values), alpha * len(values)
    out = []
    for v in values:
        above, tied = sum(u > v for u in values), sum(u == v for u in values)
        out.append(b * (min(above + tied, r) - min(above, r)) / (r * tied))
    return out


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.25, 0.3, 0.37, 0.5, 0.999, 1.0])
def test_fractional_cvar_is_the_closed_form_and_fast_dros_best_response(alpha):
    gen = torch.Generator().manual_seed(3)
    for b in (1, 2, 7, 10, 30, 33):
        for values in (torch.rand(b, generator=gen, dtype=torch.float64), torch.randint(0, 3, (b,), generator=gen) / 2.0):
            values = values.to(torch.float64)
            w = weighting.build("cvar", alpha=alpha, form="fractional").weights(values, torch.zeros(b, dtype=torch.long), None)
            torch.testing.assert_close(w, torch.tensor(_closed_form(values.tolist(), alpha), dtype=torch.float64))
            assert w.mean().item() == pytest.approx(1.0)
            p = ref_best_response(values, alpha, 0.0, "cvar", 1e-4, 1000)
            assert (w * values).mean().item() == pytest.approx((p * values).sum().item(), rel=1e-12, abs=1e-12)
            for level in values.unique():  # a tied block holds fast-dro's mass, shared equally
                block = values == level
                assert (w[block] / b).sum().item() == pytest.approx(p[block].sum().item(), abs=1e-12)
            if values.unique().numel() == b:
                torch.testing.assert_close(w / b, p)


def test_fractional_equals_top_k_where_alpha_b_is_an_integer_and_differs_elsewhere():
    y = torch.zeros(10, dtype=torch.long)
    v = torch.arange(10.0)
    for alpha in (0.1, 0.3, 0.5, 1.0):
        torch.testing.assert_close(weighting.build("cvar", alpha=alpha, form="fractional").weights(v, y, None),
                                   weighting.build("cvar", alpha=alpha).weights(v, y, None))
    w = weighting.build("cvar", alpha=0.25, form="fractional").weights(v, y, None)  # r = 2.5
    torch.testing.assert_close(w, torch.tensor([0.0] * 7 + [2.0, 4.0, 4.0]))
    assert torch.equal(weighting.build("cvar").weights(v, y, None), weighting.build("cvar", form="top_k").weights(v, y, None))


# ---- group_dro adjustments -----------------------------------------------------------------------------------


def _softmax(values):
    top = max(values)
    e = [math.exp(x - top) for x in values]
    return [x / sum(e) for x in e]


def test_group_dro_per_group_adjustment():  # docs/METHODS.md#weighting-group_dro: A_g = L_g + C_g / sqrt(n_g)
    dro = weighting.build("group_dro", eta=1.0, adjustment=[1.0, 0.0, 2.0, 3.0], group_counts=[100, 25, 4, 0])
    g = torch.tensor([0, 1, 2])
    dro.weights(torch.ones(3), g // 2, g)
    torch.testing.assert_close(dro.q, torch.tensor(_softmax([1.1, 1.0, 2.0, 0.0])))
    same = weighting.build("group_dro", eta=1.0, adjustment=[2.0] * 4, group_counts=[100, 25, 4, 0])
    scalar = weighting.build("group_dro", eta=1.0, adjustment=2.0, group_counts=[100, 25, 4, 0])
    for scheme in (same, scalar):
        scheme.weights(torch.tensor([0.3, 1.0, 2.0]), g // 2, g)
    assert torch.equal(same.q, scalar.q)


class RefLossComputer:
    """Transcription of group_DRO's LossComputer (loss.py) for the robust, non-BTL case, on the CPU, for testing."""

    def __init__(self, group_counts, adj, gamma, step_size):
        self.n_groups = len(group_counts)
        self.group_counts = torch.tensor(group_counts, dtype=torch.float)
        self.adj = torch.tensor(adj, dtype=torch.float)
        self.gamma, self.step_size = gamma, step_size
        self.adv_probs = torch.ones(self.n_groups) / self.n_groups
        self.exp_avg_loss = torch.zeros(self.n_groups)
        self.exp_avg_initialized = torch.zeros(self.n_groups).byte()

    def compute_group_avg(self, losses, group_idx):
        group_map = (group_idx == torch.arange(self.n_groups).unsqueeze(1).long()).float()
        group_count = group_map.sum(1)
        group_denom = group_count + (group_count == 0).float()
        return (group_map @ losses.view(-1)) / group_denom, group_count

    def loss(self, per_sample_losses, group_idx):
        group_loss, group_count = self.compute_group_avg(per_sample_losses, group_idx)
        prev_weights = (1 - self.gamma * (group_count > 0).float()) * (self.exp_avg_initialized > 0).float()
        curr_weights = 1 - prev_weights
        self.exp_avg_loss = self.exp_avg_loss * prev_weights + group_loss * curr_weights
        self.exp_avg_initialized = (self.exp_avg_initialized > 0) + (group_count > 0)
        adjusted_loss = group_loss.clone()
        if torch.all(self.adj > 0):
            adjusted_loss += self.adj / torch.sqrt(self.group_counts)
        self.adv_probs = self.adv_probs * torch.exp(self.step_size * adjusted_loss.data)
        self.adv_probs = self.adv_probs / (self.adv_probs.sum())

    def automatic_adjustment(self, val_avg_group_loss):  # train.py, after each epoch
        gen_gap = val_avg_group_loss - self.exp_avg_loss
        self.adj = gen_gap * torch.sqrt(self.group_counts)


def test_group_dro_automatic_adjustment_follows_group_dro():  # docs/METHODS.md#weighting-group_dro
    counts = [30, 10, 3, 1]
    ref = RefLossComputer(counts, [0.5] * 4, gamma=0.1, step_size=0.5)
    dro = weighting.build("group_dro", eta=0.5, adjustment=0.5, automatic_adjustment=True, group_counts=counts)
    gen = torch.Generator().manual_seed(4)
    for epoch in range(4):
        for _ in range(3):
            g = torch.randint(0, 3 if epoch == 0 else 4, (12,), generator=gen)  # group 3 first seen in epoch 1
            values = torch.rand(12, generator=gen) * 2
            ref.loss(values, g)
            dro.weights(values, g // 2, g)
            torch.testing.assert_close(dro.q, ref.adv_probs)
            torch.testing.assert_close(dro.train_loss, ref.exp_avg_loss)
        val = torch.rand(4, generator=gen) * 3 if epoch != 2 else ref.exp_avg_loss + 1.0
        ref.automatic_adjustment(val)
        dro.adjust(val)
        expected = ref.adj / ref.group_counts.sqrt() if torch.all(ref.adj > 0) else torch.zeros(4)
        torch.testing.assert_close(dro.gap, expected)
    assert set(dro.state_dict()) == {"q", "train_loss", "seen", "gap"}


def test_group_dro_adjust_needs_the_option_and_one_loss_per_group():
    with pytest.raises(ShiftkitError, match="automatic_adjustment=True"):
        weighting.build("group_dro", group_counts=[2, 1]).adjust(torch.zeros(2))
    with pytest.raises(ShiftkitError, match="one validation loss per group .2."):
        weighting.build("group_dro", automatic_adjustment=True, group_counts=[2, 1]).adjust(torch.zeros(3))


# ---- poly, types exp and linear -----------------------------------------------------------------------------


def ref_polynomial_loss(logits, target, type, alpha):
    """Transcription of the [W] code's PolynomialLoss (src/loss_fns.py) forward, for testing."""
    margin_vals = (logits[:, 1] - logits[:, 0]) * (2 * target - 1)
    indicator = margin_vals <= 1
    inv_part = torch.pow(margin_vals.abs(), -1 * alpha)
    if type == "exp":
        return torch.exp(-1 * margin_vals) * indicator + inv_part * (~indicator)
    if type == "logit":
        logit_part = torch.nn.functional.softplus(-1 * margin_vals) / (math.log(1 + math.exp(-1)))
        return logit_part * indicator + inv_part * (~indicator)
    assert alpha > 1
    linear_part = -1 * margin_vals + torch.ones_like(margin_vals) * (alpha / (alpha - 1))
    return linear_part * indicator + inv_part * (~indicator) / (alpha - 1)


@pytest.mark.parametrize("type_, alpha", [("exp", 1.0), ("exp", 2.5), ("linear", 1.5), ("linear", 3.0), ("logit", 1.0),
                                          ("logit", 2.0)])
def test_poly_types_match_the_original(type_, alpha):  # docs/METHODS.md#loss-poly
    gen = torch.Generator().manual_seed(5)
    logits = (torch.randn(256, 2, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    y = torch.randint(0, 2, (256,), generator=gen)
    ours = losses.build("poly", alpha=alpha, type=type_)(logits, y)
    ref = ref_polynomial_loss(logits, y, type_, alpha)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours.sum(), logits)[0], torch.autograd.grad(ref.sum(), logits)[0])
    if type_ != "exp":  # exp overflows at logits of 1e4, as the original does
        testing.check_loss("poly", alpha=alpha, type=type_)


def test_poly_exp_is_discontinuous_at_the_knot_and_linear_is_continuous():
    y = torch.tensor([1, 1])
    at = torch.tensor([[0.0, 1.0], [0.0, 1.0 + 1e-6]])
    exp = losses.build("poly", alpha=2.0, type="exp")(at, y)
    torch.testing.assert_close(exp, torch.tensor([math.exp(-1), 1.0]), atol=1e-5, rtol=0)
    linear = losses.build("poly", alpha=3.0, type="linear")(at, y)
    torch.testing.assert_close(linear, torch.tensor([0.5, 0.5]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("options, message", [
    (dict(type="hinge"), "type must be"), (dict(type="exp", beta=2.0), "apply to type 'logit' only"),
    (dict(type="linear", alpha=2.0, continuity="shift"), "apply to type 'logit' only"),
    (dict(type="linear", alpha=1.0), "needs alpha > 1"),
])
def test_poly_refuses_meaningless_combinations(options, message):
    with pytest.raises(ShiftkitError, match=message) as err:
        losses.build("poly", **options)
    assert "\n" not in str(err.value)
