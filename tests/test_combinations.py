"""Composability: every loss with every weighting and every sampler trains through the one loop."""

import itertools

import pytest
import torch

from shiftkit import data, losses, models, optim, sampling, weighting
from shiftkit.data.base import Split, Splits
from shiftkit.train import fit



def _with_attribute(splits: Splits) -> Splits:
    """Groups g = 2y + a with a pseudo-random bit a, so that every weighting applies (deo_mix needs it)."""
    gen = torch.Generator().manual_seed(0)

    def tag(s: Split) -> Split:
        return Split(s.x, s.y, 2 * s.y + torch.randint(0, 2, s.y.shape, generator=gen), 2, 4)

    return Splits(tag(splits.train), tag(splits.val), tag(splits.test), info=splits.info, pipeline=splits.pipeline)


SPLITS = _with_attribute(data.build("digits_binary", test_per_class=20))
STATS = SPLITS.statistics()
COMBOS = list(itertools.product(losses.names(), weighting.names(), sampling.names()))


@pytest.mark.parametrize("loss,scheme,sampler", COMBOS, ids=["+".join(c) for c in COMBOS])
def test_every_combination_trains_and_evaluates(loss, scheme, sampler):
    torch.manual_seed(0)
    net = models.build("linear", **STATS)
    result = fit(
        net, SPLITS, losses.build(loss, **STATS), weighting.build(scheme, **STATS), optim.build("sgd", lr=0.05),
        sampler=sampling.build(sampler, **STATS), epochs=2, batch_size=16,
    )
    assert 0.0 <= result.final["test"]["balanced_acc"] <= 1.0
    assert all(torch.isfinite(p).all() for p in net.parameters())
