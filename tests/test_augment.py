"""Differentiable augmentation: each operation against a reference form, the policy's gates and clusters,
and the hypergradient through augmentation parameters against finite differences."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck
from torch.func import functional_call

from shiftkit import augment, losses
from shiftkit.augment import ops
from shiftkit.bilevel import hypergradient, output_hypergradient
from shiftkit.errors import ShiftkitError

D64 = torch.float64


def _bilinear_border(x, sx, sy):
    """Reference bilinear sampling of ``x [N, C, H, W]`` at pixel coordinates ``sx, sy [N, H, W]``, edges
    clamped (border): the textbook formula, no grid_sample."""
    n, c, h, w = x.shape
    sx, sy = sx.clamp(0, w - 1), sy.clamp(0, h - 1)
    x0, y0 = sx.floor().clamp(0, w - 2), sy.floor().clamp(0, h - 2)
    fx, fy = sx - x0, sy - y0
    x0, y0 = x0.long(), y0.long()
    b = torch.arange(n)[:, None, None]

    def at(yy, xx):
        return x[b, :, yy, xx].permute(0, 3, 1, 2)  # [N, C, H, W]

    return ((1 - fy) * (1 - fx))[:, None] * at(y0, x0) + ((1 - fy) * fx)[:, None] * at(y0, x0 + 1) \
        + (fy * (1 - fx))[:, None] * at(y0 + 1, x0) + (fy * fx)[:, None] * at(y0 + 1, x0 + 1)


def _reference(op, x, s, d, radius):
    """Each operation written out from its definition in the module docstring."""
    scale, signed, _ = ops.OPS[op]
    t = s * d["sign"] * scale if signed else s * scale
    n, per = len(x), (-1,) + (1,) * (x.dim() - 1)
    if op in ("translate_x", "translate_y", "rotate", "shear_x", "shear_y"):
        h, w = x.shape[-2:]
        v, u = torch.meshgrid((2 * torch.arange(h, dtype=D64) + 1) / h - 1,
                              (2 * torch.arange(w, dtype=D64) + 1) / w - 1, indexing="ij")
        u, v, tt = u[None], v[None], t[:, None, None]
        if op == "translate_x":
            su, sv = u + 2 * tt, v + 0 * tt
        elif op == "translate_y":
            su, sv = u + 0 * tt, v + 2 * tt
        elif op == "rotate":
            a = tt * math.pi / 180
            su, sv = torch.cos(a) * u - torch.sin(a) * v, torch.sin(a) * u + torch.cos(a) * v
        elif op == "shear_x":
            su, sv = u + tt * v, v + 0 * tt
        else:
            su, sv = u + 0 * tt, v + tt * u
        return _bilinear_border(x, ((su + 1) * w - 1) / 2, ((sv + 1) * h - 1) / 2)
    if op == "brightness":
        return x + t.view(per)
    if op == "contrast":
        mean = x.reshape(n, -1).mean(1).view(per)
        return mean + (1 + t).view(per) * (x - mean)
    if op == "noise":
        return x + t.view(per) * d["z"]
    if op == "cutout":
        h, w = x.shape[-2:]
        masks = []
        for i in range(n):
            c_r, c_c, half = d["centre"][i, 0], d["centre"][i, 1], t[i] / 2
            rows = [torch.sigmoid(((r + 0.5) / h - c_r + half) * h) - torch.sigmoid(((r + 0.5) / h - c_r - half) * h)
                    for r in range(h)]
            cols = [torch.sigmoid(((q + 0.5) / w - c_c + half) * w) - torch.sigmoid(((q + 0.5) / w - c_c - half) * w)
                    for q in range(w)]
            masks.append(torch.outer(torch.stack(rows), torch.stack(cols)))
        return x * (1 - torch.stack(masks)[:, None])
    return x + (radius * s).view(per) * d["u"]


@pytest.mark.parametrize("op", list(ops.OPS))
def test_each_operation_equals_its_reference_form_and_so_does_its_gradient(op):
    torch.manual_seed(0)
    x = torch.randn(3, 2, 6, 7, dtype=D64)
    d = ops.draw(op, x, torch.Generator().manual_seed(1))
    s = torch.tensor([0.3, 0.55, 0.1], dtype=D64, requires_grad=True)
    weights = torch.randn_like(x)
    ours = ops.apply(op, x, s, d, radius=0.7)
    ref = _reference(op, x, s, d, 0.7)
    assert torch.allclose(ours, ref, atol=1e-10), (ours - ref).abs().max()
    (g_ours,) = torch.autograd.grad((weights * ours).sum(), s)
    (g_ref,) = torch.autograd.grad((weights * _reference(op, x, s, d, 0.7)).sum(), s)
    assert torch.allclose(g_ours, g_ref, atol=1e-9), (g_ours, g_ref)
    assert g_ours.abs().sum() > 0  # the magnitude is not a dead end
    assert gradcheck(lambda s_: ops.apply(op, x, s_, d, 0.7), (s,))


@settings(max_examples=25, deadline=None)
@given(op=st.sampled_from(list(ops.OPS)), seed=st.integers(0, 10_000))
def test_strength_zero_is_the_identity(op, seed):
    x = torch.randn(4, 1, 5, 5, generator=torch.Generator().manual_seed(seed))
    d = ops.draw(op, x, torch.Generator().manual_seed(seed + 1))
    assert torch.allclose(ops.apply(op, x, torch.zeros(4), d), x, atol=1e-6)


def test_ball_draws_are_uniform_in_the_unit_ball():
    u = ops.ball(20_000, 3, torch.Generator().manual_seed(0), dtype=D64)
    r = u.norm(dim=1)
    assert bool((r <= 1).all())
    # P(|u| <= t) = t^3 and a uniform direction (mean 0)
    for t in (0.5, 0.8):
        assert abs(float((r <= t).double().mean()) - t ** 3) < 0.015
    assert u.mean(0).abs().max() < 0.02


def test_spherical_policy_moves_each_class_within_its_radius():
    pol = augment.build("policy", class_counts=[30, 3], input_shape=(4,), ops=["spherical"], radius=2.0)
    with torch.no_grad():
        pol.magnitude.copy_(torch.tensor([[-30.0], [0.0]]))  # class 0 ~ no augmentation, class 1 radius 1
    x, y = torch.zeros(1000, 4), torch.tensor([0, 1]).repeat(500)
    out = pol(x, y, torch.Generator().manual_seed(0))
    assert out[y == 0].abs().max() < 1e-9
    norms = out[y == 1].norm(dim=1)
    assert norms.max() <= 1.0 + 1e-6 and norms.max() > 0.9


def test_hard_gate_applies_with_the_learned_probability_and_relaxes_to_it():
    pol = augment.build("policy", class_counts=[5, 5], input_shape=(1,), ops=["brightness"], probability=0.3)
    x, y = torch.zeros(20_000, 1), torch.zeros(20_000, dtype=torch.long)
    draws = pol.draws(x, torch.Generator().manual_seed(0))
    hard = pol.apply(x, y, draws, relaxed=False)
    assert abs(float((hard != 0).float().mean()) - 0.3) < 0.01
    pol.temperature = 1e-4  # the relaxed gate tends to the hard one at the same draws (away from the edge)
    v = draws[0]["gate"]
    clear = (math.log(0.3 / 0.7) + torch.log(v / (1 - v))).abs() > 1e-2
    assert clear.float().mean() > 0.99
    assert torch.allclose(pol.apply(x, y, draws, relaxed=True)[clear], hard[clear], atol=1e-6)


def test_consecutive_affine_operations_are_one_resampling_of_their_composed_map():
    pol = augment.build("policy", class_counts=[4, 4], input_shape=(1, 9, 9), ops=["rotate", "translate_x", "cutout"])
    x, y = torch.randn(6, 1, 9, 9), torch.tensor([0, 1] * 3)
    draws = pol.draws(x, torch.Generator().manual_seed(0))
    m = torch.sigmoid(pol.magnitude)[y]
    on = [(pol.probability[y, j] + torch.log(d["gate"] / (1 - d["gate"])) > 0).float() for j, d in enumerate(draws)]
    maps = torch.eye(3).expand(6, 3, 3)
    for j, op in enumerate(("rotate", "translate_x")):
        step = torch.eye(3) + on[j][:, None, None] * (ops.matrix(op, m[:, j], draws[j]) - torch.eye(3))
        maps = maps @ step
    moved = ops.affine(x, maps)
    want = moved + on[2].view(-1, 1, 1, 1) * (ops.apply("cutout", moved, m[:, 2], draws[2]) - moved)
    assert torch.allclose(pol.apply(x, y, draws, relaxed=False), want, atol=1e-6)


def test_clusters_are_those_of_the_loss_and_shared_is_one_row():
    counts = [50, 5, 30, 2, 20]
    loss = losses.build("autobalance", class_counts=counts, cluster_size=2)
    pol = augment.build("policy", class_counts=counts, input_shape=(3,), ops=["noise"], cluster_size=2)
    assert torch.equal(pol.cluster_of, loss.cluster_of) and pol.magnitude.shape == (3, 1)
    shared = augment.build("policy", class_counts=counts, input_shape=(3,), ops=["noise"], per="shared")
    assert shared.magnitude.shape == (1, 1) and shared.record()["per_class"]["magnitude"] == [[0.5]] * 5
    fixed = augment.build("policy", class_counts=counts, input_shape=(3,), ops=["noise"], learn=False)
    assert fixed.hyperparameters() == {} and "magnitude" in dict(fixed.named_buffers())


@pytest.mark.parametrize("options, message", [
    ({"ops": ["rotate"]}, "need images"),
    ({"ops": ["twirl"]}, "ops must name"),
    ({"ops": ["noise", "noise"]}, "each once"),
    ({"per": "group"}, "per must be"),
    ({"magnitude": 1.0}, "strictly between"),
    ({"gate": "soft"}, "gate must be"),
    ({"temperature": 0.0}, "temperature"),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(ShiftkitError, match=message) as info:
        augment.build("policy", class_counts=[3, 2], input_shape=(4,), **options)
    assert "\n" not in str(info.value)


def _bilevel_problem():
    """A small strongly convex problem (ridge-regularized linear model, autobalance loss, a policy of
    four operations), with θ* solvable to machine precision."""
    torch.manual_seed(0)
    n, d = 40, 5
    x, y = torch.randn(n, d, dtype=D64), torch.randint(0, 3, (n,))
    xv, yv = torch.randn(30, d, dtype=D64), torch.randint(0, 3, (30,))
    pol = augment.build("policy", class_counts=[20, 12, 8], input_shape=(d,), magnitude=0.3, probability=0.6,
                        ops=["noise", "brightness", "contrast", "spherical"], temperature=0.5).double()
    loss = losses.build("autobalance", class_counts=[20, 12, 8]).double()
    model = torch.nn.Linear(d, 3).double()
    draws = pol.draws(x, torch.Generator().manual_seed(3))

    def inputs(h):
        own = {k[len("augment."):]: v for k, v in h.items() if k.startswith("augment.")}
        return functional_call(pol, own, (x, y), {"draws": draws, "relaxed": True})

    def data_loss(z, h):
        return functional_call(loss, {k: v for k, v in h.items() if not k.startswith("augment.")}, (z, y)).mean()

    def inner(p, h):
        return data_loss(functional_call(model, p, (inputs(h),)), h) + 0.1 * sum((t ** 2).sum() for t in p.values())

    def outer(p):
        return F.cross_entropy(functional_call(model, p, (xv,)), yv)

    alpha = {**{k: v.detach() for k, v in loss.hyperparameters().items()},
             **{"augment." + k: v.detach() for k, v in pol.hyperparameters().items()}}
    theta = {k: v.detach() for k, v in model.named_parameters()}
    return model, inputs, data_loss, inner, outer, alpha, theta


def _solve(inner, theta, h):
    """θ*(h) to machine precision: Newton's method on the flattened weights (18 of them), from ``theta``."""
    keys, shapes = list(theta), [t.shape for t in theta.values()]
    sizes = [t.numel() for t in theta.values()]

    def f(flat):
        return inner({k: v.view(shape) for k, v, shape in zip(keys, flat.split(sizes), shapes)}, h)

    flat = torch.cat([t.flatten() for t in theta.values()])
    for _ in range(30):
        g = torch.autograd.functional.jacobian(f, flat)
        if g.abs().max() < 1e-13:
            break
        flat = flat - torch.linalg.solve(torch.autograd.functional.hessian(f, flat), g)
    return {k: v.view(shape) for k, v, shape in zip(keys, flat.split(sizes), shapes)}


