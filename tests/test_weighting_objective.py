"""Batch objectives as weightings (docs/METHODS.md#autobalance-objectives): mean(w·ℓ) is the objective, and so is its gradient."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from shiftkit import objectives, weighting
from shiftkit.errors import ShiftkitError

COUNTS = dict(class_counts=[40, 4], group_counts=[30, 10, 3, 1])
SCHEMES = [("deo_mix", {"lam": 0.9}), ("deo_mix", {"lam": 1.0}), ("deo_mix", {"lam": 0.3}), ("group_balanced", {})]


def batch(seed, b=24):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, 2, generator=gen, dtype=torch.float64) * 2
    y = torch.randint(0, 2, (b,), generator=gen)
    g = 2 * y + torch.randint(0, 2, (b,), generator=gen)
    return logits.requires_grad_(), y, g


def reference(name, options, logits, y, g):
    """The objective written on logits (shiftkit.objectives), independently of the weights."""
    if name == "group_balanced":
        return objectives.group_balanced_ce(logits, y, g, num_groups=4)
    if options["lam"] == 1.0:
        return objectives.ce_deo(logits, y, g)
    return objectives.deo_mix(logits, y, g, lam=options["lam"])


@pytest.mark.parametrize("name, options", SCHEMES)
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_weighted_mean_is_the_objective_in_value_and_gradient(name, options, seed):
    logits, y, g = batch(seed)
    scheme = weighting.build(name, **options, **COUNTS)
    ce = F.cross_entropy(logits, y, reduction="none")
    surrogate = (scheme.weights(ce.detach(), y, g) * ce).mean()
    want = reference(name, options, logits, y, g)
    torch.testing.assert_close(surrogate, want)
    got_grad, = torch.autograd.grad(surrogate, logits)
    want_grad, = torch.autograd.grad(want, logits)
    torch.testing.assert_close(got_grad, want_grad)


def test_deo_weights_are_signed_and_zero_for_a_pair_with_an_empty_cell():
    scheme = weighting.build("deo_mix", lam=1.0)
    losses = torch.tensor([1.0, 3.0, 3.0, 2.0, 2.0])
    y, g = torch.tensor([0, 0, 0, 1, 1]), torch.tensor([0, 1, 1, 2, 2])  # cell (1, a=1) is empty
    w = scheme.weights(losses, y, g)
    # L_{0,0} = 1 < L_{0,1} = 3: raise cell (0,0) (weight -B/1), lower cell (0,1) (+B/2 each).
    torch.testing.assert_close(w, torch.tensor([-5.0, 2.5, 2.5, 0.0, 0.0]))
    assert scheme.signed and not weighting.build("erm").signed


@pytest.mark.parametrize("counts", [dict(class_counts=[40, 4], group_counts=[30, 10, 4, 1]),
                                    dict(class_counts=[40, 4], group_counts=[40, 4]),
                                    dict(class_counts=[10, 4, 4], group_counts=[6, 4, 2, 2, 2, 2])])
def test_deo_mix_refuses_data_without_the_binary_attribute_layout(counts):
    with pytest.raises(ShiftkitError, match="g = 2\\*y \\+ a"):
        weighting.build("deo_mix", **counts)


def test_objective_weightings_need_groups_and_a_valid_lambda():
    with pytest.raises(ShiftkitError, match="needs the groups"):
        weighting.build("deo_mix").weights(torch.ones(3), torch.tensor([0, 1, 1]), None)
    with pytest.raises(ShiftkitError, match="lam"):
        weighting.build("deo_mix", lam=1.5)
    with pytest.raises(ShiftkitError, match="class and group counts"):
        weighting.build("group_balanced")
