"""One protocol, many sources (docs/METHODS.md#data-protocols): each protocol gives the same ``info`` keys and the
counts its options ask for, whatever the source (digits, Fashion-MNIST and CIFAR fixtures, a toy source)."""

import numpy as np
import pytest
import torch

from shiftkit import data
from shiftkit.data import digits, fmnist
from shiftkit.data.group_protocols import partition, spurious
from shiftkit.data.protocols import binary, long_tail
from shiftkit.data.shifts import long_tail_counts
from shiftkit.data.sources import Part, Source
from shiftkit.errors import ShiftkitError
from test_data_cifar import write_cifar10
from test_data_fmnist import _fixture


@pytest.fixture
def garments(tmp_path):
    """A Fashion-MNIST source from a tiny IDX folder: 30 training and 10 test images per class."""
    return fmnist.source(str(_fixture(tmp_path / "fm")))


def toy(per_class=40, attribute=False, test=True) -> Source:
    """Three classes of 4-dimensional points; the attribute, if any, alternates 0, 1 along the file."""
    y = np.repeat(np.arange(3), per_class)
    x = np.random.default_rng(0).normal(size=(len(y), 4)).astype(np.float32)
    a = np.arange(len(y)) % 2 if attribute else None
    names = ["low", "high"] if attribute else None
    return Source("toy", Part(x, y, a), ["a", "b", "c"], test=Part(x + 1, y, a) if test else None,
                  attribute_names=names)


def pooled(splits):
    return [a + b for a, b in zip(splits.train.class_counts, splits.val.class_counts)]


def test_binary_protocol_on_digits_and_fashion_mnist(garments):
    options = dict(imbalance=4.0, val_fraction=0.2, split_seed=0)
    d = binary(digits.source(), "d", [1, 8], n_majority=100, test_per_class=20, **options)
    f = binary(garments, "f", [0, 6], n_majority=20, **options)
    assert set(d.info) == set(f.info)
    assert pooled(d) == d.info["kept"] == [100, 25] and pooled(f) == f.info["kept"] == [20, 5]  # int(n / 4)
    assert len(d.train) == int(0.8 * 125) and len(f.train) == int(0.8 * 25)
    assert d.test.class_counts == [20, 20] and f.test.class_counts == [10, 10]  # held out; the source's own
    assert d.info["source"] == {"name": "digits"} and f.info["source"]["name"] == "fashion-mnist"
    assert f.info["class_names"] == ["T-shirt/top", "Shirt"] and d.info["minority"] == 8
    assert set((f.test.x[:, 0, 0, 0] // 10).tolist()) == {0, 6}  # the fixture's pixels name the class


def test_registered_binary_datasets_share_one_schema(garments, tmp_path):
    write_cifar10(tmp_path / "c" / "cifar-10-batches-py")
    built = [data.build("digits_binary"), data.build("fmnist_binary", root=str(tmp_path / "fm"), n_majority=20),
             data.build("cifar10_binary", root=str(tmp_path / "c"))]
    assert len({frozenset(s.info) for s in built}) == 1 and {s.info["protocol"] for s in built} == {"binary"}
    assert [pooled(s) for s in built] == [s.info["pool"] for s in built]
    assert built[2].info["step_counts"] == [50] * 5 + [5] * 5 and built[0].info["step_counts"] is None


def test_long_tail_on_three_sources(garments, tmp_path):
    write_cifar10(tmp_path / "c" / "cifar-10-batches-py")
    built = [data.build("digits_lt"), data.build("fmnist_lt", root=str(tmp_path / "fm"), rho=2.0, n_max=20,
                                                 val_per_class=5),
             data.build("cifar10_lt", root=str(tmp_path / "c"), rho=10.0)]
    assert len({frozenset(s.info) for s in built}) == 1 and {s.info["protocol"] for s in built} == {"long_tail"}
    for s in built:
        assert s.train.class_counts == s.info["train_counts"] and s.val.class_counts == s.info["val_counts"]
    assert built[1].info["profile"] == built[1].train.class_counts == long_tail_counts(20, 10, 2.0)
    toy_lt = long_tail(toy(), "toy", 4.0, "int", 0, val_fraction=0.25)
    assert toy_lt.info["profile"] == [40, 20, 10] and toy_lt.val.class_counts == [10, 5, 3]  # "floor": 30, 15, 7 train
    assert set(toy_lt.info) == set(built[0].info) and toy_lt.test.class_counts == [40] * 3


def test_spurious_protocol_with_a_rendered_and_a_native_attribute(garments):
    options = dict(fractions=[0.4, 0.1, 0.1, 0.4], n_train=20, val_per_group=2, test_per_group=2, split_seed=0)
    rendered = spurious(garments, "f", [2, 4], render=lambda x, a: fmnist.render_attribute(x, a, 1.0), **options)
    native = spurious(toy(attribute=True), "toy", [0, 2], **options)
    assert set(rendered.info) == set(native.info)
    for s in (rendered, native):
        assert s.train.group_counts == [8, 2, 2, 8] and s.val.group_counts == s.test.group_counts == [2] * 4
        assert torch.equal(s.train.y, s.train.g // 2)
    assert native.info["attribute"] == "source" and native.info["groups"][1] == "a, high"
    source = toy(attribute=True).train
    rows = (native.train.x[:, None] == torch.from_numpy(source.x)[None]).all(dim=2).float().argmax(dim=1).numpy()
    assert (source.attribute[rows] == native.train.g.numpy() % 2).all()  # the source's own attribute, inputs unchanged
    assert (source.y[rows] == np.array([0, 2])[native.train.y.numpy()]).all()
    a, x = rendered.train.g % 2, rendered.train.x[:, 0]
    assert (x[a == 1][:, 0, :] == 255).all() and (x[a == 0][:, :, 0] == 255).all()  # horizontal, vertical stripes
    with pytest.raises(ShiftkitError, match="has no attribute"):
        spurious(garments, "f", [2, 4], **options)


def test_partition_protocol_on_a_source_without_the_official_validation_split(garments):
    halves = partition(garments, "f", "autobalance", split_seed=0)
    assert halves.train.class_counts == halves.val.class_counts == [15] * 10 and len(halves.test) == 100
    with pytest.raises(ShiftkitError, match="f: the source fashion-mnist has no official val partition"):
        partition(garments, "f", "official")
    cells = partition(toy(attribute=True), "toy", "autobalance", split_seed=0)
    assert cells.num_groups == 6 and cells.train.group_counts == [10] * 6 and cells.info["groups"][5] == "c, high"


def test_a_source_without_a_test_set_needs_a_held_out_one():
    with pytest.raises(ShiftkitError, match="toy: the source toy has no official test partition"):
        binary(toy(test=False), "toy", [0, 1], imbalance=2.0, val_fraction=0.2, split_seed=0)
    s = binary(toy(test=False), "toy", [0, 1], imbalance=2.0, val_fraction=0.2, split_seed=0, test_per_class=5)
    assert s.test.class_counts == [5, 5] and pooled(s) == [35, 17]
