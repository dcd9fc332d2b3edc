"""Datasets and protocols: counts, determinism and validation (docs/METHODS.md#data-cifar10_binary, docs/METHODS.md#data-two_gaussians)."""

import pytest
import torch

from shiftkit import data
from shiftkit.data.base import Split, Splits
from shiftkit.errors import ShiftkitError


def test_digits_binary_follows_the_w_protocol():  # docs/METHODS.md#data-digits_binary
    splits = data.build("digits_binary")
    pool = [a + b for a, b in zip(splits.train.class_counts, splits.val.class_counts)]
    assert pool[1] == int(pool[0] / 10)  # step imbalance 10 (minority relative to majority)
    n = len(splits.train) + len(splits.val)
    assert len(splits.train) == int(0.8 * n)  # 80/20 by one fixed permutation
    assert splits.test.class_counts == [50, 50]  # balanced test
    assert splits.train.group_counts == splits.train.class_counts  # groups are the classes
    assert splits.input_shape == (1, 8, 8)
    assert 0.0 <= float(splits.train.x.min()) and float(splits.train.x.max()) <= 1.0
    train_ids = {tuple(x.flatten().tolist()) for x in splits.train.x}
    test_ids = {tuple(x.flatten().tolist()) for x in splits.test.x}
    assert len(train_ids & test_ids) <= 2  # disjoint images (the digits set holds a few duplicates)


def test_digits_binary_is_deterministic_and_configurable():
    a, b = data.build("digits_binary"), data.build("digits_binary")
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    other = data.build("digits_binary", classes=[3, 5], imbalance=2.0, test_per_class=30)
    assert other.test.class_counts == [30, 30]
    assert other.info["classes"] == [3, 5]


@pytest.mark.parametrize(
    "bad", [dict(classes=[1, 1]), dict(classes=[1, 12]), dict(imbalance=0.5), dict(test_per_class=500), dict(imbalance=1000.0)]
)
def test_digits_binary_rejects_bad_options(bad):
    with pytest.raises(ShiftkitError):
        data.build("digits_binary", **bad)


def test_two_gaussians():  # docs/METHODS.md#data-two_gaussians
    splits = data.build("two_gaussians")
    assert splits.train.class_counts == [20, 200]
    assert splits.test.class_counts == [500, 500]
    centers = torch.tensor([[0.0, 5.0], [5.0, 0.0]])
    assert ((splits.train.x - centers[splits.train.y]).norm(dim=1) <= 5.0 + 1e-5).all()


def test_split_validation():
    with pytest.raises(ShiftkitError, match="labels must lie"):
        Split(torch.zeros(2, 1), torch.tensor([0, 2]), torch.tensor([0, 0]), 2, 2)
    with pytest.raises(ShiftkitError, match="NaN"):
        Split(torch.tensor([[float("nan")]]), torch.tensor([0]), torch.tensor([0]), 2, 2)
    with pytest.raises(ShiftkitError, match="same length"):
        Split(torch.zeros(2, 1), torch.tensor([0]), torch.tensor([0, 0]), 2, 2)


def test_splits_validation():
    two = Split(torch.zeros(2, 1), torch.tensor([0, 1]), torch.tensor([0, 1]), 2, 2)
    empty = Split(torch.zeros(0, 1), torch.zeros(0), torch.zeros(0), 2, 2)
    one = Split(torch.zeros(2, 1), torch.tensor([0, 0]), torch.tensor([0, 0]), 1, 1)
    with pytest.raises(ShiftkitError, match=r"the data has 1 class\(es\); a classifier needs at least 2"):
        Splits(one, one, one)
    with pytest.raises(ShiftkitError, match=r"no example of class\(es\) \[1\] of 2"):
        Splits(two.subset(torch.tensor([0])), two, two)
    with pytest.raises(ShiftkitError, match="the validation split is empty"):
        Splits(two, empty, two)
    with pytest.raises(ShiftkitError, match="the test split is empty"):
        Splits(two, two, empty)
