"""Weighting schemes: the contract over every registered name, and the reference weights of docs/METHODS.md#weighting-iw."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from shiftkit import weighting
from shiftkit.errors import ShiftkitError

COUNTS = dict(class_counts=[40, 4], group_counts=[30, 10, 3, 1])


@pytest.mark.parametrize("name", weighting.names())
def test_contract_finite_weights_of_batch_shape_nonnegative_unless_signed(name):
    scheme = weighting.build(name, **COUNTS)
    gen = torch.Generator().manual_seed(0)
    losses = torch.rand(32, generator=gen) * 5
    y = torch.randint(0, 2, (32,), generator=gen)
    g = 2 * y + torch.randint(0, 2, (32,), generator=gen)
    w = scheme.weights(losses, y, g)
    assert w.shape == (32,) and torch.isfinite(w).all() and (scheme.signed or (w >= 0).all())


@pytest.mark.parametrize("name", weighting.names())
def test_contract_state_round_trips(name):
    scheme = weighting.build(name, **COUNTS)
    clone = weighting.build(name, **COUNTS)
    clone.load_state_dict(scheme.state_dict())
    losses, y = torch.rand(8), torch.randint(0, 2, (8,))
    torch.testing.assert_close(scheme.weights(losses, y, y), clone.weights(losses, y, y))


@pytest.mark.parametrize(
    "counts, exponent, expected",
    [  # docs/METHODS.md#weighting-iw examples
        ([4000, 400], 1.0, [0.55, 5.5]),
        ([4000, 400], 1.5, [0.264, 8.357]),
        ([4000, 400], 3.0, [0.0109, 10.891]),
        ([1446, 1308, 468, 33], 1.0, [0.563, 0.622, 1.739, 24.66]),
        ([1446, 1308, 468, 33], 2.0, [0.046, 0.056, 0.438, 88.18]),
        ([1446, 1308, 468, 33], 2.5, [0.0076, 0.0097, 0.127, 96.12]),
    ],
)
def test_iw_reference_weights(counts, exponent, expected):
    scheme = weighting.build("iw", exponent=exponent, group_counts=counts)
    ids = torch.arange(len(counts))
    w = scheme.weights(torch.ones(len(counts)), ids, ids)
    for got, want in zip(w.tolist(), expected):
        assert got == pytest.approx(want, rel=5e-3, abs=5e-4)


@given(st.lists(st.integers(1, 5000), min_size=2, max_size=6), st.floats(0.0, 3.0))
def test_iw_weights_have_mean_one_over_the_training_set(counts, exponent):  # docs/METHODS.md#weighting-iw: mean 1
    table = weighting.normalized_inverse_counts(counts, exponent).double()
    n = torch.tensor(counts, dtype=torch.float64)
    assert ((n * table).sum() / n.sum()).item() == pytest.approx(1.0, rel=1e-5)


def test_iw_by_class_uses_labels_and_empty_groups_get_zero():
    by_class = weighting.build("iw", by="class", class_counts=[3, 1], group_counts=[1, 1, 1, 1])
    w = by_class.weights(torch.ones(2), torch.tensor([0, 1]), torch.tensor([3, 3]))
    torch.testing.assert_close(w, torch.tensor([2 / 3, 2.0]))
    with_empty = weighting.build("iw", group_counts=[2, 0, 2])
    assert with_empty.table.tolist() == [1.0, 0.0, 1.0]


def test_iw_needs_counts_and_a_valid_axis():
    with pytest.raises(ShiftkitError, match="group counts"):
        weighting.build("iw")
    with pytest.raises(ShiftkitError, match="by must be"):
        weighting.build("iw", by="cell", group_counts=[1, 1])


@pytest.mark.parametrize("name", weighting.names())
@given(st.integers(0, 10**6))
def test_contract_weights_follow_a_permutation_of_the_batch(name, seed):
    gen = torch.Generator().manual_seed(seed)
    losses = torch.rand(16, generator=gen) * 4
    y = torch.randint(0, 2, (16,), generator=gen)
    g = 2 * y + torch.randint(0, 2, (16,), generator=gen)
    perm = torch.randperm(16, generator=gen)
    w = weighting.build(name, **COUNTS).weights(losses, y, g)
    w_perm = weighting.build(name, **COUNTS).weights(losses[perm], y[perm], g[perm])
    torch.testing.assert_close(w[perm], w_perm)


@pytest.mark.parametrize("name", weighting.names())
def test_contract_pure_steps_equal_the_stateful_calls_and_change_nothing(name):
    """``step`` / ``begin_epoch`` threading an explicit state give the weights and state of the stateful
    ``start_epoch`` / ``weights`` calls, and leave the module's own state as it was (the check plugin
    authors run, :mod:`shiftkit.testing`)."""
    from shiftkit.testing import Contract, check_pure_steps

    check_pure_steps(Contract("weighting", name), weighting.build(name, **COUNTS), weighting.build(name, **COUNTS))


@pytest.mark.parametrize("name", weighting.names())
def test_contract_a_vmapped_step_over_members_equals_each_member_alone(name):
    """One scheme, S stacked states: ``torch.func.vmap`` of ``step`` is each member's own step (the
    check plugin authors run, :mod:`shiftkit.testing`)."""
    from shiftkit.testing import Contract, check_vmapped_step

    check_vmapped_step(Contract("weighting", name), weighting.build(name, **COUNTS))
