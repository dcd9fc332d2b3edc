"""Composability: every loss with every weighting and every sampler trains through the one loop."""

import itertools

import pytest
import torch

from shiftkit import data, losses, models, optim, sampling, weighting
from shiftkit.train import fit

from helpers import with_attribute

SPLITS = with_attribute(data.build("digits_binary", test_per_class=20))
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
