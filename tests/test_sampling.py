"""Samplers (docs/METHODS.md#samplers): the contract over every registered name, and each one's distribution."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from shiftkit import sampling
from shiftkit.errors import ShiftkitError

COUNTS = dict(class_counts=[90, 10], group_counts=[60, 30, 8, 2])


def _labels(n_per_group=(60, 30, 8, 2)):
    g = torch.cat([torch.full((n,), k) for k, n in enumerate(n_per_group)])
    return g // 2, g


@pytest.mark.parametrize("name", sampling.names())
def test_contract_indices_in_range_and_seed_determined(name):
    y, g = _labels()
    draws = [sampling.build(name, **COUNTS).epoch(y, g, torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    for idx in draws:
        assert idx.dtype == torch.long and idx.dim() == 1
        assert idx.numel() > 0 and int(idx.min()) >= 0 and int(idx.max()) < len(y)
    assert torch.equal(draws[0], draws[1])


def test_none_is_a_permutation():
    y, g = _labels()
    idx = sampling.build("none").epoch(y, g, torch.Generator().manual_seed(0))
    assert sorted(idx.tolist()) == list(range(len(y)))


def test_undersample_keeps_n_min_per_group_in_expectation_and_never_redraws():  # docs/METHODS.md#sampler-undersample
    y, g = _labels()
    kept = []
    for seed in range(300):
        s = sampling.build("undersample")
        gen = torch.Generator().manual_seed(seed)
        first = s.epoch(y, g, gen)
        second = s.epoch(y, g, gen)
        assert sorted(first.tolist()) == sorted(second.tolist())  # fixed subset, reshuffled
        kept.append(torch.bincount(g[first], minlength=4).double())
    mean = torch.stack(kept).mean(0)
    assert torch.allclose(mean, torch.full((4,), 2.0, dtype=torch.float64), atol=0.3)  # n_min = 2 each
    assert torch.equal(torch.stack(kept)[:, 3], torch.full((300,), 2.0, dtype=torch.float64))  # the smallest group is kept whole


def test_undersample_by_class():
    y, g = _labels()
    idx = sampling.build("undersample", by="class").epoch(y, g, torch.Generator().manual_seed(0))
    assert torch.bincount(y[idx]).tolist()[1] == 10  # the minority class is kept whole


def test_resample_draws_categories_equally_often():  # docs/METHODS.md#sampler-resample
    y, g = _labels()
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([sampling.build("resample").epoch(y, g, gen) for _ in range(200)])
    freq = torch.bincount(g[draws], minlength=4).double() / len(draws)
    assert torch.allclose(freq, torch.full((4,), 0.25, dtype=torch.float64), atol=0.01)
    assert len(sampling.build("resample").epoch(y, g, gen)) == len(y)


@given(st.lists(st.integers(1, 40), min_size=2, max_size=5), st.integers(0, 1000))
def test_balanced_epochs_have_exactly_equal_counts(sizes, seed):
    g = torch.cat([torch.full((n,), k) for k, n in enumerate(sizes)])
    idx = sampling.build("balanced").epoch(g, g, torch.Generator().manual_seed(seed))
    counts = torch.bincount(g[idx], minlength=len(sizes))
    assert len(idx) == len(g) and int(counts.max() - counts.min()) <= 1
    for k, n in enumerate(sizes):  # repeats spread evenly over a small group's examples
        members = torch.bincount(idx[g[idx] == k] - int(sum(sizes[:k])), minlength=n)
        assert int(members.max() - members.min()) <= 1


def test_bad_axis():
    with pytest.raises(ShiftkitError, match="by must be"):
        sampling.build("balanced", by="cell")
