"""The focal loss (Lin et al. 2017) and class-balanced weights (Cui et al. 2019): reference values, the
limits that tie them to CE and DRW, and stability (docs/METHODS.md#loss-focal, docs/METHODS.md#weighting-cb)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from shiftkit import losses, weighting
from shiftkit.errors import ShiftkitError


def _batch(k=4, b=32, scale=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, generator=gen, dtype=torch.float64) * scale
    return logits, torch.randint(0, k, (b,), generator=gen)


# --- focal ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.1, 3.0, 100.0])
def test_focal_with_gamma_zero_is_cross_entropy_exactly(scale):  # docs/METHODS.md#loss-ce
    logits, y = _batch(scale=scale)
    assert torch.equal(losses.build("focal", gamma=0.0)(logits, y), losses.build("ce")(logits, y))


@given(st.sampled_from([0.5, 1.0, 2.0, 5.0]), st.integers(0, 10**6))
def test_focal_matches_the_formula_from_probabilities(gamma, seed):  # Lin et al.: -(1 - p_y)^gamma log p_y
    logits, y = _batch(seed=seed)
    p = torch.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    expected = -((1 - p) ** gamma) * torch.log(p)
    torch.testing.assert_close(losses.build("focal", gamma=gamma)(logits, y), expected)


def test_focal_default_is_lin_et_al_gamma_two_and_down_weights_easy_examples():
    assert losses.build("focal").gamma == 2.0
    logits = torch.tensor([[4.0, 0.0], [0.5, 0.0]])  # an easy and a hard example of class 0
    ratio = losses.build("focal")(logits, torch.tensor([0, 0])) / losses.build("ce")(logits, torch.tensor([0, 0]))
    assert ratio[0] < 1e-3 < ratio[1] < 1


@pytest.mark.parametrize("gamma", [0.0, 0.25, 1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_focal_finite_values_and_gradients_for_extreme_logits(gamma, dtype):
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [0.0, 0.0, 0.0], [88.0, -88.0, 1e-30]], dtype=dtype)
    logits.requires_grad_()
    y = torch.tensor([0, 0, 2, 0])  # right and confident, wrong and confident, uniform, near-saturated
    out = losses.build("focal", gamma=gamma)(logits, y)
    out.sum().backward()
    assert torch.isfinite(out).all() and (out >= 0).all()
    assert torch.isfinite(logits.grad).all()
    assert out[0].item() == 0.0 and out[1].item() == pytest.approx(2e4, rel=1e-6)


def test_focal_rejects_a_negative_gamma():
    with pytest.raises(ShiftkitError, match="'focal': gamma must be >= 0") as err:
        losses.build("focal", gamma=-1.0)
    assert "\n" not in str(err.value)


# --- cb ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.9, 0.999, 0.9999])
def test_cb_values_are_cui_et_al_effective_numbers_summing_to_k(beta):  # docs/METHODS.md#weighting-cb
    counts = [5000, 1077, 232, 50]
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    expected = torch.tensor([len(counts) * r / sum(raw) for r in raw])
    cb = weighting.build("cb", beta=beta, class_counts=counts, group_counts=[1, 1])
    w = cb.weights(torch.ones(4), torch.arange(4), torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(w, expected)
    assert w.sum().item() == pytest.approx(4.0, rel=1e-6)


@given(st.lists(st.integers(0, 10**5), min_size=1, max_size=10).filter(any), st.floats(0, 0.99999))
def test_cb_equals_drw_from_epoch_zero(counts, beta):
    y = torch.arange(len(counts)).repeat(2)
    cb = weighting.build("cb", beta=beta, class_counts=counts)
    drw = weighting.build("drw", beta=beta, start_epoch=0, class_counts=counts)
    drw.start_epoch(0)
    torch.testing.assert_close(cb.weights(torch.rand(len(y)), y, None), drw.weights(torch.rand(len(y)), y, None))


def test_cb_is_static_and_by_group_uses_the_group_counts():
    cb = weighting.build("cb", by="group", class_counts=[1, 1], group_counts=[4000, 400])
    assert cb.state_dict() == {}
    w = cb.weights(torch.ones(2), torch.tensor([1, 1]), torch.tensor([0, 1]))
    torch.testing.assert_close(w, torch.tensor([0.2125880, 1.7874120]))


@pytest.mark.parametrize(
    "options, message",
    [(dict(beta=1.0), "'cb': beta"), (dict(beta=-0.1), "'cb': beta"), (dict(by="cell"), "'cb': by must be")],
)
def test_cb_rejects_bad_hyperparameters_in_one_line(options, message):
    with pytest.raises(ShiftkitError, match=message) as err:
        weighting.build("cb", class_counts=[3, 1], **options)
    assert "\n" not in str(err.value)

