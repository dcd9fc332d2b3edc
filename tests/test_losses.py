"""Losses: the contract over every registered name, and reference values (docs/METHODS.md#losses)."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from shiftkit import losses
from shiftkit.errors import ShiftkitError

COUNTS = dict(class_counts=[40, 4, 1], group_counts=[30, 10, 4, 1])


def _batch(k, scale=1.0, b=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, k, generator=gen) * scale).requires_grad_()
    y = torch.randint(0, k, (b,), generator=gen)
    g = torch.randint(0, 4, (b,), generator=gen)
    return logits, y, g


@pytest.mark.parametrize("name", losses.names())
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_contract_shape_finite_values_and_gradients(name, k, scale):
    loss = losses.build(name, **{**COUNTS, "class_counts": COUNTS["class_counts"][:k]})
    logits, y, g = _batch(k, scale)
    out = loss(logits, y, g)
    assert out.shape == (16,)
    assert torch.isfinite(out).all() and (out >= 0).all()
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", losses.names())
def test_contract_groups_are_optional(name):
    logits, y, _ = _batch(2)
    assert losses.build(name, class_counts=[5, 1])(logits, y).shape == (16,)


def test_ce_matches_log_softmax():  # docs/METHODS.md#loss-ce
    logits, y, _ = _batch(3)
    expected = -F.log_softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(losses.build("ce")(logits, y), expected)


def _wang_logit_poly(logits, target, alpha):
    """The [W] code's PolynomialLoss, type "logit" (docs/METHODS.md#loss-poly), written from its definition."""
    v = (logits[:, 1] - logits[:, 0]) * (2 * target - 1)
    left = torch.log1p(torch.exp(-v)) / math.log1p(math.exp(-1))
    right = v.abs().pow(-alpha)
    return torch.where(v <= 1, left, right)


@given(
    st.lists(st.floats(-30, 30), min_size=2, max_size=2),
    st.integers(0, 1),
    st.sampled_from([0.5, 1.0, 2.0, 3.0]),
)
def test_two_class_poly_equals_wang_code(pair, target, alpha):  # docs/METHODS.md#loss-poly
    logits = torch.tensor([pair], dtype=torch.float64)
    y = torch.tensor([target])
    ours = losses.build("poly", alpha=alpha)(logits, y)
    torch.testing.assert_close(ours, _wang_logit_poly(logits, y, alpha))


@pytest.mark.parametrize("continuity", ["scale", "shift"])
@pytest.mark.parametrize("beta", [0.0, 1.0, 2.5])
def test_poly_is_continuous_and_one_at_beta(continuity, beta):  # docs/METHODS.md#loss-poly, docs/METHODS.md#quirk-poly
    loss = losses.build("poly", alpha=1.5, beta=beta, continuity=continuity)
    for v in (beta - 1e-6, beta, beta + 1e-6):
        value = loss(torch.tensor([[0.0, v]], dtype=torch.float64), torch.tensor([1]))
        assert value.item() == pytest.approx(1.0, abs=1e-5)


def test_poly_shift_form_and_right_branch():  # docs/METHODS.md#loss-poly: [Z]'s shifted logistic, 1/[z-(beta-1)]^alpha
    loss = losses.build("poly", alpha=2.0, beta=0.0, continuity="shift")
    z = torch.tensor([-1.0, 3.0], dtype=torch.float64)
    logits = torch.stack([torch.zeros(2, dtype=torch.float64), z], 1)
    out = loss(logits, torch.tensor([1, 1]))
    assert out[0].item() == pytest.approx(math.log1p(math.e) - math.log(2) + 1)
    assert out[1].item() == pytest.approx(1 / 16)


def test_poly_one_sided_derivatives_at_the_knot():  # docs/METHODS.md#loss-poly: left -0.858, right -alpha
    loss = losses.build("poly", alpha=2.0)
    for v, expected in ((1.0, -0.8577), (1.0 + 1e-9, -2.0)):
        f1 = torch.tensor([[0.0, v]], dtype=torch.float64, requires_grad=True)
        loss(f1, torch.tensor([1])).backward()
        assert f1.grad[0, 1].item() == pytest.approx(expected, abs=1e-3)


def test_multiclass_margin_uses_the_largest_other_logit():  # docs/METHODS.md#quirk-poly
    logits = torch.tensor([[1.0, 4.0, 2.0], [5.0, 0.0, 1.0]])
    torch.testing.assert_close(losses.margin(logits, torch.tensor([1, 1])), torch.tensor([2.0, -5.0]))


@given(st.floats(-50, 50), st.floats(0.01, 20))
def test_poly_is_decreasing_in_the_margin(v, dv):
    loss = losses.build("poly", alpha=1.0)
    f = torch.tensor([[0.0, v], [0.0, v + dv]], dtype=torch.float64)
    a, b = loss(f, torch.tensor([1, 1]))
    assert b <= a


@pytest.mark.parametrize("bad", [dict(alpha=0.0), dict(alpha=-1.0), dict(continuity="nope")])
def test_poly_rejects_bad_options(bad):
    with pytest.raises(ShiftkitError):
        losses.build("poly", **bad)


@pytest.mark.parametrize("name", losses.names())
@given(st.integers(0, 10**6))
def test_contract_losses_are_per_example(name, seed):
    """Permuting the batch permutes the losses: nothing couples the examples of a batch."""
    loss = losses.build(name, **COUNTS)
    logits, y, g = _batch(3, scale=3.0, seed=seed)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(loss(logits, y, g)[perm], loss(logits[perm], y[perm], g[perm]))