def test_hypergradient_through_augmentation_matches_finite_differences():
    _, _, _, inner, outer, alpha, theta = _bilevel_problem()
    star = _solve(inner, theta, alpha)
    ift = hypergradient(inner, outer, star, alpha, terms=400, step=0.5, stop_on_growth=False)
    eps = 1e-5  # central differences, error O(eps^2); θ* by Newton's method to a gradient below 1e-13
    for key in ("augment.magnitude", "augment.probability", "l", "delta"):
        fd = torch.zeros_like(alpha[key])
        for i in range(alpha[key].numel()):
            up, down = ({k: v.clone() for k, v in alpha.items()} for _ in range(2))
            up[key].view(-1)[i] += eps
            down[key].view(-1)[i] -= eps
            fd.view(-1)[i] = (outer(_solve(inner, theta, up)) - outer(_solve(inner, theta, down))) / (2 * eps)
        assert fd.abs().max() > 1e-5, key  # the check is not vacuous
        assert torch.allclose(ift[key], fd, atol=1e-7, rtol=1e-4), (key, ift[key], fd)


def test_output_hypergradient_through_inputs_equals_the_generic_hypergradient():
    model, inputs, data_loss, inner, outer, alpha, theta = _bilevel_problem()
    fixed = inputs(alpha).detach()
    ridge = lambda p: 0.1 * sum((t ** 2).sum() for t in p.values())  # noqa: E731
    generic = hypergradient(inner, outer, theta, alpha, terms=30, step=0.5, stop_on_growth=False)
    ours = output_hypergradient(
        [lambda p: functional_call(model, p, (fixed,))], [data_loss], [outer], theta, alpha, terms=30, step=0.5,
        curvature_loss=lambda p: inner(p, alpha), stop_on_growth=False,
        through_inputs=[lambda p, h: functional_call(model, p, (inputs(h),))])
    assert ridge(theta) > 0
    for key in alpha:  # the ridge term has no mixed part, so the two agree exactly
        assert torch.allclose(ours[key], generic[key], atol=1e-12), key
